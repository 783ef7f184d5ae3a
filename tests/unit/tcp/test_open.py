"""Opening: passive and active opens, options, simultaneous open, SYN retransmission and
retry limits, refusals (RST, ICMP), RSTs from closed ports (RFC 9293 3.10.7.1/3.10.7.3)."""

from __future__ import annotations

import dataclasses
import errno

import pytest

from netstack.drops import Drop
from netstack.proto.tcp import invariants
from netstack.proto.tcp.config import TcpConfig
from netstack.proto.tcp.connection import Connection
from netstack.wire import icmp as wicmp
from netstack.wire import ipv4 as wipv4
from netstack.wire import tcp as wtcp
from tests.unit.tcp.tcptools import (
    ACK,
    LOCAL_IP,
    LOCAL_ISN,
    LOCAL_PORT,
    MSS,
    REMOTE_IP,
    REMOTE_ISN,
    REMOTE_PORT,
    RST,
    SYN,
    SYN_SEG,
    SYNACK_SEG,
    RecordingHandler,
    Seg,
    established_active,
    established_passive,
    ip_header,
    listen,
    make_harness,
    seg,
    to_us,
)

SYN_OUT = to_us(seg(flags=SYN, seq=LOCAL_ISN, ack=0, mss=MSS))


def connect(t, **kw):
    conn = t.engine.connect((REMOTE_IP, REMOTE_PORT), local_port=LOCAL_PORT, **kw)
    conn.handler = RecordingHandler(conn, t.events)
    t.engine.flush(t.now)
    return conn


# -- passive ------------------------------------------------------------------------------------
def test_passive_open() -> None:
    t = make_harness()
    listener = listen(t)
    t.send(SYN_SEG)
    t.expect(SYNACK_SEG)
    assert t.engine.connections_by_state()["syn_received"] == 1
    assert t.events == [] and t.counters.tcp_passive_opens == 1
    t.send(seg(seq=REMOTE_ISN + 1, ack=LOCAL_ISN + 1))
    t.expect_nothing()
    assert t.events == [("established",)]
    conn = listener.handlers[0].conn  # type: ignore[attr-defined]
    assert conn.state.value == "established"
    assert t.engine.connections_by_state()["established"] == 1


def test_passive_open_with_data_on_the_final_ack() -> None:
    t = make_harness()
    listen(t)
    t.send(SYN_SEG)
    t.recv()
    t.send(seg(seq=REMOTE_ISN + 1, ack=LOCAL_ISN + 1, payload=b"hello"))
    assert t.events == [("established",), ("data", b"hello")]
    t.expect_nothing()  # the ACK is delayed
    t.advance(0.040)
    # The right edge stays put: 5 bytes is no reason to move it (receiver SWS avoidance).
    t.expect(to_us(seg(seq=LOCAL_ISN + 1, ack=REMOTE_ISN + 6, window=65530)))


def test_synack_echoes_only_the_options_the_syn_offered() -> None:
    t = make_harness(TcpConfig(receive_buffer=1 << 20, congestion_control="reno"))
    listen(t)
    t.send(dataclasses.replace(SYN_SEG, wscale=7, sack_perm=True, ts=(777, 0)))
    (synack,) = t.recv()
    assert synack.mss == MSS and synack.wscale == 5  # 65535 << 5 >= 1 MiB
    assert synack.sack_perm and synack.ts is not None and synack.ts[1] == 777
    assert synack.window == 65535  # never scaled in a SYN
    t.send(SYN_SEG.__class__(flags=SYN, seq=REMOTE_ISN, sport=REMOTE_PORT + 1, mss=1000))
    (plain,) = t.recv()
    assert (plain.wscale, plain.sack_perm, plain.ts) == (None, False, None)


