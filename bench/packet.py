#!/usr/bin/env python3
"""AF_PACKET receive: the TPACKET_V3 ring against recvmmsg, over a veth, in one run.

    sudo .venv/bin/python bench/packet.py [--rounds 3] [--secs 3] [--offload auto off]

netstack runs `--link packet` on one end of a veth pair (namespace nsb-<pid>-s), the kernel's
tools on the other (nsb-<pid>-k). Each round starts the stack once per receive mode, in turn
(ring, recvmmsg, ring, ...: interleaved, so a change in the machine's load hits both), and
measures with the project's generators: UDP echo 64 B with window 64 (udpgen.c, closed loop,
the figure issue 10 compares) and window 1 (request/response RTT: the ring's retire timer
shows there), TCP to discard and from chargen (tcpclient.c), then a 100 MB TCP echo whose
sha256 must match. Each figure comes with the stack's CPU% and the rest of the machine's
(other processes, in % of one CPU). Prints a Markdown table; --json writes the raw rows.
Namespaces are this script's own and deleted at the end (bench/run.py Bench.close).
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import run as udp_bench  # noqa: E402 - namespaces, processes, CPU accounting
import tcp as tcp_bench  # noqa: E402 - tcpclient/tcpserv build and runs

HOST_IP, STACK_IP = udp_bench.HOST_IP, udp_bench.STACK_IP
MODES = ("auto", "off")  # --packet-ring values; "auto" is the ring
ECHO_MB = 100
CLONE_NEWNET = 0x40000000
log = udp_bench.log


class PacketBench(tcp_bench.TcpBench):
    def compile(self) -> None:
        udp_bench.Bench.compile(self)  # udpgen, udpecho
        tcp_bench.TcpBench.compile(self)  # tcpclient, tcpserv

    def start_veth(self) -> None:
        self.ns_k = self.netns_add("k")
        self.ns_a = self.netns_add("s")  # the generators' helpers read ns_a as "the stack's"
        veth = ["link", "add", "veth-k", "type", "veth", "peer", "name", "veth-s", "netns"]
        self.sh(["ip", "-n", self.ns_k, *veth, self.ns_a])
        self.sh(["ip", "-n", self.ns_k, "addr", "add", f"{HOST_IP}/24", "dev", "veth-k"])
        self.sh(["ip", "-n", self.ns_k, "link", "set", "veth-k", "up"])

    def kernel_offloads(self, on: bool) -> None:
        """Without the vnet header (--offload off) the link completes the veth's partial
        checksums itself (PACKET_AUXDATA), but GSO super-frames larger than its slots would be
        dropped: for those rows the kernel's end computes checksums and cuts segments itself
        (tx off also turns TSO/GSO off), so the stack sees what a wire would carry."""
        state = "on" if on else "off"
        cmd = ["ethtool", "-K", "veth-k", "tx", state, "tso", state, "gso", state]
        self.sh(self.in_ns(self.ns_k, cmd), check=False)

    def start_packet_stack(self, ring: str, offload: str) -> None:
        self.kernel_offloads(offload == "auto")
        self.stack_log = self.tmp / f"stack-{ring}-{offload}.log"
        self._stack_out = open(self.stack_log, "wb")  # noqa: SIM115 - closed in stop
        cmd = [sys.executable, "-m", "netstack", "run", "--link", "packet"]
        cmd += ["--interface", "veth-s", "--packet-ring", ring, "--offload", offload]
        cmd += ["--pcap", "none", "--metrics-address", "none", "--log-level", "info"]
        self.stack = self.popen(
            self.in_ns(self.ns_a, cmd), stdout=self._stack_out, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 30
        ping = self.in_ns(self.ns_k, ["ping", "-n", "-c1", "-W1", STACK_IP])
        while self.sh(ping, check=False).returncode != 0:
            if self.stack.poll() is not None or time.monotonic() > deadline:
                raise udp_bench.BenchError(f"stack did not come up:\n{self.stack_log.read_text()}")
            time.sleep(0.1)
        self.stack_pid = udp_bench.python_pid(self.stack.pid)
        text = self.stack_log.read_text()
        want = "receive tpacket_v3 ring" if ring == "auto" else "receive recvmmsg"
        if want not in text:
            raise udp_bench.BenchError(f"expected '{want}' in the stack's log:\n{text}")

    def stop_packet_stack(self) -> str:
        self.end(self.stack)
        self._stack_out.close()
        return self.stack_log.read_text(errors="replace")

    def timed(self, fn, *args) -> tuple[object, float, float]:
        """fn(*args), the stack's CPU% and everything else's (% of one CPU) meanwhile."""
        (busy0, _), cpu0 = udp_bench.system_cpu_s(), udp_bench.proc_cpu_s(self.stack_pid)
        t0 = time.monotonic()
        value = fn(*args)
        (busy1, _), cpu1 = udp_bench.system_cpu_s(), udp_bench.proc_cpu_s(self.stack_pid)
        wall = time.monotonic() - t0
        stack = cpu1 - cpu0
        return value, 100.0 * stack / wall, 100.0 * ((busy1 - busy0) - stack) / wall

    def udp(self, window: int) -> dict:
        a = self.args
        a.window, a.payload, a.batch = window, 64, min(window, 64)
        return self.udp_load(self.ns_k, a.secs)

    def echo_100mb(self) -> dict:
        """ECHO_MB through the echo service, a reader thread beside the writer; sha256 both."""
        data = os.urandom(1 << 20)
        want, got = hashlib.sha256(), hashlib.sha256()
        total = ECHO_MB << 20
        t0 = time.monotonic()
        with _ns_socket(self.ns_k) as sock:
            sock.settimeout(30)
            sock.connect((STACK_IP, 7))
            seen = [0]

            def reader() -> None:
                while seen[0] < total:
                    piece = sock.recv(1 << 20)
                    if not piece:
                        return
                    got.update(piece)
                    seen[0] += len(piece)

            thread = threading.Thread(target=reader, daemon=True)
            thread.start()
            for _ in range(ECHO_MB):
                want.update(data)
                sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            thread.join(60)
        wall = time.monotonic() - t0
        ok = seen[0] == total and got.digest() == want.digest()
        return {"mb_per_s": ECHO_MB / wall, "sha256_ok": ok, "bytes": seen[0]}

    def measure(self) -> dict:
        a = self.args
        row: dict = {}
        self.udp(64)  # warm-up: ARP on both sides
        for name, fn, arg in (
            ("udp_echo_w64", self.udp, 64),
            ("udp_rtt_w1", self.udp, 1),
        ):
            res, cpu, other = self.timed(fn, arg)
            row[name] = {"rate": res["rate"], "avg_us": res["rtt_avg_us"], "cpu": cpu}
            row[name]["other_cpu"] = other
        for name, mode, port in (
            ("tcp_to_discard", "send", tcp_bench.DISCARD),
            ("tcp_from_chargen", "recv", tcp_bench.CHARGEN),
        ):
            res, cpu, other = self.timed(self.client, self.ns_k, mode, port, a.secs)
            row[name] = {"mb_per_s": res["mb_per_s"], "cpu": cpu, "other_cpu": other}
        res, cpu, other = self.timed(self.echo_100mb)
        row["tcp_echo_100mb"] = {**res, "cpu": cpu, "other_cpu": other}
        return row


def _ns_socket(ns: str) -> socket.socket:
    """A TCP socket made inside namespace `ns` (a socket keeps the namespace it was made in;
    setns is per thread, so a throwaway thread enters it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    out: list[object] = []

    def make() -> None:
        try:
            with open(f"/run/netns/{ns}") as handle:
                if libc.setns(handle.fileno(), CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns failed")
            out.append(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        except OSError as err:  # handed to the caller
            out.append(err)

    thread = threading.Thread(target=make)
    thread.start()
    thread.join()
    if isinstance(out[0], OSError):
        raise out[0]
    return out[0]  # type: ignore[return-value]


def render(rows: list[dict]) -> str:
    head = (
        "| offload | receive | round | UDP echo w64 (/s, stack CPU%) | UDP RTT w1 (us) |"
        " TCP → discard (MB/s) | chargen → TCP (MB/s) | 100 MB echo (MB/s, sha256) |"
        " other load (% CPU) |\n|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        m = r["row"]
        other = max(v["other_cpu"] for v in m.values())
        lines.append(
            f"| {r['offload']} | {'ring' if r['ring'] == 'auto' else 'recvmmsg'} | {r['round']}"
            f" | {m['udp_echo_w64']['rate']:,.0f} ({m['udp_echo_w64']['cpu']:.0f}%)"
            f" | {m['udp_rtt_w1']['avg_us']:.0f}"
            f" | {m['tcp_to_discard']['mb_per_s']:.0f} ({m['tcp_to_discard']['cpu']:.0f}%)"
            f" | {m['tcp_from_chargen']['mb_per_s']:.0f} ({m['tcp_from_chargen']['cpu']:.0f}%)"
            f" | {m['tcp_echo_100mb']['mb_per_s']:.0f}"
            f" {'ok' if m['tcp_echo_100mb']['sha256_ok'] else 'MISMATCH'}"
            f" | {other:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--secs", type=float, default=3.0, help="seconds per UDP/TCP figure")
    p.add_argument("--offload", nargs="+", default=["auto"], choices=["auto", "off"])
    p.add_argument("--ring", nargs="+", default=list(MODES), choices=MODES, help="modes to run")
    p.add_argument("--json", type=Path)
    p.add_argument("--keep-tmp", action="store_true")
    args = p.parse_args(argv)
    # what bench/run.py's helpers read
    args.pin, args.max_rate, args.duration, args.repeat = False, 2_000_000, args.secs, 1
    args.window, args.payload, args.batch = 64, 64, 64
    if os.geteuid() != 0:
        print("needs root (namespaces)", file=sys.stderr)
        return 2
    bench = PacketBench(args)
    rows: list[dict] = []
    try:
        bench.compile()
        bench.start_veth()
        log(f"load before: {Path('/proc/loadavg').read_text().strip()}")
        for rnd in range(1, args.rounds + 1):
            for offload in args.offload:
                order = args.ring if rnd % 2 else args.ring[::-1]
                for ring in order:
                    log(f"round {rnd}: offload {offload}, packet_ring {ring}")
                    bench.start_packet_stack(ring, offload)
                    try:
                        row = bench.measure()
                    finally:
                        stack_log = bench.stop_packet_stack()
                    rows.append({"round": rnd, "offload": offload, "ring": ring, "row": row})
                    drops = udp_bench.drops_line(stack_log)
                    rows[-1]["drops"] = drops
        log(f"load after: {Path('/proc/loadavg').read_text().strip()}")
    finally:
        bench.close()
    print(render(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
