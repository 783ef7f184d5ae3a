"""Loss recovery for one connection: RTT, the scoreboard, RACK-TLP, congestion control, undo.

This sits beside connection.py the way aioquic's recovery.py sits beside its connection: the
connection keeps the RFC 9293 record (sequence space, windows, buffers, the state machine,
ACK policy) and tells recovery what happened; recovery decides what is lost, how much may be
in flight, and when its timers fire. It never transmits. What it finds lost it *marks* on the
scoreboard, and the connection's output resends lost records first (RFC 6675 NextSeg() rule
1). The two retransmissions that must go out whatever cwnd says — the fast retransmit (RFC
5681 3.2 step 4 / RFC 6675 5 step 4.3) and the one after an RTO (RFC 6298 5.4) — and the
probe of a recovery PTO are handed over as `owed`; an open-state tail loss probe (RFC 8985
7.3), which may be new data, as `probe_owed`. cwnd has one owner: only this module (through
`cc`) changes it.

The connection's side of the interface (called in this order for one ACK):
  take_sack(blocks, ack)         validated SACK blocks -> (new bytes SACKed, D-SACK block)
  on_new_ack(ack, acked, ...)    SND.UNA advanced (RTT sample, cc growth, recovery exit)
  on_dupack(now)                 RFC 5681 duplicate ACK
  on_sack_ack(...)               RACK, D-SACK undo, probe resolution
or, for the common ACK without SACK blocks (open state, nothing SACKed or lost: fast_ok()),
  ack_fast(ack, acked, ...)      the three above fused for an ACK of new data
  ack_nothing_out()              the same for an ACK of nothing with nothing in flight
and for its output and timers:
  budget(flight)                 bytes cwnd lets out now (RFC 6675 pipe, RFC 3042)
  resend_lost()                  whether the lost-first rule applies now
  take_owed(snd_una)             a record to resend before anything else, if any
  sent(...) / retransmitted(...) bookkeeping for what went out
  on_rto(now, repeated)          the retransmission timer fired (after the retry checks)
  on_rack_timer(now) / on_pto(now, transmitting) / next_timer()

Loss detection (SACK): RACK-TLP (rack.py, RFC 8985) — time-based marks that also catch lost
retransmissions, a reordering window that D-SACKs widen, tail loss probes (two at most, and
one in recovery when the ACKs stop while a retransmission is out). Without SACK: NewReno
(RFC 6582) with RFC 3042, its dupthresh raised when reordering proved it wrong. Spurious
reductions are undone (Eifel detection RFC 3522 with timestamps, D-SACK counting RFC 3708;
the RFC 4015 response: the saved congestion state comes back). In recovery PRR (RFC 6937
with SSRB, as Linux's tcp_cwnd_reduction) sets cwnd on each ACK, with SACK or without: then
each dupack counts as a segment delivered (RFC 6937 3's estimate; Linux's tcp_add_reno_sack
and sacked_out) instead of RFC 6582's cwnd inflation, which sent nothing for half a round
trip and then a burst; RFC 6582's recovery point, partial ACKs and NewReno's "next hole is
lost" stay, and recovery without SACK ends past the recovery point, not at it
(tcp_try_undo_recovery).

Checked against Linux: tests/unit/tcp/test_linux_trace.py replays the ACKs of recorded Linux
sender traces (tests/integration/tcp/linux_sender.py) and requires the same segments after
the same ACKs. With SACK they agree segment by segment: limited transmit (one new segment
per SACKing dupack, as Linux's pipe falls), the fast retransmit on the third (RACK's window
zero once DupThresh segments are SACKed: tcp_rack_reo_wnd), PRR (tcp_cwnd_reduction), the
growth after it, tail loss probes, and no retransmission for reordering within RACK's
window; without SACK as well. The deliberate differences: the first pure ACK after the
handshake is a duplicate ACK by RFC 5681 (2) but a window update to Linux (its SEG.SEQ is
past SND.WL1, tcp_may_update_window), so a loss of the very first segment without SACK is
repaired one ACK earlier here; and RACK's timer, exact here, on jiffies there (below).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from netstack.proto.tcp.rack import Rack
from netstack.proto.tcp.rtt import RttEstimator
from netstack.proto.tcp.scoreboard import DUPTHRESH, Scoreboard, Sent
from netstack.proto.tcp.seq import HALF, MASK, unwrap

if TYPE_CHECKING:
    from netstack.counters import Counters
    from netstack.proto.tcp.cc import CongestionControl
    from netstack.proto.tcp.config import TcpConfig

# Tail loss probe (RFC 8985 7.2): PTO = 2*SRTT, plus the worst-case delayed ACK (WCDelAckT)
# when only one segment is out (its ACK may be delayed), and no later than the RTO would fire:
# then the probe goes instead of the RTO (RFC 8985 7.2 "If Now() + PTO > TCP_RTO_expire()";
# Linux's tcp_schedule_loss_probe takes min(timeout, RTO left) the same way).
# Linux profile: WCDelAckT is Linux's TCP_RTO_MIN (200 ms), and with more than one segment out
# Linux adds TCP_TIMEOUT_MIN_US (2 ms, net/ipv4/tcp_output.c since 6.7; 2 jiffies before) so
# the probe does not race an ACK due at exactly 2*SRTT. RFC 8985 leaves both to the sender.
WC_DEL_ACK = 0.2
TIMEOUT_MIN = 0.002
# RACK's reordering timer fires TIMEOUT_MIN after the first outstanding record would count as
# lost (Linux's tcp_rack_mark_lost: usecs_to_jiffies(timeout + TCP_TIMEOUT_MIN_US)), so the
# check runs when the record has expired, not a float-rounding instant before. Linux's timer
# also rounds up to jiffies and fires on a tick: 16-20 ms for a 12.5 ms window at HZ=250,
# where ours fires at 14.5 ms, so a segment reordered by 15-20 ms is retransmitted here and
# not there (Linux trace sack_reorder_timer, test_linux_trace.py). Kept exact: the slack is
# Linux's HZ, not its algorithm (HZ=1000 fires at 15-16 ms).
# Probes per episode: RFC 8985 7.3 and Linux send one (tlp_high_seq). We send a second after
# twice the PTO (QUIC's PTO backoff, RFC 9002 6.2): it covers a lost probe or probe ACK for
# the price of one segment instead of an RTO that collapses cwnd. A deliberate deviation.
MAX_TLP = 2
MAX_DUPTHRESH = 64  # NewReno's dupthresh grows on proven reordering up to this (tp->reordering)
MAX_UNDO_REXMITS = 256  # retransmissions tracked per episode for D-SACK undo; beyond: Eifel only

# Loss-recovery states (Linux's TCP_CA_Open / TCP_CA_Recovery / TCP_CA_Loss).
OPEN, RECOVERY, LOSS = "open", "recovery", "loss"

Timestamp = tuple[int, int] | None  # an ACK's (TSval, TSecr), None without the option


class Tcb(Protocol):
    """What recovery reads of the connection (it writes none of it), plus `wake()`: ask the
    engine for an output pass at the flush point."""

    iss: int
    snd_una: int
    snd_nxt: int
    mss: int
    sack_ok: bool
    ts_ok: bool

    def tsval(self, now: float) -> int: ...
    def wake(self) -> None: ...


class Recovery:
    """RFC 6298 / 5681 / 6582 / 6675 / 8985 / 3522 / 2883 / 4015 state of one sender."""

    __slots__ = (
        "acks_merged",
        "board",
        "ca_state",
        "cc",
        "counters",
        "cwnd_limited",
        "delivered",
        "dupacks",
        "dupthresh",
        "flight_mark",
        "newly_lost",
        "owed",
        "prior_cwnd",
        "probe_owed",
        "prr_delivered",
        "prr_out",
        "rack",
        "rack_at",
        "recover",
        "reno_sacked",
        "rto_at",
        "rto_tsval",
        "rtt",
        "tcb",
        "tlp_at",
        "tlp_end",
        "tlp_probes",
        "tlp_retrans",
        "tlp_round",
        "undo_marker",
        "undo_rexmits",
        "undo_saved",
        "undo_tsval",
        "undos",
    )

    def __init__(self, tcb: Tcb, cfg: TcpConfig, counters: Counters) -> None:
        self.tcb = tcb
        self.counters = counters
        self.rtt = RttEstimator(cfg.rto_initial, cfg.rto_min, cfg.rto_max)
        self.acks_merged = 1  # the ACKs ack_fast's ACK stands for (Connection.release_ack)
        self.cc: CongestionControl | None = None  # made once the MSS is known
        self.board = Scoreboard()
        self.rack = Rack()
        self.ca_state = OPEN
        self.recover = 0
        self.dupacks = 0
        self.dupthresh = DUPTHRESH  # NewReno's; RACK measures reordering in time instead
        self.cwnd_limited = False  # the connection's last send stopped at cwnd
        self.flight_mark = 0  # SND.NXT - SND.UNA after the last output (see _flight_size)
        # timers (absolute times, None when off)
        self.rto_at: float | None = None  # RFC 6298 retransmission timer (SYNs too)
        self.rack_at: float | None = None  # RACK's reordering timer
        self.tlp_at: float | None = None  # the loss probe timer (PTO)
        self.rto_tsval = 0  # our TSval when the retransmission timer last fired
        # what the next output must send before anything else
        self.owed: Sent | None = None
        self.probe_owed = False
        self.tlp_end: int | None = None  # SND.NXT when the probe went out, until resolved
        self.tlp_retrans = False  # the probe was a retransmission (not new data)
        self.tlp_round = 0  # probes sent since tlp_end was set
        self.tlp_probes = 0
        # Undo of spurious reductions: the episode started at SND.UNA = undo_marker with the
        # congestion state undo_saved; undo_tsval is our TSval then (Eifel); undo_rexmits
        # counts the retransmissions per record start, until D-SACKs prove them needless.
        self.undo_marker: int | None = None
        self.undo_saved: object = None
        self.undo_tsval: int | None = None
        self.undo_rexmits: dict[int, int] | None = None
        self.undos = 0
        # PRR (RFC 6937) during SACK recovery: bytes delivered and sent since it began, and
        # cwnd when it began (Linux's prior_cwnd, its RecoverFS); newly_lost: bytes this ACK
        # marked lost.
        self.prr_delivered = self.prr_out = self.prior_cwnd = 0
        self.newly_lost = 0
        # Bytes the current ACK newly delivered: RFC 6937's DeliveredData, delta(SND.UNA) +
        # delta(SACKed) (data SACKed before and now cumulatively ACKed was delivered then, not
        # again now), Linux's tp->delivered - prior_delivered in bytes. It feeds PRR and cwnd
        # growth (see on_new_ack).
        self.delivered = 0
        # Without SACK, the dupacks since SND.UNA last moved, in bytes (one segment each):
        # segments that left the network, as Linux's tcp_add_reno_sack counts them in
        # sacked_out, for pipe and PRR in NewReno recovery.
        self.reno_sacked = 0

    def start(self, iss: int) -> None:
        """The send space begins at ISS: nothing to recover below it."""
        self.recover = iss

    def stop(self) -> None:
        """TIME_WAIT or CLOSED: nothing is in flight any more, no timer of ours runs."""
        self.rto_at = self.rack_at = self.tlp_at = None
        self.owed = None
        self.probe_owed = False
        self.board.clear()

    # =========================================================================================
    # RTT
    # =========================================================================================
    def sample_rtt(self, rtt: float, samples_per_rtt: int = 1) -> None:
        self.rtt.sample(rtt, samples_per_rtt)
        self.counters.tcp_rtt_seconds.observe(rtt)
        self.rack.sample_rtt(rtt)

    # =========================================================================================
    # ACK arrival
    # =========================================================================================
    def take_sack(
        self, blocks: tuple[tuple[int, int], ...], ack: int
    ) -> tuple[int, tuple[int, int] | None]:
        """RFC 2018 on the sender: validated blocks above the cumulative ACK mark records.
        Returns (bytes newly SACKed, the D-SACK block if the first one is one: RFC 2883 4,
        below the cumulative ACK or inside the second block)."""
        self.board.delivered.clear()
        self.newly_lost = 0
        self.delivered = 0
        if not blocks:
            return 0, None
        tcb = self.tcb
        una = tcb.snd_una if tcb.snd_una > ack else ack
        nxt = tcb.snd_nxt
        valid = []
        dsack = None
        ranges = [(unwrap(lw, una), unwrap(rw, una)) for lw, rw in blocks]
        left, right = ranges[0]
        if tcb.iss < left < right <= nxt and (
            right <= ack or (len(ranges) > 1 and ranges[1][0] <= left and right <= ranges[1][1])
        ):
            dsack = (left, right)
        for i, (left, right) in enumerate(ranges):
            if una <= left < right <= nxt and (i or dsack is None):  # else bogus: ignored
                valid.append((left, right))
        new = self.board.sack(valid) if valid else 0
        self.delivered = new
        return new, dsack

    def on_new_ack(self, ack: int, acked: int, flight: int, ts: Timestamp, now: float) -> None:
        """SND.UNA < SEG.ACK <= SND.NXT: new data acknowledged (the connection has moved
        SND.UNA to `ack` already; `flight` is SND.NXT - SND.UNA from before)."""
        tcb = self.tcb
        board = self.board
        sacked = board.sacked_bytes
        sent_at, _ = board.ack(ack)
        # RFC 6937 DeliveredData: what this ACK covers that no earlier SACK had delivered.
        self.delivered += max(acked - (sacked - board.sacked_bytes), 0)
        if self.reno_sacked:
            # Without SACK the dupacks stood for segments delivered: a cumulative ACK
            # delivers what they did not cover, one segment at least (the hole), and the rest
            # of it uses them up (Linux's tcp_remove_reno_sacks; RFC 6937 3: DeliveredData
            # estimated from dupacks).
            mss = tcb.mss
            self.delivered = max(acked - self.reno_sacked, min(acked, mss))
            self.reno_sacked = max(self.reno_sacked - max(acked - mss, 0), 0)
        # RTT (RFC 6298 3): from the newest acknowledged record when none of them was ever
        # retransmitted (Karn), else from the echoed timestamp (RFC 7323 4.1) — but not one
        # older than our last timeout, which would measure the timeout, not the path.
        rtt: float | None = None
        if sent_at is not None:
            rtt = now - sent_at
        elif tcb.ts_ok and ts is not None and ts[1]:
            d = (tcb.tsval(now) - ts[1]) & MASK
            if d < HALF and ((ts[1] - self.rto_tsval) & MASK) < HALF:
                rtt = d / 1000.0
        if rtt is not None:
            self.sample_rtt(rtt, self.rtt.expected_samples(flight, tcb.mss))
        cc = self.cc
        assert cc is not None
        if self.undo_tsval is not None and self.ca_state != OPEN and ack > self.undo_marker:
            self._eifel(ts, now)
        state = self.ca_state
        if state == RECOVERY:
            if ack == self.recover and not tcb.sack_ok and ack < tcb.snd_nxt:
                # Without SACK, Linux holds Recovery until something *above* the recovery
                # point is ACKed (tcp_try_undo_recovery, after RFC 2582): the dupacks are
                # spent, PRR runs on. (Linux trace reno_early_loss: leaving here grew cwnd
                # one ACK early.) Not when all is ACKed: nothing is left to pace.
                self.reno_sacked = 0
                self._prr(self.delivered, True)
            elif ack >= self.recover:  # full ACK: recovery is over
                self.ca_state = OPEN
                self.dupacks = 0
                cc.on_recovery_exit(now)
                self.rack.on_recovery_exit()
                self.reno_sacked = 0
                if self.cwnd_limited:
                    # PRR is over (cwnd = ssthresh, RFC 6937): the ACK that ends it counts
                    # towards congestion avoidance, as in Linux, whose tcp_cong_control runs
                    # after tcp_fastretrans_alert has left Recovery (Linux trace
                    # sack_first_loss: cwnd 5 -> 6 on the fifth ACK after the exit, counting
                    # the exit ACK; without it we grew one ACK later).
                    cc.on_ack(self.delivered, now, rtt, flight)
            elif tcb.sack_ok:
                pass  # RACK (after the whole ACK is taken in) marks what is lost
            else:
                # RFC 6582 3.2 (4) partial ACK: the next hole is lost; it goes first (the
                # lost-first rule) as PRR lets it (Linux's tcp_newreno_mark_lost).
                if board.mark_first_lost():
                    first = board.first()
                    assert first is not None
                    self.newly_lost += first.end - first.start
                self._prr(self.delivered, True)
        else:
            if state == LOSS and ack >= self.recover:
                self.ca_state = OPEN
                self.rack.on_recovery_exit()
            self.dupacks = 0
            self.reno_sacked = 0
            # Grow only a window that is in use (Linux's tcp_is_cwnd_limited): in slow start
            # while cwnd < 2 * flight, otherwise when the last send stopped at cwnd.
            # By the bytes newly delivered, as Linux's tcp_cong_control(delivered): a
            # cumulative ACK over data SACKed before grows cwnd by what it newly delivers
            # (RFC 5681 3.1 allows min(N, SMSS) per ACK; RFC 3465's L is a cap, not a
            # target). Linux trace sack_reorder_2: the ACK that fills a reordering hole
            # covers 3 segments, 2 SACKed before: Linux grows by 1, we grew by 2 (L) and
            # sent one segment more.
            if self.cwnd_limited or (cc.cwnd < cc.ssthresh and cc.cwnd < 2 * flight):
                cc.on_ack(self.delivered, now, rtt, flight)
        # RFC 6298 5.2/5.3: stop the timer when all is acknowledged, else restart it.
        if tcb.snd_una >= tcb.snd_nxt:
            self.rto_at = None
        else:
            self.rto_at = now + self.rtt.rto
        self._tlp_arm(now)  # RFC 8985 7.2: restarted by an ACK of new data

    def fast_ok(self) -> bool:
        """The common ACK's preconditions (Linux's tcp_ack without FLAG_SLOWPATH): the open
        state, nothing SACKed or marked lost (so no retransmission is out either), no NewReno
        dupack tally, no probe awaiting its verdict. Then ack_fast is exact."""
        board = self.board
        return (
            self.ca_state == OPEN
            and self.tlp_end is None
            and not self.reno_sacked
            and not board.sacked_bytes
            and not board.lost_bytes
        )

    def ack_fast(self, ack: int, acked: int, flight: int, ts: Timestamp, now: float) -> None:
        """take_sack((), ack), on_new_ack and on_sack_ack(ts, ack, acked, 0, None, now) for an
        ACK of new data without SACK blocks, when fast_ok(): the same steps, in the same order
        and with the same arithmetic, with the branches those preconditions rule out left out
        and the calls fused (one Python call instead of ~15). What it cannot decide in O(1) it
        hands to the general code: RACK's loss detection runs in full unless the oldest
        outstanding record provably was sent after the newest delivered one (then
        RACK_detect_loss marks nothing and arms no timer). The connection has moved SND.UNA
        to `ack`; `flight` is SND.NXT - SND.UNA from before. tests/unit/tcp/test_slim.py
        compares it with the general path (connection.FAST_ACK)."""
        tcb = self.tcb
        board = self.board
        # take_sack((), ack): the per-ACK tallies. With nothing SACKed, on_new_ack's
        # DeliveredData is `acked`.
        board.delivered.clear()
        self.newly_lost = 0
        self.delivered = acked
        # Scoreboard.ack: no record is SACKed or lost, so _forget changes no byte total.
        records = board._records
        head = i = board._head
        n = len(records)
        newest: float | None = None
        any_rexmit = False
        whole = None  # the pieces of a partly acknowledged Run that the ACK covers whole
        while i < n:
            r = records[i]
            if r.end <= ack:
                if r.retransmitted:
                    any_rexmit = True
                else:
                    newest = r.sent_at
                i += 1
                continue
            if r.start < ack:  # partially acknowledged
                seg = r.seg
                if seg:  # a Run (never resent): the pieces wholly below ack are delivered
                    base = r.base
                    k = (ack - base) // seg
                    cut = base + k * seg
                    if cut > r.start:  # (first piece's end, last piece's end and order)
                        first_end = base + ((r.start - base) // seg + 1) * seg
                        whole = (first_end, cut, r.order + k - 1, r.sent_at)
                        newest = r.sent_at
                r.start = ack
                any_rexmit = any_rexmit or r.retransmitted
            break
        delivered = records[head:i] if tcb.sack_ok and i > head else None
        board._head = i
        if i > 64 and i * 2 > n:
            del records[:i]
            board._head = 0
        if board.high_sacked and board.high_sacked <= ack:
            board.high_sacked = 0
        # RTT (as on_new_ack: Karn, else the timestamp echo not older than our last timeout).
        rtt: float | None = None
        if newest is not None and not any_rexmit:
            rtt = now - newest
        elif tcb.ts_ok and ts is not None and ts[1]:
            d = (tcb.tsval(now) - ts[1]) & MASK
            if d < HALF and ((ts[1] - self.rto_tsval) & MASK) < HALF:
                rtt = d / 1000.0
        rack = self.rack
        estimator = self.rtt
        mss = tcb.mss
        if rtt is not None:
            # RttEstimator.expected_samples(flight, mss), in integers (exact: flight < 2**32)
            per_rtt = 2 * mss if mss > 0 else 2
            estimator.sample(rtt, (flight + per_rtt - 1) // per_rtt or 1, self.acks_merged)
            self.counters.tcp_rtt_seconds.observe(rtt)
            if rack.min_rtt is None or rtt < rack.min_rtt:
                rack.min_rtt = rtt
        self.dupacks = 0
        cc = self.cc
        assert cc is not None
        if self.cwnd_limited or (cc.cwnd < cc.ssthresh and cc.cwnd < 2 * flight):
            cc.on_ack(acked, now, rtt, flight)
        snd_nxt = tcb.snd_nxt
        rto_at = self.rto_at = None if ack >= snd_nxt else now + estimator.rto
        # _tlp_arm (open state, no probe out, nothing SACKed).
        srtt = estimator.srtt
        if not tcb.sack_ok or snd_nxt <= ack or srtt is None:
            self.tlp_at = None
        else:
            if snd_nxt - ack <= mss:
                at = now + (2 * srtt + WC_DEL_ACK)
            else:
                at = now + (2 * srtt + TIMEOUT_MIN)
            self.tlp_at = at if rto_at is None or at < rto_at else rto_at
        if not tcb.sack_ok:
            return
        # on_sack_ack -> _rack_ack: Rack.update over the records this ACK delivered (in
        # sequence order, so already sorted by end).
        if delivered or whole is not None:
            echo = None
            if tcb.ts_ok and ts is not None and ts[1]:
                echo = ts[1]
            fack = rack.fack
            for r in delivered or ():
                if r.seg:  # a Run: its pieces, in order, all sent at once, none resent
                    first_end, order = r.first_end(), r.last_order()
                    fack = _rack_run(rack, fack, first_end, r.end, order, r.sent_at, now)
                    continue
                end = r.end
                if end > fack:
                    fack = end
                elif end < fack and not r.retransmitted:
                    rack.reord = True
                r_rtt = now - r.sent_at
                if r.retransmitted:
                    if self._echo_before(echo, r.sent_at):
                        continue
                    if rack.min_rtt is not None and r_rtt < rack.min_rtt:
                        continue
                elif r_rtt >= 0 and (rack.min_rtt is None or r_rtt < rack.min_rtt):
                    rack.min_rtt = r_rtt
                if r.order > rack.order:
                    rack.xmit_ts, rack.order, rack.rtt = r.sent_at, r.order, r_rtt
            if whole is not None:  # (it follows the whole records in sequence)
                fack = _rack_run(rack, fack, *whole, now)
            rack.fack = fack
        # _rack_detect: nothing can be lost when nothing is out, when no record was delivered
        # yet, or when the oldest outstanding record was sent after the newest delivered one
        # and is no retransmission (Rack.detect_loss stops at it).
        self.rack_at = None
        if snd_nxt <= ack or rack.xmit_ts is None:
            return
        head = board._head
        if head >= len(records):
            return  # (no record out: detect_loss has nothing to look at)
        first = records[head]
        if (first.first_order() if first.seg else first.order) > rack.order and (
            not first.retransmitted
        ):
            return
        self._rack_detect(now)
        if self.ca_state == RECOVERY:  # RACK found losses and recovery began: on_sack_ack's
            self._prr(self.delivered, True)  # PRR for this ACK (SND.UNA advanced), and the
            self._tlp_arm(now)  # recovery probe's timer

    def ack_nothing_out(self) -> None:
        """take_sack((), ack) and on_sack_ack(ts, ack, 0, 0, None, now) for an ACK of nothing
        new while nothing is in flight (a receiver's segments), when fast_ok(): RACK has
        nothing delivered and nothing to look at, no probe awaits a verdict, and the open
        state has no PRR to run."""
        self.board.delivered.clear()
        self.newly_lost = 0
        self.delivered = 0
        if self.tcb.sack_ok:
            self.rack_at = None

    def on_dupack(self, now: float) -> None:
        """RFC 5681 duplicate ACK (or, with SACK, an ACK bringing new SACK information).

        With SACK, RACK decides what is lost (on_sack_ack); dupacks only matter when the peer
        sends none of the SACK blocks it agreed to (then as NewReno). Without SACK, NewReno
        with a dupthresh that grows when reordering fooled it (see _undo)."""
        tcb = self.tcb
        self.dupacks += 1
        board = self.board
        if not tcb.sack_ok and self.ca_state != LOSS:
            # A segment has left the network (Linux's tcp_add_reno_sack), but not the hole:
            # at most all but one segment of the flight (tcp_limit_reno_sacked).
            room = tcb.snd_nxt - tcb.snd_una - tcb.mss - self.reno_sacked
            self.delivered = max(min(tcb.mss, room), 0)
            self.reno_sacked += self.delivered
        if self.ca_state == OPEN:
            if self.dupacks >= self.dupthresh and tcb.snd_una >= self.recover:
                if not tcb.sack_ok or not board.sacked_bytes:
                    if board.mark_first_lost():  # RFC 6582 / 6675 (4.3): the first hole, now
                        first = board.first()
                        assert first is not None
                        self.newly_lost += first.end - first.start
                    self._enter_recovery(now)
                    if not tcb.sack_ok:
                        self._prr(self.delivered, False)  # (with SACK: on_sack_ack)
            elif not tcb.sack_ok:
                tcb.wake()  # RFC 3042 limited transmit
        elif self.ca_state == RECOVERY:
            if not tcb.sack_ok:
                self._prr(self.delivered, False)  # RFC 6937 on the dupack's delivery
            tcb.wake()

    def on_sack_ack(
        self,
        ts: Timestamp,
        ack: int,
        acked: int,
        new_sacked: int,
        dsack: tuple[int, int] | None,
        now: float,
    ) -> None:
        """The SACK part of an ACK, once the cumulative part is taken in: RACK, D-SACK undo,
        the resolution of an outstanding probe."""
        self._rack_ack(ts, dsack, now)
        if dsack is not None:
            self._dsack_undo(dsack, now)
        if self.tlp_end is not None:
            self._tlp_ack(ack, acked, dsack, new_sacked, now)
        if self.ca_state == RECOVERY:
            # RFC 6937 DeliveredData, not acked + new_sacked: a partial ACK over data SACKed
            # before delivers only the hole it fills (Linux trace sack_reorder_3: the late
            # original acknowledges 4 segments, 3 of them SACKed; counting all 4 let two
            # segments out where Linux's PRR sends none).
            self._prr(self.delivered, acked > 0)
            self._tlp_arm(now)  # the ACK clock runs: the recovery probe waits on

    def _prr(self, delivered: int, una_advanced: bool) -> None:
        """RFC 6937 Proportional Rate Reduction with its slow-start reduction bound (SSRB),
        as Linux's tcp_cwnd_reduction sizes what goes out in SACK recovery (Reno and CUBIC
        alike: they only chose ssthresh). While pipe is above ssthresh, send ssthresh/RecoverFS
        of what is delivered, spreading the reduction over the round trip instead of a pause
        then a burst; below it, grow back towards ssthresh by what is delivered, one segment
        more when SND.UNA advanced without a new loss (Linux's SSRB variant, which also
        accepts the newly delivered amount when it exceeds the PRR balance). Linux's units
        are packets; here bytes, its "one packet" an MSS. Linux's RecoverFS is cwnd at the
        start (prior_cwnd), where RFC 6937 uses FlightSize: Linux's, as the sender reference.
        The first ACK always lets one segment out (the fast retransmit; here `owed`)."""
        if delivered <= 0 or not self.prior_cwnd:
            return
        cc = self.cc
        assert cc is not None
        tcb = self.tcb
        mss = tcb.mss
        self.prr_delivered += delivered
        pipe = self.board.pipe(tcb.snd_nxt - tcb.snd_una) - self.reno_sacked
        delta = cc.ssthresh - pipe
        if delta < 0:
            # ceil(ssthresh * prr_delivered / RecoverFS), rounded up to whole segments as
            # Linux's packet arithmetic does, minus what went out since recovery began.
            due = -(-cc.ssthresh * self.prr_delivered // self.prior_cwnd)
            sndcnt = -(-due // mss) * mss - self.prr_out
        else:
            sndcnt = max(self.prr_delivered - self.prr_out, delivered)
            if una_advanced and not self.newly_lost:
                sndcnt += mss
            sndcnt = min(delta, sndcnt)
        if not self.prr_out:
            sndcnt = max(sndcnt, mss)
        cc.cwnd = max(pipe + sndcnt, 0)

    def _enter_recovery(self, now: float) -> None:
        """Fast retransmit and recovery: RFC 6582 (NewReno) or RFC 6675 (SACK), once
        something is marked lost (the first hole by dupacks, or whatever RACK found)."""
        cc = self.cc
        assert cc is not None
        tcb = self.tcb
        self.recover = tcb.snd_nxt
        self._undo_begin(now)
        self.prior_cwnd = cc.cwnd  # PRR's RecoverFS (Linux's prior_cwnd)
        self.prr_delivered = self.prr_out = 0
        cc.on_congestion(now, self._flight_size())
        self.ca_state = RECOVERY
        self.tlp_at = self.tlp_end = None
        self.counters.tcp_fast_retransmits += 1
        # RFC 6675 (4.3) / 5681: the first lost record goes whatever pipe and cwnd say.
        self.owed = self.board.next_lost()
        self.rto_at = now + self.rtt.rto
        tcb.wake()

    def _flight_size(self) -> int:
        """RFC 5681 FlightSize for a reduction. A batch of ACKs is taken in before anything
        is sent (the flush point), so by the ACK that shows a loss the earlier ones of the
        same batch have shrunk SND.NXT - SND.UNA by data an ACK-clocked sender would have
        replaced already: the flight as it was when the batch began counts too.

        From the open state, at most cwnd: what is out beyond cwnd went as limited transmit
        (RFC 3042 on the first dupacks; with SACK, each SACKed segment lets one more out while
        pipe < cwnd), and RFC 5681 3.2 step 2 says data "sent in limited transmit MUST NOT be
        included in this calculation". Linux (tcp_reno_ssthresh, cubictcp_recalc_ssthresh,
        from tcp_enter_recovery / tcp_enter_loss) takes cwnd itself: the same whenever the
        sender is cwnd-limited, and min() stays within RFC 5681 eq. 4 when it is not.
        (Linux trace sack_early_loss: cwnd 12, FlightSize 14 at the third dupack; counting
        the limited transmit made ssthresh 7 where Linux has 6, and PRR sent one ACK early.)
        In recovery or after a timeout cwnd is PRR's or the RTO's, not the window in use:
        FlightSize alone, as before."""
        flight = max(self.tcb.snd_nxt - self.tcb.snd_una, self.flight_mark)
        cc = self.cc
        if cc is not None and self.ca_state == OPEN:
            return min(flight, cc.cwnd)
        return flight

    # =========================================================================================
    # output: how much, what first, and what went out
    # =========================================================================================
    def budget(self, flight: int) -> int:
        """Bytes cwnd lets out now: cwnd - pipe (RFC 6675; in NewReno recovery the dupacks'
        segments are out of the network too), plus RFC 3042's allowance."""
        cc = self.cc
        assert cc is not None
        tcb = self.tcb
        in_flight = self.board.pipe(flight)
        if self.ca_state == RECOVERY:
            in_flight -= self.reno_sacked  # without SACK: the dupacks' segments are out
        budget = cc.cwnd - in_flight
        if self.ca_state == OPEN and not tcb.sack_ok and 0 < self.dupacks < self.dupthresh:
            budget += min(self.dupacks, 2) * tcb.mss  # RFC 3042 limited transmit
        return budget

    def resend_lost(self) -> bool:
        """RFC 6675 NextSeg() rule 1 (and go-back-N after an RTO) applies: records marked
        lost wait for a retransmission (NewReno marks only the hole after a partial ACK)."""
        board = self.board
        return board.lost_bytes > board.rexmit_bytes

    def take_owed(self, snd_una: int) -> Sent | None:
        """The record to resend before anything else, whatever cwnd says, if it still needs it
        (later ACKs of the same batch may have delivered it)."""
        r = self.owed
        self.owed = None
        if r is None or r.end <= snd_una or r.sacked or not r.lost or r.rexmit:
            return None
        return r

    def on_idle(self, now: float) -> None:
        """RFC 5681 4.1: restart after an idle period longer than the RTO."""
        assert self.cc is not None
        self.cc.on_idle(now)

    def sent(
        self, start: int, end: int, fin: bool, now: float, psh: bool = False, gso: int = 0
    ) -> None:
        """A new segment (or the FIN, a one-octet record of its own) went out.

        `gso`: a TSO super-segment the kernel cuts into pieces of this size: one record per
        piece, as they travel (PSH on the last, as the kernel's cut puts it), so SACK blocks
        (which name wire segments), RACK, DupThresh and retransmissions (which resend exactly
        one lost record) work in wire segments.
        """
        if end > start:
            if gso and end - start > gso:
                self.board.add_pieces(start, end, gso, now, psh)
            else:
                self.board.add(start, end, now, psh=psh)
            if self.ca_state == RECOVERY:
                self.prr_out += end - start
        if fin:
            self.board.add(end, end + 1, now, fin=True)
        if self.rto_at is None:
            self.rto_at = now + self.rtt.rto

    def sent_plain(self, start: int, end: int, now: float, psh: bool) -> None:
        """`sent` for one data segment (not TSO, no FIN; Connection._send_segment's lean
        form): the scoreboard's record appended inline (Scoreboard.add)."""
        board = self.board
        tx = board._tx = board._tx + 1
        board._records.append(Sent(start, end, now, False, tx, psh))
        if self.ca_state == RECOVERY:
            self.prr_out += end - start
        if self.rto_at is None:
            self.rto_at = now + self.rtt.rto

    def retransmitted(self, r: Sent, now: float) -> None:
        self.board.retransmitted(r, now)
        if self.ca_state == RECOVERY:
            self.prr_out += r.end - r.start
        rexmits = self.undo_rexmits
        if rexmits is not None and self.ca_state != OPEN:
            if len(rexmits) >= MAX_UNDO_REXMITS:
                self.undo_rexmits = None  # too many to follow: Eifel alone may undo
            else:
                rexmits[r.start] = rexmits.get(r.start, 0) + 1
        if self.rto_at is None:
            self.rto_at = now + self.rtt.rto

    def after_output(self, new_data: bool, sent: bool, now: float) -> None:
        """The connection's output pass is over: restart the probe timer when new data went
        out (RFC 8985 7.2), or anything in recovery."""
        if new_data or (sent and self.ca_state == RECOVERY):
            self._tlp_arm(now)

    # =========================================================================================
    # timers
    # =========================================================================================
    def next_timer(self) -> float | None:
        best = self.rto_at
        for t in (self.rack_at, self.tlp_at):
            if t is not None and (best is None or t < best):
                best = t
        return best

    def on_rto(self, now: float, repeated: bool) -> None:
        """RFC 6298 5.4-5.6 for data: the connection counted the retry; back off, collapse
        cwnd (RFC 5681 3.1), deem everything outstanding lost (go-back-N from SND.UNA; SACK
        marks are forgotten when the timer fires again, `repeated`: RFC 2018 8 reneging)."""
        tcb = self.tcb
        cc = self.cc
        assert cc is not None
        self.rto_tsval = tcb.tsval(now)
        self._undo_begin(now)
        self.tlp_at = self.tlp_end = self.rack_at = None
        self.probe_owed = False
        cc.on_timeout(now, self._flight_size())
        self.rtt.back_off()
        self.board.mark_all_lost(forget_sacks=repeated)
        self.ca_state = LOSS
        self.recover = tcb.snd_nxt
        self.dupacks = 0
        self.reno_sacked = 0  # (Linux's tcp_enter_loss: tcp_reset_reno_sack)
        self.owed = self.board.next_lost()  # RFC 6298 5.4: the earliest, whatever cwnd says
        self.rto_at = now + self.rtt.rto

    def mtu_changed(self, mss: int) -> None:
        """The path MTU moved the MSS (RFC 1191 6.1): cwnd stays in bytes, its increments
        follow the new MSS. (Linux counts cwnd in segments, so its byte window shrinks with
        the MSS; ours keeps its bytes: the same data in flight, in more, smaller segments.)"""
        if self.cc is not None:
            self.cc.mss = mss

    def simple_retransmit(self, mss: int, now: float) -> None:
        """After "fragmentation needed" (Linux's tcp_simple_retransmit): every unSACKed
        record larger than the new MSS was too big for the path and is lost; resend them
        (split to the MSS, see Connection._send_data) without a congestion response — the
        path dropped them for their size, not for congestion (RFC 1191 6.1; ssthresh and
        cwnd kept, no undo). Entering LOSS lets rule 1 resend them before new data."""
        board = self.board
        lost = 0
        for r in board:
            too_big = not r.sacked and not r.fin and r.end - r.start > mss
            if too_big and (not r.lost or r.rexmit):
                lost += board.mark_record_lost(r)
        if not lost:
            return
        if self.ca_state != LOSS:
            self.ca_state = LOSS
            self.recover = self.tcb.snd_nxt
            self.undo_marker = self.undo_saved = self.undo_tsval = None
            self.undo_rexmits = None
            self.dupacks = 0
        self.tlp_at = self.tlp_end = None
        self.probe_owed = False
        if self.rto_at is None:
            self.rto_at = now + self.rtt.rto

    def on_rack_timer(self, now: float) -> None:
        self.rack_at = None
        self._rack_detect(now)

    def on_pto(self, now: float, transmitting: bool) -> None:
        """RFC 8985 7.3: ask the connection for one probe (probe_owed); its ACK (with SACK)
        lets RACK find a tail loss without the RTO. In recovery: the oldest retransmission
        still out is deemed lost and goes again (the RTO keeps its time: it is what is left
        if this one is lost as well)."""
        self.tlp_at = None
        tcb = self.tcb
        if self.ca_state == RECOVERY:
            r = self.board.first_retransmitted()
            if r is not None and transmitting:
                self.board.mark_record_lost(r)
                self.owed = r
                self.tlp_probes += 1
            return
        if (
            self.ca_state != OPEN
            or tcb.snd_nxt <= tcb.snd_una
            or not transmitting
            or (self.tlp_end is not None and self.tlp_round >= MAX_TLP)
            or self.rtt.srtt is None
        ):
            return
        if self.tlp_end is None:
            self.tlp_round = 0
        self.probe_owed = True
        self.rto_at = now + self.rtt.rto  # the probe goes instead of an RTO due now

    def probe_sent(self, retransmission: bool, now: float) -> None:
        """The connection sent the probe on_pto asked for (new data, or the last segment
        again when there is none the peer's window takes)."""
        self.tlp_retrans = retransmission
        self.tlp_end = self.tcb.snd_nxt
        self.tlp_probes += 1
        self.tlp_round += 1
        self.rto_at = now + self.rtt.rto
        if self.tlp_round < MAX_TLP:  # no answer by twice the PTO: once more
            assert self.rtt.srtt is not None
            self.tlp_at = min(now + 2 * (2 * self.rtt.srtt + TIMEOUT_MIN), self.rto_at)

    # =========================================================================================
    # RACK (RFC 8985), tail loss probes, undo (RFC 3522, 2883, 4015)
    # =========================================================================================
    def _rack_ack(self, ts: Timestamp, dsack: tuple[int, int] | None, now: float) -> None:
        board = self.board
        rack = self.rack
        tcb = self.tcb
        if board.delivered:
            ts = ts if tcb.ts_ok else None
            echo = ts[1] if ts is not None and ts[1] else None
            rack.update(board.delivered, now, lambda t: self._echo_before(echo, t))
            board.delivered.clear()
        if dsack is not None:
            rack.on_dsack(tcb.snd_una, tcb.snd_nxt)
        self._rack_detect(now)

    def _echo_before(self, echo: int | None, t: float) -> bool:
        """The timestamp echo predates our transmission at time t."""
        if echo is None:
            return False
        return 0 < ((self.tcb.tsval(t) - echo) & MASK) < HALF

    def _rack_detect(self, now: float) -> None:
        """RACK_detect_loss: mark, arm the reordering timer, start recovery on a loss."""
        self.rack_at = None
        tcb = self.tcb
        if tcb.snd_nxt <= tcb.snd_una:
            return
        rack = self.rack
        board = self.board
        reo_wnd = rack.reo_wnd(self.ca_state != OPEN, board.sacked_bytes // tcb.mss, self.rtt.srtt)
        lost, timeout = rack.detect_loss(board, now, reo_wnd)
        if timeout > 0:
            self.rack_at = now + timeout + TIMEOUT_MIN
        self.newly_lost += lost
        if lost:
            if self.ca_state == OPEN and tcb.snd_una >= self.recover:
                self._enter_recovery(now)
            else:
                tcb.wake()  # retransmit at the flush point

    def _tlp_arm(self, now: float) -> None:
        """(Re)start the probe timer. In the open state, RFC 8985 7.2's tail loss probe,
        while nothing else is repairing losses. In recovery, while a retransmission is out:
        when the ACKs stop for 2*SRTT, it was probably lost too, and nothing sent after it
        will be delivered to show RACK that (a small window, the tail of the data) — a probe
        as QUIC's PTO goes on in recovery (RFC 9002 6.2), so that only the RTO is left."""
        self.tlp_at = None
        tcb = self.tcb
        srtt = self.rtt.srtt
        if not tcb.sack_ok or tcb.snd_nxt <= tcb.snd_una or srtt is None:
            return
        pto = 2 * srtt + TIMEOUT_MIN
        if self.ca_state == RECOVERY:
            if not self.board.rexmit_bytes and self.owed is None:  # (owed: out at the flush)
                return
            at = now + pto
            if self.rto_at is None or at < self.rto_at:  # our extension: the RTO stays
                self.tlp_at = at
            return
        if self.ca_state != OPEN or self.tlp_end is not None or self.board.sacked_bytes:
            return
        if tcb.snd_nxt - tcb.snd_una <= tcb.mss:  # one segment out (Linux: packets_out == 1)
            pto = 2 * srtt + WC_DEL_ACK
        at = now + pto
        self.tlp_at = at if self.rto_at is None or at < self.rto_at else self.rto_at

    def _tlp_ack(
        self, ack: int, acked: int, dsack: tuple[int, int] | None, new_sacked: int, now: float
    ) -> None:
        """RFC 8985 7.4 (as Linux's tcp_process_tlp_ack): did the probe repair a loss?"""
        end = self.tlp_end
        assert end is not None
        if ack < end:
            return
        if not self.tlp_retrans or dsack is not None:
            self.tlp_end = None  # new data (RACK judges), or both copies arrived: no loss
        elif ack > end:
            self.tlp_end = None  # the probe repaired a loss: reduce cwnd once
            if self.ca_state == OPEN:
                assert self.cc is not None
                self.cc.on_congestion(now, self._flight_size())
                self.cc.on_recovery_exit(now)
        elif acked <= 0 and not new_sacked:
            self.tlp_end = None  # a pure duplicate: both copies arrived

    def _undo_begin(self, now: float) -> None:
        """A reduction starts an episode (unless one is going on): save what undo restores."""
        if self.undo_marker is not None and self.ca_state != OPEN:
            return
        assert self.cc is not None
        tcb = self.tcb
        self.undo_marker = tcb.snd_una
        self.undo_saved = self.cc.save()
        self.undo_tsval = tcb.tsval(now) if tcb.ts_ok else None
        self.undo_rexmits = {}

    def _eifel(self, ts: Timestamp, now: float) -> None:
        """RFC 3522: the first ACK past the episode's start echoes a timestamp older than
        our first retransmission: the original arrived, the retransmission was spurious."""
        undo_tsval = self.undo_tsval
        assert undo_tsval is not None
        self.undo_tsval = None  # one look per episode
        if ts is not None and ts[1] and 0 < ((undo_tsval - ts[1]) & MASK) < HALF:
            self._undo(now)

    def _dsack_undo(self, dsack: tuple[int, int], now: float) -> None:
        """RFC 2883 / 3708: a D-SACK for each retransmission of the episode: all needless."""
        rexmits = self.undo_rexmits
        if self.undo_marker is None or not rexmits:
            return
        left, right = dsack
        hit = [start for start in rexmits if left <= start < right]
        for start in hit:
            rexmits[start] -= 1
            if rexmits[start] <= 0:
                del rexmits[start]
        if hit and not rexmits:
            self._undo(now)

    def _undo(self, now: float) -> None:
        """RFC 4015 response: the reduction was spurious. The congestion state comes back,
        what was marked lost and not yet resent is in flight after all, and the reordering
        that fooled us is remembered (RACK's window; NewReno's dupthresh grows)."""
        assert self.cc is not None
        tcb = self.tcb
        if self.undo_saved is not None:
            self.cc.undo(self.undo_saved)
        self.board.unmark_lost()
        if self.ca_state == RECOVERY and not tcb.sack_ok:
            self.dupthresh = min(max(self.dupthresh + 1, self.dupacks + 1), MAX_DUPTHRESH)
        if self.ca_state != OPEN:
            self.rack.on_recovery_exit()
        self.ca_state = OPEN
        self.dupacks = 0
        self.recover = tcb.snd_una
        self.rack.reord = True
        self.undo_marker = self.undo_saved = self.undo_tsval = self.undo_rexmits = None
        self.undos += 1
        tcb.wake()


def _rack_run(
    rack: Rack, fack: int, first_end: int, end: int, order: int, sent_at: float, now: float
) -> int:
    """Rack.update's steps for consecutive pieces of one Run delivered by a cumulative ACK
    (first piece ending at `first_end`, last at `end` with transmission order `order`, all
    sent at `sent_at`, none retransmitted), as ack_fast's loop would take them one by one;
    returns the new fack. Only the first piece can end below fack; the rest ascend."""
    if first_end < fack:
        rack.reord = True
    if end > fack:
        fack = end
    r_rtt = now - sent_at
    if r_rtt >= 0 and (rack.min_rtt is None or r_rtt < rack.min_rtt):
        rack.min_rtt = r_rtt
    if order > rack.order:
        rack.xmit_ts, rack.order, rack.rtt = sent_at, order, r_rtt
    return fack