def test_negotiated_mss_window_scale_and_timestamps_are_used() -> None:
    t = make_harness(TcpConfig(receive_buffer=1 << 20, congestion_control="reno"))
    listener = listen(t)
    t.send(dataclasses.replace(SYN_SEG, mss=1000, wscale=2, sack_perm=True, ts=(777, 0)))
    (synack,) = t.recv()
    t.send(seg(seq=REMOTE_ISN + 1, ack=LOCAL_ISN + 1, window=1000, ts=(778, synack.ts[1])))
    conn = listener.handlers[0].conn  # type: ignore[attr-defined]
    assert conn.snd_wnd == 4000  # 1000 << 2
    assert conn.mss == 1000 - 12  # the peer's MSS minus the timestamp option
    assert conn.sack_ok and conn.ts_ok and conn.ts_recent == 778
    conn.send(b"x" * 3000)
    t.engine.flush(t.now)
    sizes = [len(s.payload) for s in t.recv()]
    assert sizes == [988, 988, 988, 36]


def test_missing_mss_option_means_536() -> None:
    t = make_harness()
    listener = listen(t)
    t.send(dataclasses.replace(SYN_SEG, mss=None))
    t.recv()
    t.send(seg(seq=REMOTE_ISN + 1, ack=LOCAL_ISN + 1))
    assert listener.handlers[0].conn.mss == 536  # type: ignore[attr-defined]


def test_retransmitted_syn_gets_the_synack_again() -> None:
    t = make_harness()
    listen(t)
    t.send(SYN_SEG)
    t.expect(SYNACK_SEG)
    t.send(SYN_SEG)
    t.expect(SYNACK_SEG)
    assert t.counters.drops[Drop.TCP_SYN_RETRANSMIT] == 1


def test_duplicate_syn_then_final_ack_in_one_batch_sends_no_synack() -> None:
    """Seen in checked mode under 5 % duplication (test_impaired.py, duplicate 5%): the
    relay sends a SYN twice back to back; our read loop took the first alone (SYN-ACK), then
    the copy and the peer's final ACK in one batch. The copy re-armed the SYN-ACK for the
    flush (the peer's SYN again: ours was lost?), the ACK moved us to ESTABLISHED, and the
    flush sent a SYN-ACK at ISS, below SND.UNA (RFC 9293 3.3.1). The ACK proves the peer has
    our SYN-ACK: the pending one is moot. Linux answers the copy at once (tcp_check_req:
    inet_rtx_syn_ack, still in SYN_RECEIVED), never a SYN-ACK after the handshake."""
    t = make_harness()
    checker = invariants.attach(t.engine, raise_on_violation=False)
    listener = listen(t)
    t.send(SYN_SEG)
    t.expect(SYNACK_SEG)
    t.send_batch(SYN_SEG, seg(seq=REMOTE_ISN + 1, ack=LOCAL_ISN + 1))
    conn = listener.handlers[0].conn  # type: ignore[attr-defined]
    assert conn.state.value == "established"
    t.expect_nothing()  # no SYN-ACK after the handshake, and no ACK is owed
    assert t.counters.drops[Drop.TCP_SYN_RETRANSMIT] == 1
    assert conn.recovery.rto_at is None  # nothing in flight: no retransmission timer
    # data in the same batch is acknowledged as usual (every second full segment at once)
    t.send_batch(
        SYN_SEG,
        seg(seq=REMOTE_ISN + 1, ack=LOCAL_ISN + 1, payload=b"a" * MSS),
        seg(seq=REMOTE_ISN + 1 + MSS, ack=LOCAL_ISN + 1, payload=b"b" * MSS),
    )
    t.expect(to_us(seg(seq=LOCAL_ISN + 1, ack=REMOTE_ISN + 1 + 2 * MSS)))
    assert checker.violations == []


def test_duplicate_syn_then_ack_in_simultaneous_open_sends_no_synack() -> None:
    """The same in a simultaneous open (SYN_SENT -> SYN_RECEIVED): a copy of the peer's SYN
    and the ACK of ours in one batch leave nothing to send."""
    t = make_harness()
    checker = invariants.attach(t.engine, raise_on_violation=False)
    conn = connect(t)
    t.expect(SYN_OUT)
    syn = seg(flags=SYN, seq=REMOTE_ISN, ack=0, mss=MSS)
    t.send(syn)
    t.expect(to_us(seg(flags=SYN | ACK, seq=LOCAL_ISN, ack=REMOTE_ISN + 1, mss=MSS)))
    t.send_batch(syn, seg(seq=REMOTE_ISN + 1, ack=LOCAL_ISN + 1))
    assert conn.state.value == "established"
    t.expect_nothing()
    assert checker.violations == []


