"""The receiving side: in-order and out-of-order data, delayed ACKs (RFC 1122 4.2.3.2,
RFC 5681 4.2), SACK blocks (RFC 2018), the window from the buffer and receiver SWS
avoidance (RFC 9293 3.8.6.2.2), zero windows, window updates, flow control by pause_reading."""

from __future__ import annotations

import dataclasses

from netstack.drops import Drop
from tests.unit.tcp.tcptools import (
    ACK,
    FIN,
    LOCAL_ISN,
    REMOTE_ISN,
    SYN_SEG,
    established_passive,
    listen,
    make_harness,
    seg,
    to_us,
)

L, R = LOCAL_ISN + 1, REMOTE_ISN + 1
FULL = 1460


def data(n: int, fill: int = 0x61) -> bytes:
    return bytes([fill]) * n


def test_one_segment_is_acked_after_the_delayed_ack_timeout() -> None:
    t, _conn = established_passive()
    t.send(seg(seq=R, ack=L, payload=b"x" * 100))
    t.expect_nothing()
    t.advance(0.039)
    t.expect_nothing()
    t.advance(0.001)
    t.expect(to_us(seg(seq=L, ack=R + 100, window=65435)))


def test_every_second_full_segment_is_acked_at_once() -> None:
    t, conn = established_passive()
    t.send(seg(seq=R, ack=L, payload=data(FULL)))
    t.expect_nothing()
    t.send(seg(seq=R + FULL, ack=L, payload=data(FULL)))
    t.expect(to_us(seg(seq=L, ack=R + 2 * FULL)))
    assert conn.delack_at is None


def _batch(t, *segs) -> None:
    """Several segments in one receive batch (one flush point), as the TAP delivers them."""
    for s in segs:
        t.engine.receive(*_ip_args(t, s), t.now)
    t.engine.flush(t.now)


def test_a_batch_acks_every_second_full_segment() -> None:
    """F2, RFC 5681 4.2: at least every second full-sized segment is acknowledged, also
    within one receive batch: five full segments get two ACKs at the flush point, in
    arrival order (their window counted after the application read, reaching the same right
    edge: 65535 is the most the field says unscaled), then a delayed one."""
    t, _conn = established_passive()
    _batch(t, *(seg(seq=R + i * FULL, ack=L, payload=data(FULL)) for i in range(5)))
    t.expect(
        to_us(seg(seq=L, ack=R + 2 * FULL)),
        to_us(seg(seq=L, ack=R + 4 * FULL)),
    )
    assert t.events == [("data", data(FULL))] * 5
    t.advance(0.040)  # the fifth: the delayed ACK, now with the window the reading opened
    t.expect(to_us(seg(seq=L, ack=R + 5 * FULL)))


def test_a_batch_of_out_of_order_segments_gets_a_duplicate_ack_each() -> None:
    """RFC 5681 4.2 / RFC 2018 4: every out-of-order segment gets its own immediate
    duplicate ACK, whose first SACK block holds that segment, even within one batch. Each
    carries the blocks of its own moment (as if sent at once): reporting later arrivals
    with an earlier ACK number would tell the sender the data in between was lost."""
    t, conn = established_passive(sack=True)
    conn.sack_ok = True
    _batch(
        t,
        seg(seq=R + FULL, ack=L, payload=data(FULL)),
        seg(seq=R + 3 * FULL, ack=L, payload=data(FULL)),
        seg(seq=R + 2 * FULL, ack=L, payload=data(FULL)),
    )
    t.expect(
        to_us(seg(seq=L, ack=R, sack=((R + FULL, R + 2 * FULL),))),
        to_us(seg(seq=L, ack=R, sack=((R + 3 * FULL, R + 4 * FULL), (R + FULL, R + 2 * FULL)))),
        to_us(seg(seq=L, ack=R, sack=((R + FULL, R + 4 * FULL),))),
    )
    _batch(
        t,
        seg(seq=R + 5 * FULL, ack=L, payload=data(FULL)),
        seg(seq=R, ack=L, payload=data(FULL)),  # fills the hole: the next ACK at once too
        seg(seq=R + 4 * FULL, ack=L, payload=data(FULL)),
    )
    t.expect(
        to_us(seg(seq=L, ack=R, sack=((R + 5 * FULL, R + 6 * FULL), (R + FULL, R + 4 * FULL)))),
        to_us(seg(seq=L, ack=R + 4 * FULL, sack=((R + 5 * FULL, R + 6 * FULL),))),
        to_us(seg(seq=L, ack=R + 6 * FULL)),
    )


