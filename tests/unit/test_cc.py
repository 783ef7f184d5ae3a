"""Congestion control (Reno RFC 5681/3465, CUBIC RFC 9438) driven by simulated round trips."""

from __future__ import annotations

import math

import pytest

from netstack.proto.tcp.cc import ALGORITHMS, Cubic, Reno, initial_window, make_cc

MSS = 1000


def round_trip(cc, now: float, rtt: float, *, per_ack: int = 1) -> float:
    """Send one window, get it acknowledged in ACKs of `per_ack` segments spread over one RTT.

    Returns the time at the end of the round trip.
    """
    window = cc.cwnd
    acks = max(1, window // (per_ack * MSS))
    step = rtt / acks
    for i in range(acks):
        acked = window - (acks - 1) * per_ack * MSS if i == acks - 1 else per_ack * MSS
        cc.on_ack(acked, now + (i + 1) * step, rtt, window)
    return now + rtt


def segments(cc) -> float:
    return cc.cwnd / MSS


def after_loss(cls=Cubic, *, w_max_segments: int = 100, **kwargs):
    """An algorithm that had `w_max_segments` in flight when a loss ended fast recovery."""
    cc = cls(MSS, **kwargs)
    cc.cwnd = w_max_segments * MSS
    cc.on_congestion(0.0, w_max_segments * MSS)
    cc.on_recovery_exit(0.0)
    return cc


# -- construction ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("mss", "iw"), [(1460, 14600), (536, 5360), (1000, 10000), (9000, 18000), (4000, 14600)]
)
def test_initial_window_rfc6928(mss: int, iw: int) -> None:
    assert initial_window(mss) == iw
    for name in ALGORITHMS:
        cc = make_cc(name, mss)
        assert (cc.name, cc.mss, cc.cwnd) == (name, mss, iw)
        assert cc.ssthresh > 1 << 30  # "arbitrarily high" until the first loss


def test_make_cc_rejects_unknown_names() -> None:
    assert set(ALGORITHMS) == {"reno", "cubic"}
    with pytest.raises(ValueError, match=r"vegas.*reno, cubic"):
        make_cc("vegas", MSS)
    with pytest.raises(ValueError):
        Reno(0)


# -- slow start -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["reno", "cubic"])
def test_slow_start_doubles_every_round_trip(name: str) -> None:
    cc = make_cc(name, MSS)
    now = 0.0
    for expected in (20, 40, 80, 160):
        now = round_trip(cc, now, 0.05)
        assert segments(cc) == expected


@pytest.mark.parametrize("name", ["reno", "cubic"])
def test_slow_start_with_delayed_acks_grows_by_acked_bytes(name: str) -> None:
    """RFC 3465: byte counting makes delayed ACKs (2 segments each) still double cwnd."""
    cc = make_cc(name, MSS)
    round_trip(cc, 0.0, 0.05, per_ack=2)
    assert segments(cc) == 20


def test_slow_start_stretch_ack_limited_to_two_segments() -> None:
    """RFC 3465 L = 2: an ACK covering 5 segments grows cwnd by 2 SMSS, not 5."""
    cc = Reno(MSS)
    cc.on_ack(5 * MSS, 0.1, 0.05, cc.cwnd)
    assert cc.cwnd == initial_window(MSS) + 2 * MSS


def test_slow_start_stops_at_ssthresh_and_hands_the_rest_to_avoidance() -> None:
    cc = Reno(MSS)
    cc.ssthresh = 11 * MSS
    cc.on_ack(2 * MSS, 0.1, 0.05, cc.cwnd)  # 10 -> 11 (capped), 1 MSS left for avoidance
    assert cc.cwnd == 11 * MSS
    for _ in range(10):  # 1 + 10 = 11 segments acknowledged in avoidance: one more SMSS
        cc.on_ack(MSS, 0.1, 0.05, cc.cwnd)
    assert cc.cwnd == 12 * MSS


# -- Reno congestion avoidance and reductions ---------------------------------------------------
@pytest.mark.parametrize("per_ack", [1, 2])
def test_reno_avoidance_grows_one_segment_per_round_trip(per_ack: int) -> None:
    cc = after_loss(Reno, w_max_segments=40)
    assert segments(cc) == 20 and cc.ssthresh == 20 * MSS
    now = 0.0
    for n in range(1, 31):
        now = round_trip(cc, now, 0.05, per_ack=per_ack)
        assert abs(segments(cc) - (20 + n)) <= 1


