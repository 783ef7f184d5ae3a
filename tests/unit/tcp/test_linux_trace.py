"""Our sender against Linux's, segment by segment, on the same ACKs (issue 11, "Recovery
arithmetic": limited transmit, early recovery, RACK, TLP).

Each trace in data/linux/ was recorded by tests/integration/tcp/linux_sender.py: the kernel
(6.18; congestion control reno, cubic for one trace; tcp_recovery=1, tcp_early_retrans=3,
tcp_reordering=3, tcp_sack=1, initial cwnd 10; no timestamps or window scaling negotiated;
gso_max_segs 1: each trace's JSON lists the sysctls in effect) sent 10-30 segments to a
receiver we scripted on a TUN, which dropped or delayed chosen segments and ACKed every segment
with SACK blocks. lintrace_replay feeds the same ACKs at the same times to our engine. Every
data segment must go out after the same ACK as Linux's, with the same sequence number: new data
on the first dupacks (limited transmit), the fast retransmit on the third (RACK with a zero
window once DupThresh segments are SACKed: tcp_rack_reo_wnd; tcp_time_to_recover), PRR's pacing
in recovery (tcp_cwnd_reduction), growth after it, tail loss probes (tcp_schedule_loss_probe),
and no retransmission for a reordering RACK's window covers (tcp_rack_detect_loss).

Without SACK (reno_early_loss) they agree as well: dupacks count as segments delivered
(tcp_add_reno_sack), PRR paces NewReno recovery, and it ends only past the recovery point
(tcp_try_undo_recovery).

Where we deliberately differ, the test says so and checks what does agree:
  - The first pure ACK after the handshake that repeats SND.UNA is a duplicate ACK by RFC 5681
    (2), but not to Linux: its SEG.SEQ is past SND.WL1 (the SYN-ACK's), so
    tcp_may_update_window calls it a window update (FLAG_WIN_UPDATE, not a dupack). Only
    a loss of the very first segment without SACK shows it: we count one dupack more.
  - Timer-driven sends go out at the same point in the ACK sequence, but Linux's timers run
    on jiffies (HZ=250 here: 4 ms ticks, and the timer wheel's coarser levels beyond 256 ms)
    and its timer wheel rounds timers beyond 256 ms up to 8 ticks: times are compared with
    that slack. (The RTO is Linux's formula in both, SRTT + max(4*RTTVAR, 200 ms), rtt.py.)
"""

from __future__ import annotations

import pytest

from tests.unit.tcp.lintrace_replay import diff, linux_sent, load, replay

MATCHED = [
    "reno_early_loss",  # (b) segment 2 lost, no SACK: NewReno, dupacks as sacked_out
    "sack_first_loss",  # (a') segment 0 lost
    "sack_early_loss",  # (a) segment 2 lost, after two ACKs of slow start
    "sack_tail_loss",  # (c) the last segment lost: TLP with one segment out
    "sack_tail_loss_2",  # (c') the last two lost: TLP, then RACK finds the other
    "sack_reorder_2",  # (d) reordered by two segments: RACK waits, no retransmission
    "sack_reorder_3",  # (d') reordered by three: DupThresh, a spurious retransmission
    "cubic_sack_early_loss",  # (a) under CUBIC: ssthresh 0.7 * cwnd in whole segments
    "sack_reorder_timer_late",  # (d'') RACK's timer fires before the late segment, for both
]


def keys(sent) -> list[tuple[int, int, int]]:
    return [o.key() for o in sent]


@pytest.mark.parametrize("name", MATCHED)
def test_sender_sends_what_linux_sends(name: str) -> None:
    trace = load(name)
    linux = linux_sent(trace)
    ours, conn = replay(trace)
    assert keys(ours) == keys(linux), f"{name}: {trace['doc']}\n{diff(linux, ours)}"
    assert conn.snd_una == conn.snd_nxt == conn.iss + 1 + trace["segments"] * trace["mss"]