def _ip_args(t, s):
    from netstack.wire import tcp as wtcp
    from tests.unit.tcp.tcptools import LOCAL_IP, REMOTE_IP, ip_header

    raw = (
        wtcp.build(
            REMOTE_IP, LOCAL_IP, s.sport, s.dport, s.seq, s.ack, s.flags, s.window, s.payload
        )
        + s.payload
    )
    return ip_header(REMOTE_IP, LOCAL_IP, len(raw)), memoryview(raw), memoryview(raw)


def test_a_reply_carries_the_ack() -> None:
    t, conn = established_passive()
    t.send(seg(seq=R, ack=L, payload=b"ping"))
    conn.send(b"pong")
    t.engine.flush(t.now)
    t.expect(to_us(seg(flags=ACK | 0x08, seq=L, ack=R + 4, window=65531, payload=b"pong")))
    t.advance(0.1)
    t.expect_nothing()  # no separate delayed ACK afterwards


def test_out_of_order_segment_gets_an_immediate_duplicate_ack() -> None:
    t, _conn = established_passive()
    t.send(seg(seq=R + 100, ack=L, payload=data(50)))
    t.expect(to_us(seg(seq=L, ack=R)))
    assert t.events == []


def test_out_of_order_data_is_delivered_once_the_hole_fills() -> None:
    t, conn = established_passive()
    t.send(seg(seq=R + 100, ack=L, payload=data(50, 0x62)))
    t.send(seg(seq=R + 200, ack=L, payload=data(10, 0x63)))
    t.recv()
    t.send(seg(seq=R, ack=L, payload=data(100)))
    t.expect(to_us(seg(seq=L, ack=R + 150, window=65385)))  # the hole filled: ACK at once
    assert b"".join(e[1] for e in t.events) == data(100) + data(50, 0x62)
    t.send(seg(seq=R + 150, ack=L, payload=data(50, 0x64)))
    assert conn.rcv_nxt == R + 210
    assert b"".join(e[1] for e in t.events)[-60:] == data(50, 0x64) + data(10, 0x63)


def test_an_in_order_segment_spanning_held_data_is_taken_whole() -> None:
    """An in-order segment that reaches past a block held out of order (a GRO super-frame, a
    repacketized retransmission) is taken whole: the block it covers is let go of, and the
    ACK covers the segment's end, not the block's (as Linux's tcp_data_queue/tcp_ofo_queue).
    It was cut at the block's start, and everything past the block was lost to a resend."""
    t, conn = established_passive()
    t.send(seg(seq=R + 100, ack=L, payload=data(50, 0x62)))
    t.recv()
    whole = data(100) + data(50, 0x62) + data(150, 0x63)
    t.send(seg(seq=R, ack=L, payload=whole))
    t.expect(to_us(seg(seq=L, ack=R + 300, window=65235)))  # the hole filled: ACK at once
    assert conn.rcv_nxt == R + 300
    assert b"".join(e[1] for e in t.events) == whole
    assert not conn.rcvbuf.ooo and conn.rcvbuf.ooo_bytes == 0


def test_overlapping_and_duplicate_segments() -> None:
    t, _conn = established_passive()
    t.send(seg(seq=R, ack=L, payload=b"abcdef"))
    t.send(seg(seq=R + 3, ack=L, payload=b"defghi"))  # overlaps the front
    t.send(seg(seq=R, ack=L, payload=b"abcdef"))  # a duplicate: old, acked at once
    assert b"".join(e[1] for e in t.events) == b"abcdefghi"
    assert t.counters.drops[Drop.TCP_OUT_OF_WINDOW] == 1