# Whole segments, rounded down as Linux (cwnd >> 1): 7 -> 3.
@pytest.mark.parametrize(("flight", "ssthresh"), [(40, 20), (7, 3), (3, 2), (1, 2), (0, 2)])
def test_reno_ssthresh_is_half_the_flight_at_least_two_segments(
    flight: int, ssthresh: float
) -> None:
    cc = Reno(MSS)
    cc.on_congestion(1.0, flight * MSS)
    assert cc.ssthresh == ssthresh * MSS
    assert cc.cwnd == cc.ssthresh


@pytest.mark.parametrize("name", ["reno", "cubic"])
def test_timeout_leaves_one_segment_then_slow_starts(name: str) -> None:
    cc = make_cc(name, MSS)
    cc.cwnd = 80 * MSS
    cc.on_timeout(1.0, 80 * MSS)
    factor = 0.5 if name == "reno" else 0.7
    assert cc.cwnd == MSS
    assert cc.ssthresh == int(80 * factor) * MSS
    now = 1.0
    for expected in (2, 4, 8, 16):
        now = round_trip(cc, now, 0.05)
        assert segments(cc) == expected


@pytest.mark.parametrize("name", ["reno", "cubic"])
def test_repeated_timeout_holds_ssthresh(name: str) -> None:
    """RFC 5681: a timer retransmission timing out again does not halve ssthresh again."""
    cc = make_cc(name, MSS)
    cc.cwnd = 80 * MSS
    cc.on_timeout(1.0, 80 * MSS)
    ssthresh = cc.ssthresh
    cc.on_timeout(2.0, MSS)  # only the retransmission is in flight
    assert (cc.cwnd, cc.ssthresh) == (MSS, ssthresh)
    cc.on_ack(MSS, 3.0, 0.05, MSS)  # new data acknowledged: a later RTO is a new event
    cc.on_timeout(4.0, 4 * MSS)
    assert cc.ssthresh == 2 * MSS  # Reno 4/2; CUBIC 0.7 * 4 = 2.8: whole segments, as Linux


@pytest.mark.parametrize("name", ["reno", "cubic"])
def test_recovery_exit_deflates_the_callers_inflation(name: str) -> None:
    cc = make_cc(name, MSS)
    cc.cwnd = 40 * MSS
    cc.on_congestion(1.0, 40 * MSS)
    ssthresh = cc.ssthresh
    cc.cwnd += 3 * MSS  # RFC 6675 / NewReno inflation done by the TCP engine
    cc.on_recovery_exit(1.2)
    assert cc.cwnd == ssthresh


@pytest.mark.parametrize("name", ["reno", "cubic"])
def test_recovery_exit_after_timeout_does_not_jump_to_ssthresh(name: str) -> None:
    cc = make_cc(name, MSS)
    cc.cwnd = 40 * MSS
    cc.on_timeout(1.0, 40 * MSS)
    round_trip(cc, 1.0, 0.05)
    cc.on_recovery_exit(1.1)
    assert cc.cwnd == 2 * MSS


@pytest.mark.parametrize("name", ["reno", "cubic"])
def test_idle_restart_clamps_to_the_initial_window(name: str) -> None:
    cc = make_cc(name, MSS)
    cc.cwnd = 100 * MSS
    cc.on_idle(5.0)
    assert cc.cwnd == initial_window(MSS)
    cc.on_timeout(6.0, 10 * MSS)
    cc.on_idle(9.0)
    assert cc.cwnd == MSS  # min(cwnd, IW): never grows


# -- CUBIC ------------------------------------------------------------------------------------
def test_cubic_multiplicative_decrease_is_0_7() -> None:
    cc = Cubic(MSS)
    cc.cwnd = 100 * MSS
    cc.on_congestion(1.0, 100 * MSS)
    assert cc.ssthresh == 70 * MSS
    assert cc.cwnd == 70 * MSS
    assert cc.w_max == pytest.approx(100)
    assert cc.cwnd_prior == pytest.approx(100)


def test_cubic_k_from_w_max_and_cwnd_at_the_epoch() -> None:
    cc = after_loss(Cubic, w_max_segments=100)
    cc.on_ack(MSS, 1.0, 0.1, cc.cwnd)  # the first ACK in avoidance starts the epoch
    assert cc.epoch_start == 1.0
    assert cc.k == pytest.approx(math.cbrt((100 - 70) / 0.4), rel=1e-9)  # 4.217 s
    assert cc.w_cubic(cc.k) == pytest.approx(100)
    assert cc.w_cubic(0) == pytest.approx(70)


