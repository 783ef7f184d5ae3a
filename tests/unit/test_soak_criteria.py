"""The soak's pass/fail checks on synthetic series: each one passes on a healthy run and fails
on the defect it exists for (a slow RSS leak, fds that never come back, a drop without a known
reason, a corrupted transfer, a traceback in the log, ...). Pure and fast: no namespace, no tools.
"""

from __future__ import annotations

import dataclasses
import math

import pytest

from netstack.drops import Drop
from netstack.soak import criteria
from netstack.soak.criteria import MIB, Bounds, Evidence
from netstack.soak.runner import parse_exit_drops
from netstack.soak.schedule import Impairments, Timeline, build_schedule

KNOWN = frozenset(f"{d.layer}/{d.reason}" for d in Drop)
HOUR = 3600.0
IDLE_CONNS = {"listen": 3, "established": 0, "time_wait": 0, "syn_received": 0}
DROPS = {"udp/no_port": 120, "ipv4/no_route": 900, "tcp/bad_checksum": 40}


def series(hours: float, step: float, rss=lambda t: 40 * MIB, fds=lambda t: 8) -> list[dict]:
    """Samples every `step` seconds for `hours`, RSS and fds as functions of time (s)."""
    n = int(hours * HOUR / step)
    return [
        {"t": i * step, "rss": int(rss(i * step)), "fds": fds(i * step), "conns": IDLE_CONNS}
        for i in range(n + 1)
    ]


def gen(**kw) -> dict:
    base = dict(attempts=100, attempts_flood=10, ok=100, fail=0, fail_flood=0, corrupt=0,
                verified=100, tcp=True)  # fmt: skip
    return {**base, **kw}


def healthy(hours: float = 2.0, step: float = 10.0, **changes) -> Evidence:
    """A run where every check should pass: flat RSS with noise, everything back at the end."""
    samples = series(hours, step, rss=lambda t: 40 * MIB + (int(t) * 7919 % 200) * 1024)
    ev = Evidence(
        samples=samples,
        warmup_end=0.1 * hours * HOUR,
        load_end=hours * HOUR,
        baseline={"fds": 8, "conns": IDLE_CONNS, "drops": {}},
        final={"fds": 8, "conns": IDLE_CONNS, "drops": dict(DROPS)},
        generators={
            "tcp_short": gen(),
            "bulk_echo": gen(attempts=20, verified=20, ok=20),
            "ping": gen(tcp=False, verified=0),
        },
        known_reasons=KNOWN,
        exit_drops=dict(DROPS),
        exit_drops_total=sum(DROPS.values()),
        reasons_seen=frozenset(KNOWN),
        alive_ping_replies=5,
        alive_tcp=True,
        alive_udp=True,
        stack_log="netstack up: tap0 ...\nINFO something\n",
        stack_exit=0,
    )
    return dataclasses.replace(ev, **changes)


def verdict(ev: Evidence, check, bounds: Bounds | None = None) -> criteria.Verdict:
    return check(ev, bounds or Bounds())


def test_healthy_run_passes_every_check() -> None:
    verdicts = criteria.evaluate(healthy())
    assert [v.name for v in verdicts if not v.passed] == []
    assert len(verdicts) == len(criteria.CHECKS)


# -- RSS slope ------------------------------------------------------------------------------------
def test_least_squares_slope_is_exact_on_a_line() -> None:
    xs = [0.0, 1.0, 2.0, 3.0]
    assert criteria.least_squares_slope(xs, [5 + 2.5 * x for x in xs]) == pytest.approx(2.5)
    assert criteria.least_squares_slope([1.0], [3.0]) == 0.0
    assert criteria.least_squares_slope([1.0, 1.0], [3.0, 4.0]) == 0.0


@pytest.mark.parametrize("leak_mib_per_hour", [3.0, 10.0])
def test_slow_rss_leak_fails_over_a_long_run(leak_mib_per_hour: float) -> None:
    """Hours of samples with a small steady leak (and noise) fail; the bound is ~1 MiB/h."""
    samples = series(
        24, 30, rss=lambda t: 40 * MIB + leak_mib_per_hour * MIB * t / HOUR + (int(t) % 7) * 4096
    )
    ev = healthy(samples=samples, warmup_end=HOUR, load_end=24 * HOUR)
    v = verdict(ev, criteria.check_rss_slope)
    assert not v.passed, v
    assert f"{leak_mib_per_hour:+.2f}" in v.measured


