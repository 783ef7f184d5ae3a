"""The end of a connection's life (Connection._detach): once CLOSED and the application told,
the connection lets go of the references that made cycles with it, so that it is freed by
reference counting, without the cyclic garbage collector (bench/PROFILE.md, fifth pass)."""

from __future__ import annotations

import gc
import weakref

from netstack.api.services import TcpChargen, TcpEcho
from netstack.api.tcp import Protocol, TcpTransport, connect, listen
from netstack.proto.tcp.connection import DetachedTcb
from netstack.proto.tcp.state import State
from tests.unit.tcp.simnet import SimNet


class Client(Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.lost: list = []

    def data_received(self, data: bytes) -> None:
        self.data += data

    def connection_lost(self, exc) -> None:
        self.lost.append(exc)


def _echo_once(net: SimNet) -> tuple[weakref.ref, Client, TcpTransport]:
    """One connection to the echo service: 5 bytes, echoed; the client closes first."""
    client = Client()
    transport = connect(net.a, ("192.0.2.2", 7), lambda: client)
    net.run(net.now + 1, stop=lambda: bool(net.b.conns))
    (server_conn,) = net.b.conns.values()
    ref = weakref.ref(server_conn)
    del server_conn
    transport.write(b"hello")
    transport.write_eof()  # the echo comes back, then the service's FIN
    net.run(net.now + 5, stop=lambda: bool(client.lost) and ref() is None)
    return ref, client, transport


def test_closed_connection_is_freed_without_the_cyclic_gc() -> None:
    net = SimNet(5)
    listen(net.b, 7, TcpEcho)
    gc.collect()
    gc.disable()
    try:
        ref, client, transport = _echo_once(net)
        assert bytes(client.data) == b"hello" and client.lost == [None]
        assert ref() is None  # the passive closer's connection: gone by reference counting
        # The application's view of its own (TIME_WAIT) connection is intact.
        assert transport.get_extra_info("state") == State.TIME_WAIT.value
    finally:
        gc.enable()
    net.assert_checked()


def test_detached_connection_keeps_its_information() -> None:
    """After the end: tcp_info and the transport still answer; the recovery state reads a
    frozen copy of the connection; application calls behave as on any closed connection."""
    net = SimNet(6)
    server: list[TcpTransport] = []

    class Keep(TcpEcho):
        def connection_made(self, transport: TcpTransport) -> None:
            super().connection_made(transport)
            server.append(transport)

    listen(net.b, 7, Keep)
    _echo_once(net)
    (transport,) = server
    conn = transport.connection
    assert conn.state is State.CLOSED and conn.lost_done
    assert conn.handler is None and conn.user is None
    tcb = conn.recovery.tcb
    assert type(tcb) is DetachedTcb
    assert (tcb.snd_una, tcb.snd_nxt, tcb.iss, tcb.mss) == (
        conn.snd_una, conn.snd_nxt, conn.iss, conn.mss,
    )  # fmt: skip
    assert tcb.tsval(12.0) == conn.tsval(12.0)
    info = transport.get_extra_info("tcp_info")
    assert isinstance(info, dict) and info["state"] == "closed"
    assert transport.is_closing() and transport.get_protocol() is not None
    transport.close()  # no-ops on a closed connection, as before
    transport.abort()
    assert conn.state is State.CLOSED


def test_not_detached_while_data_waits_for_a_paused_reader() -> None:
    """A reset connection whose application paused reading keeps its handler: the data
    still queued is delivered when reading resumes (as before), then it detaches."""
    net = SimNet(7)
    got = bytearray()
    transports: list[TcpTransport] = []

    class Paused(Protocol):
        def connection_made(self, transport: TcpTransport) -> None:
            transports.append(transport)
            transport.pause_reading()

        def data_received(self, data: bytes) -> None:
            got.extend(data)

    listen(net.b, 9, Paused)
    client = connect(net.a, ("192.0.2.2", 9), Client)
    net.run(net.now + 1, stop=lambda: bool(transports))
    client.write(b"data")
    net.run(net.now + 1, stop=lambda: transports[0].connection.rcvbuf.queued == 4)
    client.abort()
    conn = transports[0].connection
    net.run(net.now + 1, stop=lambda: conn.state is State.CLOSED and conn.lost_done)
    assert conn.handler is not None and conn.rcvbuf.queued == 4
    transports[0].resume_reading()
    net.run(net.now + 1, stop=lambda: conn.handler is None)
    assert bytes(got) == b"data" and not conn.rcvbuf.queued


def test_chargen_connection_is_freed_without_the_cyclic_gc() -> None:
    """The chargen service lets go of its transport at the end too (its writes fill the
    peer's window; the client's close with unread data resets it: the end by error)."""
    net = SimNet(8)
    made: list[TcpChargen] = []

    class Chargen(TcpChargen):
        def connection_made(self, transport: TcpTransport) -> None:
            made.append(self)
            super().connection_made(transport)

    listen(net.b, 19, Chargen)
    gc.collect()
    gc.disable()
    try:
        client = Client()
        transport = connect(net.a, ("192.0.2.2", 19), lambda: client)
        net.run(net.now + 1, stop=lambda: len(client.data) > 10_000)
        (server_conn,) = net.b.conns.values()
        ref = weakref.ref(server_conn)
        del server_conn
        transport.close()
        net.run(net.now + 5, stop=lambda: ref() is None)
        assert ref() is None
        assert made[0].transport is None and made[0].sent > 10_000
    finally:
        gc.enable()
    net.assert_checked()
