#!/usr/bin/env python3
"""netstack against lwIP (C, on a TAP) and the kernel (veth), in one run, with the same tools.

    sudo .venv/bin/python bench/compare.py [--quick] [--no-profile] [--lwip DIR]

Order: lwIP first (its own script, ../shared/anchors/lwip/run.sh: builds lwIP 2.1.3 from the
Debian source once, runs it in netns `anchor-lwip`), then netstack on tap0 (once per `--offload`
value when `netstack run` has that flag), then the kernel over a veth pair. Every world is
measured with the anchor's tools, `udpecho.c` (closed loop, window 64, 64 B) and `tcpprobe.py`
(discard / chargen MB/s, echo sha256), and, beside them, the project's own generators
(`udpgen.c`, `tcpclient.c`: echo RTT and new connections/s, which lwIP's script does not run).
Each row gets ratios to lwIP and to the kernel, the responder's CPU% and RSS; netstack rows also
a short py-spy profile (top functions by self time) when py-spy is installed.
Namespaces are this script's own (`nsb-<pid>-*`, deleted at the end, see bench/run.py) plus
run.sh's `anchor-lwip`, which run.sh deletes itself. See bench/README.md ("compare.py").
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import placement  # noqa: E402 - how often responder and client shared a CPU
import run as udp_bench  # noqa: E402 - namespaces, processes, CPU accounting, py-spy aggregation
import tcp as tcp_bench  # noqa: E402 - tcpclient/tcpserv build and the loop-thread profile

ROOT = udp_bench.ROOT
STACK_IP = udp_bench.STACK_IP
log = udp_bench.log
BenchError = udp_bench.BenchError

# Same parameters as the anchor's run.sh defaults, so every row is measured alike.
UDP_WINDOW, UDP_SIZE = 64, 64

# The targets of issue 10 that this bench can judge (figures reported, never asserted in CI).
TARGETS = (
    # (metric, the rows it applies to, compared to, factor, higher is better). Rows: "auto"
    # the offload row, "off" the row without offloads (or a run with no --offload flag),
    # "any" every netstack row.
    ("udp_echo", "any", "lwip_best", 1.0, True),
    ("tcp_discard", "auto", "lwip_best", 1.5, True),  # TCP with offloads: >= 1.5x lwIP's best
    ("tcp_chargen", "auto", "lwip_best", 1.5, True),
    ("tcp_discard", "off", "lwip_wnd64k", 1.0, True),  # MTU 1500, no offloads: >= wnd64k
    ("tcp_chargen", "off", "lwip_wnd64k", 1.0, True),
    ("conn_rate", "any", "kernel", 0.8, True),
    ("echo_rtt_us", "any", "kernel", 1.5, False),
)
# TCP with offloads also has an absolute floor in the issue: >= 500 MB/s each way.
TCP_OFFLOAD_FLOOR_MIB = 500e6 / (1 << 20)


def row_mode(key: str) -> str:
    """ "auto" for the offload row, "off" for the others (no offloads, or no --offload flag;
    the per-segment row PER_SEGMENT too)."""
    if not key.startswith("netstack_offload_"):
        return "off"
    return "off" if key[len("netstack_offload_") :].split("_")[0] == "off" else "auto"


# With the --gso/--gro flags (software GSO/GRO, on by default where the link has no
# offloads), the "offload off" row moves 64 KB per Python step; this row beside it turns them
# off too: the per-segment figure, one 1500-byte frame per step (the honest comparison).
PER_SEGMENT = ("netstack_offload_off_pseg", ["--offload", "off", "--gso", "off", "--gro", "off"])


def has_soft_offloads(help_text: str) -> bool:
    return "--gso" in help_text and "--gro" in help_text


METRICS = {
    # key: (label, unit, higher is better)
    "udp_echo": ("UDP echo 64 B, window 64 (udpecho.c)", "/s", True),
    "udp_echo_gen": ("UDP echo 64 B, window 64 (udpgen.c)", "/s", True),
    "tcp_discard": ("TCP kernel -> discard (tcpprobe.py)", "MiB/s", True),
    "tcp_chargen": ("TCP chargen -> kernel (tcpprobe.py)", "MiB/s", True),
    "echo_rtt_us": ("TCP echo RTT avg, 64 B (tcpclient.c)", "us", False),
    "conn_rate": ("new TCP connections (tcpclient.c)", "/s", True),
}


# -- pure helpers (unit-tested in tests/unit/test_bench_compare.py) -------------------------------
def parse_lwip(text: str) -> dict[str, dict[str, str]]:
    """run.sh's `key@variant value ...` lines -> {variant: {key: rest of the line}}."""
    out: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        m = re.match(r"^(\w+)@([\w.-]+) (.*)$", line.strip())
        if m:
            out.setdefault(m.group(2), {})[m.group(1)] = m.group(3)
    return out


