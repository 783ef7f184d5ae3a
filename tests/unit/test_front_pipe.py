"""pipe.TcpPipe against a real Loop and a loopback TCP pair, with a fake stack-side transport: flow
control both ways, half-close both ways, resets, in order and bounded."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import struct
from types import SimpleNamespace

import pytest

from netstack.front.pipe import HIGH_WATER, TcpPipe
from netstack.front.port import StackPort
from netstack.io.loop import Loop


class FakeTransport:
    """The stack connection as the pipe sees it (netstack.api.tcp.TcpTransport's calls)."""

    def __init__(self, send_buffer: int = 1 << 20) -> None:
        self.reading = True
        self.sent = bytearray()
        self.capacity = send_buffer
        self.eof = False
        self.aborted = False
        self.closed = False

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def get_write_buffer_free(self) -> int:
        return self.capacity - len(self.sent)

    def write(self, data: bytes) -> int:
        assert len(data) <= self.get_write_buffer_free(), "the pipe must read only what fits"
        self.sent += data
        return len(data)

    def write_eof(self) -> None:
        self.eof = True

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.closed = True


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """Two connected TCP sockets on 127.0.0.1 (RST needs TCP; a socketpair has none)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        a = socket.create_connection(server.getsockname())
        b, _ = server.accept()
    return a, b


@pytest.fixture
def rig():
    loop = Loop()
    port = StackPort(
        loop, SimpleNamespace(now=0.0), SimpleNamespace(now=0.0),
        lambda: ipaddress.IPv4Interface("192.0.2.2/24"), lambda: None,
    )  # fmt: skip
    a, b = tcp_pair()
    a.setblocking(False)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    ends: list[str | None] = []
    counted = [0, 0]

    def count(to_target: int, from_target: int) -> None:
        counted[0] += to_target
        counted[1] += from_target

    pipe = TcpPipe(port, 0, lambda p, reason: ends.append(reason), count)
    transport = FakeTransport()
    pipe.connection_made(transport)  # type: ignore[arg-type]
    assert not transport.reading  # no kernel socket yet: the window closes
    pipe.attach(a)
    assert transport.reading
    yield SimpleNamespace(loop=loop, pipe=pipe, t=transport, a=a, b=b, ends=ends, counted=counted)
    loop.close()
    a.close()
    b.close()


def turn(rig, n: int = 3) -> None:
    for _ in range(n):
        rig.loop.run_once(0.01)


def test_slow_kernel_side_stops_the_stack_reading(rig) -> None:
    """The kernel socket does not drain: past HIGH_WATER the stack connection pauses reading
    (its window closes); reading the kernel side resumes it and every byte arrives in order."""
    payload = os.urandom(4 * HIGH_WATER)
    sent = 0
    while rig.t.reading and sent < len(payload):
        rig.pipe.data_received(payload[sent : sent + 65536])
        sent += 65536
        turn(rig, 1)
    assert not rig.t.reading, "never paused"
    assert len(rig.pipe.out) < HIGH_WATER + 65536
    got = bytearray()
    rig.b.settimeout(0.01)
    while len(got) < sent:
        turn(rig, 1)
        with contextlib.suppress(TimeoutError):
            got += rig.b.recv(1 << 20)
        if rig.t.reading and sent < len(payload):
            rig.pipe.data_received(payload[sent : sent + 65536])
            sent += 65536
    assert rig.t.reading
    assert bytes(got) == payload[:sent]
    assert rig.counted[0] == sent


def test_kernel_side_read_only_as_far_as_the_send_buffer_has_room(rig) -> None:
    rig.t.capacity = 100_000
    data = os.urandom(300_000)
    rig.b.sendall(data[:200_000])
    turn(rig, 5)
    assert len(rig.t.sent) == 100_000  # the rest waits in the kernel
    rig.pipe.pause_writing()
    rig.t.sent.clear()  # the stack's peer caught up
    rig.pipe.resume_writing()
    turn(rig, 5)
    assert bytes(rig.t.sent) == data[100_000:200_000]


def test_half_close_both_ways_then_clean_end(rig) -> None:
    rig.b.sendall(b"from kernel")
    rig.b.shutdown(socket.SHUT_WR)
    turn(rig)
    assert bytes(rig.t.sent) == b"from kernel" and rig.t.eof  # FIN relayed as write_eof
    rig.pipe.data_received(b"still flowing")
    assert rig.pipe.eof_received() is True  # keep the stack side open for sending
    turn(rig)
    rig.b.settimeout(1)
    assert rig.b.recv(100) == b"still flowing"
    assert rig.b.recv(100) == b""  # and our FIN as shutdown(SHUT_WR)
    assert rig.ends == [None] and rig.t.closed


def test_kernel_reset_resets_the_stack_side(rig) -> None:
    rig.b.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    rig.b.close()
    turn(rig)
    assert rig.t.aborted and rig.ends == ["target_reset"]


def test_stack_reset_resets_the_kernel_side(rig) -> None:
    rig.pipe.connection_lost(ConnectionResetError())
    rig.b.settimeout(1)
    with pytest.raises(ConnectionResetError):
        rig.b.recv(10)
    assert rig.ends == ["client_reset"]
