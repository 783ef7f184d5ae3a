#!/usr/bin/env python3
"""Bytes per idle TCP connection, ESTABLISHED and in TIME_WAIT, in the stack's own engine.

    .venv/bin/python bench/conn_memory.py [--connections 2000]

Issue 11 asks for both figures. One `Host` (192.0.2.2, the stack under test) listens on a port
whose protocol keeps every connection open and idle; the peer is not a second stack but frames
built here (SYN with Linux's options, the ACK completing the handshake, later the ACK and FIN
answering the stack's close), so tracemalloc sees only the host under test's allocations.
ESTABLISHED is measured with the application's protocol object included (what a user holds);
TIME_WAIT after the stack closed actively and the peer's FIN came, with the application's
objects gone. No root, no TAP: a pure in-memory run on a fake clock.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from netstack.api.tcp import Protocol, listen
from netstack.counters import Counters
from netstack.proto.host import Host, HostConfig
from netstack.wire import arp as warp
from netstack.wire import ethernet as weth
from netstack.wire import ipv4 as wipv4
from netstack.wire import tcp as wtcp

STACK_MAC, PEER_MAC = bytes.fromhex("02aabbccdd02"), bytes.fromhex("02aabbccdd01")
STACK_IP, PEER_IP = wipv4.ip_from_str("192.0.2.2"), wipv4.ip_from_str("192.0.2.1")
PORT = 5001
BATCH = 64
LINUX_SYN = wtcp.TcpOptions(mss=1460, window_scale=7, sack_permitted=True, timestamp=(1, 0))


class Idle(Protocol):
    """Holds its transport, never reads or writes: an idle connection as an application has it."""

    held: list[Idle] = []

    def connection_made(self, transport) -> None:
        self.transport = transport
        Idle.held.append(self)


class Peer:
    """Frames from 192.0.2.1 and a parser for the stack's replies."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.now = 1000.0

    def send(self, segments: list[bytes]) -> list[wtcp.TcpHeader]:
        eth = weth.build(STACK_MAC, PEER_MAC, weth.ETHERTYPE_IPV4)
        frames = [
            memoryview(eth + wipv4.build(PEER_IP, STACK_IP, wipv4.PROTO_TCP, len(s)) + s)
            for s in segments
        ]
        self.now += 0.001
        for i in range(0, len(frames), BATCH):
            self.host.receive_batch(frames[i : i + BATCH], self.now)
        return self.replies()

    def replies(self) -> list[wtcp.TcpHeader]:
        out = []
        for pieces in self.host.tx:
            frame = memoryview(b"".join(pieces))
            if weth.parse(frame)[0].ethertype != weth.ETHERTYPE_IPV4:
                continue
            ip, payload = wipv4.parse(frame[14:])
            if ip.protocol == wipv4.PROTO_TCP:
                out.append(wtcp.parse(payload, ip.src, ip.dst)[0])
        self.host.tx.clear()
        return out

    def segment(self, port: int, seq: int, ack: int, flags: int, tsecr: int) -> bytes:
        options = wtcp.TcpOptions(timestamp=(int(self.now * 1000) & 0xFFFFFFFF, tsecr))
        return wtcp.build(PEER_IP, STACK_IP, port, PORT, seq, ack, flags, 64240, options=options)


def measure(n: int) -> dict:
    host = Host(
        HostConfig(mac=STACK_MAC, address=STACK_IP, prefix_len=24), Counters(), random.Random(2)
    )
    host.start(1000.0)
    listen(host.tcp, PORT, Idle, backlog=4096)
    peer = Peer(host)
    arp = warp.build(warp.OP_REQUEST, PEER_MAC, PEER_IP, bytes(6), STACK_IP)
    eth = weth.build(STACK_MAC, PEER_MAC, weth.ETHERTYPE_ARP)
    host.receive_batch([memoryview(eth + arp)], 1000.0)  # the stack learns the peer's MAC
    host.tx.clear()
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.take_snapshot()
    isn: dict[int, tuple[int, int]] = {}  # peer port -> (stack's next seq, its TSval)
    ports = list(range(20000, 20000 + n))
    for i in range(0, n, BATCH):  # handshakes in batches, so the SYN backlog never fills
        chunk = ports[i : i + BATCH]
        syns = [
            wtcp.build(PEER_IP, STACK_IP, p, PORT, 1000, 0, wtcp.SYN, 64240, options=LINUX_SYN)
            for p in chunk
        ]
        for h in peer.send(syns):
            isn[h.dst_port] = ((h.seq + 1) & 0xFFFFFFFF, h.options.timestamp[0])
        acks = [peer.segment(p, 1001, isn[p][0], wtcp.ACK, isn[p][1]) for p in chunk]
        peer.send(acks)
    established = host.tcp.connections_by_state().get("established", 0)
    gc.collect()
    snap_est = tracemalloc.take_snapshot()
    # The stack closes each connection; the peer ACKs the FIN and sends its own.
    fins: dict[int, tuple[int, int]] = {}
    for idle in Idle.held:
        idle.transport.close()
    host.tcp.flush(peer.now)  # the end-of-batch flush point, where the FINs leave
    for h in peer.replies():
        if h.flags & wtcp.FIN:
            fins[h.dst_port] = ((h.seq + 1) & 0xFFFFFFFF, h.options.timestamp[0])
    Idle.held.clear()
    answers = [peer.segment(p, 1001, s, wtcp.ACK | wtcp.FIN, ts) for p, (s, ts) in fins.items()]
    peer.send(answers)
    time_wait = host.tcp.connections_by_state().get("time_wait", 0)
    # A few seconds into TIME_WAIT (of 60): the timer entries the connections left in the
    # engine's lazy heap (their FIN's RTO) have come due and lapsed, as on a live stack.
    peer.now += 5.0
    host.poll(peer.now)
    host.tx.clear()
    gc.collect()
    snap_tw = tracemalloc.take_snapshot()
    tracemalloc.stop()

    def grown(snap: tracemalloc.Snapshot) -> int:
        return sum(s.size_diff for s in snap.compare_to(base, "filename"))

    return {
        "connections": n,
        "established": established,
        "established_bytes_each": grown(snap_est) / max(established, 1),
        "time_wait": time_wait,
        "time_wait_bytes_each": grown(snap_tw) / max(time_wait, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--connections", type=int, default=2000)
    args = p.parse_args(argv)
    r = measure(args.connections)
    print(
        f"{r['established']} ESTABLISHED: {r['established_bytes_each']:,.0f} B each; "
        f"{r['time_wait']} TIME_WAIT: {r['time_wait_bytes_each']:,.0f} B each"
    )
    if r["established"] != args.connections or r["time_wait"] != args.connections:
        print("not every connection reached the state measured", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
