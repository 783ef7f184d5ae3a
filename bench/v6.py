#!/usr/bin/env python3
"""IPv6 against IPv4 through the same stack, in one run, beside lwIP and the kernel.

    sudo .venv/bin/python bench/v6.py [--no-lwip] [--offload auto off] [--repeat 2]

Issue 12's targets: ping -6 RTT and TCP bulk over IPv6 within 10 % of the IPv4 figures, UDP
echo within 15 %, all measured in the same run. For every `--offload` value the stack runs once
on tap0 with both families (`--address6 2001:db8::2/64`), and each figure is measured v4, v6,
v4, v6 ... (`--repeat` rounds, best of each kept), so a busy moment hurts both families alike.
The kernel over a veth pair is measured the same way (its own v6/v4 ratio is the floor a stack
can reach), and lwIP (IPv4 only, `../shared/anchors/lwip/run.sh`) gives the same-run reference
for the absolute figures. Tools: `ping`, `udpgen.c` (window 64, 64 B), `tcpprobe.py` (the
anchor's discard/chargen, when the anchor is there; else `tcpclient.c`) and `tcpclient.c`'s
64-byte echo RTT. Namespaces are this script's own (`nsb-<pid>-*`), deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import compare  # noqa: E402 - the lwIP run, tcpprobe, stack start/stop
import run as udp_bench  # noqa: E402
import tcp as tcp_bench  # noqa: E402

log = udp_bench.log
BenchError = udp_bench.BenchError

STACK6, HOST6 = "2001:db8::2", "2001:db8::1"
FAMILIES = {"v4": udp_bench.STACK_IP, "v6": STACK6}
# metric -> (unit, higher is better, v6/v4 bound of issue 12)
METRICS = {
    "ping_avg_ms": ("ms", False, 1.10),
    "udp_echo": ("/s", True, 0.85),
    "tcp_discard": ("MiB/s", True, 0.90),
    "tcp_chargen": ("MiB/s", True, 0.90),
    "echo_rtt_us": ("us", False, None),
}


def within(metric: str, v4: float | None, v6: float | None) -> tuple[float | None, str]:
    """The v6/v4 ratio and the verdict against the issue's bound ('' when it sets none)."""
    _unit, higher, bound = METRICS[metric]
    if not v4 or v6 is None:
        return None, ""
    r = v6 / v4
    if bound is None:
        return r, ""
    ok = r >= bound if higher else r <= bound
    return r, "PASS" if ok else "MISS"