def test_synack_is_retransmitted_with_backoff_then_given_up() -> None:
    t = make_harness(synack_retries=2)
    listen(t)
    t.send(SYN_SEG)
    t.recv()
    start = t.now
    t.run_until(start + 20)
    times = [round(now - start, 3) for now, s in t.recv_timed() if s == SYNACK_SEG]
    assert times == [1.0, 3.0]  # RTO 1 s, then 2 s
    assert t.engine.connections_by_state()["syn_received"] == 0
    assert t.events == []  # never accepted, nobody to tell


def test_bad_ack_in_syn_received_gets_a_reset() -> None:
    t = make_harness()
    listen(t)
    t.send(SYN_SEG)
    t.recv()
    t.send(seg(seq=REMOTE_ISN + 1, ack=LOCAL_ISN + 99))
    t.expect(to_us(seg(flags=RST, seq=LOCAL_ISN + 99, ack=0, window=0)))
    assert t.engine.connections_by_state()["syn_received"] == 1


def test_rst_in_syn_received_forgets_a_passive_connection() -> None:
    t = make_harness()
    listen(t)
    t.send(SYN_SEG)
    t.recv()
    t.send(seg(flags=RST, seq=REMOTE_ISN + 1, ack=0))
    assert t.engine.connections_by_state()["syn_received"] == 0
    assert t.counters.tcp_resets_rx == 1
    t.send(seg(seq=REMOTE_ISN + 1, ack=LOCAL_ISN + 1))  # now to the listener: no cookie
    t.expect(to_us(seg(flags=RST, seq=LOCAL_ISN + 1, ack=0, window=0)))


# -- active -------------------------------------------------------------------------------------
def test_active_open() -> None:
    t = make_harness()
    conn = connect(t)
    t.expect(SYN_OUT)
    assert conn.state.value == "syn_sent" and t.counters.tcp_active_opens == 1
    t.send(seg(flags=SYN | ACK, seq=REMOTE_ISN, ack=LOCAL_ISN + 1, mss=MSS))
    t.expect(to_us(seg(seq=LOCAL_ISN + 1, ack=REMOTE_ISN + 1)))
    assert conn.state.value == "established"
    assert t.events == [("established",)]


def test_active_open_offers_every_option() -> None:
    t = make_harness(TcpConfig(receive_buffer=1 << 20))
    conn = connect(t)
    (syn,) = t.recv()
    assert syn.flags == SYN and syn.mss == MSS and syn.wscale == 5 and syn.sack_perm
    assert syn.ts is not None and syn.ts[1] == 0
    assert conn.state.value == "syn_sent"


def test_data_written_before_the_handshake_goes_after_it() -> None:
    t = make_harness()
    conn = connect(t)
    t.recv()
    assert conn.send(b"early") == 5
    t.engine.flush(t.now)
    t.expect_nothing()
    t.send(seg(flags=SYN | ACK, seq=REMOTE_ISN, ack=LOCAL_ISN + 1, mss=MSS))
    t.expect(to_us(seg(flags=ACK | 0x08, seq=LOCAL_ISN + 1, ack=REMOTE_ISN + 1, payload=b"early")))


def test_syn_retransmission_backs_off_and_times_out() -> None:
    t = make_harness(syn_retries=3)
    connect(t)
    t.expect(SYN_OUT)
    start = t.now
    sent = []
    t.run_until(start + 100)
    for s in t.recv():
        assert s == SYN_OUT
    sent = t.counters.tcp_retransmitted_segments
    assert sent == 3 and t.counters.tcp_timeouts == 3
    ((_, exc),) = [e for e in t.events if e[0] == "closed"]
    assert isinstance(exc, TimeoutError) and exc.errno == errno.ETIMEDOUT
    assert ("established",) not in t.events


