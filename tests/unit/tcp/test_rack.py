"""RACK (RFC 8985) loss detection and tail loss probes, D-SACK (RFC 2883) on both sides, and
the undo of spurious reductions (Eifel detection RFC 3522, D-SACK; RFC 4015 response).

Unlike the other recovery tests, these connections have a real RTT (RTT = 20 ms, from the
handshake), since RACK reasons in time: a segment is lost once one sent after it has been
delivered and an RTT plus the reordering window (min_RTT/4 before any reordering) passed.
"""

from __future__ import annotations

import dataclasses

import pytest

from netstack.proto.tcp.cc import INITIAL_SSTHRESH
from netstack.proto.tcp.recovery import TIMEOUT_MIN, WC_DEL_ACK
from tests.unit.tcp.tcptools import (
    ACK,
    FIN,
    LOCAL_ISN,
    PSH,
    REMOTE_ISN,
    SYN_SEG,
    Harness,
    established_passive,
    listen,
    make_harness,
    seg,
    to_us,
)

L, R = LOCAL_ISN + 1, REMOTE_ISN + 1
RTT = 0.020
PEER_TS = 7000


def rtt_conn(timestamps: bool = False, sack: bool = True, **config):
    """A server connection whose handshake took RTT (SRTT = min_RTT = 20 ms, RTO 200 ms)."""
    t = make_harness(sack=sack, timestamps=timestamps, **config)
    listener = listen(t)
    ts = (PEER_TS, 0) if timestamps else None
    t.send(dataclasses.replace(SYN_SEG, sack_perm=sack, ts=ts))
    (synack,) = t.recv()
    t.now += RTT
    t.send(seg(seq=R, ack=L, ts=(PEER_TS + 20, synack.ts[0]) if timestamps else None))
    conn = listener.handlers[0].conn  # type: ignore[attr-defined]
    assert conn.sack_ok == sack and conn.ts_ok == timestamps
    t.events.clear()
    return t, conn


def blocks(*pairs: tuple[int, int], mss: int) -> tuple[tuple[int, int], ...]:
    """SACK blocks in segment numbers, as sequence numbers."""
    return tuple((L + a * mss, L + b * mss) for a, b in pairs)


def peer_ack(conn, n: int, sack=(), ts=None):
    """The peer's ACK of n segments, with SACK blocks given in segment numbers."""
    return seg(seq=R, ack=L + n * conn.mss, sack=blocks(*sack, mss=conn.mss), ts=ts)