def _first_float(text: str | None) -> float | None:
    m = re.match(r"\s*([0-9]+(?:\.[0-9]+)?)", text or "")
    return float(m.group(1)) if m else None


def lwip_rows(parsed: dict[str, dict[str, str]]) -> dict[str, dict]:
    """One bench row per lwIP variant: the figures this bench compares, plus CPU and RSS."""
    rows = {}
    for variant, kv in parsed.items():
        row: dict = {
            "udp_echo": _first_float(kv.get("udp_echo_per_s")),
            "tcp_discard": _first_float(kv.get("tcp_discard_MBps")),
            "tcp_chargen": _first_float(kv.get("tcp_chargen_MBps")),
            "tcp_echo_ok": kv.get("tcp_echo_ok", "").startswith("True"),
        }
        m = re.match(r"([0-9.]+) of ([0-9.]+) s wall", kv.get("lwipd_cpu_s_during_tcp", ""))
        if m and float(m.group(2)) > 0:
            row["cpu_pct"] = {"tcpprobe": 100.0 * float(m.group(1)) / float(m.group(2))}
        rss = _first_float(kv.get("lwipd_rss_kB"))
        peak = re.search(r"peak=(\d+)", kv.get("lwipd_rss_kB", ""))
        row["rss_mb"] = rss / 1024 if rss is not None else None
        row["rss_peak_mb"] = int(peak.group(1)) / 1024 if peak else None
        rows[f"lwip_{variant}"] = row
    return rows


def offload_values(help_text: str) -> list[str] | None:
    """The `--offload` settings to bench, from `netstack run --help`: None without the flag;
    otherwise the 'on' spelling it lists (auto or on) and 'off'."""
    if "--offload" not in help_text:
        return None
    m = re.search(r"--offload\s+\{([^}]*)\}", help_text)
    choices = [c.strip() for c in m.group(1).split(",")] if m else []
    on = next((c for c in ("on", "auto") if c in choices), "auto" if "auto" in help_text else "on")
    return [on, "off"]


def best_lwip(rows: dict[str, dict], metric: str) -> float | None:
    values = [r[metric] for k, r in rows.items() if k.startswith("lwip_") and r.get(metric)]
    if not values:
        return None
    return max(values) if METRICS[metric][2] else min(values)


def ratio(value: float | None, ref: float | None) -> str:
    if not value or not ref:
        return "-"
    return f"{value / ref:.2f}x"


def fmt_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "/s":
        return f"{value:,.0f}".replace(",", " ")
    return f"{value:.1f}"


def row_label(key: str) -> str:
    if key.startswith("lwip_"):
        return f"lwIP {key[5:]}"
    if key == "netstack_baseline":
        return "netstack (baseline)"
    if key == PER_SEGMENT[0]:
        return "netstack, offload off, gso/gro off"
    if key.startswith("netstack"):
        return key.replace("_offload_", ", offload ")
    return {"kernel": "kernel (veth)"}.get(key, key)


SEGMENT_BYTES = 1448  # payload of a full segment at MTU 1500 with timestamps


def cpu_us_per_op(value: float | None, unit: str, cpu_pct: float | None) -> float | None:
    """The responder's CPU time per datagram / segment / round trip / connection, in us: on a
    shared machine a steadier figure than the rate, which also moves with what others run.
    MiB/s rows count full segments (SEGMENT_BYTES each)."""
    if not value or cpu_pct is None:
        return None
    share = cpu_pct / 100.0
    if unit == "us":  # a round trip takes `value` us of wall time
        return share * value
    per_s = value * (1 << 20) / SEGMENT_BYTES if unit == "MiB/s" else value
    return 1e6 * share / per_s