def test_syn_retransmission_times() -> None:
    t = make_harness(syn_retries=6)
    connect(t)
    t.recv()
    start = t.now
    t.run_until(start + 200)
    times = [now - start for now, _ in t.recv_timed()]
    assert times == [1.0, 3.0, 7.0, 15.0, 31.0, 63.0]  # 1, 2, 4, 8, 16, 32 s apart


def test_rto_is_three_seconds_after_a_retransmitted_syn() -> None:
    """RFC 6298 5.7: no RTT sample from the handshake and a SYN was lost -> RTO = 3 s."""
    t = make_harness()
    conn = connect(t)
    t.recv()
    t.advance(1.0)
    t.recv()  # SYN again
    t.send(seg(flags=SYN | ACK, seq=REMOTE_ISN, ack=LOCAL_ISN + 1, mss=MSS))
    t.recv()
    assert conn.recovery.rtt.srtt is None and conn.recovery.rtt.rto == 3.0


def test_rtt_is_sampled_from_the_handshake() -> None:
    t = make_harness()
    conn = connect(t)
    t.recv()
    t.now += 0.05
    t.send(seg(flags=SYN | ACK, seq=REMOTE_ISN, ack=LOCAL_ISN + 1, mss=MSS))
    assert conn.recovery.rtt.srtt == pytest.approx(0.05)
    # Linux's RTO: SRTT + max(4 * RTTVAR, 200 ms) = 0.05 + max(0.1, 0.2)
    assert conn.recovery.rtt.rto == pytest.approx(0.25)


def test_rst_acking_our_syn_is_connection_refused() -> None:
    t = make_harness()
    conn = connect(t)
    t.recv()
    t.send(seg(flags=RST | ACK, seq=0, ack=LOCAL_ISN + 1))
    assert conn.state.value == "closed"
    ((_, exc),) = t.events
    assert isinstance(exc, ConnectionRefusedError) and exc.errno == errno.ECONNREFUSED
    assert t.counters.tcp_resets_rx == 1
    t.expect_nothing()


def test_rst_without_ack_in_syn_sent_is_ignored() -> None:
    """RFC 5961 3.2 / RFC 9293: a RST in SYN_SENT counts only if it acknowledges the SYN."""
    t = make_harness()
    conn = connect(t)
    t.recv()
    t.send(seg(flags=RST, seq=REMOTE_ISN, ack=0))
    assert conn.state.value == "syn_sent"
    t.send(seg(flags=RST | ACK, seq=0, ack=LOCAL_ISN + 5))  # unacceptable ACK: no reset
    assert conn.state.value == "syn_sent"
    t.expect_nothing()


def test_unacceptable_ack_in_syn_sent_gets_a_reset() -> None:
    t = make_harness()
    conn = connect(t)
    t.recv()
    t.send(seg(flags=SYN | ACK, seq=REMOTE_ISN, ack=LOCAL_ISN + 7))
    t.expect(to_us(seg(flags=RST, seq=LOCAL_ISN + 7, ack=0, window=0)))
    assert conn.state.value == "syn_sent"
    assert t.counters.drops[Drop.TCP_BAD_ACK] == 1


def test_simultaneous_open() -> None:
    """RFC 9293 figure 7: both send SYN, both go to SYN_RECEIVED, then ESTABLISHED."""
    t = make_harness()
    conn = connect(t)
    t.expect(SYN_OUT)
    t.send(seg(flags=SYN, seq=REMOTE_ISN, ack=0, mss=MSS))
    assert conn.state.value == "syn_received"
    t.expect(to_us(seg(flags=SYN | ACK, seq=LOCAL_ISN, ack=REMOTE_ISN + 1, mss=MSS)))
    t.send(seg(flags=SYN | ACK, seq=REMOTE_ISN, ack=LOCAL_ISN + 1, mss=MSS))
    # Its SYN-ACK repeats a SYN we have: RFC 5961 challenge ACK (which also acks its SYN).
    t.expect(to_us(seg(seq=LOCAL_ISN + 1, ack=REMOTE_ISN + 1)))
    t.send(seg(seq=REMOTE_ISN + 1, ack=LOCAL_ISN + 1))
    assert conn.state.value == "established"
    assert t.events == [("established",)]


