"""`netstack soak`: build a world, run the mixed load for --duration seconds, judge, report.

    netstack soak --duration 1800 --out soak-30min [--tcp-short-rate 5 ...] [--no-tcp]

Order of a run: world up (namespace, stack, relay, Prometheus) -> baseline samples -> load with
phases (floods, impairments) and the sampler -> settle for 2*MSL (the stack's TIME_WAIT, 60 s)
plus a margin, until connections and fds are back or the settle time is up -> liveness checks
(ping, UDP and TCP echo) -> one more scrape -> the stack is stopped (its exit summary gives the
total of drops) -> the world is torn down -> criteria, report.md, report.json, PNG plots.
Exit status: 0 when every criterion passes, 1 when one fails, 2 for a bad command line, 3 when
the world could not be built.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from netstack.drops import Drop
from netstack.proto.tcp.config import TcpConfig
from netstack.soak import criteria, report
from netstack.soak.generators import GENERATORS, Context, Generator, ProcessSet
from netstack.soak.sampler import Sampler
from netstack.soak.schedule import Impairments, Timeline, build_schedule, default_phase_length
from netstack.soak.world import (
    STACK_IP,
    SoakWorld,
    WorldError,
    delete_netns,
    enter_new_netns,
    missing_tools,
)

MAX_DURATION = 14 * 24 * 3600  # two weeks: the longest run the command accepts
TIME_WAIT = TcpConfig().time_wait  # 2*MSL of the stack (netstack/proto/tcp/config.py)
# How long a half-open connection lives: the initial RTO doubled over every SYN-ACK retry
# (1 + 2 + ... + 32 = 63 s by default). A flood's effects on the listener last that long.
SYN_RECEIVED_LIFETIME = TcpConfig().rto_initial * (2 ** (TcpConfig().synack_retries + 1) - 1)
SETTLE_MARGIN = 15.0
_counter = itertools.count()


class Aborted(Exception):
    """SIGTERM/SIGINT during a soak: tear down, report what there is."""


def add_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "soak",
        help="run a long mixed load (hping3, nc, ping) against a stack in a fresh namespace",
        description="Soak test: builds its own namespace with the stack, an impairment relay and "
        "Prometheus, runs the load for --duration seconds, writes report.md, report.json and "
        "PNG plots to --out, and exits 1 when a criterion fails. Needs root.",
    )
    p.add_argument("--duration", type=float, required=True, help="seconds of load (10 .. 2 weeks)")
    p.add_argument("--out", type=Path, help="report directory (default: ./soak-<timestamp>)")
    p.add_argument(
        "--phase", type=float, help="phase length in seconds (default: duration/8, 10..300)"
    )
    p.add_argument("--sample-interval", type=float, help="seconds between samples (default 2..10)")
    p.add_argument(
        "--warmup", type=float, help="seconds excluded from the RSS fit (default 25%%, 30..600)"
    )
    p.add_argument(
        "--settle",
        type=float,
        default=TIME_WAIT + SETTLE_MARGIN,
        help=f"seconds after the load for connections and fds to return "
        f"(default 2*MSL + {SETTLE_MARGIN:g} = {TIME_WAIT + SETTLE_MARGIN:g})",
    )
    p.add_argument(
        "--no-tcp",
        action="store_true",
        help="no generator talks TCP (nc TCP, SYN floods, TCP bad checksums)",
    )
    p.add_argument("--no-impair", action="store_true", help="no loss/reorder/delay phases")
    p.add_argument("--loss", default=Impairments.loss, help="relay faults of loss phases")
    p.add_argument("--reorder", default=Impairments.reorder, help="... of reorder phases")
    p.add_argument("--delay", default=Impairments.delay, help="... of delay phases")
    p.add_argument("--bulk-size", type=int, default=4 << 20, help="bytes per bulk transfer")
    p.add_argument(
        "--rss-slope",
        type=float,
        default=criteria.Bounds.rss_slope_mib_per_hour,
        help="RSS slope bound after warm-up, MiB/hour",
    )
    p.add_argument(
        "--rss-tolerance",
        type=float,
        default=criteria.Bounds.rss_tolerance_mib,
        help="MiB of growth allowed over the fit window on top of the slope",
    )
    p.add_argument(
        "--failure-fraction",
        type=float,
        default=criteria.Bounds.failure_fraction,
        help="TCP connections allowed to fail outside floods (fraction)",
    )
    p.add_argument(
        "--stack-arg",
        action="append",
        default=[],
        help="extra `netstack run` argument (repeat), e.g. --stack-arg=--tcp...",
    )
    p.add_argument("--keep-data", action="store_true", help="keep Prometheus's TSDB in --out")
    for spec in GENERATORS:
        p.add_argument(
            f"--{spec.name.replace('_', '-')}-rate",
            dest=f"rate_{spec.name}",
            type=float,
            default=spec.default,
            help=f"{spec.help}: {spec.unit} (default {spec.default:g}; 0: off)",
        )


def _defaults(args: argparse.Namespace) -> None:
    if not 10 <= args.duration <= MAX_DURATION:
        raise SystemExit(f"netstack soak: --duration must be between 10 and {MAX_DURATION}")
    args.phase = args.phase or default_phase_length(args.duration)
    args.sample_interval = args.sample_interval or min(10.0, max(2.0, args.duration / 3000))
    if args.warmup is None:
        args.warmup = min(600.0, max(30.0, args.duration * 0.25))
    args.warmup = min(args.warmup, args.duration * 0.5)
    args.settle = min(max(0.0, args.settle), 3600.0)
    if args.out is None:
        args.out = Path(time.strftime("soak-%Y%m%d-%H%M%S"))


def _rates(args: argparse.Namespace) -> dict[str, float]:
    rates = {s.name: getattr(args, f"rate_{s.name}") for s in GENERATORS}
    if args.no_tcp:
        rates.update({s.name: 0.0 for s in GENERATORS if s.tcp})
    return {name: rate for name, rate in rates.items() if rate > 0}


_DROPS_LINE = re.compile(r"^drops \((\d+)\): (.*)$", re.M)


def parse_exit_drops(log: str) -> tuple[dict[str, int] | None, int | None]:
    """The stack's exit summary: drops by "layer/reason" and their total (None if absent)."""
    matches = list(_DROPS_LINE.finditer(log))
    if matches:
        total, items = int(matches[-1][1]), matches[-1][2]
        drops = {}
        for item in items.split(", "):
            reason, _, count = item.rpartition(" ")
            drops[reason] = int(count)
        return drops, total
    if re.search(r"^drops: none$", log, re.M):
        return {}, 0
    return None, None


