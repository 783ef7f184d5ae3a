#!/usr/bin/env python3
"""Where a TCP echo round trip goes inside the stack: per loop turn, wall and CPU time of each
phase, while tcpclient.c keeps one 64-byte message in flight (bench/tcp.py's RTT row).

    sudo .venv/bin/python bench/rtt_trace.py [--seconds 2] [--mode rtt|conn] [--stack-args ...]
    sudo .venv/bin/python bench/rtt_trace.py --cwd /tmp/main     # another checkout's stack
    sudo .venv/bin/python bench/rtt_trace.py --place same|cross  # pinned (needs 2 CPUs)
    sudo .venv/bin/python bench/rtt_trace.py --mode conn --cprofile /tmp/conn.prof  # + cProfile

netstack runs on tap0 in a namespace of its own (bench/run.py's world) under this file's
`--child` mode: the real `netstack run`, with the loop's phases wrapped (no loop code copied)
to stamp time.perf_counter_ns and time.thread_time_ns around them:

  wait        epoll_wait calls (the zero-timeout look, and the blocking wait)
  dispatch    reading the TAP and everything on_frames does (IPv4/TCP, the echo service's
              callback, the TCP flush that sends the echo), minus what is listed below
  read        the link's receive_batch (the read syscalls)
  rx path     Host.receive: the fast path, TCP segment processing
  tcp flush   TcpEngine.flush: the application callback and the output pass
  send        the link's send_batch (writev; the kernel's TAP receive, its TCP and the
              client's wakeup run inside it, charged to the stack's CPU)
  timers      the turn's timers and deadline sources
  other       the rest of the turn (clocks, histograms, counters)
  gc          the garbage collector's pauses (gc.callbacks), wherever they fell

Wrapping costs ~1 us of CPU per phase (thread_time_ns is a system call): the printed figures
include it; compare runs of this tool with each other, and read bench/micro.py for the
protocol code's CPU alone. Printed: turns per operation, the share of turns whose zero-timeout
look already found the next request (the stack is then the bottleneck: the client turned
around while it was still busy), and the median per turn of each phase.
"""

from __future__ import annotations

import argparse
import atexit
import cProfile
import gc
import json
import os
import pstats
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
PROFILE_ENV = "NETSTACK_RTT_TRACE_PROFILE"  # --cprofile: the child's cProfile output file


# -- the child: `netstack run` with the loop's phases wrapped ------------------------------------
def child(out: str, argv: list[str]) -> int:
    from netstack.io import link as nlink
    from netstack.io import loop as nloop
    from netstack.proto import host as nhost
    from netstack.proto.tcp import engine as ntcp

    wall, cpu = time.perf_counter_ns, time.thread_time_ns
    turns: list[dict[str, int]] = []
    current: dict[str, int] = {}
    real_lib = nloop.lib

    class Lib:  # the loop's `lib` with epoll_wait timed (a cffi lib cannot be patched)
        def __getattr__(self, name: str):
            return getattr(real_lib, name)

        def ns_epoll_wait(self, epfd, fds, events, n, timeout):
            w = wall()
            r = real_lib.ns_epoll_wait(epfd, fds, events, n, timeout)
            current["wait"] = current.get("wait", 0) + wall() - w
            if timeout == 0:
                current["looked"] = r
            return r

    nloop.lib = Lib()
    gc_start = [0, 0]

    def gc_timed(phase: str, info: dict) -> None:  # the collector's pauses, inside any phase
        if phase == "start":
            gc_start[:] = wall(), cpu()
            return
        current["gc"] = current.get("gc", 0) + wall() - gc_start[0]
        current["gc cpu"] = current.get("gc cpu", 0) + cpu() - gc_start[1]
        current["gc runs"] = current.get("gc runs", 0) + 1
        current["gc found"] = current.get("gc found", 0) + info["collected"]
        gen = f"gc{info['generation']} cpu"
        current[gen] = current.get(gen, 0) + cpu() - gc_start[1]

    gc.callbacks.append(gc_timed)

    def timed(cls, name: str, label: str) -> None:
        f = getattr(cls, name)

        def wrapper(*a, **k):
            w, c = wall(), cpu()
            try:
                return f(*a, **k)
            finally:
                current[label] = current.get(label, 0) + wall() - w
                current[label + " cpu"] = current.get(label + " cpu", 0) + cpu() - c

        setattr(cls, name, wrapper)

    run_once = nloop.Loop.run_once

    def traced_turn(self, timeout=None):
        current.clear()
        w, c = wall(), cpu()
        run_once(self, timeout)
        current["turn"] = wall() - w
        current["turn cpu"] = cpu() - c
        if len(turns) < 500_000:
            turns.append(dict(current))

    nloop.Loop.run_once = traced_turn
    timed(nloop.Loop, "_dispatch", "dispatch")
    timed(nloop.Loop, "_run_due", "timers")
    for name in ("receive_batch", "_receive_vnet"):  # (a vnet link reads with the second)
        timed(nlink.BatchLink, name, "read")
    timed(nlink.BatchLink, "send_batch", "send")
    timed(nhost.Host, "receive", "rx path")
    timed(ntcp.TcpEngine, "flush", "tcp flush")

    profile_path = os.environ.get(PROFILE_ENV)
    prof = cProfile.Profile() if profile_path else None

    def save() -> None:
        if prof is not None:
            prof.disable()
            prof.dump_stats(profile_path)
        Path(out).write_text(json.dumps(turns))

    atexit.register(save)
    from netstack.cli import main

    if prof is not None:
        prof.enable()
    return main(argv)


