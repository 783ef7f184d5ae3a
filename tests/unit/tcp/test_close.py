"""Closing: both orders, simultaneous close, half-close, FIN retransmission, TIME_WAIT (2*MSL,
retransmitted FINs, RFC 6191 reuse), orphaned FIN_WAIT_2, abort, close with unread data."""

from __future__ import annotations

import dataclasses

from netstack.drops import Drop
from netstack.proto.tcp.connection import Connection
from tests.unit.tcp.tcptools import (
    ACK,
    FIN,
    LOCAL_ISN,
    PSH,
    REMOTE_ISN,
    RST,
    SYN,
    SYN_SEG,
    SYNACK_SEG,
    Harness,
    established_passive,
    listen,
    make_harness,
    seg,
    to_us,
)

L, R = LOCAL_ISN + 1, REMOTE_ISN + 1  # the first sequence numbers after the SYNs


def states(t: Harness) -> dict[str, int]:
    return {k: v for k, v in t.engine.connections_by_state().items() if v and k != "listen"}


def test_active_close() -> None:
    t, conn = established_passive()
    conn.close()
    t.engine.flush(t.now)
    t.expect(to_us(seg(flags=FIN | ACK, seq=L, ack=R)))
    assert conn.state.value == "fin_wait_1"
    t.send(seg(seq=R, ack=L + 1))
    assert conn.state.value == "fin_wait_2"
    assert t.events == [("closed", None)]  # close(): done once our FIN is acknowledged
    t.send(seg(flags=FIN | ACK, seq=R, ack=L + 1))
    t.expect(to_us(seg(seq=L + 1, ack=R + 1, window=65534)))
    assert conn.state.value == "time_wait"
    assert states(t) == {"time_wait": 1}
    t.advance(59.9)
    assert conn.state.value == "time_wait"
    t.advance(0.1)
    assert conn.state.value == "closed" and states(t) == {}
    assert t.events == [("closed", None)]
    t.expect_nothing()


def test_fin_and_ack_in_one_segment_go_straight_to_time_wait() -> None:
    t, conn = established_passive()
    conn.close()
    t.engine.flush(t.now)
    t.recv()
    t.send(seg(flags=FIN | ACK, seq=R, ack=L + 1))
    assert conn.state.value == "time_wait"
    t.expect(to_us(seg(seq=L + 1, ack=R + 1, window=65534)))


def test_passive_close() -> None:
    t, conn = established_passive()
    t.send(seg(flags=FIN | ACK, seq=R, ack=L))
    t.expect(to_us(seg(seq=L, ack=R + 1, window=65534)))  # a FIN is acknowledged at once
    assert conn.state.value == "close_wait"
    assert t.events == [("eof",)]
    conn.close()
    t.engine.flush(t.now)
    t.expect(to_us(seg(flags=FIN | ACK, seq=L, ack=R + 1, window=65534)))
    assert conn.state.value == "last_ack"
    t.send(seg(seq=R + 1, ack=L + 1))
    assert conn.state.value == "closed"
    assert t.events == [("eof",), ("closed", None)]
    assert states(t) == {}


def test_simultaneous_close() -> None:
    t, conn = established_passive()
    conn.close()
    t.engine.flush(t.now)
    t.expect(to_us(seg(flags=FIN | ACK, seq=L, ack=R)))
    t.send(seg(flags=FIN | ACK, seq=R, ack=L))  # its FIN crossed ours
    assert conn.state.value == "closing"
    t.expect(to_us(seg(seq=L + 1, ack=R + 1, window=65534)))
    t.send(seg(seq=R + 1, ack=L + 1))
    assert conn.state.value == "time_wait"


def test_half_close_keeps_receiving() -> None:
    t, conn = established_passive()
    conn.shutdown_write()
    t.engine.flush(t.now)
    t.expect(to_us(seg(flags=FIN | ACK, seq=L, ack=R)))
    t.send(seg(seq=R, ack=L + 1, payload=b"still talking"))
    assert conn.state.value == "fin_wait_2"
    assert t.events == [("data", b"still talking")]
    t.send(seg(flags=FIN | ACK, seq=R + 13, ack=L + 1))
    assert t.events[-2:] == [("eof",), ("closed", None)]
    assert conn.state.value == "time_wait"


