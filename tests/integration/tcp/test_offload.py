"""Offloads against the kernel, on and off: what ethtool shows, 100 MB each way exact with
nothing dropped by the kernel, and the same offloads on an AF_PACKET link over a veth.
Three modes: "auto" (the kernel's offloads), "soft" (offload off, software GSO/GRO: the
defaults gso = gro = "auto") and "off" (offload, gso and gro off: the per-segment path); all
three write to the TAP through io_uring (tap_tx "auto"), and "soft-writev" is "soft" with
tap_tx = "writev" (one writev per frame: the fallback where io_uring is unavailable)."""

from __future__ import annotations

import hashlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration import front_helpers
from tests.integration.tcp.conftest import FAST_ARGS, need_world
from tests.integration.tcp.kit import (
    CHARGEN,
    DISCARD,
    ECHO,
    MB,
    STACK_IP,
    chargen_sha256,
    echo_transfer,
)
from tests.integration.world import (
    World,
    netns_add,
    netns_del,
    new_netns_name,
    ns_socket,
    running_world,
)

pytestmark = pytest.mark.integration

SIZE = 100 * MB
LIMIT = 90.0
REPO = Path(__file__).resolve().parents[3]
NEGOTIATED = {
    "auto": "offload on tap0: vnet header 10 bytes, csum tso4 tso6",
    "soft": "offload on tap0: off; software gso gro",
    "off": "offload on tap0: off; send ",  # no "software gso gro" before the send mode
    "soft-writev": "offload on tap0: off; software gso gro; send writev\n",
}
# tap_tx "auto": io_uring, or writev with the reason on a kernel that refuses it
SEND_AUTO = ("; send io_uring\n", "; send writev (io_uring unavailable: ")
MODE_ARGS = {
    "auto": ("--offload", "auto"),
    "soft": ("--offload", "off"),  # gso and gro "auto": in software
    "off": ("--offload", "off", "--gso", "off", "--gro", "off"),
    "soft-writev": ("--offload", "off", "--tap-tx", "writev"),
}


@pytest.fixture(scope="module", params=["auto", "soft", "off", "soft-writev"])
def offload_world(request, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    need_world()
    mode = request.param
    tmp = tmp_path_factory.mktemp(f"offload-{mode}")
    with running_world(tmp, *FAST_ARGS, *MODE_ARGS[mode], tag="off") as world:
        world.mode = mode  # type: ignore[attr-defined]
        yield world


def ethtool_features(world: World) -> dict[str, str]:
    out = world.run(["ethtool", "-k", world.interface]).stdout
    pairs = (line.strip().split(": ", 1) for line in out.splitlines() if ": " in line)
    return {k: v.split()[0] for k, v in pairs}


def tx_dropped(world: World) -> int:
    path = f"/sys/class/net/{world.interface}/statistics/tx_dropped"
    return int(world.run(["cat", path]).stdout)


def test_ethtool_shows_what_was_negotiated(offload_world: World) -> None:
    mode = offload_world.mode  # type: ignore[attr-defined]
    log = offload_world.log()
    assert NEGOTIATED[mode] in log
    if mode != "soft-writev":
        assert any(send in log for send in SEND_AUTO), log
    features = ethtool_features(offload_world)
    want = "on" if mode == "auto" else "off"  # software GSO/GRO: the TAP has no offloads
    assert features["tx-checksumming"] == want
    assert features["tcp-segmentation-offload"] == want


def test_100mb_each_way_exact_and_the_kernel_drops_nothing(
    offload_world: World, payload: tuple[Path, str]
) -> None:
    """Echo (both directions at once), then discard and chargen: every byte checked, and the
    TAP's tx_dropped (frames the kernel could not hand to the stack) unchanged."""
    path, digest = payload
    dropped = tx_dropped(offload_world)
    gso_before = {d: _gso_frames(offload_world, d) for d in ("tx", "rx")}
    sock = offload_world.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(10)
        sock.connect((STACK_IP, ECHO))
        got, n, seconds = echo_transfer(sock, path, LIMIT)
    finally:
        sock.close()
    assert n == SIZE and got == digest
    speeds = {"echo": SIZE / MB / seconds}
    speeds.update(one_way(offload_world, path))
    assert tx_dropped(offload_world) == dropped
    mode = offload_world.mode  # type: ignore[attr-defined]
    print(f"offload {mode}: " + ", ".join(f"{k} {v:.0f} MB/s" for k, v in speeds.items()))
    # super-frames both ways with offloads, kernel's or software; none on the per-segment path
    for direction, before in gso_before.items():
        grew = _gso_frames(offload_world, direction) - before
        assert (grew > 100) if mode != "off" else (grew == 0), (direction, grew)


def one_way(world: World, path: Path) -> dict[str, float]:
    """SIZE into discard (acknowledged to the byte) and SIZE out of chargen (its pattern)."""
    out: dict[str, float] = {}
    sock = world.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(LIMIT)
        sock.connect((STACK_IP, DISCARD))
        started = time.monotonic()
        with open(path, "rb") as f:
            sock.sendfile(f)
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1) == b""
        out["discard"] = SIZE / MB / (time.monotonic() - started)
    finally:
        sock.close()
    sock = world.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(LIMIT)
        sock.connect((STACK_IP, CHARGEN))
        started = time.monotonic()
        digest, left = hashlib.sha256(), SIZE
        while left:
            data = sock.recv(min(left, 1 << 20))
            assert data
            digest.update(data)
            left -= len(data)
        out["chargen"] = SIZE / MB / (time.monotonic() - started)
    finally:
        sock.close()
    assert digest.hexdigest() == chargen_sha256(SIZE)
    return out