def test_sack_blocks_report_out_of_order_data() -> None:
    t, conn = established_passive(sack=True)
    conn.sack_ok = True  # the fixture's SYN did not offer SACK; this test needs it on
    t.send(seg(seq=R + 100, ack=L, payload=data(50)))
    t.expect(to_us(seg(seq=L, ack=R, sack=((R + 100, R + 150),))))
    t.send(seg(seq=R + 300, ack=L, payload=data(50)))
    t.expect(to_us(seg(seq=L, ack=R, sack=((R + 300, R + 350), (R + 100, R + 150)))))
    t.send(seg(seq=R + 150, ack=L, payload=data(50)))  # extends the first block
    t.expect(to_us(seg(seq=L, ack=R, sack=((R + 100, R + 200), (R + 300, R + 350)))))
    t.send(seg(seq=R, ack=L, payload=data(100)))
    t.expect(to_us(seg(seq=L, ack=R + 200, window=65335, sack=((R + 300, R + 350),))))


def test_sack_is_not_sent_unless_negotiated() -> None:
    t, conn = established_passive(sack=True)
    assert not conn.sack_ok
    t.send(seg(seq=R + 100, ack=L, payload=data(50)))
    t.expect(to_us(seg(seq=L, ack=R)))


def test_paused_reading_closes_the_window() -> None:
    t, conn = established_passive(receive_buffer=4000)
    # The SYN-ACK offered 4000; fill it while the application is not reading.
    conn.pause_reading()
    t.send(seg(seq=R, ack=L, payload=data(FULL)))
    t.send(seg(seq=R + FULL, ack=L, payload=data(FULL)))
    t.expect(to_us(seg(seq=L, ack=R + 2 * FULL, window=4000 - 2 * FULL)))
    t.send(seg(seq=R + 2 * FULL, ack=L, payload=data(4000 - 2 * FULL)))
    t.advance(0.04)
    t.expect(to_us(seg(seq=L, ack=R + 4000, window=0)))
    assert t.events == []
    # More data into the closed window: trimmed away, acknowledged with window 0.
    t.send(seg(seq=R + 4000, ack=L, payload=b"x"))
    t.expect(to_us(seg(seq=L, ack=R + 4000, window=0)))
    assert t.counters.drops[Drop.TCP_ZERO_WINDOW] == 1
    # Reading again opens it, and the update goes out unasked.
    conn.resume_reading()
    t.engine.flush(t.now)
    assert sum(len(e[1]) for e in t.events) == 4000
    t.expect(to_us(seg(seq=L, ack=R + 4000, window=4000)))


def test_window_update_waits_for_a_worthwhile_opening() -> None:
    """Receiver SWS avoidance: a few freed bytes are not announced."""
    t, conn = established_passive(receive_buffer=4000)
    conn.pause_reading()
    t.send(seg(seq=R, ack=L, payload=data(4000)))
    t.advance(0.04)
    t.expect(to_us(seg(seq=L, ack=R + 4000, window=0)))
    conn.resume_reading()
    conn.pause_reading()  # read nothing after all
    t.engine.flush(t.now)
    t.expect_nothing()


def test_zero_window_probe_is_answered() -> None:
    t, conn = established_passive(receive_buffer=1000)
    conn.pause_reading()
    t.send(seg(seq=R, ack=L, payload=data(1000)))
    t.advance(0.04)
    t.recv()
    t.send(seg(seq=R - 1 + 1000, ack=L))  # a probe: old sequence number, no data
    t.expect(to_us(seg(seq=L, ack=R + 1000, window=0)))


def test_fin_is_accepted_at_a_zero_window() -> None:
    t, conn = established_passive(receive_buffer=1000)
    conn.pause_reading()
    t.send(seg(seq=R, ack=L, payload=data(1000)))
    t.send(seg(flags=FIN | ACK, seq=R + 1000, ack=L))
    assert conn.state.value == "close_wait"
    t.expect(to_us(seg(seq=L, ack=R + 1001, window=0)))
    assert t.events == []  # EOF waits behind the unread data
    conn.resume_reading()
    t.engine.flush(t.now)
    assert [e[0] for e in t.events] == ["data", "eof"]


