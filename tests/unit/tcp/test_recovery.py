"""Loss recovery: the RFC 6298 timer (values, backoff, Karn, retry limit), fast retransmit
and NewReno (RFC 5681, 6582), limited transmit (RFC 3042), SACK recovery (RFC 6675).
RACK, loss probes and undo are in test_rack.py."""

from __future__ import annotations

import pytest

from netstack.drops import Drop
from tests.unit.tcp.tcptools import (
    LOCAL_ISN,
    REMOTE_ISN,
    established_passive,
    seg,
)

L, R = LOCAL_ISN + 1, REMOTE_ISN + 1
MSS = 1460


def ack(n: int, **kw) -> object:
    return seg(seq=R, ack=L + n, **kw)


def dupack(n: int, sack=()) -> object:
    return seg(seq=R, ack=L + n, sack=tuple((L + a, L + b) for a, b in sack))


def starts(t) -> list[int]:
    return [s.seq - L for s in t.recv()]


def sent_segments(t, conn, n: int) -> None:
    conn.send(b"d" * (n * MSS))
    t.engine.flush(t.now)


# -- RFC 6298 -----------------------------------------------------------------------------------
def test_first_rto_is_one_second_then_doubles() -> None:
    t, conn = established_passive()
    conn.recovery.rtt.srtt = None  # as if the handshake gave no sample
    conn.recovery.rtt.rto = 1.0
    sent_segments(t, conn, 1)
    t.recv()
    start = t.now
    t.run_until(start + 7.5)
    times = [round(now - start, 3) for now, _ in t.recv_timed()]
    assert times == [1.0, 3.0, 7.0]
    assert t.counters.tcp_timeouts == 3


def test_rto_follows_the_measured_rtt() -> None:
    t, conn = established_passive(rto_min=0.0)
    sent_segments(t, conn, 1)
    t.recv()
    t.now += 0.3
    t.send(ack(MSS))
    srtt, rttvar = conn.recovery.rtt.srtt, conn.recovery.rtt.rttvar
    assert conn.recovery.rtt.rto == pytest.approx(srtt + 4 * rttvar)
    assert srtt == pytest.approx(0.875 * 0.0 + 0.125 * 0.3)  # the handshake sampled 0


def test_rto_minimum_is_200ms_by_default_and_configurable() -> None:
    _, conn = established_passive()
    assert conn.recovery.rtt.rto == pytest.approx(0.2)
    _, conn = established_passive(rto_min=1.0)
    assert conn.recovery.rtt.rto == pytest.approx(1.0)


def test_karn_no_sample_from_a_retransmitted_segment() -> None:
    t, conn = established_passive()
    sent_segments(t, conn, 1)
    t.recv()
    t.advance(0.2)  # RTO: retransmit
    t.recv()
    before = (conn.recovery.rtt.srtt, conn.recovery.rtt.rttvar)
    rto = conn.recovery.rtt.rto
    assert rto == pytest.approx(0.4)  # backed off
    t.now += 5.0
    t.send(ack(MSS))
    assert (conn.recovery.rtt.srtt, conn.recovery.rtt.rttvar) == before  # ambiguous: no sample
    assert conn.recovery.rtt.rto == pytest.approx(
        0.4
    )  # and the backoff stays (RFC 6298 5.7 / Karn)
    sent_segments(t, conn, 1)
    t.recv()
    t.now += 0.01
    t.send(ack(2 * MSS))
    assert (
        conn.recovery.rtt.backoff == 0
        and conn.recovery.rtt.srtt is not None
        and conn.recovery.rtt.srtt > 0
    )


def test_retries_exhausted_is_a_timeout_error() -> None:
    t, conn = established_passive(retries=3)
    sent_segments(t, conn, 1)
    t.run_until(t.now + 100)
    assert conn.state.value == "closed"
    ((_, exc),) = t.events
    assert isinstance(exc, TimeoutError)
    assert t.counters.tcp_timeouts == 3
    assert len(t.recv()) == 1 + 3  # no RST: the peer is gone anyway (as Linux)


