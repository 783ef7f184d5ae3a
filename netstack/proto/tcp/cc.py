"""Congestion control: how big the congestion window is, and how it reacts to ACKs and loss.

Pure and tiny on purpose: the TCP engine owns loss detection, recovery (NewReno / RFC 6675
window inflation, partial ACKs) and the RTO; it tells the algorithm *what happened* through
five calls and reads back `cwnd` and `ssthresh` (bytes). Time is the `now` argument (seconds,
monotonic); nothing here reads a clock.

    on_ack            new data acknowledged outside recovery (slow start / congestion avoidance)
    on_congestion     loss detected by dupacks or SACK: ssthresh from the flight, cwnd = ssthresh
    on_timeout        RTO fired: ssthresh from the flight, cwnd = 1 MSS (the loss window)
    on_recovery_exit  a full ACK ends fast recovery: cwnd deflates back to ssthresh
    on_idle           RFC 5681 4.1: sending again after an idle period longer than the RTO
    save / undo       before a reduction the engine saves the state; when the reduction turns
                      out spurious (Eifel, RFC 3522; D-SACK, RFC 2883/3708) it undoes it: the
                      saved state comes back, cwnd at least the saved one (RFC 4015 response)

After `on_timeout` keep calling `on_ack` for every ACK of new data: that is the slow start from
the loss window (no `on_recovery_exit` is needed, though calling it is harmless). A second
`on_timeout` with no new data acknowledged since the first holds ssthresh (RFC 5681 eq. 4 note:
a segment retransmitted by the timer more than once must not halve it again).
`flight_size` in `on_ack` is accepted for the interface but not used: there is no congestion
window validation (RFC 7661) here.

Reno is RFC 5681 with appropriate byte counting (RFC 3465, L = 2*SMSS). CUBIC is RFC 9438
(C = 0.4, beta_cubic = 0.7, fast convergence, the Reno-friendly region, the first congestion
avoidance stage after a timeout); HyStart is left out, slow start is Reno's.
"""

from __future__ import annotations

import math
from typing import Protocol

# "arbitrarily high" initial ssthresh (RFC 5681 3.1): slow start until the first loss.
INITIAL_SSTHRESH = 1 << 40
ABC_LIMIT = 2  # RFC 3465 L: at most 2*SMSS of growth per ACK in slow start


def initial_window(mss: int) -> int:
    """RFC 6928: IW = min(10*MSS, max(2*MSS, 14600)) bytes."""
    return min(10 * mss, max(2 * mss, 14600))


class CongestionControl(Protocol):
    """What the TCP engine codes against; cwnd and ssthresh are in bytes."""

    name: str
    mss: int
    cwnd: int
    ssthresh: int

    def on_ack(self, acked: int, now: float, rtt: float | None, flight_size: int) -> None: ...
    def on_congestion(self, now: float, flight_size: int) -> None: ...
    def on_timeout(self, now: float, flight_size: int) -> None: ...
    def on_recovery_exit(self, now: float) -> None: ...
    def on_idle(self, now: float) -> None: ...
    def save(self) -> object: ...
    def undo(self, saved: object) -> None: ...