def test_flat_rss_with_a_warmup_ramp_passes() -> None:
    """Growth inside the warm-up does not count; after it the line is flat."""
    samples = series(2, 10, rss=lambda t: 30 * MIB + min(t, 600) / 600 * 40 * MIB)
    v = verdict(healthy(samples=samples, warmup_end=700), criteria.check_rss_slope)
    assert v.passed, v
    # Without the warm-up the ramp is in the fit and the run fails.
    v = verdict(healthy(samples=samples, warmup_end=0), criteria.check_rss_slope)
    assert not v.passed, v


def test_short_runs_get_a_wide_bound_that_still_catches_a_fast_leak() -> None:
    bounds = Bounds()
    assert criteria.rss_bound(2 / 60, bounds) == pytest.approx(1 + 4 / (2 / 60))  # 121 MiB/h
    assert criteria.rss_bound(24, bounds) == pytest.approx(1 + 4 / 24)
    assert criteria.rss_bound(0, bounds) == math.inf
    # 3 minutes of samples, 20 MiB gained after warm-up: fails even with the wide bound.
    samples = series(3 / 60, 2, rss=lambda t: 40 * MIB + t / 180 * 20 * MIB)
    ev = healthy(samples=samples, warmup_end=30, load_end=180)
    v = verdict(ev, criteria.check_rss_slope)
    assert not v.passed and "wide error" in v.bound, v


def test_too_few_samples_for_a_fit_fail() -> None:
    ev = healthy(samples=series(1 / 60, 20), warmup_end=30, load_end=60)
    v = verdict(ev, criteria.check_rss_slope)
    assert not v.passed and "too few samples" in v.measured