def render(rows: dict[str, dict]) -> str:
    """Metric-major table: each metric, each world, its ratios, the responder's CPU%, CPU per
    operation, how often it shared one CPU with its load generator (1CPU%: see
    bench/placement.py; the request/response rows depend on it) and RSS."""
    hdr = (
        f"{'metric':38} {'row':24} {'value':>10} {'unit':6} {'/lwIP64k':>8} {'/lwIPbest':>9} "
        f"{'/kernel':>8} {'CPU%':>5} {'CPU us/op':>9} {'1CPU%':>5} {'RSS MB':>7}"
    )
    out = [hdr, "-" * len(hdr)]
    lw64 = rows.get("lwip_wnd64k", {})
    kern = rows.get("kernel", {})
    for metric, (label, unit, _higher) in METRICS.items():
        first = True
        best = best_lwip(rows, metric)
        for key, r in rows.items():
            value = r.get(metric)
            if value is None:
                continue
            cpu = r.get("cpu_pct", {}).get(metric, r.get("cpu_pct", {}).get("tcpprobe"))
            if not metric.startswith("tcp_") and key.startswith("lwip_"):
                cpu = None  # run.sh measures lwipd's CPU over its TCP probe only
            rss = r.get("rss_mb")
            same = r.get("same_cpu", {}).get(metric)
            per_op = cpu_us_per_op(value, unit, cpu)
            out.append(
                f"{label if first else '':38} {row_label(key):24} {fmt_value(value, unit):>10} "
                f"{unit:6} {ratio(value, lw64.get(metric)):>8} {ratio(value, best):>9} "
                f"{ratio(value, kern.get(metric)):>8} "
                f"{'-' if cpu is None else f'{cpu:.0f}':>5} "
                f"{'-' if per_op is None else f'{per_op:.1f}':>9} "
                f"{'-' if same is None else f'{same:.0f}':>5} "
                f"{'-' if rss is None else f'{rss:.1f}':>7}"
            )
            first = False
    return "\n".join(out)


def judge(rows: dict[str, dict]) -> list[str]:
    """The issue's targets, for each netstack row: PASS/MISS lines (reported, not asserted)."""
    out = []
    for key, r in rows.items():
        if not key.startswith("netstack"):
            continue
        mode = row_mode(key)
        for metric, applies, ref_key, factor, higher in TARGETS:
            if applies not in ("any", mode):
                continue
            ref = best_lwip(rows, metric) if ref_key == "lwip_best" else None
            if ref_key != "lwip_best":
                ref = rows.get(ref_key, {}).get(metric)
            value = r.get(metric)
            if value is None or ref is None:
                continue
            ok = value >= factor * ref if higher else value <= factor * ref
            rel = ">=" if higher else "<="
            unit = METRICS[metric][1]
            who = row_label(ref_key) if ref_key != "lwip_best" else "best lwIP"
            out.append(
                f"{row_label(key)}: {METRICS[metric][0]} {fmt_value(value, unit)} "
                f"{rel} {factor:g} x {who} ({fmt_value(ref, unit)}): {'PASS' if ok else 'MISS'}"
            )
        for metric in ("tcp_discard", "tcp_chargen"):
            value = r.get(metric)
            if mode == "auto" and value is not None:
                ok = value >= TCP_OFFLOAD_FLOOR_MIB
                out.append(
                    f"{row_label(key)}: {METRICS[metric][0]} {fmt_value(value, 'MiB/s')} >= "
                    f"500 MB/s ({TCP_OFFLOAD_FLOOR_MIB:.1f} MiB/s): {'PASS' if ok else 'MISS'}"
                )
    return out


def render_profiles(rows: dict[str, dict], top: int) -> str:
    out = []
    for key, r in rows.items():
        for load, prof in r.get("profile", {}).items():
            out.append(
                f"\nprofile {row_label(key)}, {load} ({prof['samples']} samples, "
                f"{prof['rate']} under py-spy; top functions by self time, loop thread):"
            )
            out += [f"  {own:5.1f}% {total:5.1f}%  {fn}" for fn, own, total in prof["top"][:top]]
    return "\n".join(out)