@pytest.mark.parametrize(("fast", "w_max"), [(True, 80 * 1.7 / 2), (False, 80)])
def test_cubic_fast_convergence(fast: bool, w_max: float) -> None:
    """A loss below the previous W_max releases bandwidth: W_max = cwnd * (1 + beta) / 2."""
    cc = after_loss(Cubic, w_max_segments=100, fast_convergence=fast)
    cc.cwnd = 80 * MSS
    cc.on_congestion(2.0, 80 * MSS)
    assert cc.w_max == pytest.approx(w_max)
    assert cc.ssthresh == 56 * MSS
    cc.cwnd = 120 * MSS  # above W_max: no fast convergence
    cc.on_congestion(3.0, 120 * MSS)
    assert cc.w_max == pytest.approx(120)


def test_cubic_follows_w_cubic_at_large_rtt() -> None:
    """With a 250 ms RTT the cubic region rules: cwnd tracks C(t-K)^3 + W_max through K."""
    cc = after_loss(Cubic, w_max_segments=100)
    now, rtt = 10.0, 0.25
    start = None
    errors = []
    while now < 18.0:
        now = round_trip(cc, now, rtt)
        start = cc.epoch_start if start is None else start
        t = now - start
        assert cc.w_cubic(t) > cc.w_est  # not the Reno-friendly region
        errors.append(abs(segments(cc) - cc.w_cubic(t)) / cc.w_cubic(t))
    assert max(errors) < 0.03, max(errors)
    # concave below W_max before K, plateau near K, convex above it after
    assert 99 < cc.w_cubic(cc.k) < 101
    assert segments(cc) > 115


def test_cubic_reno_friendly_region_dominates_at_small_rtt() -> None:
    """At 1 ms RTT W_est (alpha 0.529 per RTT, then 1 past cwnd_prior) outgrows W_cubic."""
    cc = after_loss(Cubic, w_max_segments=100)
    now, rtt = 10.0, 0.001
    now = round_trip(cc, now, rtt)
    start = segments(cc)
    for _ in range(20):
        now = round_trip(cc, now, rtt)
    per_rtt = (segments(cc) - start) / 20
    assert per_rtt == pytest.approx(Cubic.ALPHA, rel=0.1)  # 0.529: AIMD friendly to Reno
    assert cc.w_cubic(now - cc.epoch_start) < segments(cc)
    while cc.w_est < cc.cwnd_prior:
        now = round_trip(cc, now, rtt)
    start = segments(cc)
    for _ in range(20):
        now = round_trip(cc, now, rtt)
    assert (segments(cc) - start) / 20 == pytest.approx(1.0, rel=0.1)  # alpha = 1 now
    assert segments(cc) == pytest.approx(cc.w_est, abs=1)
    assert cc.w_cubic(now - cc.epoch_start) < segments(cc) - 10


def test_cubic_after_timeout_starts_convex_from_the_stage_start() -> None:
    """RFC 9438 4.8: the first avoidance stage after an RTO uses K = 0, W_max = cwnd_epoch."""
    cc = Cubic(MSS)
    cc.cwnd = 100 * MSS
    cc.on_timeout(1.0, 100 * MSS)
    now = 1.0
    while cc.cwnd < cc.ssthresh:
        now = round_trip(cc, now, 0.1)
    assert 70 * MSS <= cc.cwnd < 72 * MSS and cc.epoch_start is not None
    assert cc.k == 0.0
    assert cc.w_max == pytest.approx(cc.w_cubic(0)) and 70 <= cc.w_max <= 72
    for _ in range(50):
        now = round_trip(cc, now, 0.1)
        t = now - cc.epoch_start
        expected = max(cc.w_cubic(t), cc.w_est)  # whichever region rules
        assert segments(cc) == pytest.approx(expected, rel=0.03)
    assert cc.w_cubic(t) > cc.w_est + 20  # by t = 5 s the convex curve has taken over
    assert segments(cc) > 115


def test_cubic_idle_restarts_the_epoch() -> None:
    cc = after_loss(Cubic, w_max_segments=100)
    round_trip(cc, 10.0, 0.1)
    cc.on_idle(60.0)
    assert cc.epoch_start is None and cc.cwnd == initial_window(MSS)
    round_trip(cc, 60.0, 0.1)
    assert segments(cc) == 20  # slow start again below ssthresh, no jump from t = 50 s
