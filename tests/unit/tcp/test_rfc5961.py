"""RFC 5961: blind RST, SYN and data injection defences, and the ACK checks of RFC 9293."""

from __future__ import annotations

import errno

from netstack.drops import Drop
from tests.unit.tcp.tcptools import (
    ACK,
    LOCAL_ISN,
    REMOTE_ISN,
    RST,
    SYN,
    established_passive,
    seg,
    to_us,
)

L, R = LOCAL_ISN + 1, REMOTE_ISN + 1
ACK_NOW = to_us(seg(seq=L, ack=R))


def test_rst_exactly_at_rcv_nxt_resets() -> None:
    t, conn = established_passive()
    t.send(seg(flags=RST, seq=R, ack=0))
    assert conn.state.value == "closed"
    ((_, exc),) = t.events
    assert isinstance(exc, ConnectionResetError) and exc.errno == errno.ECONNRESET
    t.expect_nothing()
    assert t.counters.tcp_resets_rx == 1


def test_rst_in_window_but_not_at_rcv_nxt_gets_a_challenge_ack() -> None:
    """RFC 5961 3.2: the sender of a legitimate RST will answer the ACK with an exact RST."""
    t, conn = established_passive()
    t.send(seg(flags=RST, seq=R + 1000, ack=0))
    assert conn.state.value == "established"
    t.expect(ACK_NOW)
    assert t.counters.drops[Drop.TCP_RST_CHALLENGED] == 1
    assert t.counters.tcp_challenge_acks == 1


def test_rst_outside_the_window_is_dropped_silently() -> None:
    t, conn = established_passive()
    for seq in (R - 1, R + 65535, R + 1_000_000):
        t.send(seg(flags=RST, seq=seq, ack=0))
    assert conn.state.value == "established"
    t.expect_nothing()
    assert t.counters.drops[Drop.TCP_RST_OUT_OF_WINDOW] == 3


def test_syn_in_a_synchronized_state_gets_a_challenge_ack() -> None:
    """RFC 5961 4.2: wherever the SYN's sequence number falls."""
    t, conn = established_passive()
    t.send(seg(flags=SYN, seq=R + 10, ack=0))
    t.expect(ACK_NOW)
    t.send(seg(flags=SYN, seq=R - 5000, ack=0))
    t.expect(ACK_NOW)
    assert conn.state.value == "established"
    assert t.counters.drops[Drop.TCP_SYN_CHALLENGED] == 2


def test_challenge_acks_are_rate_limited() -> None:
    t, _conn = established_passive(challenge_ack_rate=1.0, challenge_ack_burst=3)
    for i in range(10):
        t.send(seg(flags=RST, seq=R + 100 + i, ack=0))
    assert len(t.recv()) == 3  # the burst, then the bucket is empty
    t.advance(1.0)
    t.send(seg(flags=RST, seq=R + 500, ack=0))
    assert len(t.recv()) == 1  # one token back after a second
    assert t.counters.drops[Drop.TCP_RST_CHALLENGED] == 11
    assert t.counters.tcp_challenge_acks == 4


def test_ack_of_unsent_data_is_answered_and_dropped() -> None:
    t, _conn = established_passive()
    t.send(seg(seq=R, ack=L + 10, payload=b"data"))
    t.expect(ACK_NOW)
    assert ("data", b"data") not in t.events  # the whole segment is dropped
    assert t.counters.drops[Drop.TCP_ACK_UNSENT] == 1


def test_ack_too_far_behind_gets_a_challenge_ack() -> None:
    """RFC 5961 5.2: SEG.ACK below SND.UNA - MAX.SND.WND is not acceptable."""
    t, _conn = established_passive()
    t.send(seg(seq=R, ack=L - 70000, payload=b"data"))
    t.expect(ACK_NOW)
    assert t.counters.drops[Drop.TCP_ACK_TOO_OLD] == 1
    t.send(seg(seq=R, ack=L - 100, payload=b"data"))  # old but within MAX.SND.WND: fine
    assert t.events == [("data", b"data")]


def test_segment_without_ack_is_dropped() -> None:
    t, _conn = established_passive()
    t.send(seg(flags=0, seq=R, ack=0, payload=b"data"))
    assert t.events == []
    assert t.counters.drops[Drop.TCP_NO_ACK] == 1


def test_out_of_window_data_gets_an_ack() -> None:
    t, _conn = established_passive()
    t.send(seg(seq=R + 70000, ack=L, payload=b"far"))
    t.expect(ACK_NOW)
    t.send(seg(seq=R - 10, ack=L, payload=b"old"))  # entirely before RCV.NXT
    t.expect(ACK_NOW)
    assert t.counters.drops[Drop.TCP_OUT_OF_WINDOW] == 2
    assert t.events == []


def test_empty_out_of_window_segments_are_answered_at_a_limited_rate() -> None:
    t, _conn = established_passive()
    for _ in range(5):
        t.send(seg(seq=R - 10, ack=L))
    assert len(t.recv()) == 1
    t.advance(0.5)
    t.send(seg(seq=R - 10, ack=L))
    assert len(t.recv()) == 1
    assert t.counters.drops[Drop.TCP_OUT_OF_WINDOW] == 6


def test_rst_with_ack_at_rcv_nxt_in_close_wait_closes_quietly() -> None:
    t, conn = established_passive()
    t.send(seg(flags=0x11, seq=R, ack=L))  # FIN
    t.recv()
    t.send(seg(flags=RST, seq=R + 1, ack=0))
    assert conn.state.value == "closed"
    assert isinstance(t.events[-1][1], ConnectionResetError)  # the peer did not close


def test_rst_in_last_ack_is_not_an_error() -> None:
    t, conn = established_passive()
    t.send(seg(flags=0x11, seq=R, ack=L))
    conn.close()
    t.engine.flush(t.now)
    t.recv()
    assert conn.state.value == "last_ack"
    t.send(seg(flags=RST | ACK, seq=R + 1, ack=L + 1))
    assert conn.state.value == "closed"
    assert t.events[-1] == ("closed", None)


def test_segment_for_a_connection_carries_on_after_bad_ones() -> None:
    t, _conn = established_passive()
    t.send(seg(flags=RST, seq=R + 1000, ack=0))
    t.send(seg(flags=SYN, seq=R, ack=0))
    t.recv()
    t.send(seg(seq=R, ack=L, payload=b"fine"))
    assert t.events == [("data", b"fine")]