def _alive(world: SoakWorld, tcp: bool) -> tuple[int, bool, bool | None]:
    """Replies to 5 pings, and whether UDP echo (and TCP echo) answer, after the soak."""
    ping = subprocess.run(
        ["ping", "-n", "-c", "5", "-i", "0.2", "-W", "2", STACK_IP],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    m = re.search(r"(\d+) received", ping.stdout)
    replies = int(m[1]) if m else 0
    udp = subprocess.run(
        ["nc", "-u", "-w", "2", STACK_IP, "7"], input=b"alive udp\n",
        capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    tcp_ok = None
    if tcp:
        payload = os.urandom(2000)
        tcp_run = subprocess.run(
            ["nc", "-N", "-w", "5", STACK_IP, "7"], input=payload,
            capture_output=True, timeout=30, check=False,
        )  # fmt: skip
        tcp_ok = tcp_run.returncode == 0 and tcp_run.stdout == payload
    return replies, udp.stdout == b"alive udp\n", tcp_ok


def _kernel_sockets(path: Path) -> None:
    """The kernel side's TCP sockets after the settle period, for diagnosing leftovers."""
    ss = subprocess.run(["ss", "-tanoi"], capture_output=True, text=True, timeout=30, check=False)
    path.write_text(ss.stdout)


def _settle(world: SoakWorld, sampler: Sampler, baseline: dict, until: float) -> float:
    """Sample until connections and fds are back to baseline (twice in a row) or `until`."""
    start, back = time.monotonic(), 0
    base_conns = criteria.non_listen(baseline.get("conns"))
    while time.monotonic() < until:
        time.sleep(min(2.0, max(0.0, until - time.monotonic())))
        s = sampler.take()
        if (
            "conns" in s
            and criteria.non_listen(s.get("conns")) <= base_conns
            and s.get("fds", 1 << 30) <= baseline.get("fds", 0)
        ):
            back += 1
            if back >= 2:
                break
        else:
            back = 0
    return time.monotonic() - start


def run(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        print("netstack soak: needs root (namespaces, TAP devices)", file=sys.stderr)
        return 2
    if missing := missing_tools():
        print(f"netstack soak: missing tools: {', '.join(missing)}", file=sys.stderr)
        return 2
    _defaults(args)
    out: Path = args.out.resolve()
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    for stale in ("samples.jsonl",):
        (out / stale).unlink(missing_ok=True)
    rates = _rates(args)
    tcp_on = any(s.tcp for s in GENERATORS if s.name in rates)
    impair = None if args.no_impair else Impairments(args.loss, args.reorder, args.delay)
    phases = build_schedule(
        args.duration, args.phase, flood=any(n.startswith("syn_flood") for n in rates),
        impair=impair,
    )  # fmt: skip
    bounds = criteria.Bounds(
        rss_slope_mib_per_hour=args.rss_slope,
        rss_tolerance_mib=args.rss_tolerance,
        failure_fraction=args.failure_fraction,
    )

    def on_signal(signum: int, frame: object) -> None:
        raise Aborted(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)

    ns = f"nst-soak-{os.getpid()}-{next(_counter)}"
    print(f"soak: namespace {ns}, {args.duration:g} s of load in {len(phases)} phases, "
          f"report in {out}", flush=True)  # fmt: skip
    try:
        enter_new_netns(ns)
    except (OSError, subprocess.CalledProcessError, WorldError) as err:
        print(f"netstack soak: cannot create namespace: {err}", file=sys.stderr)
        return 3
    world = SoakWorld(work, tuple(args.stack_arg), scrape_interval=min(args.sample_interval, 2))
    procs = ProcessSet()
    stop = threading.Event()
    gens: list[Generator] = []
    sampler: Sampler | None = None
    facts: dict[str, Any] = {"aborted": None, "world_error": None}
    t0 = time.monotonic()
    try:
        try:
            world.start()
        except (WorldError, OSError, subprocess.CalledProcessError) as err:
            facts["world_error"] = str(err)
            print(f"netstack soak: {err}", file=sys.stderr)
            return 3
        assert world.stack is not None and world.prometheus is not None
        timeline = Timeline(phases, flood_tail=SYN_RECEIVED_LIFETIME)
        t0 = time.monotonic() + 3 * world.scrape_interval + 1  # the load starts after baseline
        ctx = Context(STACK_IP, timeline, t0, args.duration, stop, work, procs)
        gens = [
            spec.make(spec.name, ctx, rates[spec.name], args)
            for spec in GENERATORS
            if spec.name in rates
        ]
        sampler = Sampler(
            query=world.prometheus.query, pid=world.stack.pid, generators=gens,
            phase_at=timeline.kind_at, t0=t0, interval=args.sample_interval,
            path=out / "samples.jsonl",
        )  # fmt: skip
        baseline = _baseline(sampler, t0)
        sampler.start()
        for g in gens:
            g.start()
        _drive_phases(world, ctx, phases)
        stop.set()
        world.set_impairment("none", "none")
        for g in gens:
            g.join(max(1.0, 60 - (time.monotonic() - t0 - args.duration)))
        procs.kill_all()
        sampler.stop()
        print(f"soak: load done, settling up to {args.settle:g} s", flush=True)
        facts["settled_after"] = _settle(world, sampler, baseline, time.monotonic() + args.settle)
        _kernel_sockets(work / "kernel-sockets-end.txt")
        replies, udp_ok, tcp_ok = _alive(world, tcp_on)
        time.sleep(2.5 * world.scrape_interval)  # one scrape after the liveness checks
        final = sampler.take()
        world.stop_stack()
        facts.update(alive_ping=replies, alive_udp=udp_ok, alive_tcp=tcp_ok,
                     baseline=baseline, final=final)  # fmt: skip
    except Aborted as err:
        facts["aborted"] = str(err)
        print(f"soak: aborted by {err}; tearing down", file=sys.stderr)
    finally:
        stop.set()
        procs.kill_all()
        if sampler is not None:
            sampler.stop()
        world.close()
        delete_netns(ns)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
    return _judge_and_report(args, out, world, gens, sampler, phases, bounds, facts, rates)


def _baseline(sampler: Sampler, t0: float) -> dict[str, Any]:
    """A sample before the load, once Prometheus has scraped the idle stack."""
    time.sleep(max(0.0, t0 - time.monotonic() - 0.5))
    return sampler.take()


def _drive_phases(world: SoakWorld, ctx: Context, phases: list) -> None:
    """Switch the relay's impairment at each phase; stop early if a world process died."""
    for phase in phases:
        ctx.sleep_until(phase.start)
        world.set_impairment(phase.impairment, phase.impairment)
        print(f"soak: t={ctx.now():7.0f}s phase {phase.kind} ({phase.impairment})", flush=True)
        while ctx.now() < phase.end:
            if dead := world.alive():
                raise Aborted(f"{', '.join(dead)} died")
            ctx.stop.wait(min(1.0, max(0.0, phase.end - ctx.now())))


def _judge_and_report(args, out, world, gens, sampler, phases, bounds, facts, rates) -> int:
    stack_log = world.stack_log()
    exit_drops, exit_total = parse_exit_drops(stack_log)
    samples = sampler.samples if sampler is not None else []
    empty: dict[str, Any] = {}
    evidence = criteria.Evidence(
        samples=samples,
        warmup_end=args.warmup,
        load_end=args.duration,
        baseline=facts.get("baseline", empty),
        final=facts.get("final", empty),
        generators={g.name: g.snapshot() for g in gens},
        known_reasons=frozenset(f"{d.layer}/{d.reason}" for d in Drop),
        exit_drops=exit_drops,
        exit_drops_total=exit_total,
        reasons_seen=frozenset(sampler.reasons_seen if sampler else ()),
        alive_ping_replies=facts.get("alive_ping", 0),
        alive_tcp=facts.get("alive_tcp"),
        alive_udp=facts.get("alive_udp", False),
        stack_log=stack_log,
        stack_exit=world.stack_exit,
        flood_tail=SYN_RECEIVED_LIFETIME,
    )
    verdicts = criteria.evaluate(evidence, bounds)
    if facts.get("aborted") or facts.get("world_error"):
        verdicts.append(criteria.Verdict(
            "the soak ran to its end", False,
            facts.get("aborted") or facts.get("world_error") or "", "not aborted"))  # fmt: skip
    passed = all(v.passed for v in verdicts)
    meta = {
        "duration": args.duration,
        "phase_length": args.phase,
        "sample_interval": args.sample_interval,
        "warmup": args.warmup,
        "settle": args.settle,
        "settled_after": facts.get("settled_after"),
        "time_wait": TIME_WAIT,
        "flood_tail": SYN_RECEIVED_LIFETIME,
        "rates": rates,
        "bulk_size": args.bulk_size,
        "phases": [dataclasses.asdict(p) for p in phases],
        "bounds": dataclasses.asdict(bounds),
        "stack_args": args.stack_arg,
        "relay": world.relay_stats(),
        "sampler_errors": sampler.errors if sampler else None,
        "exit_drops": exit_drops,
        "exit_drops_total": exit_total,
        "failures": {g.name: list(g.failures) for g in gens if g.failures},
        "transfers": {g.name: list(g.transfers)[-10:] for g in gens if hasattr(g, "transfers")},
        "aborted": facts.get("aborted"),
        "world_error": facts.get("world_error"),
    }
    report.write(out, samples, verdicts, evidence, meta, passed)
    if not args.keep_data:
        import shutil

        shutil.rmtree(out / "work" / "prometheus-data", ignore_errors=True)
    for v in verdicts:
        print(f"{'PASS' if v.passed else 'FAIL'}  {v.name}: {v.measured} (bound: {v.bound})")
    print(f"soak: {'PASSED' if passed else 'FAILED'}; report {out / 'report.md'}")
    return 0 if passed else 1


def main(args: argparse.Namespace) -> int:
    return run(args)


__all__ = ["add_parser", "main", "parse_exit_drops", "run"]