class V6Bench(compare.Compare):
    def compile(self) -> None:
        super().compile()  # udpgen, tcpclient, tcpserv, the anchor's udpecho
        self.sh(["gcc", "-O2", "-Wall", "-o", str(self.tmp / "cecho"), str(BENCH / "udpecho.c")])
        self.cecho = str(self.tmp / "cecho")

    def ping_avg(self, ns: str, host: str) -> float:
        a = self.args
        self.sh(self.in_ns(ns, ["ping", "-n", "-c3", "-i", "0.01", "-W1", host]), check=False)
        cmd = ["ping", "-n", "-q", "-c", str(a.ping_count), "-i", "0.002", "-W", "1", host]
        out = self.sh(self.in_ns(ns, cmd), timeout=a.ping_count * 0.01 + 30, check=False)
        m = re.search(r"= [\d.]+/([\d.]+)/", out.stdout)
        if m is None:
            raise BenchError(f"ping {host}: {out.stdout}{out.stderr}")
        return float(m.group(1))

    def udp_rate(self, ns: str, host: str) -> float:
        a = self.args
        cmd = [self.gen, host, "7", f"{a.udp_secs:.3f}", str(int(a.udp_secs * a.max_rate))]
        cmd += [str(compare.UDP_WINDOW), str(compare.UDP_SIZE), "32"]
        out = self.sh(self.in_ns(ns, cmd), timeout=a.udp_secs + 30)
        return json.loads(out.stdout.strip().splitlines()[-1])["rate"]

    def bulk(self, ns: str, host: str, what: str) -> float:
        if self.anchor is not None:
            return self.tcpprobe(ns, host, what, self.args.tcp_mb)
        mode, port = ("send", 9) if what == "discard" else ("recv", 19)
        return self.client_at(ns, host, mode, port, self.args.tcp_secs)["mb_per_s"] / 1.048576

    def client_at(self, ns: str, host: str, mode: str, port: int, secs: float, *extra) -> dict:
        bound = {"send": tcp_bench.MAX_BYTES_PER_S, "recv": tcp_bench.MAX_BYTES_PER_S}.get(
            mode, tcp_bench.MAX_RTT_PER_S
        )
        cmd = [self.client_bin, mode, host, str(port), f"{secs:.3f}", str(int(bound * secs))]
        out = self.sh(self.in_ns(ns, [*cmd, *extra]), timeout=secs + 60)
        return json.loads(out.stdout.strip().splitlines()[-1])

    def measure_both(self, ns: str, hosts: dict[str, str]) -> dict:
        """Every metric, the families alternating, best of --repeat rounds each."""
        probes = {
            "ping_avg_ms": lambda h: self.ping_avg(ns, h),
            "udp_echo": lambda h: self.udp_rate(ns, h),
            "tcp_discard": lambda h: self.bulk(ns, h, "discard"),
            "tcp_chargen": lambda h: self.bulk(ns, h, "chargen"),
            "echo_rtt_us": lambda h: self.client_at(ns, h, "rtt", 7, self.args.tcp_secs, "64")[
                "avg_us"
            ],
        }
        out: dict = {fam: {} for fam in hosts}
        for metric, probe in probes.items():
            _unit, higher, _bound = METRICS[metric]
            runs: dict[str, list[float]] = {fam: [] for fam in hosts}
            for _ in range(self.args.repeat):
                for fam, host in hosts.items():
                    try:
                        runs[fam].append(probe(host))
                    except (BenchError, subprocess.SubprocessError, ValueError, KeyError) as e:
                        log(f"  {metric} {fam}: {e}")
            for fam, values in runs.items():
                best = (max if higher else min)(values) if values else None
                out[fam][metric] = best
                out[fam][f"{metric}_runs"] = values
            log(f"  {metric}: " + ", ".join(f"{f} {out[f][metric]}" for f in hosts))
        return out

    def wait_v6(self, ns: str, host: str) -> None:
        deadline = time.monotonic() + 20  # DAD on both sides, then ND
        while time.monotonic() < deadline:
            ping = self.sh(self.in_ns(ns, ["ping", "-6", "-n", "-c1", "-W1", host]), check=False)
            if ping.returncode == 0:
                return
            time.sleep(0.2)
        raise BenchError(f"{host} did not answer ping -6")

    def start_veth6(self) -> None:
        self.start_veth()
        for ns, dev, addr in ((self.ns_k1, "veth-k1", HOST6), (self.ns_k2, "veth-k2", STACK6)):
            self.sh(["ip", "-n", ns, "-6", "addr", "add", f"{addr}/64", "dev", dev, "nodad"])
        self.wait_v6(self.ns_k1, STACK6)


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:,.3f}" if unit == "ms" else f"{value:,.1f}"


