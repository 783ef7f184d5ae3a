#!/usr/bin/env python3
"""The sending side on the TAP, A/B: `tcpprobe.py chargen` against the real `netstack run`, one
checkout after another (interleaved rounds), with the scheduler's view of both ends.

    sudo .venv/bin/python bench/sendprobe.py --variant base=/tmp/base --variant branch=. \\
        --stack-args "--offload off" --mb 300 --rounds 3

Per run: MiB/s; the stack's CPU (utime + stime of all its threads) in us per 64 KiB and as a
share of the wall; of its loop thread (/proc/.../schedstat) the time runnable but not running
(waiting for a CPU: preempted) and its timeslices, and its involuntary context switches; of
the client the same. `ss -tin` and `netstack ss` are not sampled (they would perturb a 1-2 s
run): rtt_trace.py --mode chargen does that. `--sched POLICY[:SLICE_US]` sets the stack's
threads' policy and EEVDF slice (sched_setattr) to test what the scheduler does with them;
`--place` pins the stack and the client on one CPU or apart.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import compare  # noqa: E402
import placement  # noqa: E402
import run as udp_bench  # noqa: E402

CLIENT = r"""
import os, resource, sys, time
sys.path.insert(0, {anchor!r})
import tcpprobe
rate = tcpprobe.chargen({host!r}, {mb})
with open("/proc/thread-self/schedstat") as f:
    run_ns, wait_ns, slices = (int(x) for x in f.read().split())
