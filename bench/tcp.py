#!/usr/bin/env python3
"""netstack's TCP against the kernel's, measured in one run: bulk throughput each way, 64-byte
echo round trips, new connections per second; optionally a py-spy profile of the bulk path.

    sudo python bench/tcp.py [--duration 3] [--repeat 2] [--quick] [--profile DIR]

Worlds (namespaces created here and always deleted, as in bench/run.py, whose helpers it uses):
  A      netstack on tap0 (kernel side 192.0.2.1/24, stack 192.0.2.2): its built-in TCP echo
         (7), discard (9) and chargen (19)
  K1/K2  a veth pair, 192.0.2.1/24 in K1 and 192.0.2.2/24 in K2; bench/tcpserv.c serves the same
         three services in K2 (one epoll thread, C)
The client (bench/tcpclient.c) runs on the 192.0.2.1 side of each world and is the same binary
for both rows; both C programs are compiled into a temp dir at run time. Every load is bounded
by time (--duration) and by a count. See bench/README.md ("TCP").
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import run as udp_bench  # noqa: E402 - bench/run.py: namespaces, processes, CPU accounting

ROOT = udp_bench.ROOT
HOST_IP, STACK_IP = udp_bench.HOST_IP, udp_bench.STACK_IP
ECHO, DISCARD, CHARGEN = 7, 9, 19
TARGET_MB_S = 50.0  # each way
TARGET_RTT_US = 300.0  # average 64-byte echo round trip
TARGET_CONN_S = 3000.0
MAX_BYTES_PER_S = 3_000_000_000  # count bound of the bulk rows: 3 GB per second of duration
MAX_RTT_PER_S = 200_000
MAX_CONN_PER_S = 20_000  # also keeps the client's TIME_WAIT ports well below the range

log = udp_bench.log
BenchError = udp_bench.BenchError


class TcpBench(udp_bench.Bench):
    def compile(self) -> None:
        cc = shutil.which("gcc") or shutil.which("cc")
        if cc is None:
            raise BenchError("needs gcc to build the TCP client and server")
        for name in ("tcpclient", "tcpserv"):
            self.sh([cc, "-O2", "-Wall", "-o", str(self.tmp / name), str(BENCH / f"{name}.c")])
        self.client_bin = str(self.tmp / "tcpclient")
        self.serv_bin = str(self.tmp / "tcpserv")

    def start_kernel_server(self) -> tuple[subprocess.Popen, int]:
        life = str(int(self.args.duration * self.args.repeat * 6 + 60))
        proc = self.popen(
            self.in_ns(self.ns_k2, [self.serv_bin, life], self.resp_cpu),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        line = proc.stdout.readline() if proc.stdout else ""
        if "ready" not in line:
            raise BenchError(f"tcpserv did not start: {line}")
        return proc, proc.pid

    def client(self, ns: str, mode: str, port: int, seconds: float, *extra: str) -> dict:
        bound = {
            "send": MAX_BYTES_PER_S,
            "recv": MAX_BYTES_PER_S,
            "rtt": MAX_RTT_PER_S,
            "conn": MAX_CONN_PER_S,
        }[mode]
        cmd = [self.client_bin, mode, STACK_IP, str(port), f"{seconds:.3f}"]
        cmd += [str(int(bound * seconds)), *extra]
        out = self.sh(self.in_ns(ns, cmd, self.gen_cpu), timeout=seconds + 60)
        return json.loads(out.stdout.strip().splitlines()[-1])

    def row(self, ns: str, resp_pid: int, mode: str, port: int, *extra: str) -> dict:
        """Best of --repeat runs of one client mode, with the responder's CPU share."""
        runs = []
        for _ in range(self.args.repeat):
            cpu0, resp0, t0 = cpu_split(), udp_bench.proc_cpu_s(resp_pid), time.monotonic()
            res = self.client(ns, mode, port, self.args.duration, *extra)
            cpu1, resp1, t1 = cpu_split(), udp_bench.proc_cpu_s(resp_pid), time.monotonic()
            wall = t1 - t0
            client_s = res["cpu_user_s"] + res["cpu_sys_s"]
            res["resp_cpu_pct"] = 100.0 * (resp1 - resp0) / wall
            # softirq: the kernel's own packet work (TAP/veth, its TCP), charged to no process
            res["softirq_cpu_pct"] = 100.0 * (cpu1[1] - cpu0[1]) / wall
            other = (cpu1[0] - cpu0[0]) - (resp1 - resp0) - client_s
            res["other_cpu_pct"] = 100.0 * other / wall
            runs.append(res)
        key = {"send": "mb_per_s", "recv": "mb_per_s", "conn": "per_s"}.get(mode)
        best = max(runs, key=lambda r: r[key]) if key else min(runs, key=lambda r: r["avg_us"])
        best["runs"] = [r.get(key or "avg_us") for r in runs]
        return best

    def measure(self, ns: str, resp_pid: int) -> dict:
        self.client(ns, "rtt", ECHO, 0.3, "64")  # warm up: ARP, first connections
        out = {}
        for name, mode, port, extra in (
            ("to_discard", "send", DISCARD, ()),
            ("from_chargen", "recv", CHARGEN, ()),
            ("echo_rtt", "rtt", ECHO, ("64",)),
            ("connect_rate", "conn", ECHO, ()),
        ):
            log(f"  {name}")
            out[name] = self.row(ns, resp_pid, mode, port, *extra)
        return out

    def profile(self, out_dir: Path) -> dict:
        """py-spy (speedscope, --idle, 500 Hz) of the stack's loop thread under each bulk load;
        with --idle, time blocked in epoll_wait/read/writev shows on the calling line."""
        pyspy = shutil.which("py-spy")
        if pyspy is None:
            raise BenchError("--profile needs py-spy (pip install py-spy)")
        out_dir.mkdir(parents=True, exist_ok=True)
        dur = max(2, int(self.args.duration))
        result = {}
        for name, mode, port in (
            ("to_discard", "send", DISCARD),
            ("from_chargen", "recv", CHARGEN),
        ):
            path = out_dir / f"tcp-{name}.speedscope.json"
            cmd = [pyspy, "record", "--pid", str(self.stack_pid), "--rate", "500", "--idle"]
            cmd += ["--duration", str(dur), "--format", "speedscope", "--nonblocking"]
            spy = self.popen(
                [*cmd, "-o", str(path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
            time.sleep(0.5)
            load = self.client(self.ns_a, mode, port, dur + 0.5)
            try:
                spy.wait(dur + 30)
            except subprocess.TimeoutExpired:
                self.end(spy)
            if not path.exists():
                raise BenchError(f"py-spy wrote nothing for {name}")
            rows, lines, samples = loop_thread_profile(path)
            result[name] = {
                "file": str(path),
                "samples": samples,
                "mb_per_s_under_profiler": load["mb_per_s"],
                "by_self": rows[:30],
                "by_total": sorted(rows, key=lambda r: -r[2])[:30],
                "lines": lines[:30],
            }
        return result


def loop_thread_profile(path: Path) -> tuple[list, list, int]:
    """bench/run.py's aggregation over the MainThread (the loop) only: the idle metrics thread
    would otherwise be half of every --idle profile."""
    data = json.loads(path.read_text())
    data["profiles"] = [p for p in data["profiles"] if "MainThread" in p.get("name", "")]
    loop_only = path.with_suffix(".loop.json")
    loop_only.write_text(json.dumps(data))
    return udp_bench.aggregate_speedscope(loop_only)


def cpu_split() -> tuple[float, float]:
    """(busy CPU seconds outside softirq, softirq seconds) of the whole machine, /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = (v + [0] * 7)[:7]
    tck = udp_bench.CLK_TCK
    return (user + nice + system + irq) / tck, softirq / tck


# -- report ------------------------------------------------------------------------------------
def render(results: dict) -> str:
    a = results["config"]
    ns, k = results["netstack"], results["kernel"]
    mark = udp_bench.mark
    out = [
        f"netstack TCP bench: {a['cpus']} CPUs, {a['pinning']}, best of {a['repeat']} x "
        f"{a['duration']:.1f} s, MTU 1500, kernel {a['kernel']}",
        "",
    ]
    hdr = (
        f"{'bulk throughput (MB/s)':28} {'netstack':>9} {'kernel':>9} {'ratio':>6} "
        f"{'stack CPU%':>10} {'softirq%':>8} {'other%':>6}  target"
    )
    out += [hdr, "-" * len(hdr)]
    for key, label in (("to_discard", "kernel -> discard"), ("from_chargen", "chargen -> kernel")):
        n, kk = ns[key], k[key]
        out.append(
            f"{label:28} {n['mb_per_s']:9.1f} {kk['mb_per_s']:9.1f} "
            f"{n['mb_per_s'] / kk['mb_per_s']:5.2f}x {n['resp_cpu_pct']:10.0f} "
            f"{n['softirq_cpu_pct']:8.0f} {max(0.0, n['other_cpu_pct']):6.0f}  "
            f">= {TARGET_MB_S:.0f} {mark(n['mb_per_s'] >= TARGET_MB_S)}"
        )
    out.append("")
    hdr = (
        f"{'echo RTT, 64 B, 1 in flight (us)':34} {'avg':>7} {'min':>6} {'p50':>6} {'p99':>7} "
        f"{'count':>7}  target"
    )
    out += [hdr, "-" * len(hdr)]
    for who, r in (("netstack", ns["echo_rtt"]), ("kernel (veth, C echo)", k["echo_rtt"])):
        target = f"avg <= {TARGET_RTT_US:.0f} {mark(r['avg_us'] <= TARGET_RTT_US)}"
        out.append(
            f"{who:34} {r['avg_us']:7.1f} {r['min_us']:6.1f} {r['p50_us']:6.1f} "
            f"{r['p99_us']:7.1f} {r['count']:7}  {target if who == 'netstack' else ''}"
        )
    out.append("")
    hdr = f"{'new connections (connect+close)':34} {'per s':>8} {'failed':>7} {'stack CPU%':>10}"
    hdr += "  target"
    out += [hdr, "-" * len(hdr)]
    for who, r in (
        ("netstack", ns["connect_rate"]),
        ("kernel (veth, C server)", k["connect_rate"]),
    ):
        target = f">= {TARGET_CONN_S:.0f} {mark(r['per_s'] >= TARGET_CONN_S)}"
        cpu = f"{r['resp_cpu_pct']:10.0f}" if who == "netstack" else f"{'':10}"
        shown = target if who == "netstack" else ""
        out.append(f"{who:34} {r['per_s']:8.0f} {r['failed']:7} {cpu}  {shown}")
    busy = [key for key, r in ns.items() if r["other_cpu_pct"] > 15]
    if busy:
        out += ["", f"WARNING: other work used CPU during {', '.join(busy)}: rerun when idle."]
    out += ["", f"saved {results.get('saved', '?')}"]
    return "\n".join(out)


def render_profile(profile: dict, top: int) -> str:
    out = []
    for name, prof in profile.items():
        out.append(
            f"\nprofile {name} ({prof['samples']} samples, {prof['mb_per_s_under_profiler']:.1f} "
            f"MB/s under py-spy; {prof['file']}):"
        )
        out.append(f"  {'self %':>6} {'total %':>7}  function (by self)")
        out += [f"  {own:6.1f} {total:7.1f}  {fn}" for fn, own, total in prof["by_self"][:top]]
        out.append(f"  {'self %':>6} {'total %':>7}  function (by total, inclusive)")
        out += [f"  {own:6.1f} {total:7.1f}  {fn}" for fn, own, total in prof["by_total"][:top]]
        out.append(f"  {'self %':>6}  line")
        out += [f"  {own:6.1f}  {line}" for line, own in prof["lines"][:top]]
    return "\n".join(out)


def run(args: argparse.Namespace) -> dict:
    bench = TcpBench(args)
    started = time.monotonic()
    git = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    results: dict = {
        "timestamp": datetime.datetime.now().isoformat(timespec="seconds"),
        "config": {
            "duration": args.duration,
            "repeat": args.repeat,
            "cpus": os.cpu_count(),
            "pinning": "pinned (client cpu0, responder cpu1)" if bench.pin else "unpinned",
            "kernel": platform.release(),
            "python": platform.python_version(),
            "git": git.stdout.strip(),
            "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
        },
    }
    try:
        bench.compile()
        log("built tcpclient and tcpserv")
        bench.start_stack()
        log("netstack rows")
        results["netstack"] = bench.measure(bench.ns_a, bench.stack_pid)
        if args.profile:
            log("profiling the bulk path with py-spy")
            results["profile"] = bench.profile(Path(args.profile))
        results["stack_summary"] = udp_bench.drops_line(bench.stop_stack())
        bench.start_veth()
        proc, pid = bench.start_kernel_server()
        log("kernel rows (veth, C server)")
        results["kernel"] = bench.measure(bench.ns_k1, pid)
        bench.end(proc)
        ns = results["netstack"]
        results["targets"] = {
            "to_discard_mb_s": ns["to_discard"]["mb_per_s"] >= TARGET_MB_S,
            "from_chargen_mb_s": ns["from_chargen"]["mb_per_s"] >= TARGET_MB_S,
            "echo_rtt_avg_us": ns["echo_rtt"]["avg_us"] <= TARGET_RTT_US,
            "connections_per_s": ns["connect_rate"]["per_s"] >= TARGET_CONN_S,
        }
    finally:
        bench.close()
        results["wall_s"] = round(time.monotonic() - started, 1)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", type=float, default=3.0, help="seconds per measurement")
    p.add_argument("--repeat", type=int, default=2, help="runs per row (best kept)")
    p.add_argument("--quick", action="store_true", help="one 1.5 s run per row")
    p.add_argument("--pin", action="store_true", help="client on cpu0, responder on cpu1")
    p.add_argument("--profile", metavar="DIR", help="also py-spy the stack's bulk path into DIR")
    p.add_argument("--top", type=int, default=12, help="profile rows printed")
    p.add_argument("--stack-log-level", default="warning")
    p.add_argument("--keep-tmp", action="store_true")
    p.add_argument("--json", metavar="FILE", help="save results here instead of bench/results/")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.repeat = min(args.duration, 1.5), 1
    if not 0.5 <= args.duration <= 30 or not 1 <= args.repeat <= 10:
        p.error("--duration 0.5..30, --repeat 1..10")
    if os.geteuid() != 0:
        print("bench/tcp.py needs root (network namespaces, TAP)", file=sys.stderr)
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
        else udp_bench.RESULTS / f"tcp-{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    results["saved"] = str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(render(results))
    if "profile" in results:
        print(render_profile(results["profile"], args.top))
    print(f"\nwall time {results['wall_s']} s")
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
