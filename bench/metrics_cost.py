#!/usr/bin/env python3
"""What metrics cost on the packet path: UDP echo rate with the exporter served and scraped
every second, against the same stack with `--metrics-address none`.

    sudo python bench/metrics_cost.py [--duration 5] [--rounds 2] [--json FILE]

Each round starts a fresh stack per mode, in a namespace this script creates (`nsm-<pid>-*`,
deleted at the end, also on Ctrl-C), and loads it with bench/udpgen.c (the load generator of
bench/run.py, compiled into a temp dir) for `--duration` seconds. In the "on" mode a scraper in
the same namespace GETs http://127.0.0.1:9464/metrics once a second throughout the load and
reports how long each scrape took. Modes alternate (off, on, off, on, ...) so that drift of the
machine hits both; the table shows the median of the rounds. Processes are ended by PID, and
every one of them also stops by itself (count and time bounds).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST_IP, STACK_IP, ECHO_PORT, METRICS_PORT = "192.0.2.1", "192.0.2.2", 7, 9464
CLK_TCK = os.sysconf("SC_CLK_TCK")
MAX_DURATION = 60.0

# Runs inside the namespace: GET the endpoint once a second, bounded in time and count.
SCRAPER = r"""
import json, sys, time, urllib.request
url, seconds = sys.argv[1], float(sys.argv[2])
end, took, failed = time.monotonic() + seconds, [], 0
while time.monotonic() < end and len(took) + failed < 600:
    start = time.monotonic()
    try:
        size = len(urllib.request.urlopen(url, timeout=5).read())
        took.append(time.monotonic() - start)
    except OSError:
        failed += 1
    time.sleep(max(0.0, 1.0 - (time.monotonic() - start)))
print(json.dumps({"scrapes": len(took), "failed": failed, "bytes": size if took else 0,
                  "mean_ms": 1e3 * sum(took) / len(took) if took else None,
                  "max_ms": 1e3 * max(took) if took else None}))