def test_data_beyond_the_window_is_trimmed() -> None:
    t, conn = established_passive(receive_buffer=1000)
    t.send(seg(seq=R, ack=L, payload=data(1500)))
    assert sum(len(e[1]) for e in t.events) == 1000
    assert conn.rcv_nxt == R + 1000


def test_fin_out_of_order_is_remembered() -> None:
    t, conn = established_passive()
    t.send(seg(flags=FIN | ACK, seq=R + 5, ack=L))
    assert conn.state.value == "established"
    t.send(seg(seq=R, ack=L, payload=b"12345"))
    assert conn.state.value == "close_wait"
    assert t.events == [("data", b"12345"), ("eof",)]


def test_out_of_order_store_overflow_is_counted() -> None:
    t, conn = established_passive(ooo_max_pieces=2)
    for i in (1, 3, 5):
        t.send(seg(seq=R + 100 * i, ack=L, payload=data(10)))
    assert t.counters.drops[Drop.TCP_OOO_QUEUE_FULL] == 1
    assert len(conn.rcvbuf.ooo) == 2


def test_window_scaling_applies_to_our_window_field() -> None:
    t = make_harness(window_scaling=True, receive_buffer=1 << 20)
    listener = listen(t)
    t.send(dataclasses.replace(SYN_SEG, wscale=0))
    (synack,) = t.recv()
    assert synack.wscale == 5 and synack.window == 65535
    t.send(seg(seq=R, ack=L, payload=data(FULL)))
    # The window can grow far beyond the SYN's 65535 now: announced at once.
    (ack,) = t.recv()
    assert ack.window == (1 << 20) >> 5  # the whole buffer, scaled
    conn = listener.handlers[0].conn  # type: ignore[attr-defined]
    assert conn.rcv_adv - conn.rcv_nxt == 1 << 20


# -- window updates the peer can see (RFC 5681 4.2: no duplicate ACKs of our own making) ------
BIG = 512 * 1024  # a receive buffer larger than an unscaled window can announce


def _paused_with_1000_bytes(**overrides):
    t, conn = established_passive(receive_buffer=BIG, **overrides)
    conn.pause_reading()
    t.send(seg(seq=R, ack=L, payload=data(1000)))
    t.advance(0.040)  # the delayed ACK: the window is all the header can carry
    t.expect(to_us(seg(seq=L, ack=R + 1000, window=65535)))
    return t, conn


def test_no_window_update_beyond_what_the_header_can_carry() -> None:
    """Issue 11 bug 1: without window scaling the 512 KB of free buffer show as 65535, the
    window already announced. Flushes (touch, stale wake-ups) must not repeat that ACK: to a
    peer with data in flight each one is a duplicate ACK (three: a spurious fast retransmit)."""
    t, conn = _paused_with_1000_bytes()
    for at in (0.5, 1.0, 1.5):
        t.now = 100.0 + at
        t.engine.touch(conn)
        t.engine.poll(t.now)
        t.expect_nothing()


def test_a_read_that_leaves_the_announced_window_unchanged_sends_no_ack() -> None:
    """Issue 11: the application reads the 1000 bytes; the free space grows, but what the
    header carries (65535) does not: nothing the peer can see changed, so no ACK."""
    t, conn = _paused_with_1000_bytes()
    t.now += 0.1
    conn.resume_reading()
    t.engine.flush(t.now)
    assert t.events == [("data", data(1000))]
    t.expect_nothing()


def test_a_read_that_opens_the_window_is_announced() -> None:
    """The other side of the rule (Linux's tcp_cleanup_rbuf): a read that at least doubles
    the window the peer sees, by a segment or more, is announced at once."""
    t, conn = established_passive()  # 65535-byte buffer
    conn.pause_reading()
    for i in range(40):
        t.send(seg(seq=R + i * FULL, ack=L, payload=data(FULL)))
    t.recv()
    left = 65535 - 40 * FULL
    conn.resume_reading()
    t.engine.flush(t.now)
    t.expect(to_us(seg(seq=L, ack=R + 40 * FULL, window=65535)))
    assert left < 65535 // 2


