"""RACK (RFC 8985): time-based loss detection for connections with SACK.

A segment is lost when a segment sent *after* it has been delivered (cumulatively or by SACK)
and more than one RTT plus a reordering window has passed since it was sent. Because it goes
by send time, not by sequence, a retransmission that is lost again is found the same way as
an original (RFC 6675's DupThresh cannot see it: only the RTO could), and reordering up to
the window costs no retransmission at all.

The reordering window (RFC 8985 6.2 step 4): zero while no reordering has been seen and
either loss recovery is on or DupThresh segments are SACKed (so a plain loss is repaired as
fast as with DupThresh); otherwise min_RTT/4 times a multiplier that each round with D-SACKs
(RFC 2883: a retransmission was needless) raises, and 16 D-SACK-free recoveries reset; never
more than SRTT. Reordering "has been seen" once a never-retransmitted segment is delivered
below the highest one delivered before it.

The connection feeds it the records each ACK newly delivered (Scoreboard.delivered) and asks
detect_loss(); the time left until the next record would count as lost arms its reordering
timer. The tail loss probe (RFC 8985 7) is the connection's, as it sends. "Sent after" goes
by the scoreboard's transmission count (Sent.order), exact even for segments sent at the
same `now` (RFC 8985 compares send times and breaks ties by sequence, which misorders a
retransmission sent in the same instant as later new data).
"""

from __future__ import annotations

from collections.abc import Callable

from netstack.proto.tcp.scoreboard import DUPTHRESH, Scoreboard, Sent

# Remaining times below this count as expired: float rounding can leave a remainder so small
# that now + remaining == now, and a timer armed for it would fire at the same instant forever.
GRANULARITY = 1e-6
REO_WND_PERSIST = 16  # D-SACK-free recoveries before the multiplier drops back to 1
MAX_REO_WND_MULT = 64


class Rack:
    __slots__ = (
        "dsack_round",
        "fack",
        "min_rtt",
        "order",
        "reo_wnd_mult",
        "reo_wnd_persist",
        "reord",
        "rtt",
        "xmit_ts",
    )

    def __init__(self) -> None:
        self.xmit_ts: float | None = None  # send time of the most recently sent delivered one
        self.order = 0  # and its place in the order of transmissions (Sent.order)
        self.rtt = 0.0  # its RTT
        self.min_rtt: float | None = None
        self.fack = 0  # the highest end delivered so far
        self.reord = False  # reordering seen on this connection
        self.reo_wnd_mult = 1
        self.reo_wnd_persist = 0
        self.dsack_round: int | None = None  # D-SACKs until SND.UNA passes this count once

    def sample_rtt(self, rtt: float) -> None:
        if self.min_rtt is None or rtt < self.min_rtt:
            self.min_rtt = rtt

    def update(
        self, delivered: list[Sent], now: float, echo_before: Callable[[float], bool]
    ) -> None:
        """RFC 8985 6.2 steps 2 and 3 for the records an ACK newly delivered.

        `echo_before(t)`: the ACK's timestamp echo predates a transmission at time t (so a
        retransmitted record was delivered by an earlier transmission, not that one).
        """
        if len(delivered) > 1:
            delivered.sort(key=_end)
        for r in delivered:
            if r.end > self.fack:
                self.fack = r.end
            elif r.end < self.fack and not r.retransmitted:
                self.reord = True
            rtt = now - r.sent_at
            if r.retransmitted:
                if echo_before(r.sent_at):
                    continue
                if self.min_rtt is not None and rtt < self.min_rtt:
                    continue  # too fast to be the retransmission's own delivery
            elif rtt >= 0:
                self.sample_rtt(rtt)
            if r.order > self.order:  # RFC 8985 RACK_sent_after, by transmission order
                self.xmit_ts, self.order, self.rtt = r.sent_at, r.order, rtt

    def on_dsack(self, snd_una: int, snd_nxt: int) -> None:
        """A D-SACK arrived: widen the reordering window, once per round trip."""
        if self.dsack_round is not None and snd_una >= self.dsack_round:
            self.dsack_round = None
        if self.dsack_round is None:
            self.dsack_round = snd_nxt
            self.reo_wnd_mult = min(self.reo_wnd_mult + 1, MAX_REO_WND_MULT)
            self.reo_wnd_persist = REO_WND_PERSIST

    def on_recovery_exit(self) -> None:
        self.reo_wnd_persist -= 1
        if self.reo_wnd_persist <= 0:
            self.reo_wnd_mult = 1

    def reo_wnd(self, in_recovery: bool, sacked_segments: int, srtt: float | None) -> float:
        if not self.reord and (in_recovery or sacked_segments >= DUPTHRESH):
            return 0.0
        wnd = self.reo_wnd_mult * (self.min_rtt or 0.0) / 4
        return min(wnd, srtt) if srtt is not None else wnd

    def detect_loss(self, board: Scoreboard, now: float, reo_wnd: float) -> tuple[int, float]:
        """Mark what RACK deems lost; returns (bytes newly marked, seconds until the next
        outstanding record could be, 0 if none: the reordering timer)."""
        if self.xmit_ts is None:
            return 0, 0.0
        order = self.order
        deadline = self.rtt + reo_wnd - now
        new = 0
        timeout = 0.0
        records, head = board.records()
        for i in range(head, len(records)):
            r = records[i]
            if r.order > order:  # sent after the most recently sent delivered one
                if not r.retransmitted:
                    break  # originals go out in sequence order: the rest are later still
                continue
            if r.sacked or (r.lost and not r.rexmit):
                continue  # delivered, or already waiting for its retransmission
            remaining = r.sent_at + deadline
            if remaining <= GRANULARITY:
                new += board.mark_record_lost(r)
            elif remaining > timeout:
                timeout = remaining
        return new, timeout


def _end(r: Sent) -> int:
    return r.end
