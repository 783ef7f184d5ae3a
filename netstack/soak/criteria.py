"""Pass/fail checks of a soak, pure: sample series and end-of-run facts in, verdicts out.

Each check is a function of one `Evidence` and the `Bounds`, returning a `Verdict` that says
what was measured and against which bound, so a report reads as a list of claims with numbers.
They are unit-tested on synthetic series (tests/unit/test_soak_criteria.py): a slow RSS leak,
fds that never come back, a drop without a known reason, a corrupted transfer, a traceback.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

MIB = 1 << 20
Sample = Mapping[str, Any]  # one sampler row: t, phase, rss, fds, drops, conns, gens, ...


@dataclasses.dataclass(frozen=True)
class Bounds:
    """The thresholds; every one is printed in the report next to the measured value."""

    rss_slope_mib_per_hour: float = 1.0  # after warm-up, least-squares fit
    # Allowed growth over the fitted window on top of the slope: a short window cannot tell a
    # 1 MiB/h leak from a few allocator pages, so the effective bound is
    # slope + tolerance / window (hours), i.e. wide for minutes, ~1 MiB/h for days.
    rss_tolerance_mib: float = 4.0
    min_fit_samples: int = 5
    # TCP connections (short echo, bulk) that may fail outside flood phases: a fraction of
    # the attempts made outside floods, rounded down (impairment phases are included).
    failure_fraction: float = 0.01
    fds_slack: int = 0  # open fds at the end may exceed the baseline by this many
    min_ping_replies: int = 4  # of 5 pings at the end


@dataclasses.dataclass(frozen=True)
class Evidence:
    """What a soak produced, reduced to what the checks need (all plain data, JSON-able)."""

    samples: Sequence[Sample]
    warmup_end: float  # seconds since start: the RSS fit starts here
    load_end: float  # ... and ends here; the settle period follows
    baseline: Sample  # taken before the load started
    final: Sample  # taken after the settle period (2*MSL) and the liveness checks
    generators: Mapping[str, Mapping[str, Any]]  # name -> GenStats dict (+ "tcp": bool)
    known_reasons: frozenset[str]  # "layer/reason" of every Drop member
    exit_drops: Mapping[str, int] | None  # per reason, from the stack's exit summary
    exit_drops_total: int | None
    reasons_seen: frozenset[str]  # every drop label Prometheus ever returned
    alive_ping_replies: int
    alive_tcp: bool | None  # None: TCP generators were off
    alive_udp: bool
    stack_log: str
    stack_exit: int | None
    flood_tail: float = 0.0  # seconds after a flood phase still counted as the flood's


@dataclasses.dataclass(frozen=True)
class Verdict:
    name: str
    passed: bool
    measured: str
    bound: str

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# -- helpers -------------------------------------------------------------------------------------
def least_squares_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Slope of the least-squares line through (xs, ys); 0 for fewer than two distinct xs."""
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx


def rss_fit(ev: Evidence) -> tuple[list[Sample], float]:
    """The samples of the fit window (warm-up end .. load end) and their slope in MiB/hour."""
    window = [s for s in ev.samples if ev.warmup_end <= s["t"] <= ev.load_end and s.get("rss")]
    xs = [s["t"] / 3600.0 for s in window]
    ys = [s["rss"] / MIB for s in window]
    return window, least_squares_slope(xs, ys)


def rss_bound(window_hours: float, bounds: Bounds) -> float:
    """The slope bound used for a fit window of this length (MiB/hour)."""
    if window_hours <= 0:
        return math.inf
    return bounds.rss_slope_mib_per_hour + bounds.rss_tolerance_mib / window_hours


def non_listen(conns: Mapping[str, float] | None) -> int:
    return int(sum(v for state, v in (conns or {}).items() if state != "listen"))


def _sum(mapping: Mapping[str, float] | None) -> int:
    return int(sum((mapping or {}).values()))


