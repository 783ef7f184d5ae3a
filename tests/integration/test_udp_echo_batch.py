"""UDP echo under a windowed load on the TAP, answered per receive batch in C (proto/host.py
Host._echo_batch / _echo_runs): with offloads (this module: USO super-frames where the kernel
has them) and without (test_udp_echo_offload_off.py runs the same burst). Several sockets (so
several runs and peers' ports interleave in a batch), sizes from 1 to 1472 bytes; every
datagram must come back exactly once, unchanged, and the stream of replies must hash the same
as the stream sent. The stack's own counters must agree with what the kernel saw."""

from __future__ import annotations

import hashlib
import random
import select
import socket
import struct
import time

import pytest

from tests.integration.world import World

pytestmark = pytest.mark.integration


def windowed_burst(world: World, *, sockets: int = 3, total: int = 4000, window: int = 64) -> None:
    """`total` datagrams over `sockets` connected sockets, `window` in flight in all; sizes
    mostly 64 bytes (the echo load's), some random up to 1472."""
    rng = random.Random(10)
    socks = []
    for _ in range(sockets):
        s = world.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        s.setblocking(False)
        s.connect((world.stack_ip, 7))
        socks.append(s)
    sent_hash = hashlib.sha256()
    payloads: dict[int, bytes] = {}
    got: dict[int, bytes] = {}
    sent = 0
    deadline = time.monotonic() + 60
    try:
        while len(got) < total:
            while sent < total and sent - len(got) < window:
                size = 64 if rng.random() < 0.8 else rng.randint(5, 1472)
                body = struct.pack("!I", sent) + rng.randbytes(size - 4)
                payloads[sent] = body
                sent_hash.update(body)
                socks[sent % sockets].send(body)
                sent += 1
            ready, _, _ = select.select(socks, [], [], 5.0)
            assert ready, f"no reply for 5 s: {total - len(got)} of {total} missing"
            assert time.monotonic() < deadline
            for s in ready:
                while True:
                    try:
                        data = s.recv(2048)
                    except BlockingIOError:
                        break
                    (seq,) = struct.unpack_from("!I", data)
                    assert seq not in got, f"datagram {seq} echoed twice"
                    assert socks[seq % sockets] is s, "reply on another socket"
                    got[seq] = data
    finally:
        for s in socks:
            s.close()
    assert [len(got[i]) for i in range(total)] == [len(payloads[i]) for i in range(total)]
    got_hash = hashlib.sha256()
    for i in range(total):
        got_hash.update(got[i])
    assert got_hash.hexdigest() == sent_hash.hexdigest()


def test_windowed_burst_several_sockets(world: World) -> None:
    windowed_burst(world)


def test_windowed_burst_one_socket_full_batches(world: World) -> None:
    """One peer port, window 64: whole read batches of one run (the C path's best case)."""
    windowed_burst(world, sockets=1, total=6000, window=64)