# -- fds and connections back to baseline ---------------------------------------------------------
def test_fds_that_never_come_back_fail() -> None:
    samples = series(1, 10, fds=lambda t: 8 + int(t // 60))  # one fd leaked a minute
    ev = healthy(samples=samples, final={**healthy().final, "fds": samples[-1]["fds"]})
    v = verdict(ev, criteria.check_fds_baseline)
    assert not v.passed and "68 at the end" in v.measured
    assert verdict(healthy(), criteria.check_fds_baseline).passed


def test_missing_fd_samples_fail() -> None:
    ev = healthy(final={"conns": IDLE_CONNS, "drops": DROPS})
    assert not verdict(ev, criteria.check_fds_baseline).passed


def test_connections_left_after_2msl_fail() -> None:
    stuck = {**IDLE_CONNS, "established": 1, "time_wait": 4}
    ev = healthy(final={**healthy().final, "conns": stuck})
    v = verdict(ev, criteria.check_connections_baseline)
    assert not v.passed and "5 at the end" in v.measured and "established" in v.measured
    # Listeners are not connections: more of them is not a leak.
    ev = healthy(final={**healthy().final, "conns": {**IDLE_CONNS, "listen": 9}})
    assert verdict(ev, criteria.check_connections_baseline).passed
    # No connection series at the end (scrape failed): cannot pass.
    ev = healthy(final={"fds": 8, "drops": DROPS})
    assert not verdict(ev, criteria.check_connections_baseline).passed


# -- drops ---------------------------------------------------------------------------------------
def test_a_drop_without_a_reason_fails() -> None:
    """The stack counted one more drop than its reasons add up to."""
    ev = healthy(exit_drops_total=sum(DROPS.values()) + 1)
    v = verdict(ev, criteria.check_drop_reasons)
    assert not v.passed and "!=" in v.measured


def test_a_drop_reason_outside_the_known_set_fails() -> None:
    ev = healthy(reasons_seen=KNOWN | {"tcp/mystery"})
    v = verdict(ev, criteria.check_drop_reasons)
    assert not v.passed and "tcp/mystery" in v.measured
    ev = healthy(exit_drops={**DROPS, "/": 0})
    assert not verdict(ev, criteria.check_drop_reasons).passed


def test_drops_after_the_last_scrape_pass_and_are_named() -> None:
    """The kernel keeps sending (ND, MLD) between the last scrape and the stack's exit."""
    later = {**DROPS, "udp/no_port": DROPS["udp/no_port"] + 3, "ipv6/not_for_us": 2}
    ev = healthy(exit_drops=later, exit_drops_total=sum(later.values()),
                 known_reasons=KNOWN | {"ipv6/not_for_us"})  # fmt: skip
    v = verdict(ev, criteria.check_drop_reasons)
    assert v.passed, v.measured
    assert "udp/no_port +3" in v.measured and "ipv6/not_for_us +2" in v.measured


def test_a_scrape_above_the_exit_count_fails() -> None:
    """Counters only grow: Prometheus can't have read more than the stack counted at exit."""
    fewer = {**DROPS, "tcp/bad_checksum": DROPS["tcp/bad_checksum"] - 1}
    ev = healthy(exit_drops=fewer, exit_drops_total=sum(fewer.values()))
    v = verdict(ev, criteria.check_drop_reasons)
    assert not v.passed and "tcp/bad_checksum" in v.measured


def test_no_exit_summary_fails() -> None:
    ev = healthy(exit_drops=None, exit_drops_total=None)
    assert not verdict(ev, criteria.check_drop_reasons).passed


def test_exit_summary_parser() -> None:
    log = "netstack up\n...\ndrops (13): ipv4/no_route 10, udp/no_port 3\n"
    assert parse_exit_drops(log) == ({"ipv4/no_route": 10, "udp/no_port": 3}, 13)
    assert parse_exit_drops("x\ndrops: none\n") == ({}, 0)
    assert parse_exit_drops("killed before the summary") == (None, None)


# -- transfers and connections -----------------------------------------------------------------
def test_a_corrupted_transfer_fails() -> None:
    gens = {**healthy().generators, "bulk_echo": gen(attempts=20, ok=19, fail=1, corrupt=1)}
    v = verdict(healthy(generators=gens), criteria.check_transfers_exact)
    assert not v.passed and "bulk_echo 1" in v.measured


def test_failed_connections_outside_floods_beyond_the_bound_fail() -> None:
    # 90 attempts outside floods: 1 % allows 0 failures; failures during floods do not count.
    flood_only = gen(fail=5, fail_flood=5, ok=95)
    assert verdict(healthy(generators={"tcp_short": flood_only}),
                   criteria.check_connection_failures).passed  # fmt: skip
    outside = gen(fail=6, fail_flood=5, ok=94)
    v = verdict(healthy(generators={"tcp_short": outside}), criteria.check_connection_failures)
    assert not v.passed and "1 failed of 90" in v.measured
    # A looser bound lets that one through; UDP/ICMP generators are never judged here.
    assert verdict(healthy(generators={"tcp_short": outside}), criteria.check_connection_failures,
                   Bounds(failure_fraction=0.02)).passed  # fmt: skip
    lossy_udp = {"udp_echo": gen(tcp=False, fail=50, ok=50)}
    assert verdict(healthy(generators=lossy_udp), criteria.check_connection_failures).passed


def test_an_idle_generator_fails() -> None:
    gens = {**healthy().generators, "bulk_chargen": gen(attempts=0, ok=0, verified=0)}
    v = verdict(healthy(generators=gens), criteria.check_generators_ran)
    assert not v.passed and "bulk_chargen" in v.measured
    assert not verdict(healthy(generators={}), criteria.check_generators_ran).passed


# -- the end of the run --------------------------------------------------------------------------
def test_an_exception_in_the_log_fails() -> None:
    log = (
        "netstack up\n"
        "ERROR loop callback failed\n"
        "Traceback (most recent call last):\n"
        '  File "netstack/proto/tcp/engine.py", line 1, in input\n'
        "KeyError: 42\n"
    )
    v = verdict(healthy(stack_log=log), criteria.check_no_traceback)
    assert not v.passed and "KeyError: 42" in v.measured
    v = verdict(healthy(stack_exit=1), criteria.check_no_traceback)
    assert not v.passed and "exited with 1" in v.measured


@pytest.mark.parametrize(
    ("changes", "passes"),
    [
        ({}, True),
        ({"alive_ping_replies": 3}, False),
        ({"alive_udp": False}, False),
        ({"alive_tcp": False}, False),
        ({"alive_tcp": None}, True),  # TCP generators off: TCP not required
    ],
)
def test_the_stack_must_still_answer(changes: dict, passes: bool) -> None:
    assert verdict(healthy(**changes), criteria.check_alive).passed is passes


# -- the schedule -----------------------------------------------------------------------------
def test_schedule_cycles_phases_and_ends_clean() -> None:
    phases = build_schedule(120, 15)
    assert [p.kind for p in phases] == [
        "clean", "loss", "reorder", "delay", "flood", "clean", "clean", "clean",
    ]  # fmt: skip
    assert phases[-1].end == 120 and phases[1].impairment == Impairments().loss
    timeline = Timeline(phases)
    assert timeline.touches_flood(59, 61) and not timeline.touches_flood(76, 89)
    # The flood's aftermath (half-open connections until their SYN-ACK retries end) counts.
    assert Timeline(phases, flood_tail=63).touches_flood(100, 101)
    assert not Timeline(phases, flood_tail=63).touches_flood(0, 59)
    # The last phase is clean even where the cycle would put a flood there.
    assert build_schedule(75, 15)[-1].kind == "clean"
    assert timeline.kind_at(-1) == "warmup" and timeline.kind_at(500) == "settle"
    off = build_schedule(120, 15, flood=False, impair=None)
    assert {p.kind for p in off} == {"clean"} and {p.impairment for p in off} == {"none"}
