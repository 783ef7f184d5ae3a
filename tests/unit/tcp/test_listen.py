"""Listeners: SYN queue and SYN cookies (RFC 4987), accept queue (backlog), overflows,
ports (RFC 6056), and the engine's shutdown and metrics hooks."""

from __future__ import annotations

import dataclasses

import pytest

from netstack.drops import Drop
from netstack.proto.tcp.engine import AddressInUse
from tests.unit.tcp.tcptools import (
    ACK,
    FIN,
    LOCAL_ISN,
    PSH,
    REMOTE_IP,
    REMOTE_ISN,
    RST,
    SYN,
    SYN_SEG,
    RecordingHandler,
    established_passive,
    listen,
    make_harness,
    seg,
    to_us,
)


def syn_from(port: int, **kw):
    return dataclasses.replace(SYN_SEG, sport=port, **kw)


def test_accept_queue_holds_connections_until_accepted() -> None:
    t = make_harness()
    listener = t.engine.listen(80, backlog=2)  # no on_ready: nobody accepts
    for port in (1000, 1001):
        t.send(syn_from(port))
        t.send(seg(seq=REMOTE_ISN + 1, ack=LOCAL_ISN + 1, sport=port, payload=b"hi"))
    assert len(listener.accept_queue) == 2
    t.recv()
    # A third completes its handshake into a full queue: its final ACK is dropped.
    t.send(syn_from(1002))
    assert t.counters.tcp_accept_queue_overflows == 1  # Linux drops the SYN already
    assert t.counters.drops[Drop.TCP_ACCEPT_QUEUE_FULL] == 1
    t.expect_nothing()
    conn = listener.accept()
    assert conn is not None and conn.remote_port == 1000
    assert bytes(conn.rcvbuf.pop()) == b"hi"  # data waited in its receive buffer


def test_final_ack_into_a_full_accept_queue_is_dropped_and_retried() -> None:
    t = make_harness()
    listener = t.engine.listen(80, backlog=1)
    t.send(syn_from(1000))
    t.send(syn_from(1001))  # both in the SYN queue
    t.recv()
    t.send(seg(seq=REMOTE_ISN + 1, ack=LOCAL_ISN + 1, sport=1000))
    t.send(seg(seq=REMOTE_ISN + 1, ack=LOCAL_ISN + 1, sport=1001))  # queue full: dropped
    assert t.counters.tcp_accept_queue_overflows == 1
    assert len(listener.syn_queue) == 1  # still SYN_RECEIVED
    listener.accept()
    t.send(seg(seq=REMOTE_ISN + 1, ack=LOCAL_ISN + 1, sport=1001))  # the client retries
    assert len(listener.accept_queue) == 1


def test_syn_queue_overflow_answers_with_cookies() -> None:
    t = make_harness(syn_backlog=2)
    listener = listen(t, backlog=1)
    for port in (1000, 1001):
        t.send(syn_from(port))
    t.recv()
    t.engine.choose_isn = lambda conn, now: 1 / 0  # a cookie ISN must not come from here
    t.send(syn_from(1002, mss=1400))
    (synack,) = t.recv()
    assert synack.flags == SYN | ACK and synack.ack == REMOTE_ISN + 1
    assert t.counters.tcp_syn_queue_overflows == 1 and t.counters.tcp_syn_cookies_sent == 1
    assert len(listener.syn_queue) == 2  # no state was kept
    # The final ACK carries the cookie back: an established connection from nothing.
    t.send(seg(seq=REMOTE_ISN + 1, ack=synack.seq + 1, sport=1002, payload=b"cookie!"))
    assert t.counters.tcp_syn_cookies_validated == 1
    conn = listener.handlers[0].conn  # type: ignore[attr-defined]
    assert conn.remote_port == 1002 and conn.state.value == "established"
    assert conn.mss == 1300  # the MSS table entry at or below 1400
    assert t.events == [("established",), ("data", b"cookie!")]


