#!/usr/bin/env python3
"""The UDP echo's bound, A/B: the anchor's `udpecho.c` client (window 64, 64 B) against the real
`netstack run`, one checkout or argument set after another (interleaved rounds), with the
scheduler's view of both ends.

    sudo .venv/bin/python bench/udpprobe.py --variant base=/tmp/base --variant branch=. \\
        --stack-args "--offload off" --place same --place cross --secs 3 --rounds 2

A variant is NAME=CHECKOUT[::EXTRA STACK ARGS], or NAME=kernel: the C echo server behind a veth
pair, or NAME=lwip:PATH_TO_LWIPD: lwIP on a TAP as run.sh sets it up (the stack columns are then
that server's). Per run: echoes/s; the stack's CPU (utime +
stime, all threads) per echo and as a share of the wall; its sleeps (voluntary context
switches: one per epoll wait that slept) and preemptions (involuntary ones), and echoes per
sleep (the frames a wakeup finds); the client's CPU per echo, its sleeps and preemptions (from
wait4's rusage: the client is C and cannot report them itself). `--place` pins the stack on
CPU 1 and the client on CPU 1 (same) or 0 (cross), or neither (free); several `--place`
values are run in turn within each round. `same_cpu%`: the share of 5 ms samples in which the
client last ran on the CPU of the server's busiest thread (what `free` placement ends up as).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import compare  # noqa: E402
import run as udp_bench  # noqa: E402
from placement import cpu_of, descendants, ticks_of  # noqa: E402

# Runs inside the namespace: the C client as a child, its rusage from wait4.
CLIENT = r"""
import os, sys
pid = os.fork()
if pid == 0:
    os.execv({exe!r}, [{exe!r}, "client", {host!r}, "7", {secs!r}, "64", "64"])
os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # still readable: its schedstat
with open(f"/proc/{{pid}}/schedstat") as f:
    run_ns, wait_ns, slices = f.read().split()