def test_timeout_collapses_cwnd_and_goes_back_n() -> None:
    t, conn = established_passive()
    sent_segments(t, conn, 4)
    assert starts(t) == [0, MSS, 2 * MSS, 3 * MSS]
    t.advance(0.2)
    assert starts(t) == [0]  # cwnd = 1 MSS: only the first
    assert (
        conn.recovery.cc.cwnd == MSS and conn.recovery.cc.ssthresh == 2 * MSS
    )  # max(flight/2, 2*MSS)
    t.send(ack(MSS))
    assert starts(t) == [MSS, 2 * MSS]  # slow start; the rest are marked lost: resent
    t.send(ack(3 * MSS))
    assert starts(t) == [3 * MSS]
    t.send(ack(4 * MSS))
    assert conn.recovery.ca_state == "open"


# -- fast retransmit / NewReno --------------------------------------------------------------
def test_three_dupacks_trigger_fast_retransmit() -> None:
    t, conn = established_passive()
    sent_segments(t, conn, 8)
    t.recv()
    t.send(dupack(0))
    t.send(dupack(0))
    assert starts(t) == []  # nothing left to send for limited transmit
    t.send(dupack(0))
    assert starts(t) == [0]  # fast retransmit
    assert t.counters.tcp_fast_retransmits == 1
    assert conn.recovery.ca_state == "recovery"
    assert conn.recovery.cc.ssthresh == 4 * MSS  # flight 8 MSS / 2 (Reno)
    # RFC 6937 PRR as Linux (no RFC 6582 inflation): pipe = 8 out - 3 dupacks (segments
    # that left) - 1 lost = 4, plus the fast retransmission
    assert conn.recovery.cc.cwnd == 5 * MSS


def test_limited_transmit_sends_new_data_on_the_first_dupacks() -> None:
    """RFC 3042: each of the first two dupacks lets one new segment out."""
    t, conn = established_passive()
    sent_segments(t, conn, 12)  # 10 go (IW), 2 wait
    assert len(t.recv()) == 10
    t.send(dupack(0))
    assert starts(t) == [10 * MSS]
    t.send(dupack(0))
    assert starts(t) == [11 * MSS]


def test_newreno_partial_ack_retransmits_the_next_hole() -> None:
    t, conn = established_passive()
    sent_segments(t, conn, 8)
    t.recv()
    for _ in range(3):
        t.send(dupack(0))
    assert starts(t) == [0]
    # Segments 0 and 1 were lost; the retransmission of 0 brings a partial ACK at 1.
    t.send(ack(MSS))
    assert starts(t)[0] == MSS  # RFC 6582: the next hole at once
    assert conn.recovery.ca_state == "recovery"
    t.send(ack(8 * MSS))  # the full ACK
    assert conn.recovery.ca_state == "open"
    assert conn.recovery.cc.cwnd <= conn.recovery.cc.ssthresh


def test_newreno_does_not_reenter_recovery_for_old_data() -> None:
    t, conn = established_passive()
    sent_segments(t, conn, 8)
    t.recv()
    for _ in range(3):
        t.send(dupack(0))
    t.send(ack(8 * MSS))
    assert conn.recovery.ca_state == "open"
    assert t.counters.tcp_fast_retransmits == 1


# -- SACK (RFC 6675) ----------------------------------------------------------------------------
def sack_conn(**config):
    t, conn = established_passive(sack=True, **config)
    conn.sack_ok = True
    return t, conn


