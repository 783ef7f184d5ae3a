"""UDP echo with `--offload off --gso off`: every reply within the MTU is built by
ns_udp_reflect in one piece (with offloads, or the link's software GSO, replies go out as UDP
super-frames instead, tested in tcp/test_offload.py and test_ipv6.py). The kernel
is the judge: it drops a datagram whose IPv4 or UDP checksum is wrong, so an exact echo is a
valid frame; tshark checks the stack's own capture too."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import time

import pytest

from tests.integration.test_udp_echo_batch import windowed_burst
from tests.integration.world import World, have_tools

pytestmark = pytest.mark.integration


# the one-call reply is the path without USO, in the kernel or in software
WORLD_ARGS = ("--offload", "off", "--gso", "off")


def _connected(world: World) -> socket.socket:
    sock = world.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.settimeout(5)
    sock.connect((world.stack_ip, 7))
    return sock


@pytest.mark.parametrize("size", [0, 1, 64, 1472, 1473, 8000])
def test_echo_sizes_byte_exact(world: World, size: int) -> None:
    """Within the MTU the one-call reply; above it the reassembled request's reply is
    fragmented by Ipv4Engine.send as before."""
    sock = _connected(world)
    try:
        for _ in range(3):
            payload = os.urandom(size)
            sock.send(payload)
            assert sock.recv(70000) == payload
    finally:
        sock.close()


def test_windowed_burst_all_echoed(world: World) -> None:
    """3 000 datagrams, 32 in flight (the stack reads and answers them in batches): every
    one comes back exactly once, unchanged."""
    sock = _connected(world)
    total, window = 3000, 32
    seen: set[int] = set()
    sent = 0
    try:
        while len(seen) < total:
            while sent < total and sent - len(seen) < window:
                sock.send(struct.pack("!I", sent) + bytes([sent & 0xFF]) * 60)
                sent += 1
            data = sock.recv(2048)  # socket.timeout (5 s) fails the test: a reply was lost
            (seq,) = struct.unpack_from("!I", data)
            assert data == struct.pack("!I", seq) + bytes([seq & 0xFF]) * 60
            assert seq not in seen
            seen.add(seq)
    finally:
        sock.close()
    assert len(seen) == total


def test_windowed_burst_several_sockets(world: World) -> None:
    """The echo per receive batch in C (Host._echo_batch) under load: test_udp_echo_batch.py's
    burst, here without offloads (every reply one ns_udp_reflect frame)."""
    windowed_burst(world)


def _tshark(world: World, display_filter: str, *, strict: bool = True) -> str:
    """tshark's output for the stack's pcap; not `strict`: "" while the file has no complete
    record yet (tshark calls it cut short)."""
    checks = ["-o", "ip.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE"]
    out = subprocess.run(
        ["tshark", "-n", "-r", str(world.pcap), *checks, "-Y", display_filter],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if not strict and out.returncode != 0:
        return ""
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.skipif(not have_tools("tshark"), reason="no tshark")
def test_stack_capture_has_valid_udp_checksums(world: World) -> None:
    sizes = (10, 100, 1000)
    mine = "udp.srcport == 7 && (udp.length == 18 || udp.length == 108 || udp.length == 1008)"
    sock = _connected(world)
    try:
        for size in sizes:
            sock.send(b"c" * size)
            assert sock.recv(2048) == b"c" * size
        # The stack's pcap is flushed when a frame comes a second after the last flush:
        # nudge it with more echoes until our replies are on disk.
        deadline = time.monotonic() + 30
        while _tshark(world, mine, strict=False).count("\n") < len(sizes):
            assert time.monotonic() < deadline, "replies never reached the stack's pcap"
            time.sleep(0.5)
            sock.send(b"n")
            assert sock.recv(16) == b"n"
    finally:
        sock.close()
    bad = _tshark(
        world,
        "udp.srcport == 7 && (ip.checksum.status == 0 || udp.checksum.status == 0 "
        "|| _ws.malformed)",
    )
    assert bad.strip() == "", bad


def test_the_world_runs_without_offloads(world: World) -> None:
    """WORLD_ARGS reached `netstack run`: without it every test here would take the USO path."""
    assert "offload on tap0: off" in world.log() and "software gso" not in world.log()