# -- the parent: namespace, client, summary -------------------------------------------------------
def median(values: list[int]) -> float:
    values = sorted(values)
    return values[len(values) // 2] / 1000 if values else 0.0


def summarize(turns: list[dict[str, int]], ops: int) -> str:
    busy = [t for t in turns if "dispatch" in t]  # turns that read something
    if not busy:
        return "no turn read a frame"
    busy = busy[len(busy) // 10 :]  # the warm-up left out
    found = sum(1 for t in busy if t.get("looked", 0) > 0)
    rows = [
        ("turn", "turn"),
        ("wait (epoll)", "wait"),
        ("dispatch", "dispatch"),
        ("  read", "read"),
        ("  rx path", "rx path"),
        ("  tcp flush", "tcp flush"),
        ("send (writev)", "send"),
        ("timers", "timers"),
    ]
    gc_runs = sum(t.get("gc runs", 0) for t in turns)
    gc_cpu = sum(t.get("gc cpu", 0) for t in turns) / 1000
    gc_found = sum(t.get("gc found", 0) for t in turns)
    lines = [
        f"{len(turns)} turns, {ops} operations ({len(turns) / max(ops, 1):.2f} turns each); "
        f"{100 * found / len(busy):.0f} % of busy turns found the next frame already queued",
        f"{'median per busy turn':24} {'wall us':>8} {'CPU us':>8}",
    ]
    for name, key in rows:
        w = median([t.get(key, 0) for t in busy])
        c = median([t.get(key + " cpu", 0) for t in busy]) if key != "wait" else 0.0
        lines.append(f"{name:24} {w:8.1f} {c:8.1f}")
    lines.append(
        f"garbage collector (inside the phases above): {gc_runs} runs, "
        f"{gc_found / max(ops, 1):.1f} cyclic garbage objects found per operation, "
        f"{gc_cpu / max(ops, 1):.1f} us of CPU per operation ("
        + ", ".join(
            f"generation {g}: {sum(t.get(f'gc{g} cpu', 0) for t in turns) / 1000 / max(ops, 1):.1f}"
            for g in range(3)
        )
        + ")"
    )
    return "\n".join(lines)


def parent(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(BENCH))
    import tcp as tcp_bench  # bench/tcp.py: worlds, compiled client

    bench_args = argparse.Namespace(
        pin=False, keep_tmp=False, duration=args.seconds, repeat=1, stack_log_level="warning"
    )
    b = tcp_bench.TcpBench(bench_args)
    if args.place == "same":  # the client on the stack's CPU (bench/run.py's placements)
        b.gen_cpu = b.resp_cpu = "1"
    elif args.place == "cross":  # the client on the other CPU: every wakeup is remote
        b.gen_cpu, b.resp_cpu = "0", "1"
    out = b.tmp / "turns.json"
    popen = b.popen

    def traced_popen(cmd: list[str], **kw):
        if "-m" in cmd and "netstack" in cmd:  # `python -m netstack run ...` -> the child
            i = cmd.index("-m")
            cmd = [*cmd[:i], str(BENCH / "rtt_trace.py"), "--child", str(out), *cmd[i + 2 :]]
        return popen(cmd, **kw)

    b.popen = traced_popen  # type: ignore[method-assign]
    if args.cprofile:
        os.environ[PROFILE_ENV] = str(Path(args.cprofile).resolve())
    try:
        b.compile()
        if args.cwd:
            b.stack_cwd = args.cwd
        b.stack_args = args.stack_args.split()
        b.start_stack()
        if args.mode == "rtt":
            res = b.client(b.ns_a, "rtt", tcp_bench.ECHO, args.seconds, "64")
            ops = res["count"] + 50  # its warm-up exchanges
            figure = f"RTT avg {res['avg_us']:.1f} us p50 {res['p50_us']:.1f}"
        else:
            res = b.client(b.ns_a, "conn", tcp_bench.ECHO, args.seconds)
            ops, figure = res["connections"], f"{res['per_s']:.0f} connections/s"
        b.stop_stack()
        turns = json.loads(out.read_text())
        print(f"{args.mode}: {figure}")
        print(summarize(turns, ops))
        if args.cprofile:
            print(f"cProfile of the stack ({ops} operations) in {args.cprofile}:")
            stats = pstats.Stats(args.cprofile)
            stats.sort_stats(args.sort).print_stats(args.top)
    finally:
        b.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        sys.path.insert(0, os.getcwd())  # the checkout the parent started us in
        return child(argv[1], argv[2:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--mode", choices=("rtt", "conn"), default="rtt")
    p.add_argument("--stack-args", default="", help="extra `netstack run` arguments")
    p.add_argument("--cwd", help="run the stack from this checkout (its own build)")
    p.add_argument(
        "--place",
        choices=("any", "same", "cross"),
        default="any",
        help="pin stack and client to CPU 1 (same), or stack to 1 and client to 0 (cross)",
    )
    p.add_argument("--cprofile", help="also cProfile the stack's whole run into this file")
    p.add_argument("--sort", default="tottime", help="--cprofile: pstats sort key")
    p.add_argument("--top", type=int, default=40, help="--cprofile: rows printed")
    args = p.parse_args(argv)
    if not 0.5 <= args.seconds <= 30:
        p.error("--seconds 0.5..30")
    if os.geteuid() != 0:
        print("bench/rtt_trace.py needs root (network namespaces, TAP)", file=sys.stderr)
        return 2
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