@pytest.mark.parametrize(("ring", "mode"), [("off", "auto"), ("auto", "auto"), ("off", "soft")])
def test_packet_link_with_offloads_over_veth(
    tmp_path: Path, ring: str, mode: str, payload: tuple[Path, str]
) -> None:
    """--link packet --offload auto: PACKET_VNET_HDR on a veth, whose peer passes the
    kernel's TSO segments through whole; 100 MB each way exact through echo. Received by
    recvmmsg, then by the TPACKET_V3 ring (the header in front of each frame in the ring).
    "soft": --offload off with software GSO (pieces by sendmmsg) and GRO (in the arena)."""
    need_world()
    kernel_ns, stack_ns = new_netns_name("opk"), new_netns_name("ops")
    netns_add(kernel_ns)
    netns_add(stack_ns)
    proc = None
    log = tmp_path / "stack.log"
    try:
        subprocess.run(
            ["ip", "-n", kernel_ns, "link", "add", "veth-k", "type", "veth",
             "peer", "name", "veth-s", "netns", stack_ns],
            check=True,
        )  # fmt: skip
        subprocess.run(
            ["ip", "-n", kernel_ns, "addr", "add", "192.0.2.1/24", "dev", "veth-k"], check=True
        )
        subprocess.run(["ip", "-n", kernel_ns, "link", "set", "veth-k", "up"], check=True)
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", stack_ns, sys.executable, "-m", "netstack", "run",
                 "--link", "packet", "--interface", "veth-s", *MODE_ARGS[mode],
                 "--pcap", "none", "--packet-ring", ring],
                stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
            )  # fmt: skip
        deadline = time.monotonic() + 20
        while "netstack up" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        text = log.read_text()
        negotiated = NEGOTIATED[mode].replace("tap0", "veth-s")
        assert negotiated in text, text
        receive = "recvmmsg" if ring == "off" else "tpacket_v3 ring"
        assert f"receive {receive}, qdisc bypass on" in text, text
        data_file, digest = payload
        sock = None
        for _ in range(100):  # the stack's first ARP answer may take a moment
            sock = ns_socket(kernel_ns, socket.AF_INET, socket.SOCK_STREAM)
            sock.settimeout(10)
            try:
                sock.connect((STACK_IP, ECHO))
                break
            except OSError:
                sock.close()
                sock = None
                time.sleep(0.1)
        assert sock is not None, log.read_text()
        try:
            got, n, _ = echo_transfer(sock, data_file, LIMIT)
        finally:
            sock.close()
        assert n == SIZE and got == digest
        # The kernel's TCP over a veth leaves its checksums partial: with the vnet header the
        # header flags them, without it the link completes them and counts them.
        completed = [
            line
            for line in front_helpers.scrape_in(stack_ns).splitlines()
            if line.startswith("netstack_link_rx_checksums_completed_total{")
        ]
        if mode == "soft":
            assert len(completed) == 1 and 'interface="veth-s"' in completed[0], completed
            assert float(completed[0].rsplit(" ", 1)[1]) >= SIZE // 65536, completed
        else:
            assert completed == []
        _udp_burst_through_packet_link(proc, kernel_ns, stack_ns, mode)
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(10)
        netns_del(kernel_ns)
        netns_del(stack_ns)