def test_half_close_by_the_peer_keeps_sending() -> None:
    t, conn = established_passive()
    t.send(seg(flags=FIN | ACK, seq=R, ack=L))
    t.recv()
    conn.send(b"reply")
    t.engine.flush(t.now)
    t.expect(to_us(seg(flags=ACK | PSH, seq=L, ack=R + 1, window=65534, payload=b"reply")))
    assert conn.state.value == "close_wait"


def test_data_then_fin_leaves_after_the_data() -> None:
    t, conn = established_passive()
    conn.send(b"last words")
    conn.close()
    t.engine.flush(t.now)
    t.expect(to_us(seg(flags=ACK | PSH | FIN, seq=L, ack=R, payload=b"last words")))
    assert conn.state.value == "fin_wait_1"


def test_fin_is_retransmitted() -> None:
    t, conn = established_passive()
    conn.close()
    t.engine.flush(t.now)
    fin = to_us(seg(flags=FIN | ACK, seq=L, ack=R))
    t.expect(fin)
    t.advance(1.0)  # no RTT sample yet: RTO 1 s
    t.expect(fin)
    t.advance(2.0)
    t.expect(fin)
    assert t.counters.tcp_retransmitted_segments == 2


def test_time_wait_acks_a_retransmitted_fin_and_restarts_its_timer() -> None:
    t, conn = established_passive()
    conn.close()
    t.engine.flush(t.now)
    t.recv()
    t.send(seg(flags=FIN | ACK, seq=R, ack=L + 1))
    t.recv()
    t.advance(30)
    t.send(seg(flags=FIN | ACK, seq=R, ack=L + 1))  # our ACK was lost
    t.expect(to_us(seg(seq=L + 1, ack=R + 1, window=65534)))
    t.advance(59)
    assert conn.state.value == "time_wait"  # 2*MSL counts again from the FIN
    t.advance(1)
    assert conn.state.value == "closed"


def test_time_wait_length_is_configurable() -> None:
    t, conn = established_passive(time_wait=5.0)
    conn.close()
    t.engine.flush(t.now)
    t.send(seg(flags=FIN | ACK, seq=R, ack=L + 1))
    t.advance(5.0)
    assert conn.state.value == "closed"


def _time_wait(**kw) -> tuple[Harness, Connection]:
    t, conn = established_passive(**kw)
    conn.close()
    t.engine.flush(t.now)
    t.recv()
    fin = seg(flags=FIN | ACK, seq=R, ack=L + 1)
    if conn.ts_ok:
        fin = dataclasses.replace(fin, ts=(1000, 0))
    t.send(fin)
    t.recv()
    assert conn.state.value == "time_wait"
    return t, conn


def test_syn_with_higher_sequence_reopens_time_wait() -> None:
    """RFC 1122 4.2.2.13 / RFC 6191: a new SYN beyond the old sequence space reuses the tuple,
    with an ISN beyond the old one's."""
    t, old = _time_wait()
    t.engine.choose_isn = lambda conn, now: 5  # "behind" the old incarnation
    t.send(dataclasses.replace(SYN_SEG, seq=R + 100000))
    (synack,) = t.recv()
    assert synack.flags == SYN | ACK and synack.ack == R + 100001
    assert synack.seq == (L + 1 + 65535 + 2) & 0xFFFFFFFF  # past the old SND.NXT
    assert old.state.value == "closed"
    assert states(t) == {"syn_received": 1}


def test_old_syn_does_not_reopen_time_wait() -> None:
    t, old = _time_wait()
    t.send(dataclasses.replace(SYN_SEG, seq=REMOTE_ISN - 100))
    assert old.state.value == "time_wait"
    (ack,) = t.recv()
    assert ack.flags == ACK and ack.ack == R + 1  # RFC 5961 4.2 challenge ACK
    assert t.counters.drops[Drop.TCP_SYN_CHALLENGED] == 1


