#!/usr/bin/env python3
"""Where a TCP echo round trip goes inside the stack: per loop turn, wall and CPU time of each
phase, while tcpclient.c keeps one 64-byte message in flight (bench/tcp.py's RTT row).

    sudo .venv/bin/python bench/rtt_trace.py [--seconds 2] [--mode rtt|conn|chargen]
    sudo .venv/bin/python bench/rtt_trace.py --stack-args "--offload off" --mode chargen
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

`--mode chargen` loads the stack with the lwIP anchor's `tcpprobe.py chargen` (bench/compare.py's
"TCP chargen -> kernel" row, `--mb` MiB) instead, and adds where the loop's wall time went
(sleeping in epoll vs working) and, at each sleep, what held the chargen connection's sender:
its send buffer full with everything sent (waiting for ACKs), cwnd, the peer's window, or
nothing to send.
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
import threading
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
    engines: list = []

    def sleep_reason() -> str:
        """What the chargen sender (local port 19) waits for as the loop goes to sleep."""
        for engine in engines:
            for c in engine.conns.values():
                if getattr(c, "local_port", None) != 19 or not hasattr(c, "sndbuf"):
                    continue
                flight = c.snd_nxt - c.snd_una
                unsent = len(c.sndbuf) - flight
                cc = c.recovery.cc
                if unsent <= 0:
                    if c.writing_paused:  # the application waits for write_low
                        return "all sent, application paused (send buffer above write_low)"
                    return "all sent, application has written nothing more"
                if cc is not None and flight + c.mss > cc.cwnd:
                    return "cwnd"
                if flight + c.mss > c.snd_wnd:
                    return "peer window"
                return "sendable data left"
        return "no connection"

    def ns_epoll_wait_reasoned(epfd, fds, events, n, timeout, _wait=Lib.ns_epoll_wait):
        if timeout != 0 and engines:
            reason = sleep_reason()
            w = wall()
            r = _wait(nloop.lib, epfd, fds, events, n, timeout)
            current["sleep:" + reason] = current.get("sleep:" + reason, 0) + wall() - w
            return r
        return _wait(nloop.lib, epfd, fds, events, n, timeout)

    Lib.ns_epoll_wait = lambda self, *a: ns_epoll_wait_reasoned(*a)  # type: ignore[method-assign]
    engine_init = ntcp.TcpEngine.__init__

    def remember_engine(self, *a, **k):
        engine_init(self, *a, **k)
        engines.append(self)

    ntcp.TcpEngine.__init__ = remember_engine  # type: ignore[method-assign]

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

    def schedstat() -> list[int]:
        """This thread's (on-CPU ns, runnable-but-waiting ns, timeslices): /proc schedstat."""
        path = f"/proc/self/task/{threading.get_native_id()}/schedstat"
        try:
            return [int(x) for x in Path(path).read_text().split()]
        except OSError:
            return [0, 0, 0]

    def traced_turn(self, timeout=None):
        current.clear()
        w, c = wall(), cpu()
        run_once(self, timeout)
        current["turn"] = wall() - w
        current["turn cpu"] = cpu() - c
        if len(turns) % 64 == 0:
            current["schedstat"] = schedstat()  # type: ignore[assignment]
        if len(turns) < 500_000:
            turns.append(dict(current))

    nloop.Loop.run_once = traced_turn
    timed(nloop.Loop, "_dispatch", "dispatch")
    timed(nloop.Loop, "_run_due", "timers")
    # (a vnet link reads with _receive_vnet; without offloads, software GRO and GSO read and
    # send with _receive_gro and _send_batch_gso)
    for name in ("receive_batch", "_receive_vnet", "_receive_gro"):
        if hasattr(nlink.BatchLink, name):
            timed(nlink.BatchLink, name, "read")
    for name in ("send_batch", "_send_batch_gso"):
        if hasattr(nlink.BatchLink, name):
            timed(nlink.BatchLink, name, "send")
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


def summarize_sleeps(turns: list[dict[str, int]]) -> str:
    """Where the loop's wall time went under a bulk load, and why it slept."""
    turns = turns[len(turns) // 10 :]
    total = sum(t.get("turn", 0) for t in turns) or 1
    stats = [t["schedstat"] for t in turns if "schedstat" in t]
    cpu = sum(t.get("turn cpu", 0) for t in turns)
    sleeps: dict[str, list[int]] = {}
    for t in turns:
        for k, v in t.items():
            if k.startswith("sleep:"):
                sleeps.setdefault(k[6:], []).append(v)
    lines = [
        f"loop wall {total / 1e9:.2f} s: CPU {100 * cpu / total:.0f} %, "
        f"{len(turns)} turns, {1e-3 * total / max(len(turns), 1):.1f} us per turn"
    ]
    if len(stats) >= 2:
        (on0, wait0, n0), (on1, wait1, n1) = stats[0][:3], stats[-1][:3]
        lines.append(
            f"  scheduler (schedstat, {len(stats)} samples): on a CPU {(on1 - on0) / 1e9:.2f} s, "
            f"runnable but waiting for a CPU {(wait1 - wait0) / 1e9:.2f} s, "
            f"{n1 - n0} timeslices"
        )
    for reason, vals in sorted(sleeps.items(), key=lambda kv: -sum(kv[1])):
        lines.append(
            f"  slept {100 * sum(vals) / total:5.1f} % of the wall in {len(vals)} sleeps "
            f"(median {median(vals):.0f} us): {reason}"
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
    b.stack_through(BENCH / "rtt_trace.py", out)  # the stack runs as this script's child()
    if args.cprofile:
        os.environ[PROFILE_ENV] = str(Path(args.cprofile).resolve())
    try:
        b.compile()
        if args.cwd:
            b.stack_cwd = args.cwd
        b.stack_args = args.stack_args.split()
        b.start_stack()
        if args.mode == "chargen":
            import compare  # bench/compare.py: where the anchor lies

            anchor = compare.find_anchor(args.lwip)
            if anchor is None:
                raise SystemExit("--mode chargen needs the lwIP anchor's tcpprobe.py (--lwip)")
            code = (
                f"import sys; sys.path.insert(0, {str(anchor)!r}); import tcpprobe; "
                f"print(tcpprobe.chargen({tcp_bench.STACK_IP!r}, {args.mb}))"
            )
            cmd = b.in_ns(b.ns_a, ["timeout", "90", "python3", "-c", code], b.gen_cpu)
            mibs = float(b.sh(cmd, timeout=120).stdout.split()[-1])
            b.stop_stack()
            turns = json.loads(out.read_text())
            print(f"chargen: {mibs:.1f} MiB/s")
            print(summarize_sleeps(turns))
            return 0
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
    p.add_argument("--mode", choices=("rtt", "conn", "chargen"), default="rtt")
    p.add_argument("--mb", type=int, default=200, help="MiB of chargen (--mode chargen)")
    p.add_argument(
        "--lwip",
        help="the lwIP anchor, for its tcpprobe.py (--mode chargen; default as compare.py)",
    )
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
