"""The application API (netstack/api/tcp.py) and the built-in TCP services, end to end
between two engines on the simulated link, and through a whole Host."""

from __future__ import annotations

import errno

import pytest

from netstack.api.services import (
    TCP_SERVICES,
    TcpChargen,
    TcpDiscard,
    TcpEcho,
    chargen_pattern,
    start_services,
)
from netstack.api.tcp import Protocol, TcpTransport, connect, listen
from netstack.drops import Drop
from netstack.proto.tcp.config import TcpConfig
from netstack.wire import ethernet as weth
from netstack.wire import ipv4 as wipv4
from netstack.wire import tcp as wtcp
from tests.unit.hosttools import OUR_IP, PEER_IP, feed, ip_frame, learn_peer, make_host, parse_ip
from tests.unit.tcp.simnet import SimNet
from tests.unit.tcp.tcptools import LOCAL_IP


class Recorder(Protocol):
    def __init__(self) -> None:
        self.events: list = []
        self.data = bytearray()
        self.transport: TcpTransport | None = None
        self.keep_open = False

    def connection_made(self, transport: TcpTransport) -> None:
        self.transport = transport
        self.events.append("made")

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self):
        self.events.append("eof")
        return self.keep_open

    def connection_lost(self, exc) -> None:
        self.events.append(("lost", exc))

    def pause_writing(self) -> None:
        self.events.append("pause")

    def resume_writing(self) -> None:
        self.events.append("resume")


def pair(**config):
    cfg = TcpConfig(**config) if config else None
    return SimNet(3, config_a=cfg, config_b=cfg)


def test_connection_made_lost_and_extra_info() -> None:
    net = pair()
    server = Recorder()
    listen(net.b, 5000, lambda: server)
    client = Recorder()
    transport = connect(net.a, ("192.0.2.2", 5000), lambda: client)
    net.run(1, stop=lambda: "made" in server.events)
    assert client.events == ["made"] and server.events == ["made"]
    assert transport.get_extra_info("peername") == ("192.0.2.2", 5000)
    assert transport.get_extra_info("sockname")[0] == "192.0.2.1"  # type: ignore[index]
    assert transport.get_extra_info("state") == "established"
    info = transport.get_extra_info("tcp_info")
    assert isinstance(info, dict) and info["congestion_control"] == "cubic" and info["sack"]
    assert transport.get_extra_info("nonsense", 42) == 42
    assert transport.write(b"hello") == 5
    transport.close()
    net.run(5, stop=lambda: ("lost", None) in server.events)
    assert bytes(server.data) == b"hello"
    assert server.events == ["made", "eof", ("lost", None)]  # eof_received -> None: closes
    assert client.events == ["made", ("lost", None)]


def test_transport_made_later_than_accept_gets_the_waiting_events() -> None:
    """F1: a connection taken from the accept queue (outside on_ready) whose transport is
    made at some later loop turn still hears connection_made, the data and the EOF that
    waited for it — without any segment or timer touching the connection again."""
    net = pair()
    listener = net.b.listen(8000)  # no on_ready: accepted by hand
    client = Recorder()
    client.keep_open = True
    connect(net.a, (LOCAL_IP, 8000), lambda: client)
    net.run(1.0)
    assert client.transport is not None
    client.transport.write(b"request")
    client.transport.write_eof()
    net.run(1.0)  # delivered and ACKed while the server has not accepted yet
    conn = listener.accept()
    assert conn is not None
    net.run(1.0)  # a flush with no handler yet: the events keep waiting
    server = Recorder()
    server.keep_open = True
    TcpTransport(conn, server)
    assert net.b.next_deadline() == net.b.now  # touched: due at once
    net.run(1.0)
    assert server.events == ["made", "eof"] and bytes(server.data) == b"request"


def test_eof_received_true_keeps_the_write_side_open() -> None:
    net = pair()
    server = Recorder()
    server.keep_open = True
    listen(net.b, 5000, lambda: server)
    client = Recorder()
    transport = connect(net.a, (LOCAL_IP, 5000), lambda: client)
    net.run(1, stop=lambda: "made" in server.events)
    transport.write_eof()
    net.run(1, stop=lambda: "eof" in server.events)
    assert server.transport is not None and not server.transport.is_closing()
    server.transport.write(b"after your eof")
    server.transport.close()
    net.run(5, stop=lambda: any(e[0] == "lost" for e in client.events if isinstance(e, tuple)))
    assert bytes(client.data) == b"after your eof"
    assert client.events == ["made", "eof", ("lost", None)]