def test_icmp_port_unreachable_refuses_a_connection_attempt() -> None:
    t = make_harness()
    conn = connect(t)
    (syn,) = t.recv()
    inner = wipv4.Ipv4Header(20, 0, 40, 0, False, False, 0, 64, 6, 0, LOCAL_IP, REMOTE_IP)
    ports = LOCAL_PORT.to_bytes(2, "big") + REMOTE_PORT.to_bytes(2, "big")
    payload = memoryview(ports + LOCAL_ISN.to_bytes(4, "big"))  # what ICMP quotes: 8 bytes
    t.engine.receive_error(3, wicmp.CODE_HOST_UNREACHABLE, inner, payload, t.now)
    assert conn.state.value == "syn_sent" and conn.soft_error is not None  # soft error
    wrong = memoryview(ports + (LOCAL_ISN + 9).to_bytes(4, "big"))
    t.engine.receive_error(3, wicmp.CODE_PORT_UNREACHABLE, inner, wrong, t.now)
    assert conn.state.value == "syn_sent"  # RFC 5927: not our segment's sequence number
    assert t.counters.drops[Drop.TCP_ICMP_OUT_OF_WINDOW] == 1
    good = memoryview(ports + LOCAL_ISN.to_bytes(4, "big"))
    t.engine.receive_error(3, wicmp.CODE_PORT_UNREACHABLE, inner, good, t.now)
    t.engine.flush(t.now)
    assert conn.state.value == "closed"
    assert isinstance(t.events[-1][1], ConnectionRefusedError)
    assert syn.flags == SYN


def test_soft_icmp_error_is_reported_when_the_attempt_times_out() -> None:
    t = make_harness(syn_retries=1)
    conn = connect(t)
    t.recv()
    inner = wipv4.Ipv4Header(20, 0, 40, 0, False, False, 0, 64, 6, 0, LOCAL_IP, REMOTE_IP)
    ports = LOCAL_PORT.to_bytes(2, "big") + REMOTE_PORT.to_bytes(2, "big")
    good = memoryview(ports + LOCAL_ISN.to_bytes(4, "big"))
    t.engine.receive_error(3, wicmp.CODE_HOST_UNREACHABLE, inner, good, t.now)
    t.run_until(t.now + 10)
    assert conn.state.value == "closed"
    exc = t.events[-1][1]
    assert isinstance(exc, TimeoutError) and "No route to host" in str(exc)


# -- closed ports -------------------------------------------------------------------------------
def test_syn_to_a_closed_port_gets_rst_ack() -> None:
    t = make_harness()
    t.send(dataclasses.replace(SYN_SEG, dport=81))
    t.expect(to_us(seg(flags=RST | ACK, seq=0, ack=REMOTE_ISN + 1, window=0), sport=81))
    assert t.counters.drops[Drop.TCP_NO_LISTENER] == 1
    assert t.counters.tcp_resets_tx == 1


def test_ack_to_a_closed_port_gets_rst_at_its_ack() -> None:
    t = make_harness()
    t.send(seg(seq=5, ack=777, payload=b"data", dport=81))
    t.expect(to_us(seg(flags=RST, seq=777, ack=0, window=0), sport=81))


def test_data_and_fin_without_ack_count_in_the_rst_ack() -> None:
    t = make_harness()
    t.send(seg(flags=0x01, seq=5, ack=0, payload=b"data", dport=81))
    t.expect(to_us(seg(flags=RST | ACK, seq=0, ack=10, window=0), sport=81))


def test_rst_to_a_closed_port_is_not_answered() -> None:
    t = make_harness()
    t.send(seg(flags=RST, seq=5, ack=0, dport=81))
    t.expect_nothing()
    assert t.counters.drops[Drop.TCP_NO_LISTENER] == 1