def program_pid(pid: int) -> int:
    """The program under `ip netns exec ... timeout N prog`: `ip` execs, `timeout` forks one
    child; follow it so CPU and RSS are the program's own."""
    for _ in range(20):
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return pid
        if comm not in ("ip", "timeout"):
            return pid
        if len(kids) == 1:
            pid = int(kids[0])
        else:
            time.sleep(0.05)
    return pid


def find_anchor(explicit: str | None) -> Path | None:
    """The lwIP anchor: --lwip DIR, else ../shared/anchors/lwip beside the repository (also
    beside the main checkout when this is a git worktree)."""
    if explicit:
        return Path(explicit)
    candidates = [ROOT.parent / "shared" / "anchors" / "lwip"]
    common = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--path-format=absolute", "--git-common-dir"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    if common:
        candidates.append(Path(common).parent.parent / "shared" / "anchors" / "lwip")
    return next((c for c in candidates if (c / "run.sh").is_file()), None)


# -- the run -------------------------------------------------------------------------------------
class Compare(tcp_bench.TcpBench):
    def __init__(self, args: argparse.Namespace, anchor: Path | None) -> None:
        super().__init__(args)
        self.anchor = anchor
        self.stack_args: list[str] = []
        self.stack_cwd: Path = ROOT

    def compile(self) -> None:
        super().compile()  # tcpclient, tcpserv
        cc = shutil.which("gcc") or "cc"
        self.sh([cc, "-O2", "-Wall", "-o", str(self.tmp / "udpgen"), str(BENCH / "udpgen.c")])
        self.gen = str(self.tmp / "udpgen")
        self.udpecho = None
        if self.anchor is not None:
            out = str(self.tmp / "udpecho-anchor")
            self.sh([cc, "-O2", "-o", out, str(self.anchor / "udpecho.c")])
            self.udpecho = out

    # -- the anchor's tools
    def udpecho_client(self, ns: str, host: str, secs: float) -> float:
        cmd = [self.udpecho, "client", host, "7", f"{secs:g}", str(UDP_WINDOW), str(UDP_SIZE)]
        out = self.sh(self.in_ns(ns, ["timeout", str(int(secs + 15)), *cmd]), timeout=secs + 30)
        return float(out.stdout.split()[0])

    def tcpprobe(self, ns: str, host: str, what: str, mb: int) -> float:
        """One tcpprobe.py function (discard or chargen), MiB/s, so each direction gets its own
        CPU figure; the same code run.sh's client runs."""
        code = (
            f"import sys; sys.path.insert(0, {str(self.anchor)!r}); import tcpprobe; "
            f"print(tcpprobe.{what}({host!r}, {mb}))"
        )
        cmd = ["timeout", "90", "python3", "-c", code]
        return float(self.sh(self.in_ns(ns, cmd), timeout=120).stdout.split()[-1])

    def tcpprobe_checks(self, ns: str, host: str) -> str:
        """echo sha256 + concurrent echoes + closed port, as run.sh's client does them."""
        a = self.args
        cmd = ["timeout", "120", "python3", str(self.anchor / "tcpprobe.py"), "client", host]
        cmd += ["0", str(a.echo_mb), str(a.conns)]
        out = self.sh(self.in_ns(ns, cmd), timeout=150, check=False)
        return (out.stdout.strip() or out.stderr.strip()[-200:]).split(" ", 2)[-1]

    def timed(self, row: dict, metric: str, pid: int, fn, *args):
        """fn(*args)'s result; the responder's CPU% over it goes to row["cpu_pct"][metric] and
        how often it shared a CPU with the load generator to row["same_cpu"][metric]."""
        every = self.args.placement_every
        sampler = placement.PlacementSampler(pid, every=every).start() if every > 0 else None
        cpu0, t0 = udp_bench.proc_cpu_s(pid), time.monotonic()
        try:
            value = fn(*args)
        finally:
            same = sampler.stop() if sampler is not None else None
        row.setdefault("cpu_pct", {})[metric] = (
            100.0 * (udp_bench.proc_cpu_s(pid) - cpu0) / (time.monotonic() - t0)
        )
        row.setdefault("same_cpu", {})[metric] = same
        return value

    def measure_udp(self, ns: str, pid: int) -> dict:
        a = self.args
        row: dict = {"cpu_pct": {}, "same_cpu": {}}
        if self.udpecho is not None:
            self.udpecho_client(ns, STACK_IP, 0.3)  # warm-up (ARP)
            row["udp_echo"] = self.timed(
                row, "udp_echo", pid, self.udpecho_client, ns, STACK_IP, a.udp_secs
            )
        saved = a.window, a.payload, a.duration
        a.window, a.payload, a.duration = UDP_WINDOW, UDP_SIZE, a.udp_secs
        try:
            gen = self.timed(row, "udp_echo_gen", pid, self.udp_load, ns, a.udp_secs)
        finally:
            a.window, a.payload, a.duration = saved
        row["udp_echo_gen"] = gen["rate"]
        return row

    def measure_tcp(self, ns: str, pid: int, *, probe: bool = True) -> dict:
        """tcpprobe.py each way and its checks (with `probe` and an anchor), then tcpclient's
        echo RTT and connection rate against port 7."""
        a = self.args
        row: dict = {"cpu_pct": {}, "same_cpu": {}}
        if probe and self.anchor is not None:
            for metric, what in (("tcp_discard", "discard"), ("tcp_chargen", "chargen")):
                row[metric] = self.timed(
                    row, metric, pid, self.tcpprobe, ns, STACK_IP, what, a.tcp_mb
                )
            row["tcpprobe_checks"] = self.tcpprobe_checks(ns, STACK_IP)
        rtt = self.timed(
            row, "echo_rtt_us", pid, self.client, ns, "rtt", tcp_bench.ECHO, a.tcp_secs, "64"
        )
        row["echo_rtt_us"] = rtt["avg_us"]
        conn = self.timed(
            row, "conn_rate", pid, self.client, ns, "conn", tcp_bench.ECHO, a.tcp_secs
        )
        row["conn_rate"] = conn["per_s"]
        row["conn_failed"] = conn["failed"]
        return row

    def profile_stack(self, out_dir: Path, tag: str) -> dict:
        """py-spy (500 Hz, --nonblocking) of the loop thread under each load, bounded in time."""
        pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(pyspy).exists():
            log("py-spy not installed (pip install py-spy): no profiles")
            return {}
        out_dir.mkdir(parents=True, exist_ok=True)
        dur = self.args.profile_secs
        loads = {
            "udp echo": lambda: f"{self.udp_load(self.ns_a, dur + 0.5)['rate']:,.0f}/s",
            "tcp -> discard": lambda: (
                f"{self.client(self.ns_a, 'send', tcp_bench.DISCARD, dur + 0.5)['mb_per_s']:.1f}"
                " MB/s"
            ),
            "chargen -> tcp": lambda: (
                f"{self.client(self.ns_a, 'recv', tcp_bench.CHARGEN, dur + 0.5)['mb_per_s']:.1f}"
                " MB/s"
            ),
            "tcp echo rtt": lambda: (
                f"{self.client(self.ns_a, 'rtt', tcp_bench.ECHO, dur + 0.5, '64')['avg_us']:.1f} us"
            ),
            "tcp connect": lambda: (
                f"{self.client(self.ns_a, 'conn', tcp_bench.ECHO, dur + 0.5)['per_s']:.0f}/s"
            ),
        }
        result = {}
        for load, run_load in loads.items():
            path = out_dir / f"{tag}-{load.replace(' ', '').replace('>', '')}.speedscope.json"
            cmd = [pyspy, "record", "--pid", str(self.stack_pid), "--rate", "500"]
            cmd += ["--duration", str(dur), "--format", "speedscope", "--nonblocking"]
            spy = self.popen(
                [*cmd, "-o", str(path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
            time.sleep(0.5)
            rate = run_load()
            try:
                spy.wait(dur + 30)
            except subprocess.TimeoutExpired:
                self.end(spy)
            if not path.exists():
                log(f"py-spy wrote nothing for {load}")
                continue
            rows, _lines, samples = tcp_bench.loop_thread_profile(path)
            result[load] = {"file": str(path), "samples": samples, "rate": rate, "top": rows[:25]}
        return result

    def rss(self, pid: int) -> tuple[float | None, float | None]:
        try:
            text = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return None, None
        rss = re.search(r"VmRSS:\s+(\d+)", text)
        hwm = re.search(r"VmHWM:\s+(\d+)", text)
        return (
            int(rss.group(1)) / 1024 if rss else None,
            int(hwm.group(1)) / 1024 if hwm else None,
        )


def run_lwip(anchor: Path, args: argparse.Namespace) -> tuple[dict, str]:
    env = dict(os.environ)
    env.update(
        VARIANTS=args.lwip_variants,
        TCP_MB=str(args.tcp_mb),
        ECHO_MB=str(args.echo_mb),
        CONNS=str(args.conns),
        UDP_SECS=str(int(args.udp_secs)),
        UDP_WINDOW=str(UDP_WINDOW),
        UDP_SIZE=str(UDP_SIZE),
    )
    log(f"lwIP: {anchor}/run.sh, variants {args.lwip_variants} (first run fetches its source)")
    proc = subprocess.run(
        ["bash", str(anchor / "run.sh")],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )
    if proc.returncode != 0:
        raise BenchError(f"lwIP run.sh failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return lwip_rows(parse_lwip(proc.stdout)), proc.stdout


def warm_up(bench: Compare, variant: tuple[str, list[str], Path], seconds: float) -> None:
    """An unmeasured stack (the first row's arguments and checkout) under UDP echo and the
    connection load before the first measured row. WHY: without it the first netstack row of
    a run measured 17-30 % dearer per connection (and dearer on most other metrics) than the
    same configuration in a later row of the same run in 3 of 4 pairs, whatever its mode
    (bench/PROFILE.md, tenth pass); compare.py runs the offload row first, which read as an
    offload cost. With it, 2 pairs: level and 7 % cheaper."""
    key, extra, cwd = variant
    log(f"warm-up: {row_label(key)} for {seconds:g} s, not measured")
    bench.stack_args, bench.stack_cwd = extra, cwd
    bench.start_stack()
    try:
        bench.udp_load(bench.ns_a, seconds / 2)
        bench.client(bench.ns_a, "conn", tcp_bench.ECHO, seconds / 2)
    finally:
        bench.stop_stack()


def run(args: argparse.Namespace) -> dict:
    anchor = find_anchor(args.lwip)  # its tools (udpecho.c, tcpprobe.py) even with --no-lwip
    results: dict = {
        "timestamp": datetime.datetime.now().isoformat(timespec="seconds"),
        "config": {
            k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, type(None)))
        },
        "machine": {
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
            "git": subprocess.run(
                ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip(),
        },
        "rows": {},
        "notes": [],
    }
    rows = results["rows"]
    started = time.monotonic()
    if anchor is not None and args.no_lwip:
        results["notes"].append("lwIP rows skipped (--no-lwip); the anchor's tools measure")
    elif anchor is None:
        note = (
            "lwIP row skipped: no anchor (looked for ../shared/anchors/lwip/run.sh beside the "
            "repository; --lwip DIR to point at it). udpecho.c/tcpprobe.py rows skipped too."
        )
        log(note)
        results["notes"].append(note)
    else:
        try:
            rows_lwip, raw = run_lwip(anchor, args)
        except (BenchError, subprocess.TimeoutExpired) as err:
            note = f"lwIP rows skipped: {err}"
            log(note)
            results["notes"].append(note)
        else:
            rows.update(rows_lwip)
            results["lwip_raw"] = raw
    helptext = subprocess.run(
        [sys.executable, "-m", "netstack", "run", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    ).stdout
    offloads = offload_values(helptext)
    if offloads is None:
        results["notes"].append("netstack run has no --offload flag: one netstack row")
    variants: list[tuple[str, list[str], Path]] = []
    if args.baseline:
        base_args = shlex.split(args.baseline_args)
        variants.append(("netstack_baseline", base_args, Path(args.baseline).resolve()))
    more = shlex.split(args.netstack_args)  # e.g. --busy-poll 50, on every row of this checkout
    variants += (
        [("netstack", more, ROOT)]
        if offloads is None
        else [(f"netstack_offload_{v}", ["--offload", v, *more], ROOT) for v in offloads]
    )
    if more:
        results["notes"].append(f"netstack rows run with: {args.netstack_args}")
    if offloads is not None and has_soft_offloads(helptext):
        variants.append((PER_SEGMENT[0], [*PER_SEGMENT[1], *more], ROOT))
    bench = Compare(args, anchor)
    try:
        bench.compile()
        if args.warmup > 0 and variants:
            warm_up(bench, variants[0], args.warmup)
            results["notes"].append(f"an unmeasured warm-up stack ran first ({args.warmup:g} s)")
        for key, extra, cwd in variants:
            log(f"{row_label(key)}: starting ({cwd})")
            bench.stack_args = extra
            bench.stack_cwd = cwd
            bench.start_stack()
            pid = bench.stack_pid
            row = bench.measure_udp(bench.ns_a, pid)
            tcp_row = bench.measure_tcp(bench.ns_a, pid)
            row["cpu_pct"].update(tcp_row.pop("cpu_pct"))
            row["same_cpu"].update(tcp_row.pop("same_cpu"))
            row.update(tcp_row)
            row["rss_mb"], row["rss_peak_mb"] = bench.rss(pid)
            if args.profile:
                log(f"{row_label(key)}: py-spy profiles, {args.profile_secs} s per load")
                row["profile"] = bench.profile_stack(Path(args.profile_dir), key)
            row["stack_summary"] = udp_bench.drops_line(bench.stop_stack())
            rows[key] = row
        log("kernel over veth")
        bench.start_veth()
        krow: dict = {"cpu_pct": {}, "same_cpu": {}}
        if anchor is not None:
            server = bench.popen(
                bench.in_ns(bench.ns_k2, ["timeout", "120", bench.udpecho, "server", "7"]),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
            )
            time.sleep(0.3)
            spid = program_pid(server.pid)
            krow.update(bench.measure_udp(bench.ns_k1, spid))
            krow["rss_mb"], _ = bench.rss(spid)
            bench.end(server)
            probe = bench.popen(
                bench.in_ns(
                    bench.ns_k2,
                    ["timeout", "300", "python3", str(anchor / "tcpprobe.py"), "server"],
                ),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
            )
            time.sleep(0.5)
            ppid = program_pid(probe.pid)
            for metric, what in (("tcp_discard", "discard"), ("tcp_chargen", "chargen")):
                krow[metric] = bench.timed(
                    krow, metric, ppid, bench.tcpprobe, bench.ns_k1, STACK_IP, what, args.tcp_mb
                )
            krow["tcpprobe_checks"] = bench.tcpprobe_checks(bench.ns_k1, STACK_IP)
            bench.end(probe)
        proc, pid = bench.start_kernel_server()
        # tcpprobe's rows were measured above against its own kernel-side server
        tcp_row = bench.measure_tcp(bench.ns_k1, pid, probe=False)
        krow["cpu_pct"].update(tcp_row.pop("cpu_pct"))
        krow["same_cpu"].update(tcp_row.pop("same_cpu"))
        krow.update(tcp_row)
        bench.end(proc)
        rows["kernel"] = krow
    finally:
        bench.close()
        results["wall_s"] = round(time.monotonic() - started, 1)
        results["machine"]["loadavg_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
    results["targets"] = judge(rows)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--lwip", metavar="DIR", help="the lwIP anchor (default ../shared/anchors/lwip)")
    p.add_argument("--no-lwip", action="store_true", help="skip the lwIP rows")
    p.add_argument("--lwip-variants", default="wnd64k wnd1m-cli", help="run.sh VARIANTS")
    p.add_argument("--quick", action="store_true", help="lwIP wnd64k only, shorter loads")
    p.add_argument("--udp-secs", type=float, default=3.0, help="seconds per UDP echo row")
    p.add_argument("--tcp-mb", type=int, default=50, help="MiB each way through tcpprobe.py")
    p.add_argument("--echo-mb", type=int, default=5, help="MiB through echo (sha256 check)")
    p.add_argument("--conns", type=int, default=20, help="concurrent echoes in tcpprobe's check")
    p.add_argument("--tcp-secs", type=float, default=2.0, help="seconds per RTT/connect row")
    p.add_argument(
        "--baseline",
        metavar="DIR",
        help="also run netstack from this checkout (with its _ffi built), e.g. a `git worktree` "
        "of main: a before/after row measured in the same run",
    )
    p.add_argument(
        "--baseline-args",
        default="",
        metavar="ARGS",
        help="`netstack run` arguments for the baseline row, e.g. '--offload off'",
    )
    p.add_argument(
        "--netstack-args",
        default="",
        metavar="ARGS",
        help="more `netstack run` arguments for this checkout's rows, e.g. '--busy-poll 50'",
    )
    p.add_argument("--no-profile", dest="profile", action="store_false")
    p.add_argument(
        "--placement-every",
        type=float,
        default=0.05,
        metavar="S",
        help="seconds between the 1CPU%% column's samples of where responder and client ran "
        "(a thread of this process reading /proc: at 0.01 it took the stack 5-7%% of its CPU "
        "in the UDP rows); 0: off",
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=4.0,
        metavar="S",
        help="seconds of an unmeasured stack under load before the first row (0: none)",
    )
    p.add_argument("--profile-secs", type=int, default=2)
    p.add_argument("--profile-dir", default=str(udp_bench.RESULTS / "profiles"))
    p.add_argument("--top", type=int, default=10, help="profile rows printed")
    p.add_argument("--json", metavar="FILE", help="save results here instead of bench/results/")
    p.add_argument("--keep-tmp", action="store_true")
    p.add_argument("--render", metavar="JSON", help="print the report of a saved run and exit")
    p.add_argument("--stack-log-level", default="warning")
    args = p.parse_args(argv)
    # bench/run.py's Bench reads these
    args.pin, args.duration, args.repeat, args.window, args.payload = False, 2.0, 1, 64, 64
    args.batch, args.max_rate = 32, 3e6
    if args.quick:
        args.lwip_variants = "wnd64k"
        args.udp_secs, args.tcp_mb, args.tcp_secs, args.echo_mb, args.conns = 2.0, 20, 1.0, 1, 4
    if not 0.5 <= args.udp_secs <= 30 or not 1 <= args.tcp_mb <= 1000:
        p.error("--udp-secs 0.5..30, --tcp-mb 1..1000")
    if not 0 <= args.warmup <= 30:
        p.error("--warmup 0..30 seconds")
    if args.render:
        saved = json.loads(Path(args.render).read_text())
        saved["targets"] = judge(saved["rows"])  # judged again, by today's targets
        report(saved, args.top)
        return 0
    if os.geteuid() != 0:
        print("bench/compare.py needs root (network namespaces, TAP)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        results = run(args)
    except BenchError as err:
        print(f"bench: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; namespaces and processes removed", file=sys.stderr)
        return 130
    path = (
        Path(args.json)
        if args.json
        else udp_bench.RESULTS / f"compare-{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    report(results, args.top)
    print(f"\nsaved {path}; wall time {results['wall_s']} s")
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    return 0


def report(results: dict, top: int) -> None:
    m = results.get("machine", {})
    print(
        f"{results.get('timestamp', '?')}  git {m.get('git', '?')}  {m.get('cpus', '?')} CPUs  "
        f"load average at start {' '.join(m.get('loadavg_at_start', ['?']))}, at end "
        f"{' '.join(m.get('loadavg_at_end', ['?']))}  (other jobs share the CPUs: read "
        "CPU us/op first)"
    )
    print(render(results["rows"]))
    for note in results["notes"]:
        print(f"note: {note}")
    checks = {k: r.get("tcpprobe_checks") for k, r in results["rows"].items()}
    checks = {k: v for k, v in checks.items() if v}
    if checks:
        print(
            "tcpprobe echo-sha256 / concurrent / closed port: "
            + "; ".join(f"{row_label(k)}: {v}" for k, v in checks.items())
        )
    print("\ntargets (issue 10; reported, not asserted):")
    print("\n".join(f"  {t}" for t in results["targets"]) or "  (no figures to judge)")
    print(render_profiles(results["rows"], top))


if __name__ == "__main__":
    sys.exit(main())
