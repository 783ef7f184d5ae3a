"""Replay a Linux sender trace (tests/integration/tcp/linux_sender.py) against our engine.

The trace holds every ACK the scripted receiver sent the kernel and every segment the kernel
sent, with times. Here our engine is the sender in the unit Harness: it opens the connection
at the trace's time 0, gets the same SYN-ACK at the same time (so its first RTT sample is the
kernel's), is given the same data when the kernel's application wrote it, and then gets each
recorded ACK at its recorded time, its timers run in between. What it sends is written down
the way the trace writes the kernel's: each data segment with the number of ACKs delivered
before it, so the two sequences compare segment by segment, timer-driven sends included.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from netstack.wire.tcp import ACK, SYN
from tests.unit.tcp.tcptools import (
    LOCAL_ISN,
    LOCAL_PORT,
    REMOTE_IP,
    REMOTE_ISN,
    REMOTE_PORT,
    RecordingHandler,
    Seg,
    make_harness,
)

TRACES = Path(__file__).parent / "data" / "linux"
T0 = 100.0  # the harness clock at the trace's time 0 (the kernel's SYN)


@dataclasses.dataclass(frozen=True)
class Out:
    """One data segment a sender sent: after how many of the trace's ACKs, when, what."""

    acks: int  # ACKs (after the SYN-ACK) delivered before it
    t_ms: float
    seq: int  # relative to ISN + 1
    length: int

    def key(self) -> tuple[int, int, int]:
        return self.acks, self.seq, self.length


def load(name: str) -> dict:
    return json.loads((TRACES / f"{name}.json").read_text())


def linux_sent(trace: dict) -> list[Out]:
    out = []
    acks = 0
    for e in trace["events"]:
        if e["dir"] == "in" and e["flags"] != "SA":
            acks += 1
        elif e["dir"] == "out" and e["len"]:
            out.append(Out(acks, e["t"], e["seq"], e["len"]))
    return out


def replay(trace: dict, **config) -> tuple[list[Out], object]:
    """Drive our engine through the trace's ACKs; return what it sent and the connection."""
    mss = trace["mss"]
    base = dict(
        sack=trace["sack"], timestamps=False, window_scaling=False,
        congestion_control=trace.get("congestion_control", "reno"),
        send_buffer=1 << 20, receive_buffer=65535, quick_acks=16,
    )  # fmt: skip
    base.update(config)
    t = make_harness(**base)
    t.now = T0
    conn = t.engine.connect((REMOTE_IP, REMOTE_PORT), local_port=LOCAL_PORT)
    conn.handler = RecordingHandler(conn, t.events)
    t.engine.flush(t.now)
    local = LOCAL_ISN + 1
    events = trace["events"]
    first_data = next(e["t"] for e in events if e["dir"] == "out" and e["len"])
    sent: list[Out] = []
    acks = 0
    data_given = False

    def collect() -> None:
        for now, s in t.recv_timed():
            if s.payload:
                sent.append(Out(acks, round((now - T0) * 1000, 3), s.seq - local, len(s.payload)))

    def run_to(ms: float) -> None:
        nonlocal data_given
        when = T0 + ms / 1000
        if not data_given and first_data <= ms:
            step(T0 + first_data / 1000)
            conn.send(b"x" * (trace["segments"] * mss))
            t.engine.flush(t.now)
            data_given = True
            collect()
        step(when)

    def step(when: float) -> None:
        """Every timer due up to `when`, each at its own time, what it sends collected."""
        for _ in range(10_000):
            d = t.engine.next_deadline()
            if d is None or d > when:
                break
            t.now = max(t.now, d)
            t.engine.poll(t.now)
            collect()
        t.now = max(t.now, when)

    for e in events:
        if e["dir"] != "in":
            continue
        run_to(e["t"])
        if e["flags"] == "SA":
            t.send(Seg(flags=SYN | ACK, seq=REMOTE_ISN, ack=local, window=65535, mss=mss,
                       sack_perm=trace["sack"]))  # fmt: skip
            t.recv()  # the handshake's ACK
            continue
        blocks = tuple((local + a, local + b) for a, b in e["sack"])
        t.send(Seg(flags=ACK, seq=REMOTE_ISN + 1, ack=local + e["ack"], window=65535,
                   sack=blocks))  # fmt: skip
        acks += 1
        collect()
    last = max(e["t"] for e in events)
    run_to(last)
    return sent, conn


def diff(linux: list[Out], ours: list[Out]) -> str:
    """A side-by-side listing for a failing comparison."""
    rows = []
    for i in range(max(len(linux), len(ours))):
        a = linux[i] if i < len(linux) else None
        b = ours[i] if i < len(ours) else None
        fa = f"ack#{a.acks:3d} seg {a.seq // 1460:3d} t={a.t_ms:8.2f}" if a else "-"
        fb = f"ack#{b.acks:3d} seg {b.seq // 1460:3d} t={b.t_ms:8.2f}" if b else "-"
        mark = "  " if a and b and a.key() == b.key() else "!!"
        rows.append(f"{mark} linux {fa:36s} ours {fb}")
    return "\n".join(rows)