def test_sack_recovery_retransmits_only_the_holes() -> None:
    """With SACK, RACK (RFC 8985) marks losses; at an RTT of zero (this harness's clock does
    not move) a hole is lost as soon as a segment sent after it is SACKed."""
    t, conn = sack_conn()
    sent_segments(t, conn, 8)
    t.recv()
    # Segments 1 and 3 are lost; the receiver SACKs the others as they arrive.
    t.send(dupack(MSS, [(2 * MSS, 3 * MSS)]))
    assert starts(t) == [MSS]
    assert conn.recovery.ca_state == "recovery" and t.counters.tcp_fast_retransmits == 1
    t.send(dupack(MSS, [(2 * MSS, 3 * MSS)]))  # nothing new: nothing more to send
    assert starts(t) == []
    t.send(dupack(MSS, [(4 * MSS, 5 * MSS), (2 * MSS, 3 * MSS)]))
    assert conn.recovery.board.lost_bytes == 2 * MSS  # 3 too: it was sent before 4, now delivered
    # but pipe (7 out - 2 SACKed - 2 lost + 1 resent = 4 segments) > cwnd (7 / 2 segments)
    assert starts(t) == []
    t.send(dupack(MSS, [(4 * MSS, 6 * MSS), (2 * MSS, 3 * MSS)]))
    assert starts(t) == [3 * MSS]  # pipe 3 < cwnd: the next hole goes out
    t.send(dupack(MSS, [(4 * MSS, 8 * MSS), (2 * MSS, 3 * MSS)]))
    assert starts(t) == []
    t.send(ack(3 * MSS, sack=((L + 4 * MSS, L + 8 * MSS),)))  # 1's retransmission arrived
    t.send(ack(8 * MSS))
    assert conn.recovery.ca_state == "open"
    assert t.counters.tcp_retransmitted_segments == 2


