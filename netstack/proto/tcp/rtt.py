"""The retransmission timeout (RFC 6298), fed by RTT samples the connection takes.

RTO = SRTT + max(G, K * RTTVAR, rto_min), at most rto_max; the first sample sets SRTT = R,
RTTVAR = R/2. Where RFC 6298 (2.3, 2.4) clamps SRTT + K * RTTVAR to the minimum, this is Linux's
tcp_set_rto / tcp_rtt_estimator (the variance term, mdev_max, is floored at tcp_rto_min): on a
path with a real RTT the RTO stays rto_min *above* SRTT, so a delayed ACK or a one-segment tail
probe (whose PTO the RTO caps, RFC 8985 7.2) is not cut short. The Linux trace comparison
(tests/unit/tcp/test_linux_trace.py, sack_tail_loss) showed the RFC's clamp probing ~SRTT
earlier than Linux; with this formula the two agree up to Linux's timer slack.

Samples come from timestamps (RFC 7323: one per ACK of new data) or,
without them, from segments never retransmitted (Karn). With one sample per ACK the gains
alpha = 1/8 and beta = 1/4 would weigh a window's worth of samples as many RTTs, so they are
divided by the number of samples expected per RTT, as RFC 7323 appendix G suggests.

Backoff (RFC 6298 5.5) doubles the RTO up to rto_max; it is kept until a new sample arrives
(Karn: an ACK for retransmitted data says nothing about the RTT). After a few backoffs in a
row SRTT is cleared (RFC 6298 section 5's MAY), so one bogus sample cannot pin the RTO.

rto_min defaults to 200 ms, as Linux does, rather than RFC 6298's 1 s (2.4, a SHOULD): on the
LANs and TAP links this stack serves, a 1 s floor turns every tail loss into a second of
silence. It is configurable (TcpConfig.rto_min), and 1.0 gives the RFC's behaviour.
"""

from __future__ import annotations

import math

ALPHA = 1 / 8
BETA = 1 / 4
K = 4
GRANULARITY = 0.001  # G: our timestamp clock ticks in milliseconds
CLEAR_AFTER = 3  # backoffs after which SRTT is distrusted (BSD: TCP_MAXRXTSHIFT / 4)


class RttEstimator:
    __slots__ = ("backoff", "rto", "rto_max", "rto_min", "rttvar", "srtt")

    def __init__(self, initial: float = 1.0, rto_min: float = 0.2, rto_max: float = 120.0) -> None:
        self.rto_min = rto_min
        self.rto_max = rto_max
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.backoff = 0  # how many times the current RTO has been doubled
        self.rto = min(max(initial, rto_min), rto_max)

    def sample(self, r: float, samples_per_rtt: int = 1, acks: int = 1) -> None:
        """Take one RTT measurement `r` (seconds); clears any backoff. With n samples
        expected per RTT (one per ACK), each moves the estimate by 1/n of RFC 6298's gains
        (RFC 7323 appendix G); a measurement that stands for `acks` ACKs (ACK filtering,
        Connection.ACK_HOLD) moves it by acks/n, as those ACKs would have, at most 1."""
        r = max(r, 0.0)
        if self.srtt is None:
            self.srtt = r
            self.rttvar = r / 2
        else:
            n = max(1, samples_per_rtt)
            if acks > 1:
                n = n / min(acks, n)
            alpha, beta = ALPHA / n, BETA / n
            self.rttvar = (1 - beta) * self.rttvar + beta * abs(self.srtt - r)
            self.srtt = (1 - alpha) * self.srtt + alpha * r
        self.backoff = 0
        self.rto = self._base()

    def _base(self) -> float:
        assert self.srtt is not None
        rto = self.srtt + max(GRANULARITY, K * self.rttvar, self.rto_min)
        return min(rto, self.rto_max)

    def back_off(self) -> None:
        """RFC 6298 5.5: the timer expired; double the RTO (at most rto_max).

        After CLEAR_AFTER backoffs in a row SRTT is probably bogus (a delayed or lost ACK
        can give one huge sample that Karn's rule then never corrects), so, as RFC 6298 5
        allows and BSD does, it is cleared and the next sample starts afresh (2.2); RTTVAR
        keeps a quarter of it meanwhile.
        """
        self.backoff += 1
        self.rto = min(self.rto * 2, self.rto_max)
        if self.backoff > CLEAR_AFTER and self.srtt is not None:
            self.rttvar += self.srtt / 4
            self.srtt = None

    def reset_to(self, rto: float) -> None:
        """RFC 6298 5.7: after a retransmitted SYN with no sample, start data at 3 s."""
        self.rto = min(max(rto, self.rto_min), self.rto_max)

    def expected_samples(self, flight: int, mss: int) -> int:
        """RFC 7323 appendix G: ACKs expected per RTT (one per two segments in flight)."""
        return max(1, math.ceil(flight / (2 * max(mss, 1))))