def test_segment_to_a_broadcast_address_is_dropped() -> None:
    t = make_harness()
    listen(t)
    t.send(SYN_SEG, dst=wipv4.ip_from_str("192.0.2.255"))
    t.expect_nothing()
    assert t.counters.drops[Drop.TCP_NOT_UNICAST] == 1


def test_the_fixtures() -> None:
    _, conn = established_passive()
    assert conn.state.value == "established"
    _, conn = established_active()
    assert conn.state.value == "established"


def test_the_syn_ack_timer_is_gone_once_established(monkeypatch) -> None:
    """Issue 11: the SYN-ACK's retransmission timer, stopped by the handshake, left its entry
    in the engine's timer heap: the loop woke for it, and the wake-up ran an output pass on
    the established connection (which sent a window update). A stale entry is no deadline."""
    t, conn = established_passive()
    assert conn.next_timer() is None
    assert t.engine.next_deadline() is None  # nothing to wake up for
    passes = []
    real_output = Connection.output
    monkeypatch.setattr(
        Connection, "output", lambda c, now: (passes.append(now), real_output(c, now))
    )
    t.run_until(t.now + 5.0)  # past the SYN-ACK's RTO (1 s)
    assert passes == [] and t.recv() == []


def test_per_connection_buffer_sizes_set_the_window_and_its_scale() -> None:
    """SO_RCVBUF on a listener (inherited, Linux-like) sets the SYN-ACK window and the scale
    offered; on an active open set before the SYN goes out, the scale in the SYN."""
    t = make_harness(window_scaling=True, receive_buffer=65535)
    listener = t.engine.listen(LOCAL_PORT, None, None)
    listener.set_buffer_sizes(send=100_000, receive=8192)
    t.send(dataclasses.replace(SYN_SEG, wscale=7))
    t.expect(dataclasses.replace(SYNACK_SEG, window=8192, wscale=0))
    conn = next(iter(listener.syn_queue.values()))
    assert (conn.sndbuf.capacity, conn.rcv_buf_size) == (100_000, 8192)
    t2 = make_harness(window_scaling=True, receive_buffer=65535)
    active = t2.engine.connect((REMOTE_IP, REMOTE_PORT), local_port=LOCAL_PORT)
    active.set_buffer_sizes(receive=1 << 20)  # 0xFFFF << 4 < 1 MB: scale 5
    t2.engine.flush(t2.now)
    t2.expect(to_us(Seg(flags=SYN, seq=LOCAL_ISN, ack=0, mss=MSS, wscale=5)))
    active.set_buffer_sizes(send=1)  # at least Linux's SOCK_MIN_SNDBUF
    assert active.sndbuf.capacity == 4608
    assert active.send(b"z" * 10_000) == 4608


def test_a_synack_owed_to_a_syn_copy_is_moot_once_the_ack_completes_the_handshake() -> None:
    """A copy of the peer's SYN and its handshake ACK in one receive batch (a duplicating
    path): the SYN asks for the SYN-ACK again at the flush point, but by then the ACK has made
    the connection ESTABLISHED, and a SYN-ACK now would be a segment below SND.UNA (the
    checked mode's "never retransmit below SND.UNA"; seen in test_impaired's duplicate 5 %)."""
    t = make_harness()
    listener = listen(t)
    t.send(SYN_SEG)
    t.expect(SYNACK_SEG)
    for s in (SYN_SEG, seg(seq=REMOTE_ISN + 1, ack=LOCAL_ISN + 1)):  # one batch, one flush
        data = wtcp.build(
            REMOTE_IP, LOCAL_IP, s.sport, s.dport, s.seq, s.ack, s.flags, s.window,
            options=s.options(),
        )  # fmt: skip
        t.engine.receive(ip_header(REMOTE_IP, LOCAL_IP, len(data)), memoryview(data),
                         memoryview(data), t.now)  # fmt: skip
    t.engine.flush(t.now)
    conn = listener.handlers[0].conn  # type: ignore[attr-defined]
    assert conn.state.value == "established"
    t.expect_nothing()
    assert t.counters.drops[Drop.TCP_SYN_RETRANSMIT] == 1