def test_connect_to_a_closed_port_is_refused() -> None:
    net = pair()
    client = Recorder()
    connect(net.a, (LOCAL_IP, 5999), lambda: client)
    net.run(5, stop=lambda: bool(client.events))
    ((kind, exc),) = client.events  # connection_lost without connection_made
    assert kind == "lost" and isinstance(exc, ConnectionRefusedError)
    assert exc.errno == errno.ECONNREFUSED


def test_reset_by_peer_reaches_the_protocol() -> None:
    net = pair()
    server = Recorder()
    listen(net.b, 5000, lambda: server)
    client = Recorder()
    connect(net.a, (LOCAL_IP, 5000), lambda: client)
    net.run(1, stop=lambda: "made" in server.events)
    assert server.transport is not None
    server.transport.abort()
    net.run(1, stop=lambda: len(client.events) > 1)
    assert isinstance(client.events[-1][1], ConnectionResetError)
    assert server.events[-1] == ("lost", None)
    with pytest.raises(ConnectionResetError):
        client.transport.write(b"x")  # type: ignore[union-attr]


def test_write_after_close_raises() -> None:
    net = pair()
    listen(net.b, 5000, Recorder)
    client = Recorder()
    transport = connect(net.a, (LOCAL_IP, 5000), lambda: client)
    net.run(1, stop=lambda: "made" in client.events)
    transport.close()
    assert transport.is_closing()
    with pytest.raises(BrokenPipeError):
        transport.write(b"x")


def test_pause_reading_applies_back_pressure_and_pause_writing_tells_the_writer() -> None:
    net = pair(receive_buffer=20_000, send_buffer=30_000)
    server = Recorder()
    listen(net.b, 5000, lambda: server)
    client = Recorder()
    transport = connect(net.a, (LOCAL_IP, 5000), lambda: client)
    net.run(1, stop=lambda: "made" in server.events)
    assert server.transport is not None
    server.transport.pause_reading()
    assert not server.transport.is_reading()
    written = 0
    while (n := transport.write(b"p" * 10_000)) > 0:
        written += n
    assert written == 30_000 and "pause" in client.events
    net.run(2)
    assert len(server.data) == 0  # nothing delivered while paused
    conn = server.transport.connection
    assert conn.rcvbuf.queued == 20_000 and conn.rcv_adv == conn.rcv_nxt  # window closed
    assert transport.get_write_buffer_size() == 10_000  # the rest waits at the sender
    server.transport.resume_reading()
    net.run(5, stop=lambda: len(server.data) == 30_000)
    assert len(server.data) == 30_000
    assert "resume" in client.events


def test_echo_service_with_back_pressure() -> None:
    """Echo must not buffer without bound: a client that never reads stalls it."""
    net = pair(receive_buffer=10_000, send_buffer=10_000)
    servers: list[TcpEcho] = []
    listen(net.b, 7, lambda: servers.append(TcpEcho()) or servers[-1])
    client = Recorder()
    transport = connect(net.a, (LOCAL_IP, 7), lambda: client)
    net.run(1, stop=lambda: "made" in client.events)
    transport.pause_reading()
    sent = 0
    for _ in range(100):
        sent += transport.write(b"e" * 5000)
        net.run(0.2)
    # The echo's send buffer and our receive window fill; then its reading pauses, its
    # window closes, our send buffer fills: everything stops, bounded.
    (echo,) = servers
    assert echo.pending is not None
    assert sent < 60_000
    transport.resume_reading()
    transport.write_eof()
    net.run(30, stop=lambda: ("lost", None) in client.events)
    assert bytes(client.data) == b"e" * sent


def test_discard_counts_and_closes() -> None:
    net = pair()
    servers: list[TcpDiscard] = []
    listen(net.b, 9, lambda: servers.append(TcpDiscard()) or servers[-1])
    client = Recorder()
    transport = connect(net.a, (LOCAL_IP, 9), lambda: client)
    net.run(1, stop=lambda: "made" in client.events)
    transport.write(b"d" * 100_000)
    transport.write_eof()
    net.run(10, stop=lambda: ("lost", None) in client.events)
    assert servers[0].bytes == 100_000
    assert client.events == ["made", "eof", ("lost", None)]


def test_chargen_pattern_is_rfc_864() -> None:
    pattern = chargen_pattern()
    lines = pattern.split(b"\r\n")[:-1]
    assert len(lines) == 95 and all(len(line) == 72 for line in lines)
    assert lines[0] == bytes(range(0x20, 0x20 + 72))
    assert lines[1][0] == 0x21 and lines[94][0] == 0x7E and lines[94][1] == 0x20  # rotates