# -- Linux's quick-ACK mode (ackpolicy.py) ----------------------------------------------------
QUICK = dict(quick_acks=16)  # the default TcpConfig (Linux's TCP_MAX_QUICKACKS)


def test_quick_acks_at_the_start_then_delayed_acks() -> None:
    """Linux's tcp_event_data_recv: the first data enters quick-ACK mode for
    min(rcv_wnd / (2 * rcv_mss), 16) = min(65535 / 2920, 16) = 16 ACKs, each sent at once;
    after them the 40 ms delayed ACK (TCP_DELACK_MIN) applies."""
    t, _conn = established_passive(**QUICK)
    for i in range(16):
        t.send(seg(seq=R + 10 * i, ack=L, payload=data(10)))
        t.expect(to_us(seg(seq=L, ack=R + 10 * (i + 1), window=65535 - 10 * (i + 1))))
        t.now += 0.001
    t.send(seg(seq=R + 160, ack=L, payload=data(10)))
    t.expect_nothing()
    t.advance(0.040)
    t.expect(to_us(seg(seq=L, ack=R + 170, window=65535 - 170)))


def test_quick_acks_again_after_an_idle_period_longer_than_the_rto() -> None:
    """Data after a silence longer than the RTO (Linux: m > icsk_rto) re-enters quick-ACK
    mode: the sender is restarting its window (RFC 5681 4.1), its ACK clock should too."""
    t, conn = established_passive(**QUICK)
    conn.quickack.quick = 0  # the start's quick ACKs used up
    conn.quickack.lrcvtime = t.now
    t.send(seg(seq=R, ack=L, payload=data(10)))
    t.expect_nothing()  # within the RTO of the last data: delayed
    t.advance(0.040)
    t.expect(to_us(seg(seq=L, ack=R + 10, window=65525)))
    assert conn.recovery.rtt.rto == 0.2
    t.now += 0.201
    t.send(seg(seq=R + 10, ack=L, payload=data(10)))
    t.expect(to_us(seg(seq=L, ack=R + 20, window=65515)))  # idle > RTO: at once


def test_an_interactive_connection_delays_its_acks_for_the_reply() -> None:
    """Linux's ping-pong guess: we replied within the delayed-ACK time of the request, so
    the next request's ACK waits for the reply and rides on it; a request left without a
    reply gets its delayed ACK at 40 ms and ends the guess (quick ACKs again)."""
    t, conn = established_passive(**QUICK)
    t.send(seg(seq=R, ack=L, payload=b"req1"))
    t.expect(to_us(seg(seq=L, ack=R + 4, window=65531)))  # quick ACK
    conn.send(b"rep1")
    t.engine.flush(t.now)
    t.expect(to_us(seg(flags=ACK | 0x08, seq=L, ack=R + 4, window=65531, payload=b"rep1")))
    t.now += 0.1
    t.send(seg(seq=R + 4, ack=L + 4, payload=b"req2"))
    t.expect_nothing()  # ping-pong: the ACK waits for the reply
    t.now += 0.005
    conn.send(b"rep2")
    t.engine.flush(t.now)
    t.expect(to_us(seg(flags=ACK | 0x08, seq=L + 4, ack=R + 8, window=65527, payload=b"rep2")))
    t.now += 0.1
    t.send(seg(seq=R + 8, ack=L + 8, payload=b"req3"))
    t.expect_nothing()
    t.advance(0.040)  # no reply: the delayed ACK, and the guess is over
    t.expect(to_us(seg(seq=L + 8, ack=R + 12, window=65523)))  # (the right edge stays)
    t.now += 0.1
    t.send(seg(seq=R + 12, ack=L + 8, payload=b"req4"))
    t.expect(to_us(seg(seq=L + 8, ack=R + 16, window=65519)))  # quick again