"""


def log(msg: str) -> None:
    print(f"[metrics_cost {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sh(cmd: list[str], timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=check)


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class Bench:
    """Owns the namespaces and processes it makes; close() removes every one of them."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="netstack-metrics-cost-"))
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self.pin = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
        self.count = 0

    def in_ns(self, ns: str, cmd: list[str], cpu: str | None = None) -> list[str]:
        pin = ["taskset", "-c", cpu] if cpu is not None and self.pin else []
        return ["ip", "netns", "exec", ns, *pin, *cmd]

    def end(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def close(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(Exception):
                self.end(proc)
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "del", ns], check=False, stderr=subprocess.DEVNULL)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def compile(self) -> None:
        cc = shutil.which("gcc") or shutil.which("cc")
        if cc is None:
            raise SystemExit("metrics_cost: needs gcc for bench/udpgen.c")
        self.gen = str(self.tmp / "udpgen")
        sh([cc, "-O2", "-o", self.gen, str(ROOT / "bench" / "udpgen.c")])

    def start_stack(self, metrics: bool) -> tuple[str, subprocess.Popen]:
        self.count += 1
        ns = f"nsm-{os.getpid()}-{self.count}"
        self.namespaces.append(ns)  # before creating it: deleted even if the next line fails
        sh(["ip", "netns", "add", ns])
        sh(["ip", "-n", ns, "link", "set", "lo", "up"])
        address = f"127.0.0.1:{METRICS_PORT}" if metrics else "none"
        cmd = [sys.executable, "-m", "netstack", "run", "--interface", "tap0"]
        cmd += ["--log-level", "warning", "--metrics-address", address]
        out = open(self.tmp / f"stack-{self.count}.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            self.in_ns(ns, cmd, "1"), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
        )
        out.close()
        self.procs.append(proc)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(
                    f"stack exited early: {(self.tmp / f'stack-{self.count}.log').read_text()}"
                )
            ping = sh(self.in_ns(ns, ["ping", "-n", "-c1", "-W1", STACK_IP]), check=False)
            if ping.returncode == 0:
                return ns, proc
            time.sleep(0.1)
        raise SystemExit("stack did not answer ping in 30 s")

    def load(self, ns: str, duration: float) -> dict:
        a = self.args
        max_count = int(duration * a.max_rate)
        cmd = [self.gen, STACK_IP, str(ECHO_PORT), f"{duration:.3f}", str(max_count)]
        cmd += [str(a.window), str(a.payload), str(a.batch)]
        out = sh(self.in_ns(ns, cmd, "0"), timeout=duration + 30)
        return json.loads(out.stdout.strip().splitlines()[-1])

    def measure(self, metrics: bool) -> dict:
        ns, stack = self.start_stack(metrics)
        try:
            self.load(ns, 0.5)  # warm up: ARP, caches, first batches
            scraper = None
            if metrics:
                url = f"http://127.0.0.1:{METRICS_PORT}/metrics"
                seconds = str(self.args.duration + 1)
                scraper = subprocess.Popen(
                    self.in_ns(ns, [sys.executable, "-c", SCRAPER, url, seconds]),
                    stdout=subprocess.PIPE,
                    text=True,
                )
                self.procs.append(scraper)
            cpu0, t0 = cpu_s(stack.pid), time.monotonic()
            res = self.load(ns, self.args.duration)
            res["stack_cpu_pct"] = 100 * (cpu_s(stack.pid) - cpu0) / (time.monotonic() - t0)
            if scraper is not None:
                out, _ = scraper.communicate(timeout=self.args.duration + 30)
                res["scrape"] = json.loads(out.strip().splitlines()[-1])
            res["metrics"] = metrics
            return res
        finally:
            self.end(stack)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=5.0, help="seconds of load per run")
    p.add_argument("--rounds", type=int, default=2, help="off/on pairs (median reported)")
    p.add_argument("--window", type=int, default=256, help="datagrams in flight")
    p.add_argument("--payload", type=int, default=64, help="UDP payload bytes")
    p.add_argument("--batch", type=int, default=32, help="sendmmsg/recvmmsg batch")
    p.add_argument("--max-rate", type=int, default=2_000_000, help="cap on datagrams per second")
    p.add_argument("--json", metavar="FILE", help="also write every run here")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("metrics_cost: run as root (namespaces and a TAP device)")
    if not 0 < args.duration <= MAX_DURATION or not 1 <= args.rounds <= 10:
        raise SystemExit(f"--duration must be in (0, {MAX_DURATION:g}], --rounds in [1, 10]")
    bench = Bench(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    runs: list[dict] = []
    try:
        bench.compile()
        for r in range(args.rounds):
            for metrics in (False, True):
                res = bench.measure(metrics)
                runs.append(res)
                scrape = res.get("scrape", {})
                log(
                    f"round {r + 1} metrics {'on ' if metrics else 'off'}: {res['rate']:,.0f}/s, "
                    f"loss {100 * (1 - res['echoed'] / max(res['sent'], 1)):.2f}%, "
                    f"stack cpu {res['stack_cpu_pct']:.0f}%"
                    + (
                        f", {scrape['scrapes']} scrapes of {scrape['mean_ms']:.1f} ms"
                        if scrape
                        else ""
                    )
                )
    finally:
        bench.close()

    def median(metrics: bool, key: str) -> float:
        return statistics.median(r[key] for r in runs if r["metrics"] is metrics)

    off, on = median(False, "rate"), median(True, "rate")
    scrapes = [r["scrape"] for r in runs if r["metrics"] and r["scrape"]["scrapes"]]
    print(
        f"UDP echo, {args.payload}-byte payload, window {args.window}, "
        f"{args.duration:g} s x {args.rounds} rounds"
    )
    print(f"{'metrics':<24}{'echoed/s (median)':>20}{'stack CPU %':>14}")
    print(f"{'off (none)':<24}{off:>20,.0f}{median(False, 'stack_cpu_pct'):>14.0f}")
    print(f"{'on, scraped every 1 s':<24}{on:>20,.0f}{median(True, 'stack_cpu_pct'):>14.0f}")
    print(f"cost: {100 * (off - on) / off:+.1f}% of the echo rate" if off else "cost: n/a")
    if scrapes:
        mean_ms = statistics.mean(s["mean_ms"] for s in scrapes)
        max_ms = max(s["max_ms"] for s in scrapes)
        print(
            f"scrape under load: {mean_ms:.1f} ms mean, {max_ms:.1f} ms max, "
            f"{scrapes[0]['bytes']} bytes"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
