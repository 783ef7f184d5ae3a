#!/usr/bin/env python3
"""Does what a stack did before make each later connection dearer? The connection row
(tcpclient.c conn, bench/compare.py's "new TCP connections") on a fresh stack, then again after
each of the loads compare.py runs before it in the SAME stack process (UDP echo, the echo
round trip, tcpprobe discard/chargen, tcpprobe's checks), with the stack's CPU per connection
and, from inside the stack, the garbage collector's state and work over each row.

    sudo .venv/bin/python bench/history.py [--stack-args "--offload off"] [--cwd /tmp/main]
    sudo .venv/bin/python bench/history.py --loads conn,conn,discard,conn,chargen,conn

netstack runs under this file's `--child` mode (the real `netstack run`), which adds a
SIGUSR2 handler: on it the child appends one line of JSON to a file (gc counts and thresholds,
objects per generation and the commonest types in the oldest, frozen objects, collections and
their CPU per generation since the last line, RSS). compare.py's loads need the lwIP anchor's
tcpprobe.py (found as compare.py finds it; `--lwip DIR`).
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import os
import signal
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
LOADS = ("conn", "udp", "rtt", "discard", "chargen", "checks")


# -- the child: `netstack run` with a SIGUSR2 snapshot of the collector ---------------------------
def child(out: str, argv: list[str]) -> int:
    cpu = time.thread_time_ns
    work = {g: [0, 0, 0] for g in range(3)}  # generation: [runs, cpu ns, collected]
    start = [0]

    def timed(phase: str, info: dict) -> None:
        if phase == "start":
            start[0] = cpu()
            return
        w = work[info["generation"]]
        w[0] += 1
        w[1] += cpu() - start[0]
        w[2] += info["collected"]

    gc.callbacks.append(timed)

    def snapshot(_signum, _frame) -> None:
        oldest = gc.get_objects(2)
        types = collections.Counter(type(o).__name__ for o in oldest)
        rss = 0
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) // 1024
        line = {
            "count": gc.get_count(),
            "threshold": gc.get_threshold(),
            "objects": [len(gc.get_objects(g)) for g in range(3)],
            "frozen": gc.get_freeze_count(),
            "gen2_top": types.most_common(12),
            "work": {g: list(v) for g, v in work.items()},
            "rss_mb": rss,
        }
        del oldest
        for v in work.values():
            v[:] = [0, 0, 0]
        with open(out, "a") as f:
            f.write(json.dumps(line) + "\n")

    signal.signal(signal.SIGUSR2, snapshot)
    from netstack.cli import main

    return main(argv)


# -- the parent -----------------------------------------------------------------------------------
def parent(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(BENCH))
    import compare  # bench/compare.py: the anchor's tools, its measuring code
    import run as udp_bench
    import tcp as tcp_bench

    anchor = compare.find_anchor(args.lwip)
    loads = args.loads.split(",")
    if anchor is None and any(x in ("discard", "chargen", "checks") for x in loads):
        raise SystemExit("discard/chargen/checks need the lwIP anchor's tcpprobe.py (--lwip)")
    cargs = argparse.Namespace(
        pin=False,
        keep_tmp=False,
        duration=2.0,
        repeat=1,
        window=64,
        payload=64,
        batch=32,
        max_rate=3e6,
        stack_log_level="warning",
        placement_every=0,
        echo_mb=5,
        conns=20,
        tcp_mb=args.mb,
    )
    b = compare.Compare(cargs, anchor)
    snaps = b.tmp / "gc.jsonl"
    b.stack_through(BENCH / "history.py", snaps)  # the stack runs as this script's child()

    def snapshot() -> dict:
        n = len(snaps.read_text().splitlines()) if snaps.exists() else 0
        os.kill(pid, signal.SIGUSR2)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            lines = snaps.read_text().splitlines() if snaps.exists() else []
            if len(lines) > n:
                return json.loads(lines[-1])
            time.sleep(0.02)
        raise SystemExit("the stack wrote no snapshot")

    try:
        b.compile()
        if args.cwd:
            b.stack_cwd = args.cwd
        b.stack_args = args.stack_args.split()
        b.start_stack()
        pid = b.stack_pid
        b.client(b.ns_a, "rtt", tcp_bench.ECHO, 0.3, "64")  # warm-up: ARP
        snapshot()
        print(f"stack args: {args.stack_args or '(none)'}; cwd {args.cwd or '.'}")
        print(
            f"{'load':9} {'figure':>14} {'CPU%':>5} {'us/op':>7} {'gc0/1/2 runs':>15} "
            f"{'gc us/op':>8} {'gen0/1/2 objects':>22} {'RSS':>4}"
        )
        for load in loads:
            cpu0, t0 = udp_bench.proc_cpu_s(pid), time.monotonic()
            if load == "conn":
                res = b.client(b.ns_a, "conn", tcp_bench.ECHO, args.seconds)
                ops, figure = res["connections"], f"{res['per_s']:.0f}/s"
                client_us = 1e6 * (res["cpu_user_s"] + res["cpu_sys_s"]) / max(ops, 1)
                figure += f" c{client_us:.0f}"
            elif load == "udp":
                res = b.udp_load(b.ns_a, 3.0)
                ops, figure = res["echoed"], f"{res['rate']:.0f}/s"
            elif load == "rtt":
                res = b.client(b.ns_a, "rtt", tcp_bench.ECHO, args.seconds, "64")
                ops, figure = res["count"], f"{res['avg_us']:.1f} us"
            elif load in ("discard", "chargen"):
                mibs = b.tcpprobe(b.ns_a, compare.STACK_IP, load, args.mb)
                ops, figure = args.mb * (1 << 20) // 1448, f"{mibs:.0f} MiB/s"
            elif load == "checks":
                figure, ops = b.tcpprobe_checks(b.ns_a, compare.STACK_IP)[:14], 1
            else:
                raise SystemExit(f"unknown load {load!r} (one of {', '.join(LOADS)})")
            wall = time.monotonic() - t0
            used = udp_bench.proc_cpu_s(pid) - cpu0
            snap = snapshot()
            w = snap["work"]
            runs = "/".join(str(w[str(g)][0]) for g in range(3))
            gc_us = sum(w[str(g)][1] for g in range(3)) / 1000 / max(ops, 1)
            objs = "/".join(str(x) for x in snap["objects"])
            print(
                f"{load:9} {figure:>14} {100 * used / wall:5.0f} {1e6 * used / max(ops, 1):7.1f} "
                f"{runs:>15} {gc_us:8.2f} {objs:>22} {snap['rss_mb']:4d}"
            )
            if args.types:
                print("          gen2:", snap["gen2_top"][:8])
        b.stop_stack()
    finally:
        b.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        sys.path.insert(0, os.getcwd())  # the checkout the parent started us in
        return child(argv[1], argv[2:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--loads",
        default="udp,rtt,discard,chargen,checks,conn",
        help="comma-separated, in order, in one stack process (compare.py's order by default; "
        "the client's TIME_WAIT ports stay 60 s, so more than one conn row per run measures "
        "the client's port search too)",
    )
    p.add_argument("--seconds", type=float, default=2.0, help="per conn/rtt load")
    p.add_argument("--mb", type=int, default=50, help="MiB per tcpprobe discard/chargen")
    p.add_argument("--stack-args", default="", help="extra `netstack run` arguments")
    p.add_argument("--cwd", help="run the stack from this checkout (its own build)")
    p.add_argument("--lwip", help="the lwIP anchor (default as compare.py)")
    p.add_argument("--types", action="store_true", help="print gen 2's commonest types")
    args = p.parse_args(argv)
    if not 0.5 <= args.seconds <= 30 or not 1 <= args.mb <= 1000:
        p.error("--seconds 0.5..30, --mb 1..1000")
    if os.geteuid() != 0:
        print("bench/history.py needs root (network namespaces, TAP)", file=sys.stderr)
        return 2
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