def test_syn_with_newer_timestamp_reopens_time_wait() -> None:
    t = make_harness(timestamps=True)
    listen(t)
    t.send(dataclasses.replace(SYN_SEG, ts=(900, 0)))
    (synack,) = t.recv()
    conn = t.engine.conns[next(iter(t.engine.conns))]
    t.send(seg(seq=R, ack=L, ts=(901, synack.ts[1])))
    conn.close()
    t.engine.flush(t.now)
    t.recv()
    t.send(seg(flags=FIN | ACK, seq=R, ack=L + 1, ts=(902, 0)))
    assert conn.state.value == "time_wait"
    t.recv()
    # Same (old) sequence number, older timestamp: no.
    t.send(dataclasses.replace(SYN_SEG, ts=(800, 0)))
    assert conn.state.value == "time_wait"
    t.recv()
    # Same old sequence number but a newer timestamp: yes (RFC 6191).
    t.send(dataclasses.replace(SYN_SEG, ts=(5000, 0)))
    assert conn.state.value == "closed"
    assert t.recv()[0].flags == SYN | ACK


def test_rst_in_time_wait_closes_it() -> None:
    t, conn = _time_wait()
    t.send(seg(flags=RST, seq=R + 1, ack=0))
    assert conn.state.value == "closed"


def test_orphaned_fin_wait_2_times_out_with_a_reset() -> None:
    t, conn = established_passive(fin_wait2_timeout=30.0)
    conn.close()
    t.engine.flush(t.now)
    t.recv()
    t.send(seg(seq=R, ack=L + 1))
    assert conn.state.value == "fin_wait_2"
    t.advance(30.0)
    assert conn.state.value == "closed"
    t.expect(to_us(seg(flags=RST | ACK, seq=L + 1, ack=R, window=0)))


def test_half_closed_fin_wait_2_waits_for_the_peer() -> None:
    t, conn = established_passive(fin_wait2_timeout=30.0)
    conn.shutdown_write()
    t.engine.flush(t.now)
    t.send(seg(seq=R, ack=L + 1))
    t.advance(1000.0)
    assert conn.state.value == "fin_wait_2"  # the application still reads


def test_abort_sends_rst() -> None:
    t, conn = established_passive()
    conn.send(b"unsent")
    conn.abort()
    t.expect(to_us(seg(flags=RST | ACK, seq=L, ack=R, window=0)))
    t.engine.flush(t.now)
    assert conn.state.value == "closed" and t.events == [("closed", None)]
    assert t.counters.tcp_resets_tx == 1
    t.send(seg(seq=R, ack=L, payload=b"late"))  # the tuple is free: RST as a closed port
    t.expect(to_us(seg(flags=RST, seq=L, ack=0, window=0)))


def test_close_with_unread_data_resets() -> None:
    """RFC 1122 4.2.2.13: closing with unread data aborts."""
    t, conn = established_passive()
    conn.pause_reading()
    t.send(seg(seq=R, ack=L, payload=b"unread"))
    t.recv()
    conn.close()
    t.expect(to_us(seg(flags=RST | ACK, seq=L, ack=R + 6, window=0)))
    assert conn.state.value == "closed"


def test_data_after_close_resets() -> None:
    t, conn = established_passive()
    conn.close()
    t.engine.flush(t.now)
    t.recv()
    t.send(seg(seq=R, ack=L + 1, payload=b"too late"))
    t.expect(to_us(seg(flags=RST | ACK, seq=L + 1, ack=R, window=0)))
    assert conn.state.value == "closed"
    assert t.counters.drops[Drop.TCP_DATA_AFTER_CLOSE] == 1


def test_data_after_the_peer_fin_is_ignored() -> None:
    t, conn = established_passive()
    t.send(seg(flags=FIN | ACK, seq=R, ack=L))
    t.recv()
    t.send(seg(seq=R + 1, ack=L, payload=b"nonsense"))
    assert ("data", b"nonsense") not in t.events
    assert conn.rcv_nxt == R + 1


def test_close_in_syn_sent_just_forgets() -> None:
    t = make_harness()
    conn = t.engine.connect((0xC0000201, 1234), local_port=5555)
    t.engine.flush(t.now)
    t.recv()
    conn.close()
    t.engine.flush(t.now)
    t.expect_nothing()
    assert conn.state.value == "closed"