# -- the checks ----------------------------------------------------------------------------------
def check_transfers_exact(ev: Evidence, bounds: Bounds) -> Verdict:
    corrupt = {n: g.get("corrupt", 0) for n, g in ev.generators.items() if g.get("corrupt")}
    verified = sum(g.get("verified", 0) for g in ev.generators.values())
    measured = f"{verified} transfers verified exact"
    if corrupt:
        measured += ", corrupted: " + ", ".join(f"{n} {c}" for n, c in sorted(corrupt.items()))
    return Verdict("every verified transfer exact", not corrupt, measured, "0 corrupted")


def check_connection_failures(ev: Evidence, bounds: Bounds) -> Verdict:
    tcp = {n: g for n, g in ev.generators.items() if g.get("tcp")}
    attempts = sum(g.get("attempts", 0) - g.get("attempts_flood", 0) for g in tcp.values())
    failed = sum(g.get("fail", 0) - g.get("fail_flood", 0) for g in tcp.values())
    allowed = math.floor(bounds.failure_fraction * attempts)
    flood = sum(g.get("fail_flood", 0) for g in tcp.values())
    detail = ", ".join(
        f"{n} {g.get('fail', 0) - g.get('fail_flood', 0)}" for n, g in sorted(tcp.items())
    )
    tail = f" (+{ev.flood_tail:g} s after each)" if ev.flood_tail else ""
    return Verdict(
        "no failed TCP connection outside flood phases beyond the bound",
        failed <= allowed,
        f"{failed} failed of {attempts} outside floods{tail} "
        f"({detail or 'no TCP generators'}); {flood} failed during floods (not judged)",
        f"<= {bounds.failure_fraction:.1%} of attempts = {allowed}",
    )


def check_rss_slope(ev: Evidence, bounds: Bounds) -> Verdict:
    window, slope = rss_fit(ev)
    hours = (window[-1]["t"] - window[0]["t"]) / 3600.0 if len(window) > 1 else 0.0
    limit = rss_bound(hours, bounds)
    enough = len(window) >= bounds.min_fit_samples
    measured = f"{slope:+.2f} MiB/h over {hours * 60:.1f} min ({len(window)} samples)"
    bound = (
        f"< {limit:.2f} MiB/h (= {bounds.rss_slope_mib_per_hour:g} MiB/h + "
        f"{bounds.rss_tolerance_mib:g} MiB / window; short windows have wide error)"
    )
    if not enough:
        measured += f": too few samples (need {bounds.min_fit_samples})"
    return Verdict("RSS slope after warm-up", enough and slope < limit, measured, bound)


def check_fds_baseline(ev: Evidence, bounds: Bounds) -> Verdict:
    base, end = ev.baseline.get("fds"), ev.final.get("fds")
    ok = base is not None and end is not None and end <= base + bounds.fds_slack
    return Verdict(
        "open fds back to baseline after 2*MSL",
        ok,
        f"{end} at the end, {base} before the load",
        f"<= baseline + {bounds.fds_slack}",
    )


def check_connections_baseline(ev: Evidence, bounds: Bounds) -> Verdict:
    base, end = non_listen(ev.baseline.get("conns")), non_listen(ev.final.get("conns"))
    states = {k: v for k, v in (ev.final.get("conns") or {}).items() if v and k != "listen"}
    ok = ev.final.get("conns") is not None and end <= base
    return Verdict(
        "TCP connections back to baseline after 2*MSL",
        ok,
        f"{end} at the end {states or ''}, {base} before the load".replace("  ", " "),
        "<= baseline (listeners not counted)",
    )


