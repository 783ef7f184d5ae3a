"""Record what the Linux kernel sends, as a TCP sender, to a receiver this script plays.

Issue 11 asked whether our loss recovery (limited transmit, fast retransmit, RACK, TLP) sends
what Linux sends. The most exact way to know: make the kernel the sender and script the
receiver, so every ACK and SACK block it sees is ours, with its time, and every segment it
sends is read back with its time. A TUN device in a namespace of our own carries the packets
(IP, no link layer); the kernel connects through it to an address nothing else owns.

The receiver model is small and deterministic, the same for Linux and for the unit replay:
  - the path delays data by `rtt` one way (ACKs come back at once) behind a bottleneck that
    takes `ser` per full segment, so a burst arrives (and is ACKed) one segment per `ser`;
  - chosen first transmissions are dropped (`drop`, by segment index) or delivered late
    (`delay`, index -> extra seconds, reordering);
  - it ACKs every segment at once (no delayed ACK), with SACK blocks as RFC 2018 4 orders
    them (the block holding the newest segment first) and a D-SACK (RFC 2883) for a
    duplicate; no timestamps, no window scaling (a fixed 65535 window).

The trace (JSON) lists every segment both ways with its time in ms since the kernel's SYN,
sequence numbers relative to each side's ISN + 1. tests/unit/tcp/test_linux_trace.py feeds
the recorded ACKs to our engine at the recorded times and compares what it sends.

Run as root: `python -m tests.integration.tcp.linux_sender OUTDIR [scenario...]` makes a
namespace, runs itself inside (`--inside`), deletes the namespace.
"""

from __future__ import annotations

import dataclasses
import fcntl
import heapq
import json
import os
import platform
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from netstack.wire import ipv4 as wipv4
from netstack.wire import tcp as wtcp
from netstack.wire.tcp import ACK, SYN, TcpOptions