def test_cookie_with_timestamps_keeps_window_scale_and_sack() -> None:
    t = make_harness(syn_backlog=1, timestamps=True, sack=True, window_scaling=True,
                     receive_buffer=1 << 20)  # fmt: skip
    listener = listen(t)
    t.send(syn_from(1000))
    t.send(syn_from(1001, wscale=7, sack_perm=True, ts=(4242, 0)))
    (_, synack) = t.recv()
    assert synack.wscale == 5 and synack.sack_perm and synack.ts[1] == 4242
    assert synack.ts[0] & 0x1F == 7 | 0x10  # the peer's options, in our TSval's low bits
    t.send(seg(seq=REMOTE_ISN + 1, ack=synack.seq + 1, sport=1001, window=100,
               ts=(4243, synack.ts[0])))  # fmt: skip
    conn = next(h.conn for h in listener.handlers if h.conn.remote_port == 1001)  # type: ignore[attr-defined]
    assert conn.from_cookie and conn.sack_ok and conn.ts_ok
    assert conn.snd_wscale == 7 and conn.snd_wnd == 100 << 7 and conn.rcv_wscale == 5
    conn.send(b"x")
    t.engine.flush(t.now)
    (out,) = t.recv()
    # Our timestamps go on from the cookie's, not backwards (the peer's PAWS would drop us).
    assert ((out.ts[0] - synack.ts[0]) & 0xFFFFFFFF) < 1 << 31


def test_forged_cookie_gets_a_reset() -> None:
    t = make_harness(syn_backlog=1)
    listen(t)
    t.send(syn_from(1000))
    t.send(syn_from(1001))  # a cookie went out: cookie ACKs are now considered
    t.recv()
    t.send(seg(seq=REMOTE_ISN + 1, ack=12345, sport=1001))
    t.expect(to_us(seg(flags=RST, seq=12345, ack=0, window=0), dport=1001))
    assert t.counters.tcp_syn_cookies_failed == 1
    assert t.counters.drops[Drop.TCP_LISTEN_ACK] == 1


def test_without_cookies_a_full_syn_queue_drops() -> None:
    t = make_harness(syn_backlog=1, syncookies=False)
    listen(t)
    t.send(syn_from(1000))
    t.send(syn_from(1001))
    assert len(t.recv()) == 1
    assert t.counters.drops[Drop.TCP_SYN_QUEUE_FULL] == 1
    assert t.counters.tcp_syn_queue_overflows == 1


def test_listener_rejects_rst_and_segments_without_syn() -> None:
    t = make_harness()
    listen(t)
    t.send(seg(flags=RST, seq=1, ack=0))
    t.send(seg(flags=FIN, seq=1, ack=0))
    t.expect_nothing()
    assert t.counters.drops[Drop.TCP_LISTEN_RST] == 1
    assert t.counters.drops[Drop.TCP_LISTEN_NO_SYN] == 1


def test_listener_close_resets_pending_connections() -> None:
    t = make_harness()
    listener = t.engine.listen(80)
    t.send(syn_from(1000))
    t.recv()
    listener.close()
    (rst,) = t.recv()
    assert rst.flags == RST | ACK and rst.dport == 1000
    assert 80 not in t.engine.listeners
    t.send(syn_from(1001))
    assert t.recv()[0].flags == RST | ACK  # closed port now


def test_ports() -> None:
    t = make_harness()
    t.engine.listen(80)
    with pytest.raises(AddressInUse):
        t.engine.listen(80)
    ports = {t.engine.connect((REMOTE_IP, 443)).local_port for _ in range(50)}
    assert len(ports) == 50 and all(49152 <= p <= 65535 for p in ports)
    assert sorted(ports) != list(range(min(ports), min(ports) + 50))  # RFC 6056: not sequential
    with pytest.raises(AddressInUse):
        t.engine.connect((REMOTE_IP, 443), local_port=next(iter(ports)))
    t.engine.connect((REMOTE_IP, 444), local_port=next(iter(ports)))  # other peer: fine