def render(rows: dict[str, dict], lwip: dict[str, dict]) -> str:
    lines = [
        "| world | metric | IPv4 | IPv6 | v6/v4 | bound | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for world, row in rows.items():
        for metric, (unit, higher, bound) in METRICS.items():
            v4, v6 = row["v4"].get(metric), row["v6"].get(metric)
            r, verdict = within(metric, v4, v6)
            if world == "kernel":
                verdict = ""  # the floor, not judged
            b = "" if bound is None else f"{'>=' if higher else '<='} {bound:.2f}"
            rr = "-" if r is None else f"{r:.2f}"
            cells = f"{fmt(v4, unit)} | {fmt(v6, unit)} | {rr} | {b} | {verdict}"
            lines.append(f"| {world} | {metric} ({unit}) | {cells} |")
    for name, row in lwip.items():
        figs = ", ".join(
            f"{k} {row[k]:,.1f}" for k in ("udp_echo", "tcp_discard", "tcp_chargen") if row.get(k)
        )
        lines.append(f"\nlwIP {name} (IPv4 only, same run): {figs}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict:
    anchor = None if args.no_lwip else compare.find_anchor(args.lwip)
    results: dict = {
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
        "rows": {},
        "lwip": {},
    }
    if anchor is not None:
        try:
            results["lwip"], _raw = compare.run_lwip(anchor, args)
        except (BenchError, subprocess.TimeoutExpired) as err:
            log(f"lwIP skipped: {err}")
    bench = V6Bench(args, anchor)
    try:
        bench.compile()
        for offload in args.offload:
            key = f"netstack offload {offload}"
            log(f"{key}: starting")
            bench.stack_args = ["--offload", offload, "--address6", f"{STACK6}/64"]
            bench.start_stack()
            bench.wait_v6(bench.ns_a, STACK6)
            results["rows"][key] = bench.measure_both(bench.ns_a, FAMILIES)
            results["rows"][key]["stack_summary"] = udp_bench.drops_line(bench.stop_stack())
        log("kernel over veth")
        bench.start_veth6()
        echo = bench.popen(
            bench.in_ns(bench.ns_k2, [bench.cecho, "7", "300"]),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        if "ready" not in (echo.stdout.readline() if echo.stdout else ""):
            raise BenchError("udpecho did not start")
        probe = None
        if anchor is not None:
            probe = bench.popen(
                bench.in_ns(
                    bench.ns_k2,
                    ["timeout", "300", "python3", str(anchor / "tcpprobe.py"), "server"],
                ),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
            )
        serv, _pid = bench.start_kernel_server()  # echo 7 for the RTT (and 9/19 without anchor)
        time.sleep(0.5)
        results["rows"]["kernel"] = bench.measure_both(bench.ns_k1, FAMILIES)
        for proc in (echo, probe, serv):
            if proc is not None:
                bench.end(proc)
    finally:
        bench.close()
        results["loadavg_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--lwip", metavar="DIR", help="the lwIP anchor (default ../shared/anchors/lwip)")
    p.add_argument("--no-lwip", action="store_true", help="skip the lwIP rows")
    p.add_argument("--lwip-variants", default="wnd64k", help="run.sh VARIANTS")
    p.add_argument("--offload", nargs="+", default=["auto", "off"], help="stack variants")
    p.add_argument("--repeat", type=int, default=2, help="alternating rounds per metric")
    p.add_argument("--udp-secs", type=float, default=2.0)
    p.add_argument("--tcp-mb", type=int, default=50, help="MiB each way through tcpprobe.py")
    p.add_argument("--tcp-secs", type=float, default=2.0, help="RTT (and bulk without anchor)")
    p.add_argument("--ping-count", type=int, default=300)
    p.add_argument("--max-rate", type=float, default=2e6, help="UDP count bound per second")
    p.add_argument("--echo-mb", type=int, default=5)
    p.add_argument("--conns", type=int, default=20)
    p.add_argument("--json", metavar="FILE", help="also write the results here")
    # what bench/run.py's and tcp.py's plumbing reads
    p.add_argument("--pin", action="store_true")
    p.add_argument("--keep-tmp", action="store_true")
    p.add_argument("--stack-log-level", default="warning")
    p.add_argument("--duration", type=float, default=2.0)
    args = p.parse_args(argv)
    args.repeat = max(1, args.repeat)
    results = run(args)
    print(render(results["rows"], results["lwip"]))
    print(f"\nload {results['loadavg_at_start']} -> {results['loadavg_at_end']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