class Reno:
    """RFC 5681 slow start and congestion avoidance, RFC 3465 byte counting."""

    name = "reno"

    def __init__(self, mss: int, *, initial_cwnd: int | None = None) -> None:
        if mss <= 0:
            raise ValueError("mss must be positive")
        self.mss = mss
        self.iw = initial_window(mss) if initial_cwnd is None else initial_cwnd
        # RFC 3465 L (segments of growth per ACK in slow start). With TSO the peer's GRO
        # answers a whole super-segment with one ACK; the engine then raises L to the pieces
        # of one (as Linux, which has no L at all), or slow start would crawl at 2 per 45.
        self.abc_limit = ABC_LIMIT
        self.cwnd = self.iw
        self.ssthresh = INITIAL_SSTHRESH
        self._bytes_acked = 0  # congestion avoidance: bytes acked since cwnd last grew
        self._in_recovery = False
        self._timed_out = False  # set by on_timeout, cleared by the next ACK of new data
        self.rtt = 0.0  # the last RTT sample given to on_ack (CUBIC looks one RTT ahead)

    # -- growth -----------------------------------------------------------------------------
    def on_ack(self, acked: int, now: float, rtt: float | None, flight_size: int) -> None:
        if rtt is not None and rtt > 0:
            self.rtt = rtt
        if acked <= 0:
            return
        self._timed_out = False
        acked = self._slow_start(acked)
        if acked:
            self._avoid_congestion(acked, now)

    def _slow_start(self, acked: int) -> int:
        """Grow by min(acked, L*SMSS) up to ssthresh; returns the bytes left for avoidance."""
        if self.cwnd >= self.ssthresh:
            return acked
        grow = min(acked, self.abc_limit * self.mss)
        room = self.ssthresh - self.cwnd
        if grow <= room:
            self.cwnd += grow
            return 0
        self.cwnd = self.ssthresh
        return acked - room

    def _avoid_congestion(self, acked: int, now: float) -> None:
        """RFC 5681 eq. 3 by byte counting: one SMSS per cwnd of acknowledged bytes."""
        self._bytes_acked += acked
        if self._bytes_acked >= self.cwnd:
            self._bytes_acked -= self.cwnd
            self.cwnd += self.mss

    # -- reduction --------------------------------------------------------------------------
    def _reduced_ssthresh(self, flight_size: int) -> int:
        """RFC 5681 eq. 4: max(FlightSize / 2, 2*SMSS), in whole segments rounded down as
        Linux's tcp_reno_ssthresh (cwnd >> 1, in packets): half of 13 segments is 6, not
        6.5, or PRR (which rounds its allowance up to segments) sends one ACK early."""
        return max(flight_size // self.mss // 2 * self.mss, 2 * self.mss)

    def on_congestion(self, now: float, flight_size: int) -> None:
        self.ssthresh = self._reduced_ssthresh(flight_size)
        self.cwnd = self.ssthresh
        self._bytes_acked = 0
        self._in_recovery = True

    def on_timeout(self, now: float, flight_size: int) -> None:
        if not self._timed_out:
            self.ssthresh = self._reduced_ssthresh(flight_size)
        self._timed_out = True
        self.cwnd = self.mss
        self._bytes_acked = 0
        self._in_recovery = False

    def on_recovery_exit(self, now: float) -> None:
        """Deflate whatever inflation the caller did during fast recovery (RFC 6582 3.2 (3))."""
        if self._in_recovery:
            self.cwnd = self.ssthresh
            self._in_recovery = False

    def on_idle(self, now: float) -> None:
        """RFC 5681 4.1: restart window = min(IW, cwnd)."""
        self.cwnd = min(self.cwnd, self.iw)
        self._bytes_acked = 0

    # -- undo -------------------------------------------------------------------------------
    def save(self) -> object:
        """Everything a spurious reduction would change (taken before on_congestion or the
        first on_timeout of an episode)."""
        return dict(vars(self))

    def undo(self, saved: object) -> None:
        """The reduction was spurious: back to the saved state (cwnd no smaller than now)."""
        assert isinstance(saved, dict)
        cwnd, rtt = self.cwnd, self.rtt
        vars(self).update(saved)
        self.cwnd = max(cwnd, self.cwnd)
        self.rtt = rtt

    def __repr__(self) -> str:
        return f"{type(self).__name__}(cwnd={self.cwnd}, ssthresh={self.ssthresh})"


BETA_SCALED = 717  # Linux's CUBIC beta, in 1/1024 (BICTCP_BETA_SCALE): 0.7002


class Cubic(Reno):
    """RFC 9438 CUBIC; windows are computed in segments (floats), exposed in bytes."""

    name = "cubic"
    C = 0.4
    BETA = 0.7
    ALPHA = 3 * (1 - BETA) / (1 + BETA)  # RFC 9438 4.3: Reno-friendly additive increase

    def __init__(
        self, mss: int, *, initial_cwnd: int | None = None, fast_convergence: bool = True
    ) -> None:
        super().__init__(mss, initial_cwnd=initial_cwnd)
        self.fast_convergence = fast_convergence
        self.w_max = 0.0  # segments: cwnd just before the last reduction
        self.cwnd_prior = 0.0  # segments: cwnd when ssthresh was last set
        self.k = 0.0  # seconds from the epoch until W_cubic reaches w_max
        self.w_est = 0.0  # segments: the Reno-friendly estimate
        self.epoch_start: float | None = None  # start of this congestion avoidance stage
        self._after_timeout = False  # next avoidance stage starts with K = 0 (RFC 9438 4.8)
        self._frac = 0.0  # bytes of growth below one byte, carried between ACKs

    def w_cubic(self, t: float) -> float:
        """RFC 9438 eq. 1, in segments: C*(t-K)^3 + W_max."""
        return self.C * (t - self.k) ** 3 + self.w_max

    def _start_epoch(self, now: float) -> None:
        """The first ACK of a congestion avoidance stage: fix t = 0, K and W_est."""
        cwnd_epoch = self.cwnd / self.mss
        self.epoch_start = now
        if self._after_timeout:
            self.w_max = cwnd_epoch  # RFC 9438 4.8: K = 0, W_max = cwnd at the stage start
        # RFC 9438 eq. 2; negative when cwnd is already above W_max (no loss yet, or the
        # path grew): W_cubic then still passes through cwnd_epoch at t = 0, convex at once.
        self.k = math.cbrt((self.w_max - cwnd_epoch) / self.C)
        self._after_timeout = False
        self.w_est = cwnd_epoch

    def _avoid_congestion(self, acked: int, now: float) -> None:
        if self.epoch_start is None:
            self._start_epoch(now)
        assert self.epoch_start is not None
        mss = self.mss
        cwnd = self.cwnd / mss
        segments_acked = acked / mss
        # Reno-friendly estimate (4.3); alpha becomes 1 once W_est reaches the old cwnd.
        alpha = 1.0 if self.w_est >= self.cwnd_prior else self.ALPHA
        self.w_est += alpha * segments_acked / cwnd
        t = now - self.epoch_start
        if self.w_cubic(t) < self.w_est:
            target = self.w_est  # Reno-friendly region: behave like (AIMD) Reno
            grow = (target - cwnd) * mss
        else:
            # Concave / convex regions (4.4, 4.5): aim at W_cubic one RTT ahead, within
            # [cwnd, 1.5*cwnd], closing (target - cwnd)/cwnd per acknowledged segment.
            target = min(max(self.w_cubic(t + self.rtt), cwnd), 1.5 * cwnd)
            grow = (target - cwnd) / cwnd * segments_acked * mss
        if grow <= 0:
            return
        grow += self._frac
        whole = int(grow)
        self._frac = grow - whole
        self.cwnd += whole

    def _reduce(self, flight_size: int) -> None:
        """RFC 9438 4.6 and 4.7: remember W_max (fast convergence), ssthresh = beta*flight."""
        cwnd = self.cwnd / self.mss
        if self.fast_convergence and cwnd < self.w_max:
            self.w_max = cwnd * (1 + self.BETA) / 2
        else:
            self.w_max = cwnd
        self.cwnd_prior = cwnd
        # In whole segments, rounded down, with Linux's beta of 717/1024 (cubictcp_recalc_
        # ssthresh): 0.7 * 12 segments is 8, not 8.4 (Linux trace cubic_sack_early_loss: a
        # fraction made PRR send one ACK early).
        segments = flight_size // self.mss * BETA_SCALED // 1024
        self.ssthresh = max(segments * self.mss, 2 * self.mss)
        self.epoch_start = None
        self._frac = 0.0

    def on_congestion(self, now: float, flight_size: int) -> None:
        self._reduce(flight_size)
        self.cwnd = self.ssthresh
        self._bytes_acked = 0
        self._in_recovery = True

    def on_timeout(self, now: float, flight_size: int) -> None:
        if not self._timed_out:
            self._reduce(flight_size)
        self._timed_out = True
        self._after_timeout = True
        self.epoch_start = None
        self.cwnd = self.mss
        self._bytes_acked = 0
        self._in_recovery = False

    def on_recovery_exit(self, now: float) -> None:
        super().on_recovery_exit(now)
        self.epoch_start = None  # the avoidance stage starts at the next ACK

    def on_idle(self, now: float) -> None:
        super().on_idle(now)
        self.epoch_start = None  # t must not count the idle time


ALGORITHMS: dict[str, type] = {"reno": Reno, "cubic": Cubic}


def make_cc(name: str, mss: int) -> CongestionControl:
    """The named algorithm with an RFC 6928 initial window for `mss`."""
    try:
        cls = ALGORITHMS[name]
    except KeyError:
        known = ", ".join(ALGORITHMS)
        raise ValueError(f"unknown congestion control {name!r} (known: {known})") from None
    return cls(mss)
