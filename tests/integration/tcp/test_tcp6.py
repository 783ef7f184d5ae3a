"""TCP over IPv6 against the kernel: `nc -6` through echo (100 MB both ways, sha256 exact) with
offloads on and off, chargen to `nc -6`, the stack's active open to `nc -6 -l`, a closed port,
`ss -6` and `netstack ss`, and the impairment relay over IPv6 (loss and reordering)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.tcp.conftest import FAST_ARGS, assert_checked, need_world
from tests.integration.tcp.kit import (
    CHARGEN,
    ECHO,
    MB,
    REPO,
    bare_namespace,
    chargen_sha256,
    echo_transfer,
    metrics,
    ns_popen,
    seeded_sha256,
    sha256_file,
    stackproc,
    stackproc_result,
    wait_listening,
)
from tests.integration.world import World, running_world

pytestmark = pytest.mark.integration

STACK6 = "2001:db8::2"
HOST6 = "2001:db8::1"
SIZE = 100 * MB
LIMIT = 90.0
V6_ARGS = ("--address6", f"{STACK6}/64")


def wait_for(what: str, check, timeout: float, log) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}:\n{log()[-3000:]}")


def wait_ready(world: World) -> None:
    """Our address out of DAD, and the kernel's (it answers only once it is not tentative)."""
    wait_for("DAD", lambda: f"address {STACK6}/64 ready" in world.log(), 10, world.log)

    def kernel_ready() -> bool:
        out = world.run(["ip", "-6", "-o", "addr", "show", "dev", world.interface]).stdout
        return HOST6 in out and "tentative" not in out

    wait_for("the kernel's DAD", kernel_ready, 10, world.log)


# "soft": offload off with software GSO/GRO (the gso/gro defaults); "off": the per-segment path
MODE_ARGS = {
    "auto": ("--offload", "auto"),
    "soft": ("--offload", "off"),
    "off": ("--offload", "off", "--gso", "off", "--gro", "off"),
}