def test_shutdown_before_established_sends_fin_after_the_handshake() -> None:
    t = make_harness()
    conn = t.engine.connect((0xC0000201, 49500), local_port=80)
    t.engine.flush(t.now)
    t.recv()
    conn.send(b"q")
    conn.shutdown_write()
    t.send(seg(flags=SYN | ACK, seq=REMOTE_ISN, ack=L, mss=1460))
    assert conn.state.value == "fin_wait_1"
    t.expect(to_us(seg(flags=ACK | PSH | FIN, seq=L, ack=R, payload=b"q")))


def test_write_after_shutdown_raises() -> None:
    _t, conn = established_passive()
    conn.shutdown_write()
    try:
        conn.send(b"x")
    except BrokenPipeError:
        pass
    else:
        raise AssertionError("send after shutdown_write must fail")


def test_too_many_time_waits_are_closed_at_once() -> None:
    t, conn = established_passive(max_time_wait=0)
    conn.close()
    t.engine.flush(t.now)
    t.send(seg(flags=FIN | ACK, seq=R, ack=L + 1))
    t.advance(0.0)
    assert conn.state.value == "closed"


def test_peer_time_wait_reack_after_last_ack_makes_no_cookie_ghost() -> None:
    """F5 (soak): SYN cookies on, our data+FIN is retransmitted after an RTO as two segments,
    and the peer (already in TIME_WAIT) ACKs each. The first ACK ends LAST_ACK; the second
    reaches the listener, and its SEG.ACK - SEG.SEQ still equals the cookie's (an echo moves
    both by the same amount). It must be answered as a segment for a closed connection, not
    make a connection in ESTABLISHED at the old sequence numbers that never ends."""
    t = make_harness(syn_backlog=0)  # every SYN is answered with a cookie
    listener = listen(t)
    t.send(SYN_SEG)
    (synack,) = t.recv()
    c = synack.seq  # the cookie: our ISS
    assert synack == dataclasses.replace(SYNACK_SEG, seq=c)
    t.send(seg(seq=R, ack=c + 1))
    t.send(seg(flags=ACK | PSH | FIN, seq=R, ack=c + 1, payload=b"q" * 100))
    W = 65535 - 101  # the window right edge stays put
    t.expect(to_us(seg(seq=c + 1, ack=R + 101, window=W)))
    (conn,) = [h.conn for h in listener.handlers]  # type: ignore[attr-defined]
    assert conn.from_cookie and t.events == [("established",), ("data", b"q" * 100), ("eof",)]
    conn.send(b"a" * 100)  # the echo, then close: data and FIN in one segment
    conn.close()
    t.engine.flush(t.now)
    t.expect(
        to_us(seg(flags=ACK | PSH | FIN, seq=c + 1, ack=R + 101, window=W, payload=b"a" * 100))
    )
    assert conn.state.value == "last_ack" and conn.fin_seq == c + 101
    t.advance(1.0)  # RTO: the retransmission splits data and FIN
    t.expect(
        to_us(seg(flags=ACK | PSH, seq=c + 1, ack=R + 101, window=W, payload=b"a" * 100)),
        to_us(seg(flags=ACK | FIN, seq=c + 101, ack=R + 101, window=W)),
    )
    t.send(seg(seq=R + 101, ack=c + 102))
    assert conn.state.value == "closed" and states(t) == {}
    t.expect_nothing()
    t.send(seg(seq=R + 101, ack=c + 102))  # the peer's TIME_WAIT answers the second one
    t.expect(to_us(seg(flags=RST, seq=c + 102, ack=0, window=0)))
    assert states(t) == {} and t.engine.conns == {}
    assert t.events[-1] == ("closed", None) and t.events.count(("established",)) == 1
    # A new incarnation of the 4-tuple still completes its cookie handshake.
    t.send(dataclasses.replace(SYN_SEG, seq=REMOTE_ISN + 10**6))
    (synack2,) = t.recv()
    t.send(seg(seq=REMOTE_ISN + 10**6 + 1, ack=synack2.seq + 1))
    assert states(t) == {"established": 1}
