"""RFC 6298 retransmission timeout computation."""

from __future__ import annotations

import pytest

from netstack.proto.tcp.rtt import RttEstimator


def test_initial_rto_is_one_second() -> None:
    assert RttEstimator().rto == 1.0


def test_first_sample_sets_srtt_and_rttvar() -> None:
    est = RttEstimator(rto_min=0.0)
    est.sample(0.1)
    assert est.srtt == pytest.approx(0.1)
    assert est.rttvar == pytest.approx(0.05)
    assert est.rto == pytest.approx(0.1 + 4 * 0.05)  # RFC 6298 2.2


def test_later_samples_smooth_with_alpha_and_beta() -> None:
    est = RttEstimator(rto_min=0.0)
    est.sample(0.1)
    est.sample(0.3)
    rttvar = 0.75 * 0.05 + 0.25 * abs(0.1 - 0.3)  # RFC 6298 2.3, RTTVAR first
    srtt = 0.875 * 0.1 + 0.125 * 0.3
    assert est.rttvar == pytest.approx(rttvar)
    assert est.srtt == pytest.approx(srtt)
    assert est.rto == pytest.approx(srtt + 4 * rttvar)


def test_several_samples_per_rtt_weigh_less() -> None:
    """RFC 7323 appendix G: alpha and beta divided by the samples expected per RTT."""
    one, many = RttEstimator(rto_min=0.0), RttEstimator(rto_min=0.0)
    for est in (one, many):
        est.sample(0.1)
    one.sample(0.5)
    many.sample(0.5, samples_per_rtt=8)
    assert many.srtt == pytest.approx((1 - 1 / 64) * 0.1 + 0.5 / 64)
    assert many.srtt < one.srtt


def test_minimum_and_maximum_clamp() -> None:
    est = RttEstimator(rto_min=0.2, rto_max=60.0)
    est.sample(0.001)
    assert est.rto == pytest.approx(0.201)  # SRTT + max(4 * RTTVAR, rto_min), as Linux
    est.sample(100.0)
    assert est.rto == 60.0


def test_backoff_doubles_up_to_the_maximum_and_a_sample_clears_it() -> None:
    est = RttEstimator(rto_min=0.2, rto_max=3.0)
    est.sample(0.05)
    base = est.rto
    est.back_off()
    assert est.rto == 2 * base and est.backoff == 1
    for _ in range(10):
        est.back_off()
    assert est.rto == 3.0
    est.sample(0.05)
    assert est.backoff == 0 and est.rto < 3.0


def test_granularity_floor() -> None:
    est = RttEstimator(rto_min=0.0)
    est.sample(0.0)
    assert est.rto == pytest.approx(0.001)  # G = 1 ms when RTTVAR is 0


def test_srtt_is_forgotten_after_repeated_backoff() -> None:
    """RFC 6298 section 5 (MAY), as BSD: a bogus SRTT does not outlive a run of timeouts."""
    est = RttEstimator(rto_min=0.2, rto_max=120.0)
    est.sample(50.0)  # one absurd sample (an ACK that was lost, then came much later)
    for _ in range(4):
        est.back_off()
    assert est.srtt is None and est.rto == 120.0  # the backed-off RTO stays meanwhile
    est.sample(0.02)
    assert est.srtt == pytest.approx(0.02) and est.rto == pytest.approx(0.02 + 0.2)