def numbers(t: Harness, conn) -> list[int]:
    """The segment numbers of what we sent since the last call."""
    return [(s.seq - L) // conn.mss for s in t.recv()]


def data_seg(conn, n: int, psh: bool = False, **kw):
    """Segment n of a write; PSH only on the one that ends the write (as Linux: a
    retransmission keeps the original's flags)."""
    payload = b"d" * conn.mss
    flags = ACK | PSH if psh else ACK
    return to_us(seg(flags=flags, seq=L + n * conn.mss, ack=R, payload=payload, **kw))


# -- RACK -------------------------------------------------------------------------------------
def test_a_hole_waits_for_the_reordering_window_before_any_reordering() -> None:
    """One segment SACKed above a hole: lost after RTT + min_RTT/4 (RACK's timer), not at
    once; the retransmission starts recovery."""
    t, conn = rtt_conn()
    conn.send(b"d" * (8 * conn.mss))
    t.engine.flush(t.now)
    start = t.now
    assert numbers(t, conn) == list(range(8))
    t.now += RTT
    t.send(peer_ack(conn, 0, sack=[(1, 2)]))
    t.expect_nothing()
    # Linux's tcp_rack_mark_lost: the timer fires TCP_TIMEOUT_MIN (2 ms) after expiry.
    assert conn.recovery.rack_at == pytest.approx(start + RTT + RTT / 4 + TIMEOUT_MIN)
    t.advance(RTT / 4 + TIMEOUT_MIN - 0.0005)
    t.expect_nothing()
    t.advance(0.0005)
    t.expect(data_seg(conn, 0))
    assert conn.recovery.ca_state == "recovery" and t.counters.tcp_fast_retransmits == 1


def test_dupthresh_sacked_segments_mark_the_hole_at_once() -> None:
    t, conn = rtt_conn()
    conn.send(b"d" * (8 * conn.mss))
    t.engine.flush(t.now)
    t.recv()
    t.now += RTT
    t.send(peer_ack(conn, 0, sack=[(1, 4)]))  # RFC 8985: no reordering seen, 3 SACKed
    t.expect(data_seg(conn, 0))


def test_a_lost_retransmission_is_sent_again_without_waiting_for_the_rto() -> None:
    """F4: the retransmission of 0 is lost; new data sent after it is SACKed an RTT later,
    so RACK marks the retransmission lost again (DupThresh cannot: only the RTO could)."""
    t, conn = rtt_conn(congestion_control="reno")
    conn.send(b"d" * (20 * conn.mss))
    t.engine.flush(t.now)
    assert numbers(t, conn) == list(range(10))  # the initial window
    t.now += RTT
    t.send(peer_ack(conn, 0, sack=[(1, 10)]))  # 0 lost
    # Recovery: 0 again at once, then new data within cwnd = ssthresh = 10 / 2 segments.
    assert numbers(t, conn) == [0, 10, 11, 12, 13]
    t.now += RTT + 0.005
    t.send(peer_ack(conn, 0, sack=[(1, 14)]))  # 10..13 arrived, the retransmission of 0 not
    assert numbers(t, conn) == [0, 14, 15, 16, 17]
    t.now += RTT + 0.005
    t.send(peer_ack(conn, 18))
    assert conn.recovery.ca_state == "open"
    assert t.counters.tcp_timeouts == 0 and t.counters.tcp_retransmitted_segments == 2


def test_tail_loss_probe_repairs_a_tail_loss_without_the_rto() -> None:
    """F4, RFC 8985 7: the last two segments are lost and no more data follows. After
    PTO = 2 * SRTT (+ 2 ms, Linux's TCP_TIMEOUT_MIN_US with more than one segment out) the
    last segment goes again; its SACK shows the other one lost."""
    t, conn = rtt_conn()
    conn.send(b"d" * (4 * conn.mss))
    t.engine.flush(t.now)
    assert numbers(t, conn) == [0, 1, 2, 3]
    t.now += RTT
    t.send(peer_ack(conn, 2))  # 2 and 3 lost
    probe_at = t.now + 2 * conn.recovery.rtt.srtt + TIMEOUT_MIN
    assert conn.recovery.rto_at > probe_at + 0.1
    t.run_until(probe_at - 0.0005)
    t.expect_nothing()
    t.run_until(probe_at)
    assert t.recv_timed() == [(pytest.approx(probe_at), data_seg(conn, 3, psh=True))]
    assert conn.recovery.tlp_probes == 1 and conn.recovery.ca_state == "open"
    t.now += RTT + 0.004
    t.send(peer_ack(conn, 2, sack=[(3, 4)]))
    t.expect(data_seg(conn, 2))  # RACK: 2 was sent before the delivered probe
    assert conn.recovery.ca_state == "recovery"
    t.now += RTT + 0.004
    t.send(peer_ack(conn, 4))
    assert conn.recovery.ca_state == "open" and t.counters.tcp_timeouts == 0


def test_a_second_probe_follows_a_lost_one() -> None:
    """The probe (or its ACK) is lost too: one more after twice the PTO (QUIC's PTO backoff,
    RFC 9002 6.2; RFC 8985 alone would leave it to the RTO)."""
    t, conn = rtt_conn()
    conn.send(b"d" * (4 * conn.mss))
    t.engine.flush(t.now)
    t.recv()
    t.now += RTT
    t.send(peer_ack(conn, 2))
    srtt = conn.recovery.rtt.srtt
    first = t.now + 2 * srtt + TIMEOUT_MIN
    t.run_until(first)
    t.expect(data_seg(conn, 3, psh=True))
    second = first + 2 * (2 * srtt + TIMEOUT_MIN)
    t.run_until(second - 0.0005)
    t.expect_nothing()
    t.run_until(second)
    t.expect(data_seg(conn, 3, psh=True))
    t.run_until(first + 0.15)
    t.expect_nothing()  # two per episode: then the RTO's turn
    assert conn.recovery.tlp_probes == 2 and t.counters.tcp_timeouts == 0


def test_a_retransmission_lost_at_the_tail_of_recovery_is_probed() -> None:
    """In recovery with nothing left to send after the retransmission, its loss cannot show
    (RACK needs a later segment delivered): after 2*SRTT without an ACK it goes again."""
    t, conn = rtt_conn(congestion_control="reno")
    conn.send(b"d" * (4 * conn.mss))
    t.engine.flush(t.now)
    t.recv()
    t.now += RTT
    t.send(peer_ack(conn, 0, sack=[(1, 4)]))
    t.expect(data_seg(conn, 0))  # fast retransmit; that one is lost
    assert conn.recovery.ca_state == "recovery"
    probe_at = t.now + 2 * conn.recovery.rtt.srtt + TIMEOUT_MIN
    t.run_until(probe_at - 0.001)
    t.expect_nothing()
    t.run_until(probe_at + 0.001)
    t.expect(data_seg(conn, 0))
    t.now += RTT
    t.send(peer_ack(conn, 4))
    assert conn.recovery.ca_state == "open" and t.counters.tcp_timeouts == 0


# -- D-SACK, receiving side ---------------------------------------------------------------------
def test_duplicate_segments_are_reported_with_dsack() -> None:
    """F3, RFC 2883 4.1: a duplicate gets an immediate ACK whose first SACK block is the
    duplicate; above RCV.NXT the block holding it follows."""
    t, conn = established_passive(sack=True)
    conn.sack_ok = True
    t.send(seg(seq=R, ack=L, payload=b"a" * 100))
    t.expect_nothing()  # delayed
    t.send(seg(seq=R, ack=L, payload=b"a" * 100))  # all of it again
    t.expect(to_us(seg(seq=L, ack=R + 100, window=65435, sack=((R, R + 100),))))
    t.send(seg(seq=R + 50, ack=L, payload=b"b" * 100))  # half of it again
    t.expect(to_us(seg(seq=L, ack=R + 150, window=65385, sack=((R + 50, R + 100),))))
    t.send(seg(seq=R + 300, ack=L, payload=b"c" * 50))  # out of order, then again
    t.send(seg(seq=R + 300, ack=L, payload=b"c" * 50))
    t.expect(
        to_us(seg(seq=L, ack=R + 150, window=65385, sack=((R + 300, R + 350),))),
        to_us(seg(seq=L, ack=R + 150, window=65385, sack=((R + 300, R + 350),) * 2)),
    )


def test_no_dsack_without_sack() -> None:
    t, _conn = established_passive()
    t.send(seg(seq=R, ack=L, payload=b"a" * 100))
    t.send(seg(seq=R, ack=L, payload=b"a" * 100))
    t.expect(to_us(seg(seq=L, ack=R + 100, window=65435)))


# -- undo ---------------------------------------------------------------------------------------
def spurious_fast_retransmit(t: Harness, conn, ts_of=None):
    """10 segments out; 0 is only late (reordered), 1..3 SACKed: RACK (no reordering seen
    yet) retransmits 0 and halves cwnd. Returns (cwnd, ssthresh) from before."""
    conn.send(b"d" * (10 * conn.mss))
    t.engine.flush(t.now)
    sent = t.recv()
    assert len(sent) == 10
    before = (conn.recovery.cc.cwnd, conn.recovery.cc.ssthresh)
    t.now += RTT
    ts = (PEER_TS + 100, sent[1].ts[0]) if conn.ts_ok else None
    t.send(peer_ack(conn, 0, sack=[(1, 4)], ts=ts))
    (rexmit,) = t.recv()
    assert rexmit.seq == L and conn.recovery.ca_state == "recovery"
    assert conn.recovery.cc.cwnd < before[0] and conn.recovery.cc.ssthresh < before[1]
    return before, sent, rexmit


def test_eifel_undoes_a_spurious_fast_retransmit() -> None:
    """F3, RFC 3522 / 4015: the ACK for 0 echoes the timestamp of its original send, older
    than the retransmission: the original arrived, the reduction is undone, and RACK now
    knows the path reorders."""
    t, conn = rtt_conn(timestamps=True)
    before, sent, _ = spurious_fast_retransmit(t, conn)
    t.now += 0.002
    t.send(peer_ack(conn, 4, sack=[], ts=(PEER_TS + 101, sent[0].ts[0])))
    assert conn.recovery.ca_state == "open" and conn.recovery.undos == 1
    assert conn.recovery.cc.ssthresh == before[1]  # back in slow start: cwnd restored, and grows
    # and grows by what this ACK newly delivered: segment 0 (1..3 were SACKed before), as
    # Linux's tcp_cong_control(delivered) (RFC 6937 DeliveredData; was L = 2 of RFC 3465)
    assert conn.recovery.cc.cwnd == before[0] + conn.mss
    assert conn.recovery.rack.reord


def test_a_retransmission_that_was_needed_is_not_undone() -> None:
    t, conn = rtt_conn(timestamps=True)
    _, _, rexmit = spurious_fast_retransmit(t, conn)
    t.now += RTT
    t.send(peer_ack(conn, 4, sack=[], ts=(PEER_TS + 101, rexmit.ts[0])))  # it filled the hole
    assert conn.recovery.undos == 0 and conn.recovery.cc.ssthresh < INITIAL_SSTHRESH


def test_dsack_undoes_a_spurious_fast_retransmit_without_timestamps() -> None:
    """F3, RFC 2883 / 3708: the original of 0 arrives late (ACK 4), then the retransmission
    too: its D-SACK proves the episode's only retransmission needless."""
    t, conn = rtt_conn()
    before, _, _ = spurious_fast_retransmit(t, conn)
    t.now += 0.002
    t.send(peer_ack(conn, 4))
    assert conn.recovery.undos == 0  # nothing proves it yet
    t.now += RTT
    t.send(peer_ack(conn, 4, sack=[(0, 1)]))  # D-SACK below the cumulative ACK
    assert conn.recovery.undos == 1 and (conn.recovery.cc.cwnd, conn.recovery.cc.ssthresh) == before
    assert conn.recovery.rack.reo_wnd_mult == 2  # RFC 8985: the reordering window widens


def test_once_reordering_is_seen_a_late_segment_costs_no_retransmission() -> None:
    """After an undo, RACK waits min_RTT/4 even with DupThresh segments SACKed."""
    t, conn = rtt_conn(timestamps=True)
    _, sent, _ = spurious_fast_retransmit(t, conn)
    t.send(peer_ack(conn, 10, ts=(PEER_TS + 101, sent[0].ts[0])))  # undo, all acked
    assert conn.recovery.undos == 1
    conn.send(b"d" * (10 * conn.mss))
    t.engine.flush(t.now)
    sent = t.recv()
    t.now += RTT
    t.send(peer_ack(conn, 10, sack=[(11, 15)], ts=(PEER_TS + 102, sent[1].ts[0])))
    t.expect_nothing()  # 10 is late, not lost (yet)
    t.now += 0.002
    t.send(peer_ack(conn, 20, ts=(PEER_TS + 103, sent[0].ts[0])))
    t.expect_nothing()
    assert t.counters.tcp_retransmitted_segments == 1  # the first episode's only


def test_newreno_dupthresh_grows_when_reordering_fooled_it() -> None:
    """Without SACK: after an Eifel-proven spurious fast retransmit, dupthresh grows past
    the number of dupacks the reordering caused (as Linux's tp->reordering)."""
    t, conn = rtt_conn(timestamps=True, sack=False)
    conn.send(b"d" * (8 * conn.mss))
    t.engine.flush(t.now)
    sent = t.recv()
    t.now += RTT
    for i in range(3):
        t.send(peer_ack(conn, 0, ts=(PEER_TS + 100 + i, sent[0].ts[0])))
    assert numbers(t, conn) == [0] and conn.recovery.ca_state == "recovery"
    t.send(peer_ack(conn, 8, ts=(PEER_TS + 110, sent[0].ts[0])))  # the late original's ACK
    assert conn.recovery.undos == 1 and conn.recovery.dupthresh == 4
    conn.send(b"d" * (4 * conn.mss))
    t.engine.flush(t.now)
    sent = t.recv()
    for i in range(3):
        t.send(peer_ack(conn, 8, ts=(PEER_TS + 120 + i, sent[0].ts[0])))
    assert conn.recovery.ca_state == "open"  # three are reordering now
    t.send(peer_ack(conn, 8, ts=(PEER_TS + 124, sent[0].ts[0])))
    assert conn.recovery.ca_state == "recovery" and numbers(t, conn)[0] == 8


# -- the probe timer and the FIN (Linux profile) ------------------------------------------------
def fin_seg(conn, n: int):
    return to_us(seg(flags=ACK | FIN, seq=L + n * conn.mss, ack=R))


def test_a_bare_fin_after_data_restarts_the_probe_timer() -> None:
    """Issue 11: data goes out at t0, the application closes 10 ms later and the FIN goes on
    its own. Like data, the FIN restarts the probe timer (RFC 8985 7.2; Linux's
    tcp_write_xmit calls tcp_schedule_loss_probe after any send): with three segments out
    the probe is due 2*SRTT + 2 ms after the FIN, and resends the FIN (the last segment)."""
    t, conn = rtt_conn()
    conn.send(b"d" * (2 * conn.mss))
    t.engine.flush(t.now)
    assert numbers(t, conn) == [0, 1]
    t.now += 0.010
    conn.shutdown_write()
    t.engine.flush(t.now)
    t.expect(fin_seg(conn, 2))
    probe_at = t.now + 2 * conn.recovery.rtt.srtt + TIMEOUT_MIN
    t.run_until(probe_at - 0.0005)
    t.expect_nothing()  # not at t0 + PTO, where the data alone would have put it
    t.run_until(probe_at)
    assert t.recv_timed() == [(pytest.approx(probe_at), fin_seg(conn, 2))]
    assert conn.recovery.tlp_probes == 1 and t.counters.tcp_timeouts == 0


def test_a_lone_fin_is_probed_at_the_rto_instead_of_timing_out() -> None:
    """All data acknowledged, then the FIN alone, and it is lost. One segment out: PTO =
    2*SRTT + WCDelAckT (Linux: + TCP_RTO_MIN, 200 ms) = 240 ms, later than the RTO
    (SRTT + 200 ms = 220 ms, Linux's formula),
    so the probe takes the RTO's time (RFC 8985 7.2; Linux's min(timeout, RTO left)) and goes
    instead of it: the FIN again, no timeout, cwnd kept."""
    t, conn = rtt_conn()
    conn.send(b"d" * (2 * conn.mss))
    t.engine.flush(t.now)
    t.recv()
    t.now += RTT
    t.send(peer_ack(conn, 2))
    cwnd = conn.recovery.cc.cwnd
    conn.shutdown_write()
    t.engine.flush(t.now)
    t.expect(fin_seg(conn, 2))
    rtt = conn.recovery.rtt
    assert 2 * rtt.srtt + WC_DEL_ACK > rtt.rto == pytest.approx(rtt.srtt + 0.2)
    probe_at = t.now + rtt.rto
    t.run_until(probe_at - 0.0005)
    t.expect_nothing()
    t.run_until(probe_at)
    assert t.recv_timed() == [(pytest.approx(probe_at), fin_seg(conn, 2))]
    assert conn.recovery.tlp_probes == 1 and t.counters.tcp_timeouts == 0
    assert conn.recovery.cc.cwnd == cwnd


def test_a_tail_probe_resends_the_last_mss_of_an_offloaded_segment() -> None:
    """RFC 8985 7.3 as Linux's tcp_send_loss_probe: the probe is one segment, the last MSS
    of the last (multi-MSS) segment, keeping its PSH."""
    t, conn = rtt_conn(tso_max=65535 - 40)
    conn.send(b"d" * (4 * conn.mss))
    t.engine.flush(t.now)
    assert [len(s.payload) for s in t.recv()] == [4 * conn.mss]
    probe_at = t.now + 2 * conn.recovery.rtt.srtt + TIMEOUT_MIN
    t.run_until(probe_at)
    assert t.recv_timed() == [(pytest.approx(probe_at), data_seg(conn, 3, psh=True))]