def test_listen_on_port_zero_takes_a_free_ephemeral_port() -> None:
    """As bind(0) + listen(): a random free port of the ephemeral range, never one another
    listener or one of our connections holds (a SOCKS BIND listens so)."""
    t = make_harness(ephemeral_first=50000, ephemeral_last=50009)  # ten ports, to fill them
    held = t.engine.connect((REMOTE_IP, 443)).local_port
    t.engine.listen(50003)
    ports = {t.engine.listen(0).port for _ in range(8)}
    assert ports == set(range(50000, 50010)) - {held, 50003}
    with pytest.raises(AddressInUse):
        t.engine.listen(0)
    with pytest.raises(ValueError):
        t.engine.listen(-1)


def test_connections_by_state() -> None:
    t, _conn = established_passive()
    t.engine.connect((REMOTE_IP, 443))
    states = t.engine.connections_by_state()
    assert states["listen"] == 1 and states["established"] == 1 and states["syn_sent"] == 1
    assert set(states) == {
        "listen", "syn_sent", "syn_received", "established", "fin_wait_1", "fin_wait_2",
        "close_wait", "closing", "last_ack", "time_wait",
    }  # fmt: skip
    assert t.engine.connection_count() == 2


def test_graceful_shutdown() -> None:
    t, conn = established_passive()
    other = t.engine.connect((REMOTE_IP, 443))
    t.engine.begin_shutdown(t.now)
    out = t.recv()
    assert [s.flags for s in out] == [FIN | ACK]  # FIN to the established one
    assert other.state.value == "closed"  # a half-made connect is just dropped
    assert not t.engine.is_quiet()
    with pytest.raises(OSError):
        t.engine.listen(81)
    t.send(syn_from(2000))  # no more listeners
    assert t.recv()[0].flags == RST | ACK
    t.send(seg(flags=FIN | ACK, seq=REMOTE_ISN + 1, ack=LOCAL_ISN + 2))
    assert conn.state.value == "time_wait"
    assert t.engine.is_quiet()  # TIME_WAIT does not hold shutdown up


def test_abort_resets_what_is_left() -> None:
    t, conn = established_passive()
    t.engine.begin_shutdown(t.now)
    t.recv()
    t.engine.abort(t.now)
    (rst,) = t.recv()
    assert rst.flags == RST | ACK
    assert conn.state.value == "closed" and t.engine.is_quiet()


def test_accept_outside_the_flush_point_delivers_what_waited() -> None:
    """F1: accept() from anywhere (a loop timer, the blocking facade) must get the events
    that arrived while the connection sat in the accept queue: the engine flushes the
    connection at the next loop turn (next_deadline() is "now")."""
    t = make_harness()
    listener = t.engine.listen(80)  # no on_ready: connections wait to be accepted
    t.send(SYN_SEG)
    t.recv()
    t.send(seg(seq=REMOTE_ISN + 1, ack=LOCAL_ISN + 1))
    t.send(seg(flags=ACK | PSH, seq=REMOTE_ISN + 1, ack=LOCAL_ISN + 1, payload=b"request"))
    t.advance(0.040)  # the delayed ACK
    t.expect(to_us(seg(seq=LOCAL_ISN + 1, ack=REMOTE_ISN + 8, window=65528)))
    assert t.engine.next_deadline() is None  # nothing more to do until the accept
    conn = listener.accept()  # from a loop timer: outside the engine's flush point
    assert conn is not None
    conn.handler = RecordingHandler(conn, t.events)
    assert t.engine.next_deadline() == t.now  # the loop polls at once
    t.engine.poll(t.now)
    assert t.events == [("established",), ("data", b"request")]
    conn.send(b"answer")
    t.engine.poll(t.now)
    t.expect(
        to_us(
            seg(
                flags=ACK | PSH,
                seq=LOCAL_ISN + 1,
                ack=REMOTE_ISN + 8,
                window=65528,
                payload=b"answer",
            )
        )
    )