@pytest.fixture(scope="module", params=["auto", "soft", "off"])
def world6(request, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    need_world()
    mode = request.param
    tmp = tmp_path_factory.mktemp(f"tcp6-{mode}")
    with running_world(tmp, *FAST_ARGS, *V6_ARGS, *MODE_ARGS[mode], tag="t6") as world:
        world.mode = mode  # type: ignore[attr-defined]
        wait_ready(world)
        yield world
        assert_checked(world.log())


def test_nc6_through_echo_100mb_exact(world6: World, payload: tuple[Path, str]) -> None:
    """`nc -6 -N` writes 100 MB into echo and reads it back (both directions at once). With
    offloads (auto: TSO6 negotiated) super-frames go both ways; without, none."""
    path, digest = payload
    before = metrics(world6, ("netstack_gso_frames_total",))
    started = time.monotonic()
    with open(path, "rb") as data:
        nc = world6.popen(["nc", "-6", "-N", STACK6, str(ECHO)], stdin=data,
                          stdout=subprocess.PIPE)  # fmt: skip
        sha = subprocess.run(["sha256sum"], stdin=nc.stdout, capture_output=True, text=True,
                             timeout=LIMIT)  # fmt: skip
        assert nc.wait(10) == 0
    seconds = time.monotonic() - started
    assert sha.stdout.split()[0] == digest, world6.log()[-2000:]
    after = metrics(world6, ("netstack_gso_frames_total",))
    grew = {k: after[k] - before.get(k, 0.0) for k in after}
    rx, tx = (
        grew['netstack_gso_frames_total{direction="rx"}'],
        grew['netstack_gso_frames_total{direction="tx"}'],
    )
    if world6.mode != "off":  # type: ignore[attr-defined]
        assert rx > 0 and tx > 0, grew  # TCPV6 GRO frames taken, TSO6 frames sent
    else:
        assert rx == tx == 0, grew
    print(f"nc -6 echo ({world6.mode}): {SIZE / MB / seconds:.0f} MB/s each way")  # type: ignore[attr-defined]


def test_chargen_to_nc6_100mb_exact(world6: World, tmp_path: Path) -> None:
    """The stack sends 100 MB (chargen, exact against RFC 864's pattern) to `nc -6 -d`."""
    out_path = tmp_path / "chargen.bin"
    with open(out_path, "wb") as out:
        nc = world6.popen(["nc", "-6", "-d", STACK6, str(CHARGEN)], stdout=out)
        deadline = time.monotonic() + LIMIT
        while out_path.stat().st_size < SIZE and time.monotonic() < deadline:
            assert nc.poll() is None, world6.log()[-2000:]
            time.sleep(0.05)
        nc.kill()
        nc.wait()
    assert out_path.stat().st_size >= SIZE
    assert sha256_file(out_path, SIZE) == chargen_sha256(SIZE)


def test_closed_port_refused_and_ss_shows_the_connection(world6: World) -> None:
    sock = world6.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        sock.settimeout(5)
        with pytest.raises(ConnectionRefusedError):
            sock.connect((STACK6, 9999))
    finally:
        sock.close()
    sock = world6.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        sock.settimeout(5)
        sock.connect((STACK6, ECHO))
        sock.sendall(b"six\n")
        assert sock.recv(16) == b"six\n"
        local_port = sock.getsockname()[1]
        kernel = world6.run(["ss", "-6", "-Htn", "state", "established"]).stdout
        assert f"[{STACK6}]:{ECHO}" in kernel and f"[{HOST6}]:{local_port}" in kernel, kernel
        ss = [sys.executable, "-m", "netstack", "ss", "--metrics-address", "127.0.0.1:9464"]
        ours = world6.run(ss, cwd=REPO, check=False)
        assert ours.returncode == 0, ours.stdout + ours.stderr
        line = next(ln for ln in ours.stdout.splitlines() if f"[{HOST6}]:{local_port}" in ln)
        assert f"[{STACK6}]:{ECHO}" in line and "ESTAB" in line, ours.stdout
    finally:
        sock.close()


def test_active_open_over_v6_to_kernel_nc(tmp_path: Path) -> None:
    """The stack connects to `nc -6 -l` and sends 20 MB of a seeded stream, exact."""
    need_world()
    size = 20 * MB
    out_path = tmp_path / "received.bin"
    log = tmp_path / "stackproc.log"
    with bare_namespace("t6a") as ns:
        with open(out_path, "wb") as out:
            listener = ns_popen(ns, ["nc", "-6", "-l", "-d", "5001"], stdout=out)
        try:
            wait_listening(ns, 5001)
            proc = stackproc(
                ns, ["--address6", f"{STACK6}/64", "send", "--to", f"[{HOST6}]:5001",
                     "--bytes", str(size), "--seed", "3", "--timeout", str(LIMIT)], log,
            )  # fmt: skip
            result = stackproc_result(proc, LIMIT + 20, log)
            assert listener.wait(10) == 0
        finally:
            if listener.poll() is None:
                listener.kill()
                listener.wait()
    expected = seeded_sha256(3, size)
    assert result["sha256_sent"] == expected
    assert sha256_file(out_path) == expected
    assert result["tcp_info"]["tcpi_snd_mss"] == 1500 - 60 - 12  # MSS - the timestamp option
    assert_checked(log.read_text(errors="replace"))


def test_impaired_relay_over_v6(tmp_path: Path, payload: tuple[Path, str]) -> None:
    """Through the relay with loss and reordering both ways: 5 MB through echo over IPv6,
    the stack's TSO6 super-frames cut into wire segments by the relay (vnet._tcp6_segments)."""
    need_world()
    from tests.integration.impair import Impairment, impaired_world

    path, _ = payload
    size = 5 * MB
    faults = Impairment(drop=0.02, reorder=0.05)
    args = (*FAST_ARGS, *V6_ARGS, "--host-address6", "none")
    with impaired_world(tmp_path, to_stack=faults, to_kernel=faults, extra_args=args,
                        ipv6=HOST6 + "/64") as world:  # fmt: skip
        wait_for("DAD", lambda: f"address {STACK6}/64 ready" in world.log(), 10, world.log)
        sock = world.socket(socket.AF_INET6, socket.SOCK_STREAM)
        try:
            sock.settimeout(LIMIT)
            sock.connect((STACK6, ECHO))
            got, n, _ = echo_transfer(sock, path, LIMIT, size)
        finally:
            sock.close()
        stats = world.relay_stats()
        gso = metrics(world, ("netstack_gso_frames_total",))
    assert n == size and got == sha256_file(path, size)
    assert stats.to_kernel.dropped > 0 and stats.to_stack.dropped > 0
    # the stack sent TSO6 super-frames, and the relay cut them into wire segments (whose
    # faults the connection survived): at least one frame per MSS of data reached it
    assert gso['netstack_gso_frames_total{direction="tx"}'] > 0, gso
    assert stats.to_kernel.frames >= size // 1440
    print("relay over v6:", json.dumps({"to_stack": stats.to_stack.dropped,
                                       "to_kernel": stats.to_kernel.dropped}))  # fmt: skip
