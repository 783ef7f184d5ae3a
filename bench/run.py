#!/usr/bin/env python3
"""netstack against the kernel's own stack, measured in one run: UDP echo throughput and ping RTT.

    sudo python bench/run.py [--duration 5] [--quick] [--profile DIR]

Worlds (all in namespaces this script creates and always deletes, even on Ctrl-C):
  A      netstack on tap0 (kernel side 192.0.2.1/24, stack 192.0.2.2; UDP echo on port 7)
  K1/K2  a veth pair, 192.0.2.1/24 in K1 and 192.0.2.2/24 in K2; echo servers run in K2
The load generator (bench/udpgen.c) and the echo server (bench/udpecho.c) are compiled with gcc
into a temp dir at run time. Results are printed as a table and saved to bench/results/.
See bench/README.md for what each row means.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"

HOST_IP = "192.0.2.1"
STACK_IP = "192.0.2.2"
ECHO_PORT = 7
TARGET_RATE = 100_000  # datagrams/s echoed by netstack
TARGET_RTT_RATIO = 3.0  # netstack ping RTT (avg) at most 3x the kernel's
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class BenchError(RuntimeError):
    pass


class Bench:
    """Owns every namespace and process it creates; close() removes them all."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tag = f"nsb-{os.getpid()}"
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="netstack-bench-"))
        ncpu = os.cpu_count() or 1
        self.pin = args.pin and ncpu >= 2
        # Throughput rows: pinned only with --pin. Latency rows always pin, in two placements:
        # the client (ping / generator) on the responder's CPU, and on the other CPU, since a
        # wakeup across CPUs costs tens of microseconds on a VM and dominates a small RTT.
        self.gen_cpu, self.resp_cpu = ("0", "1") if self.pin else (None, None)
        self.all_cpus = set(range(ncpu))
        self.placements = [("same CPU", 1, 1), ("cross-CPU", 1, 0)] if ncpu >= 2 else []
        if not self.placements:
            self.placements = [("same CPU", 0, 0)]

    # -- plumbing --------------------------------------------------------------------------
    def sh(self, cmd: list[str], *, timeout: float = 30, check: bool = True, **kw):
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, check=check, **kw
        )

    def in_ns(self, ns: str, cmd: list[str], cpu: str | int | None = None) -> list[str]:
        pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
        return ["ip", "netns", "exec", ns, *pin, *cmd]

    def netns_add(self, suffix: str) -> str:
        name = f"{self.tag}-{suffix}"
        self.namespaces.append(name)  # before creating: deleted even if the next line fails
        self.sh(["ip", "netns", "add", name])
        self.sh(["ip", "-n", name, "link", "set", "lo", "up"])
        return name

    def popen(self, cmd: list[str], **kw) -> subprocess.Popen:
        kw.setdefault("cwd", ROOT)
        proc = subprocess.Popen(cmd, **kw)
        self.procs.append(proc)
        return proc

    def stack_through(self, script: Path, out: Path) -> None:
        """Start the stack (`python -m netstack run ...`) as `python SCRIPT --child OUT run
        ...` from now on: a bench that measures from inside the stack's process (rtt_trace.py,
        history.py) wraps it there and writes what it saw to OUT."""
        popen = self.popen

        def through(cmd: list[str], **kw) -> subprocess.Popen:
            if "-m" in cmd and "netstack" in cmd:
                i = cmd.index("-m")
                cmd = [*cmd[:i], str(script), "--child", str(out), *cmd[i + 2 :]]
            return popen(cmd, **kw)

        self.popen = through  # type: ignore[method-assign]

    def end(self, proc: subprocess.Popen, timeout: float = 10) -> int | None:
        """SIGTERM a process we started (by its PID), then SIGKILL if it lingers."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        return proc.returncode

    def close(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(Exception):
                self.end(proc, timeout=5)
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], check=False, stderr=subprocess.DEVNULL)
        left = [ns for ns in self.namespaces if Path(f"/run/netns/{ns}").exists()]
        if left:
            log(f"WARNING: namespaces not deleted: {left}")
        if not self.args.keep_tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- build -----------------------------------------------------------------------------
    def compile(self) -> None:
        cc = shutil.which("gcc") or shutil.which("cc")
        if cc is None:
            raise BenchError("needs gcc to build the load generator")
        for name in ("udpgen", "udpecho"):
            self.sh([cc, "-O2", "-Wall", "-o", str(self.tmp / name), str(BENCH / f"{name}.c")])
        self.gen = str(self.tmp / "udpgen")
        self.cecho = str(self.tmp / "udpecho")

    # -- worlds ----------------------------------------------------------------------------
    def start_stack(self) -> None:
        self.ns_a = self.netns_add("a")
        self.stack_log = self.tmp / "stack.log"
        self._stack_out = open(self.stack_log, "wb")  # noqa: SIM115 - closed in stop_stack
        cmd = [sys.executable, "-m", "netstack", "run", "--interface", "tap0"]
        cmd += ["--log-level", self.args.stack_log_level]
        cmd += getattr(self, "stack_args", [])  # e.g. --offload off (bench/compare.py)
        self.stack = self.popen(
            self.in_ns(self.ns_a, cmd, self.resp_cpu),
            cwd=getattr(self, "stack_cwd", ROOT),  # another checkout (bench/compare.py)
            stdout=self._stack_out,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.stack.poll() is not None:
                raise BenchError(f"stack exited early:\n{self.stack_log.read_text()}")
            addr = self.sh(
                ["ip", "-n", self.ns_a, "-4", "-o", "addr", "show", "dev", "tap0"], check=False
            ).stdout
            if HOST_IP in addr:
                ping = self.sh(
                    self.in_ns(self.ns_a, ["ping", "-n", "-c1", "-W1", STACK_IP]), check=False
                )
                if ping.returncode == 0:
                    break
            time.sleep(0.1)
        else:
            raise BenchError(f"stack did not come up in 30 s:\n{self.stack_log.read_text()}")
        self.stack_pid = python_pid(self.stack.pid)
        log(f"netstack up in {self.ns_a}, pid {self.stack_pid}")

    def stop_stack(self) -> str:
        """SIGTERM the stack, delete its namespace; returns its log (counters summary)."""
        self.end(self.stack)
        self._stack_out.close()
        subprocess.run(["ip", "netns", "del", self.ns_a], check=False)
        return self.stack_log.read_text(errors="replace")

    def start_veth(self) -> None:
        self.ns_k1 = self.netns_add("k1")
        self.ns_k2 = self.netns_add("k2")
        veth = ["link", "add", "veth-k1", "type", "veth", "peer", "name", "veth-k2", "netns"]
        self.sh(["ip", "-n", self.ns_k1, *veth, self.ns_k2])
        self.sh(["ip", "-n", self.ns_k1, "addr", "add", f"{HOST_IP}/24", "dev", "veth-k1"])
        self.sh(["ip", "-n", self.ns_k2, "addr", "add", f"{STACK_IP}/24", "dev", "veth-k2"])
        self.sh(["ip", "-n", self.ns_k1, "link", "set", "veth-k1", "up"])
        self.sh(["ip", "-n", self.ns_k2, "link", "set", "veth-k2", "up"])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            ping = self.sh(
                self.in_ns(self.ns_k1, ["ping", "-n", "-c1", "-W1", STACK_IP]), check=False
            )
            if ping.returncode == 0:
                return
            time.sleep(0.1)
        raise BenchError("veth pair did not come up")

    def start_echo_server(self, kind: str) -> tuple[subprocess.Popen, int]:
        life = str(int(self.args.duration * 3 + 30))
        if kind == "c":
            cmd = [self.cecho, str(ECHO_PORT), life]
        else:
            cmd = [sys.executable, str(BENCH / "pyecho.py"), str(ECHO_PORT), life]
        proc = self.popen(
            self.in_ns(self.ns_k2, cmd, self.resp_cpu),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        line = proc.stdout.readline() if proc.stdout else ""
        if "ready" not in line:
            raise BenchError(f"{kind} echo server did not start: {line}")
        return proc, (python_pid(proc.pid) if kind == "py" else proc.pid)

    # -- measurements ----------------------------------------------------------------------
    def udp_load(
        self, ns: str, duration: float, max_count: int | None = None, cpu: int | str | None = None
    ) -> dict:
        max_count = max_count or min(int(duration * self.args.max_rate), 1 << 32)
        a = self.args
        cmd = [self.gen, STACK_IP, str(ECHO_PORT), f"{duration:.3f}", str(max_count)]
        cmd += [str(a.window), str(a.payload), str(a.batch)]
        cpu = self.gen_cpu if cpu is None else cpu
        out = self.sh(self.in_ns(ns, cmd, cpu), timeout=duration + 30)
        return json.loads(out.stdout.strip().splitlines()[-1])

    def udp_echo(self, ns: str, resp_pid: int) -> dict:
        """Best of --repeat throughput runs (rates of all runs kept in 'runs')."""
        self.udp_load(ns, 0.3)  # warm up: ARP, caches, the responder's first batches
        runs = [self.udp_echo_once(ns, resp_pid) for _ in range(self.args.repeat)]
        best = max(runs, key=lambda r: r["rate"])
        best["runs"] = [round(r["rate"], 1) for r in runs]
        best["runs_other_cpu_pct"] = [round(r["other_cpu_pct"], 1) for r in runs]
        return best

    def udp_echo_once(self, ns: str, resp_pid: int) -> dict:
        (busy0, steal0), cpu0, t0 = system_cpu_s(), proc_cpu_s(resp_pid), time.monotonic()
        res = self.udp_load(ns, self.args.duration)
        (busy1, steal1), cpu1, t1 = system_cpu_s(), proc_cpu_s(resp_pid), time.monotonic()
        sent = res["sent"]
        res["loss_pct"] = 100.0 * (sent - res["echoed"]) / sent if sent else 100.0
        res["resp_cpu_pct"] = 100.0 * (cpu1 - cpu0) / (t1 - t0)
        gen_s = res["cpu_user_s"] + res["cpu_sys_s"]
        res["gen_cpu_pct"] = 100.0 * gen_s / res["elapsed_s"]
        # Everything else the machine did meanwhile (other users' jobs, kernel threads), in % of
        # one CPU: a large figure means the row was measured on a busy machine.
        res["other_cpu_pct"] = 100.0 * ((busy1 - busy0) - (cpu1 - cpu0) - gen_s) / (t1 - t0)
        res["steal_pct"] = 100.0 * (steal1 - steal0) / (t1 - t0)
        return res

    def udp_rtt(self, ns: str, cpu: int) -> dict:
        """Request/response latency: the same generator with one datagram in flight."""
        saved = self.args.window, self.args.batch
        self.args.window, self.args.batch = 1, 1
        try:
            return self.udp_load(ns, self.args.rtt_duration, cpu=cpu)
        finally:
            self.args.window, self.args.batch = saved

    def latency(self, ns: str, resp_pid: int | None, *, udp: bool, ping: bool) -> dict:
        """Window-1 UDP RTT and/or pings, once per CPU placement. `resp_pid` (a process we
        started) is moved onto the responder CPU meanwhile; None: the kernel answers itself."""
        out: dict = {}
        try:
            for name, resp_cpu, client_cpu in self.placements:
                if resp_pid is not None:
                    set_affinity(resp_pid, {resp_cpu})
                    time.sleep(0.05)
                row: dict = {}
                if udp:
                    row["udp"] = self.udp_rtt(ns, client_cpu)
                if ping:
                    row["ping"] = {
                        str(s): self.ping(ns, s, client_cpu) for s in self.args.ping_sizes
                    }
                out[name] = row
        finally:
            if resp_pid is not None:
                with contextlib.suppress(OSError):
                    set_affinity(resp_pid, {1} if self.pin else self.all_cpus)
        return out

    def ping(self, ns: str, size: int, cpu: int | None = None) -> dict:
        a = self.args
        warm = ["ping", "-n", "-c3", "-i", "0.01", "-W1", STACK_IP]
        self.sh(self.in_ns(ns, warm, cpu), check=False)
        cmd = ["ping", "-n", "-c", str(a.ping_count), "-i", str(a.ping_interval)]
        cmd += ["-s", str(size), "-W", "1", STACK_IP]
        out = self.sh(
            self.in_ns(ns, cmd, cpu), timeout=a.ping_count * a.ping_interval + 20, check=False
        )
        times = sorted(float(t) for t in re.findall(r"time=([\d.]+) ms", out.stdout))
        n = len(times)
        if not n:
            raise BenchError(f"ping {size} got no replies:\n{out.stdout}{out.stderr}")
        return {
            "size": size,
            "sent": a.ping_count,
            "received": n,
            "loss_pct": 100.0 * (a.ping_count - n) / a.ping_count,
            "min_ms": times[0],
            "avg_ms": sum(times) / n,
            "p50_ms": pct(times, 50),
            "p99_ms": pct(times, 99),
            "max_ms": times[-1],
        }

    def profile(self, out_dir: Path) -> dict:
        """py-spy record (speedscope) of the stack while the generator loads it."""
        pyspy = shutil.which("py-spy")
        if pyspy is None:
            raise BenchError("--profile needs py-spy (pip install py-spy)")
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "echo.speedscope.json"
        dur = max(2, int(self.args.duration))
        # --idle: keep samples taken inside syscalls (read/writev/epoll_wait), else they vanish
        cmd = [pyspy, "record", "--pid", str(self.stack_pid), "--rate", "500"]
        cmd += ["--duration", str(dur), "--format", "speedscope", "--nonblocking", "--idle"]
        cmd += ["-o", str(path)]
        spy = self.popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(0.5)  # let py-spy attach
        load = self.udp_load(self.ns_a, dur + 0.5)
        try:
            spy.wait(dur + 30)
        except subprocess.TimeoutExpired:
            self.end(spy)
        if not path.exists():
            raise BenchError(f"py-spy wrote nothing: {spy.stdout.read() if spy.stdout else ''}")
        rows, lines, samples = aggregate_speedscope(path)
        by_total = sorted(rows, key=lambda r: -r[2])
        return {
            "file": str(path),
            "samples": samples,
            "rate_under_profiler": load["rate"],
            "by_self": rows[:30],
            "by_total": by_total[:30],
            "lines": lines[:30],
        }


# -- helpers -------------------------------------------------------------------------------
def pct(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    k = max(0, math.ceil(p / 100.0 * len(sorted_values)) - 1)
    return sorted_values[k]


def proc_cpu_s(pid: int) -> float:
    """utime + stime of `pid` in seconds, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def set_affinity(pid: int, cpus: set[int]) -> None:
    """Move every thread of `pid` (a process this script started) onto `cpus`."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(tid), cpus)


def system_cpu_s() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (v + [0] * 8)[:8]
    return (user + nice + system + irq + softirq) / CLK_TCK, steal / CLK_TCK


def python_pid(pid: int) -> int:
    """`ip netns exec` and `taskset` exec() their command, so the PID is the program's own; if a
    wrapper ever forks instead, follow its single child."""
    for _ in range(5):
        with open(f"/proc/{pid}/comm") as f:
            comm = f.read().strip()
        if comm not in ("ip", "taskset"):
            return pid
        time.sleep(0.1)
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                kids = f.read().split()
        except OSError:
            kids = []
        if len(kids) == 1:
            pid = int(kids[0])
    return pid


def aggregate_speedscope(path: Path) -> tuple[list, list, int]:
    """From a py-spy speedscope file (frames carry the executing line): per function
    [(function, self %, total %)] by self share, per line [(file:line in function, self %)],
    and the sample count."""
    data = json.loads(path.read_text())
    frames = data["shared"]["frames"]

    def short(file: str) -> str:
        with contextlib.suppress(ValueError):
            return str(Path(file).relative_to(ROOT))
        return (
            file.rsplit("/lib/python", 1)[-1].split("/", 1)[-1] if "/lib/python" in file else file
        )

    func_of = [f"{fr['name']} ({short(fr.get('file') or '?')})" for fr in frames]
    line_of = [f"{short(fr.get('file') or '?')}:{fr.get('line')} {fr['name']}" for fr in frames]
    self_f: dict[str, int] = {}
    total_f: dict[str, int] = {}
    self_l: dict[str, int] = {}
    samples = 0
    for prof in data["profiles"]:
        for stack in prof["samples"]:  # root first, leaf last; one entry per sample
            samples += 1
            if stack:
                leaf = stack[-1]
                self_f[func_of[leaf]] = self_f.get(func_of[leaf], 0) + 1
                self_l[line_of[leaf]] = self_l.get(line_of[leaf], 0) + 1
            for fn in {func_of[i] for i in stack}:
                total_f[fn] = total_f.get(fn, 0) + 1
    share = 100.0 / max(samples, 1)
    rows = [
        (fn, round(self_f.get(fn, 0) * share, 1), round(n * share, 1)) for fn, n in total_f.items()
    ]
    rows.sort(key=lambda r: -r[1])
    lines = sorted(((ln, round(n * share, 1)) for ln, n in self_l.items()), key=lambda r: -r[1])
    return rows, lines, samples


def drops_line(stack_log: str) -> str:
    lines = [ln for ln in stack_log.splitlines() if ln.startswith(("drops", "udp:", "rx "))]
    return " | ".join(lines)


def fmt_int(x: float) -> str:
    return f"{x:,.0f}".replace(",", " ")


def mark(ok: bool) -> str:
    return "PASS" if ok else "MISS"


# -- report --------------------------------------------------------------------------------
LABELS = {
    "netstack": "netstack (tap0, Python stack)",
    "kernel_c": "kernel, C recvmmsg echo (veth)",
    "kernel_py": "kernel, Python recvfrom echo (veth)",
}


def render(results: dict) -> str:
    a = results["config"]
    udp = results["udp"]
    ns_rate = udp["netstack"]["rate"]
    kc_rate = udp["kernel_c"]["rate"]
    py_rate = udp["kernel_py"]["rate"]
    out = [
        f"netstack bench: {a['cpus']} CPUs, UDP rows {a['pinning']}, best of {a['repeat']} x "
        f"{a['duration']:.1f} s, window {a['window']}, {a['payload']}-byte payloads",
        "",
    ]
    hdr = (
        f"{'UDP echo throughput':36} {'echoed/s':>9} {'loss%':>5} {'resp':>5} {'gen':>4} "
        f"{'other':>5} {'vs C':>6} {'vs Py':>6} {'RTT p50/p99 us':>14}  target"
    )
    out += [hdr, f"{'':36} {'':>9} {'':>5} {'CPU%':>5} {'CPU%':>4} {'CPU%':>5}", "-" * len(hdr)]
    for key, label in LABELS.items():
        r = udp[key]
        target = ""
        if key == "netstack":
            target = f">= {fmt_int(TARGET_RATE)}/s {mark(r['rate'] >= TARGET_RATE)}"
        rtt = f"{r['rtt_p50_us']}/{r['rtt_p99_us']}"
        out.append(
            f"{label:36} {fmt_int(r['rate']):>9} {r['loss_pct']:5.2f} {r['resp_cpu_pct']:5.0f} "
            f"{r['gen_cpu_pct']:4.0f} {max(0.0, r['other_cpu_pct']):5.0f} "
            f"{r['rate'] / kc_rate:5.2f}x {r['rate'] / py_rate:5.2f}x {rtt:>14}  {target}"
        )
    out.append("")
    hdr = (
        f"{'UDP request/response RTT (us), window 1':48} {'min':>5} {'avg':>7} {'p50':>5} "
        f"{'p99':>6} {'max':>6} {'avg vs C':>8}"
    )
    out += [hdr, "-" * len(hdr)]
    for place, rows in results["rtt"].items():
        k_avg = rows["kernel_c"]["rtt_avg_us"]
        for key, label in LABELS.items():
            r = rows[key]
            out.append(
                f"{label + ', ' + place:48} {r['rtt_min_us']:5} {r['rtt_avg_us']:7.1f} "
                f"{r['rtt_p50_us']:5} {r['rtt_p99_us']:6} {r['rtt_max_us']:6} "
                f"{r['rtt_avg_us'] / k_avg:7.2f}x"
            )
    out.append("")
    hdr = (
        f"{'ping RTT (ms), ping -i ' + str(a['ping_interval']) + ' x ' + str(a['ping_count']):36} "
        f"{'min':>7} {'avg':>7} {'p50':>7} {'p99':>7} {'max':>7} {'loss%':>5}  target"
    )
    out += [hdr, "-" * len(hdr)]
    for size in (str(s) for s in a["ping_sizes"]):
        for place, by_size in results["ping"].items():
            pr = by_size[size]
            for who in ("netstack", "kernel"):
                r = pr[who]
                label = f"{size} B {who}{' (veth)' if who == 'kernel' else ''}, {place}"
                out.append(
                    f"{label:36} {r['min_ms']:7.3f} {r['avg_ms']:7.3f} {r['p50_ms']:7.3f} "
                    f"{r['p99_ms']:7.3f} {r['max_ms']:7.3f} {r['loss_pct']:5.1f}"
                )
            ra = pr["ratio"]
            out.append(
                f"{'  ratio netstack/kernel':36} {ra['min']:6.1f}x {ra['avg']:6.1f}x "
                f"{ra['p50']:6.1f}x {ra['p99']:6.1f}x {ra['max']:6.1f}x {'':5}  "
                f"avg <= {TARGET_RTT_RATIO:.0f}x {mark(ra['avg'] <= TARGET_RTT_RATIO)}"
            )
    busy = {k: r["other_cpu_pct"] for k, r in udp.items() if r["other_cpu_pct"] > 15}
    if busy:
        rows = ", ".join(f"{k} {v:.0f}%" for k, v in busy.items())
        out += [
            "",
            f"WARNING: other work used CPU during UDP rows ({rows} of one CPU): the machine was "
            "busy, so those figures are low and noisy; rerun when it is idle.",
        ]
    out += [
        "",
        f"netstack echoes {fmt_int(ns_rate)}/s = {ns_rate / kc_rate:.2f}x the kernel's C echo, "
        f"{ns_rate / py_rate:.2f}x a Python socket echo; saved {results.get('saved', '?')}",
    ]
    return "\n".join(out)


def run(args: argparse.Namespace) -> dict:
    bench = Bench(args)
    started = time.monotonic()
    git = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    results: dict = {
        "timestamp": datetime.datetime.now().isoformat(timespec="seconds"),
        "config": {
            "duration": args.duration,
            "repeat": args.repeat,
            "window": args.window,
            "payload": args.payload,
            "batch": args.batch,
            "rtt_duration": args.rtt_duration,
            "ping_count": args.ping_count,
            "ping_interval": args.ping_interval,
            "ping_sizes": args.ping_sizes,
            "cpus": os.cpu_count(),
            "pinning": "pinned (generator cpu0, responder cpu1)" if bench.pin else "unpinned",
            "kernel": platform.release(),
            "python": platform.python_version(),
            "git": git.stdout.strip(),
            "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
        },
        "udp": {},
        "rtt": {},
        "ping": {},
    }
    try:
        bench.compile()
        log("built udpgen and udpecho")
        # -- netstack on tap0 in namespace A
        bench.start_stack()
        lat_ns = bench.latency(bench.ns_a, bench.stack_pid, udp=True, ping=True)
        log("latency rows for netstack done; UDP echo throughput")
        results["udp"]["netstack"] = bench.udp_echo(bench.ns_a, bench.stack_pid)
        if args.profile:
            log(f"profiling the stack with py-spy for {max(2, int(args.duration))} s")
            results["profile"] = bench.profile(Path(args.profile))
        results["stack_summary"] = drops_line(bench.stop_stack())
        # -- the kernel over a veth pair (K1 -- K2)
        bench.start_veth()
        lat_k = bench.latency(bench.ns_k1, None, udp=False, ping=True)
        lat_srv = {}
        for kind, key in (("c", "kernel_c"), ("py", "kernel_py")):
            log(f"kernel with the {kind} echo server: throughput and RTT")
            proc, pid = bench.start_echo_server(kind)
            results["udp"][key] = bench.udp_echo(bench.ns_k1, pid)
            lat_srv[key] = bench.latency(bench.ns_k1, pid, udp=True, ping=False)
            bench.end(proc)
            results["udp"][key]["server_says"] = proc.stdout.read().strip() if proc.stdout else ""
        for place, _, _ in bench.placements:
            results["rtt"][place] = {
                "netstack": lat_ns[place]["udp"],
                **{key: lat_srv[key][place]["udp"] for key in lat_srv},
            }
            results["ping"][place] = {}
            for size in map(str, args.ping_sizes):
                ns, k = lat_ns[place]["ping"][size], lat_k[place]["ping"][size]
                ratio = {
                    m: ns[f"{m}_ms"] / k[f"{m}_ms"] for m in ("min", "avg", "p50", "p99", "max")
                }
                results["ping"][place][size] = {"netstack": ns, "kernel": k, "ratio": ratio}
        rate = results["udp"]["netstack"]["rate"]
        results["targets"] = {
            "udp_rate": {"target": TARGET_RATE, "measured": rate, "pass": rate >= TARGET_RATE},
            "ping_avg_ratio": {
                f"{size} B, {place}": {
                    "target": TARGET_RTT_RATIO,
                    "measured": round(pr["ratio"]["avg"], 2),
                    "pass": pr["ratio"]["avg"] <= TARGET_RTT_RATIO,
                }
                for place, by_size in results["ping"].items()
                for size, pr in by_size.items()
            },
        }
    finally:
        bench.close()
        results["wall_s"] = round(time.monotonic() - started, 1)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", type=float, default=5.0, help="seconds per UDP echo row")
    p.add_argument("--quick", action="store_true", help="one 2 s run per UDP row, 100 pings")
    p.add_argument("--repeat", type=int, default=2, help="throughput runs per row (best kept)")
    p.add_argument("--window", type=int, default=256, help="datagrams in flight")
    p.add_argument("--payload", type=int, default=64, help="UDP payload bytes")
    p.add_argument("--batch", type=int, default=32, help="sendmmsg/recvmmsg batch")
    p.add_argument(
        "--max-rate",
        type=float,
        default=3e6,
        help="cap on datagrams sent per second of duration (a count bound)",
    )
    p.add_argument(
        "--rtt-duration", type=float, default=1.0, help="seconds per window-1 UDP RTT row"
    )
    p.add_argument("--ping-count", type=int, default=200)
    p.add_argument("--ping-interval", type=float, default=0.002)
    p.add_argument("--ping-sizes", type=int, nargs="+", default=[56, 1400])
    p.add_argument(
        "--pin",
        action="store_true",
        help="pin the generator to cpu0 and the responder to cpu1 (steadier on an idle machine, "
        "much worse when other jobs compete for a pinned CPU)",
    )
    p.add_argument("--profile", metavar="DIR", help="also py-spy the stack under load into DIR")
    p.add_argument("--stack-log-level", default="warning")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (binaries, log)")
    p.add_argument("--json", metavar="FILE", help="save results here instead of bench/results/")
    args = p.parse_args(argv)
    if args.quick:
        args.duration = min(args.duration, 2.0)
        args.ping_count = min(args.ping_count, 100)
        args.rtt_duration = min(args.rtt_duration, 0.5)
        args.repeat = 1
    if not 0.5 <= args.duration <= 60:
        p.error("--duration must be between 0.5 and 60 s")
    if not 1 <= args.window <= 65536 or not 8 <= args.payload <= 8972:
        p.error("--window 1..65536, --payload 8..8972")
    if not 1 <= args.batch <= 256 or not 1 <= args.ping_count <= 10000:
        p.error("--batch 1..256, --ping-count 1..10000")
    if not 1 <= args.repeat <= 10 or not 0.1 <= args.rtt_duration <= 10:
        p.error("--repeat 1..10, --rtt-duration 0.1..10")
    if os.geteuid() != 0:
        print("bench/run.py needs root (network namespaces, TAP)", file=sys.stderr)
        return 2
    # SIGTERM -> SystemExit, so that the finally blocks remove the namespaces.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        results = run(args)
    except BenchError as err:
        print(f"bench: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; namespaces and processes removed", file=sys.stderr)
        return 130
    path = Path(args.json) if args.json else RESULTS / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    results["saved"] = str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(render(results))
    if "profile" in results:
        prof = results["profile"]
        print(
            f"\nprofile ({prof['samples']} samples, {fmt_int(prof['rate_under_profiler'])}/s "
            f"under py-spy; {prof['file']}):"
        )
        print(f"  {'self %':>6} {'total %':>7}  function (by self)")
        for fn, own, total in prof["by_self"][:15]:
            print(f"  {own:6.1f} {total:7.1f}  {fn}")
        print(f"  {'self %':>6} {'total %':>7}  function (by total, inclusive)")
        for fn, own, total in prof["by_total"][:15]:
            print(f"  {own:6.1f} {total:7.1f}  {fn}")
        print(f"  {'self %':>6}  line")
        for ln, own in prof["lines"][:15]:
            print(f"  {own:6.1f}  {ln}")
    print(f"\nwall time {results['wall_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