_, status, ru = os.wait4(pid, 0)
print(ru.ru_utime, ru.ru_stime, ru.ru_nvcsw, ru.ru_nivcsw, wait_ns, file=sys.stderr)
"""


def stack_stats(pid: int) -> tuple[float, float, int, int, float]:
    """(user s, system s, voluntary, involuntary context switches, s runnable but waiting for
    a CPU) over all threads of pid."""
    user = system = wait = 0.0
    vol = invol = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        base = f"/proc/{pid}/task/{tid}"
        with contextlib.suppress(OSError):
            with open(f"{base}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            user += int(fields[11]) / udp_bench.CLK_TCK
            system += int(fields[12]) / udp_bench.CLK_TCK
            with open(f"{base}/schedstat") as f:
                wait += int(f.read().split()[1]) / 1e9
            with open(f"{base}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches"):
                        vol += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches"):
                        invol += int(line.split()[1])
    return user, system, vol, invol, wait


def sample_placement(proc: subprocess.Popen, server: int, every: float = 0.005) -> float | None:
    """Until proc ends: how often the udpecho client last ran on the same CPU as the server's
    busiest thread (sampled every 5 ms; the share of samples, 0-100), or None if not seen."""
    samples: list[tuple[int, dict[int, int]]] = []
    client = None
    while proc.poll() is None:
        if client is None:
            for kid in descendants(proc.pid):
                with contextlib.suppress(OSError), open(f"/proc/{kid}/comm") as f:
                    if f.read().startswith("udpecho"):
                        client = kid
        else:
            c = cpu_of(f"/proc/{client}/stat")
            threads = {}
            with contextlib.suppress(OSError):
                for tid in os.listdir(f"/proc/{server}/task"):
                    t = cpu_of(f"/proc/{server}/task/{tid}/stat")
                    if t is not None:
                        threads[int(tid)] = t
            if c is not None:
                samples.append((c, threads))
        time.sleep(every)
    if not samples:
        return None
    busiest = max(samples[-1][1], key=lambda t: stack_thread_ticks(server, t))
    same = sum(1 for c, threads in samples if threads.get(busiest) == c)
    return 100.0 * same / len(samples)


def stack_thread_ticks(pid: int, tid: int) -> int:
    return ticks_of(f"/proc/{pid}/task/{tid}/stat")


def start_kernel(bench: compare.Compare) -> tuple[str, int, Callable[[], object]]:
    """The `kernel` variant: udpecho.c's own C server behind a veth pair (compare.py's row)."""
    bench.start_veth()
    server = bench.popen(
        bench.in_ns(bench.ns_k2, ["timeout", "120", bench.udpecho, "server", "7"]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    time.sleep(0.3)

    def stop() -> None:
        bench.end(server)
        for ns in (bench.ns_k1, bench.ns_k2):
            subprocess.run(["ip", "netns", "del", ns], check=False)

    return bench.ns_k1, compare.program_pid(server.pid), stop


def start_lwip(bench: compare.Compare, lwipd: str) -> tuple[str, int, Callable[[], object]]:
    """The `lwip:PATH` variant: a built lwipd (run.sh's, e.g. /tmp/lwip-anchor/build-*/lwipd)
    on a TAP in its own namespace, set up as run.sh does."""
    ns = bench.netns_add("l")
    bench.sh(["ip", "-n", ns, "tuntap", "add", "dev", "tap8", "mode", "tap"])
    bench.sh(["ip", "-n", ns, "addr", "add", f"{udp_bench.HOST_IP}/24", "dev", "tap8"])
    bench.sh(["ip", "-n", ns, "link", "set", "tap8", "up"])
    proc = bench.popen(
        bench.in_ns(ns, [lwipd, "tap8", udp_bench.STACK_IP, "255.255.255.0", udp_bench.HOST_IP]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        ping = ["ping", "-c1", "-W1", udp_bench.STACK_IP]
        if bench.sh(bench.in_ns(ns, ping), check=False).returncode == 0:
            break
    else:
        raise udp_bench.BenchError("lwipd does not answer ping")

    def stop() -> None:
        bench.end(proc)
        subprocess.run(["ip", "netns", "del", ns], check=False)

    return ns, compare.program_pid(proc.pid), stop


def one(bench: compare.Compare, name: str, cwd: str, extra: str, place: str, a) -> dict:
    if cwd == "kernel":
        ns, pid, stop = start_kernel(bench)
    elif cwd.startswith("lwip:"):
        ns, pid, stop = start_lwip(bench, cwd.removeprefix("lwip:"))
    else:
        bench.stack_args = shlex.split(a.stack_args) + shlex.split(extra)
        bench.stack_cwd = Path(cwd).resolve()
        bench.start_stack()
        ns, pid, stop = bench.ns_a, bench.stack_pid, bench.stop_stack
    cpu = None
    if place != "free":
        udp_bench.set_affinity(pid, {1})
        cpu = 1 if place == "same" else 0
    try:
        bench.udpecho_client(ns, udp_bench.STACK_IP, 0.3)  # warm-up (ARP)
        code = CLIENT.format(exe=bench.udpecho, host=udp_bench.STACK_IP, secs=f"{a.secs:g}")
        before = stack_stats(pid)
        proc = subprocess.Popen(
            bench.in_ns(ns, ["timeout", str(int(a.secs + 20)), "python3", "-c", code], cpu),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        together = sample_placement(proc, pid)
        stdout, stderr = proc.communicate(timeout=a.secs + 40)
        after = stack_stats(pid)
    finally:
        stop()
    rate, _sent, received = (float(x) for x in stdout.split()[:3])
    c_user, c_sys, c_vol, c_invol, c_wait = stderr.split()[-5:]
    d = [x - y for x, y in zip(after, before, strict=True)]
    echoes = max(received, 1.0)
    client_cpu = float(c_user) + float(c_sys)
    dur = echoes / max(rate, 1.0)  # the client's own measured interval, not the start-up
    return {
        "variant": name,
        "place": place,
        "echo/s": rate,
        "cpu%": 100 * (d[0] + d[1]) / dur,
        "us/echo": (d[0] + d[1]) * 1e6 / echoes,
        "usr_us/echo": d[0] * 1e6 / echoes,
        "sleeps": int(d[2]),
        "echo/sleep": echoes / max(d[2], 1),
        "preempt": int(d[3]),
        "wait%": 100 * d[4] / dur,
        "cli_cpu%": 100 * client_cpu / dur,
        "cli_us/echo": client_cpu * 1e6 / echoes,
        "cli_sleeps": int(c_vol),
        "cli_preempt": int(c_invol),
        "cli_wait%": 100 * int(c_wait) / 1e9 / dur,
        "same_cpu%": -1.0 if together is None else together,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", action="append", required=True, help="NAME=CHECKOUT[::ARGS]")
    p.add_argument("--stack-args", default="")
    p.add_argument("--secs", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--lwip", help="the lwIP anchor directory (for udpecho.c)")
    p.add_argument("--place", action="append", choices=("free", "same", "cross"))
    a = p.parse_args()
    if not 0.5 <= a.secs <= 30 or not 1 <= a.rounds <= 10:
        sys.exit("--secs 0.5-30, --rounds 1-10 (bounded load)")
    ns = argparse.Namespace(pin=False, keep_tmp=False, stack_log_level="info")
    anchor = compare.find_anchor(a.lwip)
    if anchor is None:
        sys.exit("no lwIP anchor (udpecho.c): --lwip DIR")
    variants = []
    for v in a.variant:
        name, _, rest = v.partition("=")
        path, _, extra = rest.partition("::")
        variants.append((name, path, extra))
    bench = compare.Compare(ns, anchor)
    bench.compile()
    print(f"# {time.strftime('%H:%M:%S')} load {os.getloadavg()} stack args {a.stack_args!r}")
    cols = ("echo/s", "cpu%", "us/echo", "usr_us/echo", "sleeps", "echo/sleep", "preempt",
            "wait%", "cli_cpu%", "cli_us/echo", "cli_sleeps", "cli_preempt",
            "cli_wait%", "same_cpu%")  # fmt: skip
    print(f"{'rnd':>3} {'variant':>12} {'place':>5} " + " ".join(f"{c:>11}" for c in cols))
    try:
        for r in range(a.rounds):
            for place in a.place or ["free"]:
                for name, cwd, extra in variants:
                    row = one(bench, name, cwd, extra, place, a)
                    vals = " ".join(
                        f"{row[c]:>11.2f}" if isinstance(row[c], float) else f"{row[c]:>11}"
                        for c in cols
                    )
                    print(f"{r:>3} {name:>12} {place:>5} {vals}", flush=True)
    finally:
        bench.close()
    print(f"# {time.strftime('%H:%M:%S')} load {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