MSS = 1460
SENDER_IP = "192.0.2.1"  # documentation range (RFC 5737), inside our own namespace
RECEIVER_IP = "192.0.2.2"
PORT = 5001
RECEIVER_ISN = 1000
WINDOW = 65535
SYSCTLS = (
    "tcp_congestion_control", "tcp_recovery", "tcp_early_retrans", "tcp_reordering",
    "tcp_max_reordering", "tcp_sack", "tcp_dsack", "tcp_timestamps", "tcp_frto",
    "tcp_min_rtt_wlen", "tcp_thin_linear_timeouts", "tcp_rto_min_us",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One run: `segments` full segments written at once after the handshake."""

    name: str
    sack: bool
    segments: int
    drop: frozenset[int] = frozenset()  # first transmissions lost, by segment index
    delay: tuple[tuple[int, float], ...] = ()  # (segment index, extra seconds): reordering
    rtt: float = 0.050
    ser: float = 0.002
    doc: str = ""
    cc: str = "reno"  # net.ipv4.tcp_congestion_control in the namespace


SCENARIOS = {
    s.name: s
    for s in (
        Scenario(
            "sack_early_loss",
            True,
            30,
            frozenset({2}),
            doc="(a) segment 2 of the initial window lost, SACK: slow start on the ACKs "
            "of 0 and 1, then dupacks with SACK (limited transmit), RACK/DupThresh",
        ),
        Scenario(
            "reno_early_loss",
            False,
            30,
            frozenset({2}),
            doc="(b) the same without SACK: Reno dupacks (Linux counts them as sacked_out)",
        ),
        Scenario(
            "sack_first_loss",
            True,
            30,
            frozenset({0}),
            doc="(a') the first segment lost: only dupacks from the start",
        ),
        Scenario(
            "reno_first_loss", False, 30, frozenset({0}), doc="(b') the first segment lost, no SACK"
        ),
        Scenario(
            "sack_tail_loss",
            True,
            10,
            frozenset({9}),
            doc="(c) the last segment of the data lost: a tail loss probe repairs it",
        ),
        Scenario(
            "sack_tail_loss_2",
            True,
            10,
            frozenset({8, 9}),
            doc="(c') the last two segments lost: the probe (2 SRTT after the last ACK, "
            "two out) resends the last, its SACK lets RACK find the other",
        ),
        Scenario(
            "sack_reorder_2",
            True,
            20,
            delay=((2, 0.005),),
            doc="(d) segment 2 arrives after 4 (two SACKed above it): RACK waits its "
            "reordering window, the late arrival repairs the hole, no retransmission",
        ),
        Scenario(
            "sack_reorder_3",
            True,
            20,
            delay=((2, 0.007),),
            doc="(d') segment 2 arrives after 5: three SACKed above it (DupThresh), the "
            "window is zero, so it is retransmitted; the D-SACK undoes the reduction",
        ),
        Scenario(
            "sack_reorder_timer",
            True,
            5,
            delay=((2, 0.021),),
            doc="(d'') 5 segments, 2 arrives 17 ms after the ACK SACKing 3-4 and nothing else "
            "comes: RACK's reordering timer (min_RTT/4 = 12.5 ms + Linux's slack) decides",
        ),
        Scenario(
            "cubic_sack_early_loss",
            True,
            30,
            frozenset({2}),
            doc="(a) under CUBIC: ssthresh 0.7 * cwnd, PRR towards it",
            cc="cubic",
        ),
    )
}


class Receiver:
    """RFC 2018 / 2883 receiver state: what it has, what it ACKs."""

    def __init__(self, sack: bool) -> None:
        self.sack = sack
        self.rcv_nxt = 0
        self.blocks: list[list[int]] = []  # out-of-order [left, right), most recent first

    def arrive(self, start: int, end: int) -> tuple[int, list[tuple[int, int]]]:
        """Take a segment [start, end); return the ACK number and SACK blocks to send."""
        dup = end <= self.rcv_nxt or any(b[0] <= start and end <= b[1] for b in self.blocks)
        out: list[tuple[int, int]] = []
        if dup:
            out.append((start, end))  # D-SACK
        else:
            merged = [start, end]
            rest = []
            for b in self.blocks:
                if b[1] < merged[0] or merged[1] < b[0]:
                    rest.append(b)
                else:
                    merged = [min(b[0], merged[0]), max(b[1], merged[1])]
            self.blocks = [merged, *rest]
            if merged[0] <= self.rcv_nxt:
                self.rcv_nxt = max(self.rcv_nxt, merged[1])
                self.blocks = rest
        if not self.sack:
            return self.rcv_nxt, []
        out += [(b[0], b[1]) for b in self.blocks]
        return self.rcv_nxt, out[:3]


def tun_open(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    iff_tun, iff_no_pi, tunsetiff = 0x0001, 0x1000, 0x400454CA
    fcntl.ioctl(fd, tunsetiff, struct.pack("16sH", name.encode(), iff_tun | iff_no_pi))
    return fd


def run_inside(sc: Scenario, seconds: float = 4.0) -> dict:
    """In a namespace of our own: bring up a TUN, let the kernel send, play the receiver."""
    fd = tun_open("lt0")
    for cmd in (
        ["ip", "link", "set", "lo", "up"],
        ["ip", "addr", "add", f"{SENDER_IP}/24", "dev", "lt0"],
        ["ip", "link", "set", "lt0", "up"],
        ["sysctl", "-qw", "net.ipv4.tcp_congestion_control=reno"],
    ):
        subprocess.run(cmd, check=True)
    # One segment per skb: TCP always builds GSO skbs (since Linux 4.19 whatever the device
    # offers), and with several segments in one, tcp_tso_should_defer may hold a send back
    # for an ACK expected within 1 ms (a batching heuristic, not loss recovery: it made
    # Linux look as if it skipped limited transmit on the second dupack). gso_max_segs 1
    # makes every skb one segment, so only the recovery arithmetic decides.
    subprocess.run(["ip", "link", "set", "dev", "lt0", "gso_max_segs", "1"], check=True)
    sysctls = {}
    for key in SYSCTLS:
        path = Path("/proc/sys/net/ipv4") / key
        if path.exists():
            sysctls[key] = path.read_text().strip()
    src, dst = wipv4.ip_from_str(RECEIVER_IP), wipv4.ip_from_str(SENDER_IP)
    events: list[dict] = []
    t0: list[float] = []
    done = threading.Event()

    def sender() -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)  # all data queued at once
        # per socket: a namespace's sysctl may only name tcp_allowed_congestion_control
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, sc.cc.encode())
        s.connect((RECEIVER_IP, PORT))
        s.sendall(b"x" * (sc.segments * MSS))
        done.wait(seconds + 2)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()

    thread = threading.Thread(target=sender, daemon=True)
    thread.start()
    receiver = Receiver(sc.sack)
    pending: list[tuple[float, int, tuple]] = []  # (due, tiebreak, action)
    n = 0
    snd_isn = None
    bottleneck = 0.0
    first_tx: set[int] = set()
    total = sc.segments * MSS
    delay = dict(sc.delay)

    def emit(seq: int, ack: int, flags: int, options: TcpOptions | None) -> None:
        """Write one segment to the kernel, then read what it sent in reply before anything
        else is written: the kernel takes a TUN write in the writer's context (softirq on
        the way out of the write), so its answer is queued by then, and each segment it sends
        is attributed to the ACK that let it out, not to a batch."""
        tcp = wtcp.build(src, dst, PORT, sport, seq, ack, flags, WINDOW, options=options)
        os.write(fd, wipv4.build(src, dst, 6, len(tcp)) + tcp)
        if flags & SYN:
            return
        while select.select([fd], [], [], 0)[0]:
            take(os.read(fd, 65536), time.monotonic())

    sport = 0
    end_at = None

    def take(pkt: bytes, now: float) -> None:
        nonlocal snd_isn, sport, bottleneck, n
        if len(pkt) < 40 or pkt[0] >> 4 != 4 or pkt[9] != 6:
            return
        ip, payload = wipv4.parse(memoryview(pkt))
        h, data = wtcp.parse(payload, ip.src, ip.dst)
        if h.dst_port != PORT:
            return
        if h.flags & SYN:
            t0.append(now)
            snd_isn, sport = h.seq, h.src_port
            events.append({"t": 0.0, "dir": "out", "flags": "S", "seq": -1, "len": 0})
            heapq.heappush(pending, (now + sc.rtt, n, ("synack",)))
            n += 1
            return
        assert snd_isn is not None
        seq = (h.seq - snd_isn - 1) & 0xFFFFFFFF
        ln = len(data)
        t = (now - t0[0]) * 1000
        events.append({"t": round(t, 3), "dir": "out", "flags": "R" if h.flags & 4 else "",
                       "seq": seq, "len": ln})  # fmt: skip
        if not ln:
            return
        index = seq // MSS
        first = index not in first_tx
        first_tx.add(index)
        if first and index in sc.drop:
            return
        arrive = max(now + sc.rtt, bottleneck + sc.ser * ln / MSS)
        bottleneck = arrive
        if first and index in delay:
            arrive += delay[index]
        heapq.heappush(pending, (arrive, n, ("data", seq, seq + ln)))
        n += 1
        return

    while True:
        now = time.monotonic()
        if t0 and now - t0[0] > seconds:
            break
        if end_at is not None and now >= end_at:
            break
        due = pending[0][0] if pending else now + 0.2
        ready, _, _ = select.select([fd], [], [], max(0.0, due - now))
        now = time.monotonic()
        if ready:
            take(os.read(fd, 65536), now)
        while pending and pending[0][0] <= now:
            _, _, action = heapq.heappop(pending)
            if action[0] == "synack":
                opts = TcpOptions(mss=MSS, sack_permitted=sc.sack)
                emit(RECEIVER_ISN, snd_isn + 1, SYN | ACK, opts)
                t = (time.monotonic() - t0[0]) * 1000
                events.append({"t": round(t, 3), "dir": "in", "flags": "SA", "ack": 0, "sack": []})
                continue
            ack, blocks = receiver.arrive(action[1], action[2])
            base = snd_isn + 1
            opts = None
            if blocks:
                wire = tuple(((base + a) & 0xFFFFFFFF, (base + b) & 0xFFFFFFFF) for a, b in blocks)
                opts = TcpOptions(sack_blocks=wire)
            t = (time.monotonic() - t0[0]) * 1000
            events.append({"t": round(t, 3), "dir": "in", "flags": "", "ack": ack,
                           "sack": [list(b) for b in blocks]})  # fmt: skip
            emit(RECEIVER_ISN + 1, (base + ack) & 0xFFFFFFFF, ACK, opts)
            if ack >= total and end_at is None:
                end_at = time.monotonic() + 0.3  # anything late (a probe) still recorded
    done.set()
    thread.join(5)
    os.close(fd)
    return {
        "scenario": sc.name,
        "doc": sc.doc,
        "kernel": platform.release(),
        "sysctls": sysctls,
        "gso_max_segs": 1,
        "hz_note": "kernel timers (RTO, TLP, RACK) fire on jiffies: times round up to a tick",
        "mss": MSS,
        "rtt_ms": sc.rtt * 1000,
        "ser_ms": sc.ser * 1000,
        "sack": sc.sack,
        "congestion_control": sc.cc,
        "segments": sc.segments,
        "drop": sorted(sc.drop),
        "delay_ms": [[i, d * 1000] for i, d in sc.delay],
        "events": events,
    }


def capture(names: list[str], outdir: Path) -> None:
    """Each scenario in a fresh namespace, deleted whatever happens."""
    outdir.mkdir(parents=True, exist_ok=True)
    for name in names:
        ns = f"nst-lintrace-{os.getpid()}"
        subprocess.run(["ip", "netns", "add", ns], check=True)
        try:
            out = subprocess.run(
                ["ip", "netns", "exec", ns, sys.executable, "-m", __spec__.name, "--inside", name],
                cwd=Path(__file__).resolve().parents[3],
                check=True, capture_output=True, text=True, timeout=30,
            )  # fmt: skip
        finally:
            subprocess.run(["ip", "netns", "del", ns], check=False)
        (outdir / f"{name}.json").write_text(out.stdout)
        print(name, "ok", file=sys.stderr)


def main(argv: list[str]) -> None:
    if argv and argv[0] == "--inside":
        trace = run_inside(SCENARIOS[argv[1]])
        print(json.dumps(trace, indent=None, separators=(",", ":")))
        return
    capture(argv[1:] or list(SCENARIOS), Path(argv[0]))


if __name__ == "__main__":
    main(sys.argv[1:])