def test_sack_recovery_paces_the_reduction_with_prr() -> None:
    """RFC 6937 PRR (with SSRB), as Linux's tcp_cwnd_reduction: no inflation; while pipe is
    above ssthresh, ceil(ssthresh * delivered / RecoverFS) - sent may go out, so the 5-segment
    reduction (cwnd 10 -> ssthresh 5, Reno) is spread over the round trip: one segment for
    every second one SACKed, instead of RFC 6675's silence until pipe < cwnd then one per
    SACK. Below ssthresh, one per SACK up to it."""
    t, conn = sack_conn()
    sent_segments(t, conn, 10)
    t.recv()
    conn.send(b"n" * (10 * MSS))  # more new data waiting
    t.engine.flush(t.now)
    assert t.recv() == []  # cwnd (IW) is full
    out = []
    for i in range(1, 10):  # segment 0 lost, 1..9 SACKed one by one
        t.send(dupack(0, [(MSS, (i + 1) * MSS)]))
        out.append([x // MSS for x in starts(t)])
    assert conn.recovery.cc.ssthresh == 7300
    # 1st SACK: RACK (zero RTT) marks 0 lost, PRR lets one out: the retransmission.
    # Then (delivered, PRR's allowance): 2 -> 0, 3 -> 1, 4 -> 0, 5 -> 1, 6 -> 0; at the
    # 7th pipe = ssthresh: 0; then one per SACK (pipe 4 segments < ssthresh 5).
    assert out == [[0], [], [10], [], [11], [], [], [12], [13]]
    pipe = conn.recovery.board.pipe(conn.snd_nxt - conn.snd_una)
    assert pipe == conn.recovery.cc.cwnd == conn.recovery.cc.ssthresh


def test_prr_under_cubic_spreads_its_smaller_reduction() -> None:
    """The same loss under CUBIC (RFC 9438: ssthresh = 0.7 * flight = 7 segments): PRR lets
    ceil(7 * delivered / 10) - sent out per SACK above ssthresh, then one per SACK."""
    t, conn = sack_conn(congestion_control="cubic")
    sent_segments(t, conn, 10)
    t.recv()
    conn.send(b"n" * (10 * MSS))
    t.engine.flush(t.now)
    assert t.recv() == []
    out = []
    for i in range(1, 10):
        t.send(dupack(0, [(MSS, (i + 1) * MSS)]))
        out.append([x // MSS for x in starts(t)])
    assert conn.recovery.cc.ssthresh == 7 * MSS
    assert out == [[0], [10], [11], [], [], [12], [13], [14], [15]]


def test_dsack_and_bogus_blocks_mark_nothing() -> None:
    t, conn = sack_conn()
    sent_segments(t, conn, 4)
    t.recv()
    t.send(ack(MSS, sack=((L, L + MSS),)))  # D-SACK below the cumulative ACK
    t.send(ack(MSS, sack=((L + 10 * MSS, L + 11 * MSS),)))  # beyond SND.NXT
    assert conn.recovery.board.sacked_bytes == 0


def test_newreno_recovery_sends_what_sack_recovery_sends() -> None:
    """Without SACK, dupacks count as segments that left the network (Linux's
    tcp_add_reno_sack), so PRR (RFC 6937) paces NewReno recovery as it paces SACK recovery:
    one segment 0 lost, the same dupacks with and without SACK blocks let the same segments
    out after the same ACKs (RFC 6582's inflation sent nothing until it passed FlightSize).
    (A partial ACK then differs by design: NewReno deems the next segment lost.)"""
    from tests.unit.tcp.test_rack import RTT, numbers, peer_ack, rtt_conn

    runs = []
    for sack in (True, False):
        t, conn = rtt_conn(sack=sack)
        conn.send(b"d" * (20 * conn.mss))
        t.engine.flush(t.now)
        assert numbers(t, conn) == list(range(10))
        t.now += RTT
        out = []
        for i in range(1, 10):  # 1..9 arrive, each answered at once
            t.now += 0.001
            t.send(peer_ack(conn, 0, sack=[(1, i + 1)] if sack else []))
            out.append(numbers(t, conn))
        runs.append(out)
    assert runs[0] == runs[1]
    assert runs[1][:5] == [[10], [11], [0], [], [12]]  # RFC 3042, fast retransmit, PRR


def test_idle_restart_shrinks_cwnd_to_the_initial_window() -> None:
    """RFC 5681 4.1: after an idle period longer than the RTO, start from IW again."""
    t, conn = established_passive()
    conn.recovery.cc.cwnd = 40 * MSS
    sent_segments(t, conn, 1)
    t.recv()
    t.send(ack(MSS))
    t.now += 5.0  # idle, far longer than the RTO
    sent_segments(t, conn, 30)
    assert len(t.recv()) == 10  # IW again, not the 40 segments cwnd allowed
    assert conn.recovery.cc.cwnd == 10 * MSS


def test_an_application_limited_sender_does_not_grow_cwnd() -> None:
    t, conn = established_passive()
    start = conn.recovery.cc.cwnd
    for i in range(20):  # one small segment at a time: never cwnd-limited
        conn.send(b"x" * 100)
        t.engine.flush(t.now)
        t.recv()
        t.send(ack(100 * (i + 1)))
    assert conn.recovery.cc.cwnd == start


def test_reordered_duplicate_acks_survive_paws() -> None:
    """Linux's tcp_disordered_ack: a dupack overtaken by a later one still counts."""
    t, conn = established_passive(timestamps=True)
    conn.ts_ok = True
    conn.ts_recent = 5000
    sent_segments(t, conn, 6)
    t.recv()
    for tsval in (5003, 5001, 5002):  # the 2nd and 3rd arrive with older timestamps
        t.send(seg(seq=R, ack=L, ts=(tsval, 0)))
    assert conn.recovery.dupacks == 3 and conn.recovery.ca_state == "recovery"


def test_an_overtaken_dupack_with_a_smaller_window_survives_paws() -> None:
    """Issue 11 (about 40 PAWS drops a second under jitter): Linux's tcp_disordered_ack
    exempts a pure duplicate ACK at RCV.NXT that would not update the window
    (tcp_may_update_window: SND.WL1 == SEG.SEQ and the window is not larger) with a TSval
    within the RTO of TS.Recent. The receiver's window moves between its dupacks, so the
    overtaken one often carries a smaller window than the one already taken: it is processed
    (before: only an identical window was exempt, the rest dropped by PAWS). Once in, RFC
    9293's window update applies (a change of window: not a dupack by RFC 5681's definition)."""
    t, conn = established_passive(timestamps=True)
    conn.ts_ok = True
    conn.ts_recent = 5000
    sent_segments(t, conn, 6)
    t.recv()
    t.send(seg(seq=R, ack=L, window=65535, ts=(5003, 0)))
    assert conn.recovery.dupacks == 1
    t.send(seg(seq=R, ack=L, window=64000, ts=(5001, 0)))  # sent earlier, overtaken
    assert t.counters.drops.get(Drop.TCP_PAWS, 0) == 0 and conn.snd_wnd == 64000
    t.send(seg(seq=R, ack=L, window=64000, ts=(4000, 0)))  # more than the RTO behind
    assert t.counters.drops[Drop.TCP_PAWS] == 1


def test_icmp_errors_on_an_established_connection_are_soft() -> None:
    from netstack.wire import ipv4 as wipv4
    from tests.unit.tcp.tcptools import LOCAL_IP, LOCAL_PORT, REMOTE_IP, REMOTE_PORT

    t, conn = established_passive(retries=2)
    sent_segments(t, conn, 1)
    t.recv()
    inner = wipv4.Ipv4Header(20, 0, 40, 0, False, False, 0, 64, 6, 0, LOCAL_IP, REMOTE_IP)
    quoted = memoryview(
        LOCAL_PORT.to_bytes(2, "big") + REMOTE_PORT.to_bytes(2, "big") + L.to_bytes(4, "big")
    )
    t.engine.receive_error(3, 3, inner, quoted, t.now)  # even port unreachable: soft here
    assert conn.state.value == "established" and conn.soft_error is not None
    t.run_until(t.now + 100)
    assert isinstance(t.events[-1][1], TimeoutError)
    assert "Connection refused" in str(t.events[-1][1])  # the soft error, reported last


# -- recovery arithmetic against Linux (see also test_linux_trace.py) ---------------------------
def test_limited_transmit_is_not_in_the_flight_that_ssthresh_halves() -> None:
    """RFC 5681 3.2 step 2: data sent by limited transmit MUST NOT count in the FlightSize
    that sets ssthresh. 10 out (cwnd 10), two SACKs send 10 and 11, the third finds 0 lost
    (DupThresh SACKed: RACK's window is zero): ssthresh is 10/2 = 5 segments (Linux:
    cwnd/2), not FlightSize 12/2 = 6."""
    from tests.unit.tcp.test_rack import RTT, numbers, peer_ack, rtt_conn

    t, conn = rtt_conn()
    conn.send(b"d" * (14 * conn.mss))
    t.engine.flush(t.now)
    assert len(t.recv()) == 10
    t.now += RTT
    t.send(peer_ack(conn, 0, sack=[(1, 2)]))
    t.now += 0.001
    t.send(peer_ack(conn, 0, sack=[(1, 3)]))
    assert numbers(t, conn) == [10, 11]  # limited transmit: pipe falls by one per SACK
    t.now += 0.001
    t.send(peer_ack(conn, 0, sack=[(1, 4)]))
    assert numbers(t, conn)[0] == 0 and conn.recovery.ca_state == "recovery"
    assert conn.recovery.cc.ssthresh == 5 * conn.mss


def test_prr_counts_sacked_data_as_delivered_once() -> None:
    """RFC 6937 DeliveredData = delta(SND.UNA) + delta(SACKed): a partial ACK over data
    SACKed before delivers only what it newly covers. 0 and 4 lost, the rest SACKed; the
    retransmission of 0 arrives: the ACK moves SND.UNA over 0-3 but delivers one segment,
    so PRR's count grows by one segment, not four."""
    from tests.unit.tcp.test_rack import RTT, peer_ack, rtt_conn

    t, conn = rtt_conn()
    conn.send(b"d" * (10 * conn.mss))
    t.engine.flush(t.now)
    t.recv()
    t.now += RTT
    for i in range(2, 5):
        t.send(peer_ack(conn, 0, sack=[(1, i)]))
    for i in range(6, 11):
        t.send(peer_ack(conn, 0, sack=[(5, i), (1, 4)]))
    assert conn.recovery.ca_state == "recovery"
    before = conn.recovery.prr_delivered
    t.now += RTT
    t.send(peer_ack(conn, 4, sack=[(5, 10)]))
    assert conn.recovery.ca_state == "recovery"
    assert conn.recovery.prr_delivered - before == conn.mss