def test_limited_transmit_is_one_segment_per_dupack_then_the_fast_retransmit() -> None:
    """(a') in detail: the first two dupacks (SACKing 1, then 1-2) each let one new segment
    out, the third (three SACKed: DupThresh, RACK's window zero) the retransmission of 0 —
    neither earlier nor one segment more."""
    trace = load("sack_first_loss")
    ours, _ = replay(trace)
    after_dupacks = [(o.acks, o.seq // trace["mss"]) for o in ours if 1 <= o.acks <= 4]
    assert after_dupacks == [(1, 10), (2, 11), (3, 0)]


def test_prr_reduction_matches_linux_after_limited_transmit() -> None:
    """(a) Linux's ssthresh is cwnd/2 = 6 (cwnd 12 after two ACKs of slow start), not
    FlightSize/2 = 7: the two segments limited transmit sent do not count (RFC 5681 3.2
    step 2). PRR then sends on every second SACK: after ACKs 7 and 9, not 6 and 8."""
    trace = load("sack_early_loss")
    ours, _ = replay(trace)
    rec = [(o.acks, o.seq // trace["mss"]) for o in ours if 5 <= o.acks <= 10]
    assert rec == [(5, 2), (7, 16), (9, 17)]
    assert rec == [(o.acks, o.seq // trace["mss"]) for o in linux_sent(trace) if 5 <= o.acks <= 10]


def test_reordering_within_racks_window_is_not_retransmitted() -> None:
    """(d) Two segments SACKed above a late one: RACK's window (min_RTT/4) is not zero yet,
    the late segment arrives inside it; nothing is retransmitted, as Linux."""
    trace = load("sack_reorder_2")
    ours, conn = replay(trace)
    seqs = [o.seq for o in ours]
    assert len(seqs) == len(set(seqs)) == trace["segments"]
    assert conn.counters.tcp_retransmitted_segments == 0


@pytest.mark.parametrize("name", ["sack_tail_loss", "sack_tail_loss_2"])
def test_tail_loss_probe_time(name: str) -> None:
    """The probe follows the last ACK by 2*SRTT + 2 ms (two out) as Linux's, up to its
    jiffies; with one out, the PTO is capped by the RTO, SRTT + max(4*RTTVAR, 200 ms) in both
    (rtt.py takes Linux's formula): Linux's is later only by its timer wheel's slack, which
    beyond 256 ms rounds up to 8 ticks (32 ms at HZ=250)."""
    trace = load(name)
    linux = linux_sent(trace)
    ours, _ = replay(trace)
    probe_linux = next(o for o in linux if o.acks == trace["segments"] - len(trace["drop"]))
    probe_ours = next(o for o in ours if o.acks == probe_linux.acks)
    assert probe_ours.key() == probe_linux.key()
    if name == "sack_tail_loss_2":
        assert 0 <= probe_linux.t_ms - probe_ours.t_ms <= 12  # jiffies: up to 3 ticks
    else:
        assert 0 <= probe_linux.t_ms - probe_ours.t_ms <= 36  # 8 ticks of the wheel, and one


def test_first_ack_after_the_handshake_is_a_dupack_for_us_not_for_linux() -> None:
    """Segment 0 lost, no SACK: the receiver's first ACK repeats SND.UNA with SEG.SEQ one
    past the SYN-ACK's. RFC 5681 counts it as a duplicate ACK; Linux's tcp_ack takes it as a
    window update (SEG.SEQ after SND.WL1). So our limited transmit and fast retransmit come
    one ACK earlier than Linux's, and so is all of recovery, the same segments; once both
    have left it they agree ACK for ACK. We keep RFC 5681's definition."""
    trace = load("reno_first_loss")
    linux = linux_sent(trace)
    ours, _ = replay(trace)
    mss = trace["mss"]
    early_linux = [(o.acks, o.seq // mss) for o in linux if 1 <= o.acks <= 4]
    assert early_linux == [(2, 10), (3, 11), (4, 0)]
    recovered = 12  # the ACK past the recovery point (segment 12) for Linux
    shifted = [(o.acks + (0 < o.acks < recovered), o.seq, o.length) for o in ours]
    assert shifted == keys(linux), diff(linux, ours)


def test_rack_timer_granularity_against_linux() -> None:
    """(d'') The residue of issue 11's "RACK marked segments lost before the ACK that would
    have saved them": 5 segments, 3-4 SACKed above a late 2, then nothing until 2 arrives.
    RACK's deadline is reo_wnd (min_RTT/4 = 12.5 ms) after the second SACK; our timer fires
    TIMEOUT_MIN (2 ms) after it, Linux's at usecs_to_jiffies(timeout + 2 ms): 4 ticks of
    4 ms at HZ=250, then the next tick boundary — 16 to 20 ms. A segment arriving 17 ms
    after the SACK (this trace) is retransmitted by us, not by Linux; one arriving after
    Linux's tick (sack_reorder_timer_late: Linux fired at 18.4 ms) by both, after the same
    ACK (test_sack_sender_sends_what_linux_sends). Kept: our timer is RFC 8985's, exact,
    and Linux's slack is a property of its HZ (at HZ=1000 it fires at 15-16 ms)."""
    trace = load("sack_reorder_timer")
    linux = linux_sent(trace)
    ours, _ = replay(trace)
    extra = [o for o in ours if o.key() not in set(keys(linux))]
    assert keys([o for o in ours if o not in extra]) == keys(linux)
    (rexmit,) = extra
    acks = [e for e in trace["events"] if e["dir"] == "in" and e["flags"] != "SA"]
    second_sack, late = acks[3]["t"], acks[4]["t"]
    assert rexmit.acks == 4 and rexmit.seq == 2 * trace["mss"]
    reo_wnd = trace["rtt_ms"] / 4
    assert second_sack + reo_wnd < rexmit.t_ms < second_sack + reo_wnd + 3 < late
    assert late - second_sack < 20  # inside Linux's 16-20 ms at HZ=250: it waited
