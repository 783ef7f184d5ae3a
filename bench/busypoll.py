#!/usr/bin/env python3
"""Busy-poll settings A/B on the TCP echo round trip, interleaved, quiet or under a CPU load.

    sudo .venv/bin/python bench/busypoll.py [--rounds 3] [--seconds 2] [--load 0|1|2]
        [--variant "0=--busy-poll 0" --variant "auto=--busy-poll auto" ...] [--cwd DIR]

One `netstack run` per variant on tap0 (bench/tcp.py's world A), the variants taken in turn
each round (so a change of the machine's load hits all of them alike). Per run: tcpclient.c's
64-byte echo RTT avg / p50, the stack's CPU per round trip (its /proc CPU time over the run,
divided by the round trips), and from its metrics endpoint the loop's wakeups and busy-poll
counters per round trip. `--load N` starts N bounded CPU spinners (`timeout`, killed by PID at
the end) for the "busy machine" regime; `--place same|cross` pins as bench/rtt_trace.py does.
A variant may name another checkout: "base=/tmp/base6ee:--busy-poll 0".
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import run as udp_bench  # noqa: E402 - namespaces, processes, CPU accounting
import tcp as tcp_bench  # noqa: E402 - the TCP world and client


def scrape(b: tcp_bench.TcpBench) -> dict[str, float]:
    """The stack's loop counters from its metrics endpoint (inside its namespace)."""
    out = b.sh(
        b.in_ns(b.ns_a, ["curl", "-s", "-m", "5", "http://127.0.0.1:9464/metrics"]), check=False
    ).stdout
    found: dict[str, float] = {}
    for line in out.splitlines():
        m = re.match(r"(netstack_loop_(?:wakeups|busy_polls|busy_poll_spins)\w*) (\S+)$", line)
        if m:
            found[m.group(1)] = float(m.group(2))
    return found


def one(b: tcp_bench.TcpBench, cwd: str | None, args: list[str], seconds: float) -> dict:
    env = dict(a[1:].split("=", 1) for a in args if a.startswith("@"))  # "@NAME=VALUE"
    b.stack_args = [a for a in args if not a.startswith("@")]
    b.stack_cwd = cwd or str(udp_bench.ROOT)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        b.start_stack()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        b.client(b.ns_a, "rtt", tcp_bench.ECHO, 0.3, "64")  # warm up
        m0, c0 = scrape(b), udp_bench.proc_cpu_s(b.stack_pid)
        res = b.client(b.ns_a, "rtt", tcp_bench.ECHO, seconds, "64")
        c1, m1 = udp_bench.proc_cpu_s(b.stack_pid), scrape(b)
    finally:
        b.stop_stack()
    n = max(1, res["count"])
    row = {"avg": res["avg_us"], "p50": res["p50_us"], "cpu": (c1 - c0) * 1e6 / n}
    for key in m1:
        short = key.replace("netstack_loop_", "").replace("_total", "")
        row[short] = (m1[key] - m0.get(key, 0.0)) / n
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--load", type=int, default=0, help="bounded CPU spinners during the runs")
    p.add_argument("--place", choices=("any", "same", "cross"), default="any")
    p.add_argument("--variant", action="append", default=[], help="NAME=[DIR:]ARGS")
    args = p.parse_args(argv)
    variants = args.variant or ["0=--busy-poll 0", "50=--busy-poll 50", "auto=--busy-poll auto"]
    parsed = []
    for v in variants:
        name, _, rest = v.partition("=")
        cwd, _, stack = rest.partition(":") if rest.startswith("/") else ("", "", rest)
        parsed.append((name, cwd or None, stack.split()))
    bench_args = argparse.Namespace(
        pin=False, keep_tmp=False, duration=args.seconds, repeat=1, stack_log_level="warning"
    )
    b = tcp_bench.TcpBench(bench_args)
    if args.place == "same":
        b.gen_cpu = b.resp_cpu = "1"
    elif args.place == "cross":
        b.gen_cpu, b.resp_cpu = "0", "1"
    spinners: list[subprocess.Popen] = []
    # generous: the spinners are ended by PID below; each run checks they still spin
    limit = str(int(args.rounds * len(parsed) * (args.seconds + 60) + 60))
    results: dict[str, list[dict]] = {name: [] for name, _, _ in parsed}
    try:
        b.compile()
        for _ in range(args.load):  # bounded by `timeout`, ended by PID below
            spinners.append(subprocess.Popen(["timeout", limit, "sh", "-c", "while :; do :; done"]))
        for r in range(args.rounds):
            for name, cwd, stack in parsed:
                if any(proc.poll() is not None for proc in spinners):
                    raise SystemExit("a load spinner ended early: the figures would be unloaded")
                row = one(b, cwd, stack, args.seconds)
                results[name].append(row)
                extra = " ".join(
                    f"{k} {v:.2f}" for k, v in row.items() if k not in ("avg", "p50", "cpu")
                )
                print(
                    f"round {r + 1} {name:8} RTT avg {row['avg']:6.1f} p50 {row['p50']:6.1f} us  "
                    f"stack CPU {row['cpu']:6.1f} us/rt  {extra}",
                    flush=True,
                )
    finally:
        try:
            for proc in spinners:  # SIGTERM: `timeout` passes it on (SIGKILL would not)
                proc.terminate()
            for proc in spinners:
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        finally:
            b.close()
    print(f"medians over {args.rounds} rounds, load {args.load}, place {args.place}:")
    for name, rows in results.items():
        if rows:
            med = {k: statistics.median(r[k] for r in rows) for k in ("avg", "p50", "cpu")}
            print(
                f"  {name:8} RTT avg {med['avg']:6.1f} p50 {med['p50']:6.1f} CPU {med['cpu']:6.1f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
