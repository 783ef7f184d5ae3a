"""100 MB each way between the kernel and the stack over a clean TAP: into discard, out of
chargen, through echo, and an active open from the stack (in-process, blocking facade) to a
kernel `nc -l`. Every byte is checked by sha256; each transfer has a time limit (LIMIT)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from tests.integration.tcp.conftest import assert_checked, need_world
from tests.integration.tcp.kit import (
    CHARGEN,
    DISCARD,
    ECHO,
    HOST_IP,
    MB,
    STACK_IP,
    bare_namespace,
    bytes_acked,
    chargen_sha256,
    echo_transfer,
    ns_popen,
    seeded_sha256,
    sha256_file,
    stackproc,
    stackproc_result,
    wait_listening,
)
from tests.integration.world import World, have_tools

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not have_tools("nc"), reason="no nc (netcat-openbsd)"),
]

SIZE = 100 * MB
LIMIT = 90.0  # seconds per 100 MB transfer: fails well before the suite's 8-minute budget


def test_nc_into_discard(stack_world: World, payload: tuple[Path, str]) -> None:
    """`nc -N` sends the file and half-closes; discard closes after our FIN, so nc ending
    cleanly means the stack took every byte in order. A kernel socket then does the same
    and reads TCP_INFO: the stack acknowledged exactly SIZE bytes."""
    path, _ = payload
    started = time.monotonic()
    out = stack_world.run(
        ["sh", "-c", f"nc -N {STACK_IP} {DISCARD} < {path}"], timeout=LIMIT, check=False
    )
    assert out.returncode == 0, out.stderr
    nc_s = time.monotonic() - started
    sock = stack_world.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(LIMIT)
        sock.connect((STACK_IP, DISCARD))
        with open(path, "rb") as f:
            sock.sendfile(f)
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1) == b""  # discard's FIN: after all our data
        assert bytes_acked(sock) == SIZE + 2  # SND.UNA moved over SYN, every byte, FIN
    finally:
        sock.close()
    print(f"nc -> discard: {SIZE / MB / nc_s:.1f} MB/s")


def test_nc_from_chargen(stack_world: World, tmp_path: Path) -> None:
    """100 MB of chargen through nc into a file: exactly RFC 864's pattern."""
    out_path = tmp_path / "chargen.out"
    started = time.monotonic()
    stack_world.run(
        ["sh", "-c", f"nc -d {STACK_IP} {CHARGEN} | head -c {SIZE} > {out_path}"],
        timeout=LIMIT,
    )
    elapsed = time.monotonic() - started
    assert out_path.stat().st_size == SIZE
    assert sha256_file(out_path) == chargen_sha256(SIZE)
    print(f"chargen -> nc: {SIZE / MB / elapsed:.1f} MB/s")


def test_echo_both_directions(stack_world: World, payload: tuple[Path, str]) -> None:
    """A kernel socket writes 100 MB while a thread reads the echo: both directions flow."""
    path, digest = payload
    sock = stack_world.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(10)
        sock.connect((STACK_IP, ECHO))
        got, n, seconds = echo_transfer(sock, path, LIMIT)
    finally:
        sock.close()
    assert n == SIZE
    assert got == digest
    print(f"echo: {SIZE / MB / seconds:.1f} MB/s each way")


def test_active_open_to_kernel_nc(tmp_path: Path) -> None:
    """The stack (in-process, blocking facade) connects to `nc -l` and sends 100 MB of a
    seeded stream; the kernel writes it to a file, whose sha256 must match."""
    need_world()
    out_path = tmp_path / "received.bin"
    log = tmp_path / "stackproc.log"
    with bare_namespace("tcpa") as ns:
        with open(out_path, "wb") as out:
            listener = ns_popen(ns, ["nc", "-l", "-d", "5001"], stdout=out)
        try:
            wait_listening(ns, 5001)
            proc = stackproc(
                ns, ["send", "--to", f"{HOST_IP}:5001", "--bytes", str(SIZE), "--seed", "7",
                     "--timeout", str(LIMIT)], log,
            )  # fmt: skip
            result = stackproc_result(proc, LIMIT + 20, log)
            assert listener.wait(10) == 0
        finally:
            if listener.poll() is None:
                listener.kill()
                listener.wait()
    expected = seeded_sha256(7, SIZE)
    assert result["sha256_sent"] == expected
    assert out_path.stat().st_size == SIZE
    assert sha256_file(out_path) == expected
    assert result["received"] == 0 and result["close_error"] is None
    assert_checked(log.read_text(errors="replace"))
    print(f"stack -> nc -l: {SIZE / MB / result['send_s']:.1f} MB/s; {result['tcp_info']}")