def _udp_gso_tx(ns: str) -> float:
    for line in front_helpers.scrape_in(ns).splitlines():
        if line.startswith("netstack_gso_frames_total{") and 'direction="tx"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _udp_burst_through_packet_link(
    proc: subprocess.Popen, kernel_ns: str, stack_ns: str, mode: str
) -> None:
    """64 echo requests queued while the stack is stopped, so one receive batch holds them:
    every reply back exactly once (the kernel drops a bad checksum). With software GSO the
    replies leave as a UDP super-frame the link cuts (pieces by sendmmsg): gso frames grow."""
    sock = ns_socket(kernel_ns, socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.settimeout(5)
        sock.connect((STACK_IP, ECHO))
        sock.send(b"hello")  # the stack learns the peer (and the kernel the stack) first
        assert sock.recv(2048) == b"hello"
        before = _udp_gso_tx(stack_ns)
        sent = [i.to_bytes(4, "big") + bytes([i]) * 60 for i in range(64)]
        proc.send_signal(signal.SIGSTOP)
        try:
            for payload in sent:
                sock.send(payload)
        finally:
            proc.send_signal(signal.SIGCONT)
        got = [sock.recv(2048) for _ in sent]
    finally:
        sock.close()
    assert sorted(got) == sorted(sent)
    grew = _udp_gso_tx(stack_ns) - before
    if mode == "soft":
        assert grew >= 1, grew


@pytest.mark.parametrize("mode", ["auto", "soft", "off"])
def test_impaired_path_with_and_without_offloads(
    mode: str, tmp_path: Path, payload: tuple[Path, str]
) -> None:
    """Through the relay (which cuts the stack's super-frames into wire segments, then drops
    and reorders those): 5 MB through echo, exact, both ways impaired."""
    need_world()
    from tests.integration.impair import Impairment, impaired_world
    from tests.integration.tcp.kit import sha256_file

    path, _ = payload
    size = 5 * MB
    faults = Impairment(drop=0.02, reorder=0.05)
    args = (*FAST_ARGS, *MODE_ARGS[mode])
    with impaired_world(tmp_path, to_stack=faults, to_kernel=faults, extra_args=args) as world:
        assert NEGOTIATED[mode] in world.log()
        sock = world.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.settimeout(LIMIT)
            sock.connect((STACK_IP, ECHO))
            got, n, _ = echo_transfer(sock, path, LIMIT, size)
        finally:
            sock.close()
        stats = world.relay_stats()
    assert n == size and got == sha256_file(path, size)
    assert stats.to_kernel.dropped > 0 and stats.to_stack.dropped > 0


def _gso_frames(world: World, direction: str) -> float:
    from tests.integration.front_helpers import scrape

    for line in scrape(world).splitlines():
        if "gso_frames" in line and f'direction="{direction}"' in line and line[0] != "#":
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _gso_frames_tx(world: World) -> float:
    return _gso_frames(world, "tx")


def test_udp_echo_bursts_come_back_exact(offload_world: World) -> None:
    """UDP echo under bursts of 64 datagrams: with offloads (auto) on a kernel with USO the
    stack sends a batch's replies as UDP super-frames that the kernel cuts, with software GSO
    (soft modes) the link cuts them (gso_frames tx grows either way); every datagram must
    come back once, byte for byte, with a checksum the kernel accepts (Udp InCsumErrors
    unchanged)."""
    mode = offload_world.mode  # type: ignore[attr-defined]
    kernel_uso = " uso" in offload_world.log()  # "kernel also has: ... uso" (auto only)

    def csum_errors() -> int:
        text = offload_world.run(["cat", "/proc/net/snmp"]).stdout
        head, values = [ln.split() for ln in text.splitlines() if ln.startswith("Udp:")][:2]
        return int(values[head.index("InCsumErrors")])

    errors, gso = csum_errors(), _gso_frames_tx(offload_world)
    sock = offload_world.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sent: set[bytes] = set()
    got: list[bytes] = []
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.connect((STACK_IP, 7))
        sock.settimeout(5)
        for burst in range(40):
            msgs = [f"{burst:03d}-{i:03d}-".encode() * 8 for i in range(64)]
            for m in msgs:
                sock.send(m)
            sent.update(msgs)
            got += [sock.recv(2048) for _ in msgs]
    finally:
        sock.close()
    assert len(got) == len(sent) and set(got) == sent
    assert csum_errors() == errors
    grew = _gso_frames_tx(offload_world) - gso
    if (mode == "auto" and kernel_uso) or mode.startswith("soft"):  # the kernel or the link cuts
        assert grew > 0  # at least one burst was read in more than one frame per batch
    else:
        assert grew == 0