ru = resource.getrusage(resource.RUSAGE_SELF)
print(rate, run_ns, wait_ns, slices, ru.ru_nivcsw, ru.ru_nvcsw)
"""


def thread_stats(pid: int) -> dict[int, tuple[int, int, int, int, int]]:
    """Per thread of pid: (utime+stime ticks, schedstat run ns, wait ns, timeslices, utime)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        base = f"/proc/{pid}/task/{tid}"
        with contextlib.suppress(OSError):
            with open(f"{base}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"{base}/schedstat") as f:
                run_ns, wait_ns, slices = (int(x) for x in f.read().split())
            utime = int(fields[11])
            out[int(tid)] = (utime + int(fields[12]), run_ns, wait_ns, slices, utime)
    return out


def nivcsw(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("nonvoluntary_ctxt_switches"):
                return int(line.split()[1])
    return 0


SCHED_POLICIES = {"other": 0, "batch": 3, "idle": 5}


def sched_setattr(tid: int, policy: str, slice_us: int) -> None:
    """sched_setattr(2) on one thread: SCHED_OTHER/BATCH with sched_runtime as its slice
    (EEVDF, Linux >= 6.12; 0: the default slice)."""
    import ctypes
    import struct

    policy_no, runtime = SCHED_POLICIES[policy], slice_us * 1000
    attr = struct.pack("IIQiIQQQII", 56, policy_no, 0, 0, 0, runtime, 0, 0, 0, 0)
    buf = ctypes.create_string_buffer(attr, 56)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(314, tid, buf, 0) != 0:
        raise OSError(ctypes.get_errno(), f"sched_setattr({tid}, {policy}, {slice_us} us)")


def one(bench: compare.Compare, name: str, cwd: Path, args: argparse.Namespace) -> dict:
    bench.stack_args = shlex.split(args.stack_args)
    bench.stack_cwd = cwd
    bench.start_stack()
    pid = bench.stack_pid
    if args.sched:
        policy, _, slice_us = args.sched.partition(":")
        for tid in os.listdir(f"/proc/{pid}/task"):
            sched_setattr(int(tid), policy, int(slice_us or 0))
    cpu = None
    if args.place != "free":
        udp_bench.set_affinity(pid, {1})
        cpu = 1 if args.place == "same" else 0
    try:
        code = CLIENT.format(anchor=str(bench.anchor), host=udp_bench.STACK_IP, mb=args.mb)
        tap0, (gso0, filt0, rex0) = tap_counts(bench, bench.ns_a), scrape(bench, bench.ns_a)
        kdrop0 = kernel_drops(bench, bench.ns_a)
        before, iv0 = thread_stats(pid), nivcsw(pid)
        sampler = placement.PlacementSampler(pid, every=0.02).start()
        t0 = time.monotonic()
        try:
            out = bench.sh(
                bench.in_ns(bench.ns_a, ["timeout", "120", "python3", "-c", code], cpu),
                timeout=150,
            ).stdout.split()
        finally:
            same = sampler.stop()
        wall = time.monotonic() - t0
        after, iv1 = thread_stats(pid), nivcsw(pid)
        tap1, (gso1, filt1, rex1) = tap_counts(bench, bench.ns_a), scrape(bench, bench.ns_a)
        kdrop1 = kernel_drops(bench, bench.ns_a)
    finally:
        log = bench.stop_stack()
    rate = float(out[0])
    c_run, c_wait, c_slices, c_iv = (int(x) for x in out[1:5])
    deltas = {t: tuple(a - b for a, b in zip(after[t], before.get(t, (0,) * 5), strict=True))
              for t in after}  # fmt: skip
    loop = max(deltas.values(), key=lambda d: d[1])  # the busiest thread is the loop
    ticks = sum(d[0] for d in deltas.values())
    user_s = sum(d[4] for d in deltas.values()) / udp_bench.CLK_TCK
    cpu_s = ticks / udp_bench.CLK_TCK
    per64k = cpu_s * 1e6 / (args.mb * 16)
    startup = next((ln for ln in log.splitlines() if "offload" in ln), "")[:200]
    return {
        "variant": name,
        "MiB/s": rate,
        "cpu%": 100 * cpu_s / wall,
        "cpu_us/64K": per64k,
        "user_us/64K": user_s * 1e6 / (args.mb * 16),
        "client_cpu%": 100 * c_run / 1e9 / wall,
        "loop_run_us/64K": loop[1] / 1e3 / (args.mb * 16),
        "1cpu%": -1.0 if same is None else same,
        "acks/64K": (tap1[0] - tap0[0]) / (args.mb * 16),
        "segs/64K": (gso1 - gso0) / (args.mb * 16),
        "filtered/64K": (filt1 - filt0) / (args.mb * 16),
        "rexmit": rex1 - rex0,
        "kdrops": kdrop1 - kdrop0,
        "loop_wait_s": loop[2] / 1e9,
        "loop_slices": loop[3],
        "stack_nivcsw": iv1 - iv0,
        "client_wait_s": c_wait / 1e9,
        "client_run_s": c_run / 1e9,
        "client_slices": c_slices,
        "client_nivcsw": c_iv,
        "wall_s": wall,
        "startup": startup,
    }


def tap_counts(bench, ns: str) -> tuple[int, int]:
    """tap0's (tx, rx) packets as the kernel counts them: tx = frames to the stack (the
    client's ACKs), rx = frames from it."""
    import json

    out = bench.sh(["ip", "-n", ns, "-j", "-s", "link", "show", "tap0"], check=False).stdout
    with contextlib.suppress(ValueError, IndexError, KeyError):
        st = json.loads(out)[0]["stats64"]
        return st["tx"]["packets"], st["rx"]["packets"]
    return 0, 0


def scrape(bench, ns: str) -> tuple[float, float, float]:
    """Super-segments the stack has sent (netstack_gso_frames_total{direction="tx"}), the
    ACKs it filtered (netstack_tcp_acks_filtered_total; 0 where the counter does not exist)
    and the segments it sent again (netstack_tcp_retransmitted_segments_total)."""
    cmd = ["curl", "-s", "--max-time", "2", "http://127.0.0.1:9464/metrics"]
    out = bench.sh(bench.in_ns(ns, cmd), check=False).stdout
    gso = filtered = rexmit = 0.0
    for line in out.splitlines():
        if line.startswith("netstack_gso_frames_total") and 'direction="tx"' in line:
            gso = float(line.split()[-1])
        elif line.startswith("netstack_tcp_acks_filtered_total"):
            filtered = float(line.split()[-1])
        elif line.startswith("netstack_tcp_retransmitted_segments_total"):
            rexmit = float(line.split()[-1])
    return gso, filtered, rexmit


KERNEL_DROPS = ("TCPBacklogDrop", "TCPRcvQDrop", "TCPOFODrop", "TCPZeroWindowDrop")


def kernel_drops(bench, ns: str) -> int:
    """Segments the client's kernel dropped on receive (its socket backlog or receive queue
    full, /proc/net/netstat TcpExt): what makes a sender retransmit on a clean TAP."""
    out = bench.sh(bench.in_ns(ns, ["cat", "/proc/net/netstat"]), check=False).stdout
    lines = [ln.split() for ln in out.splitlines() if ln.startswith("TcpExt:")]
    if len(lines) < 2:
        return 0
    row = dict(zip(lines[0][1:], lines[1][1:], strict=False))
    return sum(int(row.get(k, 0)) for k in KERNEL_DROPS)


def loadavg() -> list[str]:
    return Path("/proc/loadavg").read_text().split()[:3]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", action="append", required=True, help="NAME=CHECKOUT")
    p.add_argument("--stack-args", default="")
    p.add_argument("--mb", type=int, default=300)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--lwip", help="the lwIP anchor directory (for tcpprobe.py)")
    p.add_argument("--sched", help="POLICY[:SLICE_US] for the stack's threads (other, batch)")
    p.add_argument(
        "--place",
        choices=("free", "same", "cross"),
        default="free",
        help="stack on CPU 1, client on CPU 1 (same) or 0 (cross), or unpinned",
    )
    p.add_argument("--verbose", action="store_true", help="print each stack's start-up line")
    a = p.parse_args()
    ns = argparse.Namespace(pin=False, keep_tmp=False, stack_log_level="info", tcp_mb=a.mb)
    anchor = compare.find_anchor(a.lwip)
    if anchor is None:
        sys.exit("no lwIP anchor (tcpprobe.py): --lwip DIR")
    variants = [(v.split("=", 1)[0], Path(v.split("=", 1)[1]).resolve()) for v in a.variant]
    bench = compare.Compare(ns, anchor)
    print(f"# {time.strftime('%H:%M:%S')} load {loadavg()}"
          f" stack args {a.stack_args!r}, {a.mb} MiB")  # fmt: skip
    cols = ("MiB/s", "cpu%", "cpu_us/64K", "user_us/64K", "loop_run_us/64K", "1cpu%",
            "acks/64K", "segs/64K", "filtered/64K", "rexmit", "kdrops",
            "client_cpu%", "loop_wait_s",
            "loop_slices", "stack_nivcsw", "client_wait_s", "client_slices",
            "client_nivcsw")  # fmt: skip
    print(f"{'round':>5} {'variant':>10} " + " ".join(f"{c:>13}" for c in cols))
    try:
        for r in range(a.rounds):
            for name, cwd in variants:
                row = one(bench, name, cwd, a)
                vals = " ".join(
                    f"{row[c]:>13.2f}" if isinstance(row[c], float) else f"{row[c]:>13}"
                    for c in cols
                )
                print(f"{r:>5} {name:>10} {vals}", flush=True)
                if a.verbose:
                    print("      ", row["startup"])
    finally:
        bench.close()
    print(f"# {time.strftime('%H:%M:%S')} load {loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