def test_chargen_streams_the_pattern_with_flow_control() -> None:
    net = pair(send_buffer=20_000)
    servers: list[TcpChargen] = []
    listen(net.b, 19, lambda: servers.append(TcpChargen()) or servers[-1])
    client = Recorder()
    transport = connect(net.a, (LOCAL_IP, 19), lambda: client)
    net.run(1, stop=lambda: len(client.data) > 100_000)
    (chargen,) = servers
    conn = chargen.transport.connection  # type: ignore[union-attr]
    assert len(conn.sndbuf) <= 20_000  # never more than the send buffer
    transport.pause_reading()
    net.run(2)
    stalled = chargen.sent
    net.run(2)
    assert chargen.sent == stalled  # the reader stopped: so did chargen
    transport.resume_reading()
    net.run(1, stop=lambda: len(client.data) > 300_000)
    pattern = chargen_pattern()
    got = bytes(client.data)
    assert got == (pattern * (len(got) // len(pattern) + 1))[: len(got)]
    transport.close()  # with unread data in flight: fine either way
    net.run(5)


def test_start_services_binds_udp_and_tcp() -> None:
    host = make_host()
    started = start_services(
        host.udp, {"udp_echo": 7, "tcp_echo": 7, "tcp_discard": None, "tcp_chargen": 19}, host.tcp
    )
    assert set(started) == {"udp_echo", "tcp_echo", "tcp_chargen"}
    assert sorted(host.tcp.listeners) == [7, 19]
    assert set(TCP_SERVICES) == {"tcp_echo", "tcp_discard", "tcp_chargen"}
    assert start_services(host.udp, {"tcp_echo": 7}) == {}  # no TCP engine given: skipped
    with pytest.raises(KeyError):
        start_services(host.udp, {"bogus": 1})


# -- through a Host: frames in, frames out ------------------------------------------------------
def tcp_frame(flags: int, dport: int, seq: int = 1000, ack: int = 0, data: bytes = b"") -> bytes:
    segment = wtcp.build(PEER_IP, OUR_IP, 40000, dport, seq, ack, flags, 8192, data)
    return ip_frame(segment + data, wipv4.PROTO_TCP)


def parse_tcp(frame: bytes):
    _, ip, payload = parse_ip(frame)
    assert ip.protocol == wipv4.PROTO_TCP
    return wtcp.parse(payload, ip.src, ip.dst)


def test_host_answers_a_closed_port_with_rst() -> None:
    host = make_host()
    learn_peer(host)
    (out,) = feed(host, tcp_frame(wtcp.SYN, 81))
    h, _ = parse_tcp(out)
    assert h.flags == wtcp.RST | wtcp.ACK and h.ack == 1001 and h.dst_port == 40000
    assert host.counters.drops[Drop.TCP_NO_LISTENER] == 1
    assert host.counters.tcp_resets_tx == 1 and host.counters.tcp_segments_rx == 1


def test_host_serves_tcp_echo() -> None:
    host = make_host()
    learn_peer(host)
    start_services(host.udp, {"tcp_echo": 7}, host.tcp)
    (synack,) = feed(host, tcp_frame(wtcp.SYN, 7))
    h, _ = parse_tcp(synack)
    assert h.flags == wtcp.SYN | wtcp.ACK and h.ack == 1001
    isn = h.seq
    (reply,) = feed(host, tcp_frame(wtcp.ACK | wtcp.PSH, 7, 1001, isn + 1, b"echo me"), now=0.01)
    h, data = parse_tcp(reply)
    assert bytes(data) == b"echo me" and h.ack == 1008  # the echo carries the ACK
    eth, _, _ = parse_ip(reply)
    assert eth.ethertype == weth.ETHERTYPE_IPV4
    assert host.counters.tcp_passive_opens == 1
    assert host.tcp.connections_by_state()["established"] == 1


def test_a_raising_callback_resets_only_its_connection() -> None:
    class Broken(Recorder):
        def data_received(self, data: bytes) -> None:
            raise RuntimeError("application bug")

    net = pair()
    listen(net.b, 5000, Broken)
    client = Recorder()
    transport = connect(net.a, (LOCAL_IP, 5000), lambda: client)
    net.run(1, stop=lambda: "made" in client.events)
    transport.write(b"boom")
    net.run(1, stop=lambda: len(client.events) > 1)
    assert isinstance(client.events[-1][1], ConnectionResetError)
    assert net.b.connections_by_state()["listen"] == 1  # the server goes on
    other = Recorder()
    connect(net.a, (LOCAL_IP, 5000), lambda: other)
    net.run(1, stop=lambda: "made" in other.events)
    assert other.events == ["made"]