def check_drop_reasons(ev: Evidence, bounds: Bounds) -> Verdict:
    """Every drop has a known reason, the stack's exit summary adds up, and Prometheus read the
    same counters. The last scrape comes before the stack exits, and frames keep arriving in
    between (the kernel's ND and MLD over IPv6, for one), so the exit counts may be higher than
    the scraped ones, reason by reason, but never lower: counters only grow."""
    by_reason = ev.final.get("drops") or {}
    prom_total = _sum(by_reason)
    unknown = sorted((set(ev.reasons_seen) | set(ev.exit_drops or {})) - ev.known_reasons)
    problems = []
    late = ""
    if unknown:
        problems.append(f"reasons outside the known set: {', '.join(unknown)}")
    if ev.exit_drops_total is None:
        problems.append("no drop summary in the stack's exit output")
    else:
        exit_drops = ev.exit_drops or {}
        if ev.exit_drops is not None and _sum(exit_drops) != ev.exit_drops_total:
            problems.append(
                f"exit summary reasons add to {_sum(exit_drops)} != its total {ev.exit_drops_total}"
            )
        behind = {
            r: (n, exit_drops.get(r, 0)) for r, n in by_reason.items() if n > exit_drops.get(r, 0)
        }
        problems += [
            f"Prometheus read {r} = {n} > stack's {m} at exit" for r, (n, m) in behind.items()
        ]
        if prom_total > ev.exit_drops_total:
            problems.append(f"sum by reason {prom_total} != stack's total {ev.exit_drops_total}")
        after = {
            r: m - by_reason.get(r, 0) for r, m in exit_drops.items() if m > by_reason.get(r, 0)
        }
        if after:
            late = (
                " (after the last scrape: "
                + ", ".join(f"{r} +{d}" for r, d in sorted(after.items()))
                + ")"
            )
    return Verdict(
        "every drop carries a known reason",
        not problems,
        "; ".join(problems) or f"{prom_total} drops over {len(by_reason)} reasons, all known{late}",
        "exit summary adds up; each reason's last scrape <= the stack's count at exit; "
        "reasons in the Drop set",
    )


def check_alive(ev: Evidence, bounds: Bounds) -> Verdict:
    parts = [f"ping {ev.alive_ping_replies}/5", f"udp echo {'ok' if ev.alive_udp else 'FAILED'}"]
    ok = ev.alive_ping_replies >= bounds.min_ping_replies and ev.alive_udp
    if ev.alive_tcp is not None:
        parts.append(f"tcp echo {'ok' if ev.alive_tcp else 'FAILED'}")
        ok = ok and ev.alive_tcp
    return Verdict(
        "the stack still answers at the end",
        ok,
        ", ".join(parts),
        f">= {bounds.min_ping_replies}/5 pings, echo answers",
    )


def check_no_traceback(ev: Evidence, bounds: Bounds) -> Verdict:
    lines = ev.stack_log.splitlines()
    hits = [i for i, line in enumerate(lines) if "Traceback (most recent call last)" in line]
    measured = "none in the stack's log"
    if hits:
        first = hits[0]
        tail = next(
            (ln for ln in lines[first + 1 : first + 80] if ln and not ln.startswith(" ")), ""
        )
        measured = f"{len(hits)} traceback(s), first at line {first + 1}: {tail[:160]}"
    if ev.stack_exit not in (0, None):
        measured += f"; the stack exited with {ev.stack_exit}"
    return Verdict(
        "no Python exception in the stack's log",
        not hits and ev.stack_exit in (0, None),
        measured,
        "0 tracebacks, clean exit",
    )


def check_generators_ran(ev: Evidence, bounds: Bounds) -> Verdict:
    idle = sorted(n for n, g in ev.generators.items() if g.get("attempts", 0) == 0)
    total = sum(g.get("attempts", 0) for g in ev.generators.values())
    return Verdict(
        "every enabled generator did work",
        bool(ev.generators) and not idle,
        f"{len(ev.generators)} generators, {total} attempts"
        + (f"; idle: {', '.join(idle)}" if idle else ""),
        "> 0 attempts each (a silent generator would pass every other check)",
    )


CHECKS: tuple[Callable[[Evidence, Bounds], Verdict], ...] = (
    check_transfers_exact,
    check_connection_failures,
    check_rss_slope,
    check_fds_baseline,
    check_connections_baseline,
    check_drop_reasons,
    check_alive,
    check_no_traceback,
    check_generators_ran,
)


def evaluate(ev: Evidence, bounds: Bounds = Bounds()) -> list[Verdict]:
    return [check(ev, bounds) for check in CHECKS]
