#!/usr/bin/env python3
"""The per-segment cost of netstack's Python path, without a TAP, syscalls or a second CPU.

    .venv/bin/python bench/micro.py [--seconds 2] [--profile] [--only udp_echo,...]

Two whole `Host`s (Ethernet, ARP, IPv4, UDP, TCP, the built-in services) are wired back to back
in memory on a virtual clock: the peer (192.0.2.1) plays the kernel's part, the host under test
(192.0.2.2) serves UDP echo (7), TCP discard (9), chargen (19) and echo (7) as `netstack run`
does. Frames cross as bytes, like the link's copy into its arena. Only the host under test's
calls are timed (receive_batch and its flush point, timers), with the thread's CPU clock (so a
busy machine inflates the figures less than wall time would), best of --repeat runs: the
figures are microseconds of Python per datagram / segment / connection, the part this project
controls; the link, the loop and the kernel's TAP work per frame come on top in real runs.
`--profile` adds cProfile's top functions (of the host under test only). No root needed; each
scenario is bounded by --seconds of CPU. Run it from another checkout (copy the file into its
bench/) to compare before and after on the same machine.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from netstack._ffi import ffi

from netstack.api.services import start_services
from netstack.api.tcp import Protocol, connect
from netstack.counters import Counters
from netstack.io import softoffload
from netstack.io.link import VNET_RX_SLOT
from netstack.io.offload import TSO_MAX
from netstack.proto.host import Host, HostConfig
from netstack.proto.tcp.config import TcpConfig
from netstack.proto.v6 import Ipv6HostConfig
from netstack.wire import ethernet as weth
from netstack.wire import icmp as wicmp
from netstack.wire import icmpv6 as wicmp6
from netstack.wire import ipv4 as wipv4
from netstack.wire import ipv6 as wipv6
from netstack.wire import udp as wudp

STACK_MAC = bytes.fromhex("02aabbccdd02")
PEER_MAC = bytes.fromhex("02aabbccdd01")
STACK_IP = wipv4.ip_from_str("192.0.2.2")
PEER_IP = wipv4.ip_from_str("192.0.2.1")
STACK_IP6 = wipv6.from_str("2001:db8::2")
PEER_IP6 = wipv6.from_str("2001:db8::1")
BATCH = 64  # frames per receive batch, like the loop's read batch
PROFILER: cProfile.Profile | None = None  # set by --profile: enabled around the host's calls


class SoftLink:
    """Software GSO/GRO as the link does it (io/softoffload.py), for `Pair(soft=True)`: a TCP
    super-segment is cut into wire segments (ns_gso_cut), and a batch of received frames,
    copied into an arena as read() would, is merged (ns_gro_merge)."""

    def __init__(self, mac: bytes) -> None:
        self.gro = softoffload.SoftGro(BATCH, mac)
        self.arena = ffi.new("uint8_t[]", BATCH * VNET_RX_SLOT)
        self.lens = ffi.new("uint32_t[]", BATCH)
        view = memoryview(ffi.buffer(self.arena))
        self.slots = [view[i * VNET_RX_SLOT : (i + 1) * VNET_RX_SLOT] for i in range(BATCH)]

    @staticmethod
    def cut(host: Host) -> list[memoryview]:
        out: list[memoryview] = []
        for frame in host.tx:
            mark = softoffload.gso_mark(frame)
            joined = b"".join(frame)
            if mark is None:
                out.append(memoryview(joined))
            else:
                out += map(memoryview, softoffload.gso_cut(joined, mark))
        host.tx.clear()
        return out

    def fill(self, frames: list[memoryview]) -> None:
        for i, f in enumerate(frames):
            self.slots[i][: len(f)] = f
            self.lens[i] = len(f)

    def merge(self, n: int) -> tuple[list[memoryview], list[int] | None, tuple | None]:
        """The merged frames, their metadata, and the arena as BatchLink's rx_arena says it
        (only when nothing merged: the frames are then the arena's first slots)."""
        frames, meta = self.gro.merge(self.arena, VNET_RX_SLOT, self.lens, n, self.slots)
        arena = None if meta is not None else (self.arena, VNET_RX_SLOT, 0, self.lens, ffi.NULL)
        return frames, meta, arena


class Pair:
    """Peer and host under test; `step()` moves queued frames both ways, timing the host.
    `soft`: TCP makes 64 KB super-segments on both sides, cut into wire segments between them
    (the peer's cut untimed: it plays the kernel's GSO), and the host under test's batches are
    merged by software GRO (timed, as its link reader's work)."""

    def __init__(self, v6: bool = False, soft: bool = False) -> None:
        self.now = 1000.0
        self.soft = SoftLink(STACK_MAC) if soft else None
        tcp = TcpConfig(tso_max=TSO_MAX, tso6_max=TSO_MAX) if soft else TcpConfig()

        def v6config(address: bytes, name: str) -> Ipv6HostConfig | None:
            if not v6:
                return None
            return Ipv6HostConfig(interface=name, secret=b"micro", static=((address, 64),))

        self.peer = Host(
            HostConfig(
                mac=PEER_MAC,
                address=PEER_IP,
                prefix_len=24,
                ipv6=v6config(PEER_IP6, "peer0"),
                tcp=tcp,
            ),
            Counters(),
            random.Random(1),
        )
        self.stack = Host(
            HostConfig(
                mac=STACK_MAC,
                address=STACK_IP,
                prefix_len=24,
                ipv6=v6config(STACK_IP6, "tap0"),
                tcp=tcp,
            ),
            Counters(),
            random.Random(2),
        )
        ports = {"udp_echo": 7, "tcp_echo": 7, "tcp_discard": 9, "tcp_chargen": 19}
        self.services = start_services(self.stack.udp, ports, self.stack.tcp)
        self.busy = 0.0  # seconds spent inside the host under test
        self.stack.start(self.now)
        self.peer.start(self.now)
        for _ in range(3):
            self.step()
        if v6:  # duplicate address detection done on both sides (about a second each)
            for _ in range(4):
                self.step(1.0)

    @staticmethod
    def _frames(host: Host) -> list[memoryview]:
        out = [memoryview(b"".join(f)) for f in host.tx]
        host.tx.clear()
        return out

    def step(self, dt: float = 0.0001) -> int:
        """One round: peer -> stack, stack timers, stack -> peer. Returns frames moved."""
        self.now += dt
        now = self.now
        soft = self.soft
        to_stack = self._frames(self.peer) if soft is None else soft.cut(self.peer)
        clock = time.thread_time
        busy = 0.0
        for i in range(0, len(to_stack), BATCH):
            batch = to_stack[i : i + BATCH]
            if soft is not None:
                soft.fill(batch)  # the kernel's copy into the arena (read): not ours
            if PROFILER is not None:
                PROFILER.enable()
            t0 = clock()
            if soft is None:
                self.stack.receive_batch(batch, now)
            else:
                frames, meta, arena = soft.merge(len(batch))
                self.stack.receive_batch(frames, now, meta, arena)
            busy += clock() - t0
            if PROFILER is not None:
                PROFILER.disable()
        if PROFILER is not None:
            PROFILER.enable()
        t0 = clock()
        deadline = self.stack.next_deadline()
        if deadline is not None and deadline <= now:
            self.stack.poll(now)
        to_peer = self._frames(self.stack) if soft is None else soft.cut(self.stack)
        self.busy += busy + clock() - t0
        if PROFILER is not None:
            PROFILER.disable()
        for i in range(0, len(to_peer), BATCH):
            self.peer.receive_batch(to_peer[i : i + BATCH], now)
        deadline = self.peer.next_deadline()
        if deadline is not None and deadline <= now:
            self.peer.poll(now)
        return len(to_stack) + len(to_peer)


class Sink(Protocol):
    def __init__(self) -> None:
        self.received = 0
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received += len(data)


class Writer(Sink):
    """Keeps the send buffer full (a bulk sender: the kernel -> discard direction)."""

    chunk = bytes(65536)

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.resume_writing()

    def resume_writing(self) -> None:
        self.paused = False
        while not self.paused:
            self.transport.write(self.chunk)

    def pause_writing(self) -> None:
        self.paused = True


def udp_echo(seconds: float) -> dict:
    pair = Pair()
    payload = bytes(64)
    eth = weth.build(STACK_MAC, PEER_MAC, weth.ETHERTYPE_IPV4)
    udp = wudp.build(PEER_IP, STACK_IP, 40000, 7, payload) + payload
    frame = eth + wipv4.build(PEER_IP, STACK_IP, wipv4.PROTO_UDP, len(udp), ident=1) + udp
    batch = [memoryview(frame)] * BATCH
    # learn the peer's MAC first (the real run's warm-up)
    pair.peer.udp.bind(40000, lambda *a: None).sendto(payload, (STACK_IP, 7))
    for _ in range(4):
        pair.step()
    stack = pair.stack
    n = 0
    clock = time.thread_time
    busy = 0.0
    if PROFILER is not None:
        PROFILER.enable()
    while busy < seconds:
        now = pair.now = pair.now + 0.0001
        t0 = clock()
        stack.receive_batch(batch, now)
        busy += clock() - t0
        n += len(stack.tx)
        stack.tx.clear()
    if PROFILER is not None:
        PROFILER.disable()
    return {"unit": "datagram", "count": n, "seconds": busy}


def udp_echo_batch(seconds: float, uso: bool = False) -> dict:
    """udp_echo with the frames in an arena as a BatchLink reads them (its rx_arena): the
    host answers the batch's echo requests in one C call (Host._echo_batch). Timed as
    udp_echo: the host's receive_batch, plus the view per frame the link makes. `uso`: as
    udp_echo_uso, the replies as one UDP super-frame per batch (Host._echo_runs)."""
    pair = Pair()
    if uso:
        pair.stack.udp.gso_max = BATCH
    payload = bytes(64)
    eth = weth.build(STACK_MAC, PEER_MAC, weth.ETHERTYPE_IPV4)
    udp = wudp.build(PEER_IP, STACK_IP, 40000, 7, payload) + payload
    frame = eth + wipv4.build(PEER_IP, STACK_IP, wipv4.PROTO_UDP, len(udp), ident=1) + udp
    slot = 2048
    arena = ffi.new("uint8_t[]", slot * BATCH)
    lens = ffi.new("uint32_t[]", [len(frame)] * BATCH)
    for i in range(BATCH):
        ffi.memmove(arena + i * slot, frame, len(frame))
    view = memoryview(ffi.buffer(arena)).toreadonly()
    slots = [view[i * slot : (i + 1) * slot] for i in range(BATCH)]
    where = (arena, slot, 0, lens, ffi.NULL)
    pair.peer.udp.bind(40000, lambda *a: None).sendto(payload, (STACK_IP, 7))
    for _ in range(4):
        pair.step()
    stack = pair.stack
    sent = stack.counters.udp_tx
    clock = time.thread_time
    busy = 0.0
    if PROFILER is not None:
        PROFILER.enable()
    while busy < seconds:
        now = pair.now = pair.now + 0.0001
        t0 = clock()
        got = ffi.unpack(lens, BATCH)
        batch = [slots[i][: got[i]] for i in range(BATCH)]
        stack.receive_batch(batch, now, None, where)
        busy += clock() - t0
        stack.tx.clear()
    n = stack.counters.udp_tx - sent  # datagrams (with USO one frame carries many)
    if PROFILER is not None:
        PROFILER.disable()
    return {"unit": "datagram", "count": n, "seconds": busy}


def _replay(pair: Pair, frame: bytes, seconds: float) -> dict:
    """The same request frame, BATCH per receive batch, until `seconds` of the host's CPU."""
    batch = [memoryview(frame)] * BATCH
    stack = pair.stack
    c = stack.counters
    sent = c.udp_tx + c.icmp[("tx", "echo_reply")] + c.icmp6[("tx", "echo_reply")]
    clock = time.thread_time
    busy = 0.0
    if PROFILER is not None:
        PROFILER.enable()
    while busy < seconds:
        now = pair.now = pair.now + 0.0001
        t0 = clock()
        stack.receive_batch(batch, now)
        busy += clock() - t0
        stack.tx.clear()
    if PROFILER is not None:
        PROFILER.disable()
    # replies, not frames: with USO (gso_max) a run of them is one super-frame
    n = c.udp_tx + c.icmp[("tx", "echo_reply")] + c.icmp6[("tx", "echo_reply")] - sent
    return {"count": n, "seconds": busy}


def _peer_frame(pair: Pair, send) -> bytes:
    """The frame the peer emits for `send()` once both neighbours know each other (the
    stack's reply is moved too, so the stack holds the peer's entry as a real run would)."""
    send()
    for _ in range(6):
        pair.step()
    send()
    frames = [b"".join(bytes(p) for p in f) for f in pair.peer.tx]
    assert len(frames) == 1, frames
    pair.step()
    return frames[0]


def udp6_echo(seconds: float, gso_max: int = 0) -> dict:
    """udp_echo over IPv6: 64 B to the echo service's port, from 2001:db8::1. `gso_max`: the
    replies of a batch leave as UDP super-frames (a TAP whose kernel has USO)."""
    pair = Pair(v6=True)
    sock = pair.peer.udp.bind(40000, lambda *a: None)
    frame = _peer_frame(pair, lambda: sock.sendto(bytes(64), (STACK_IP6, 7)))
    pair.stack.udp.gso_max = gso_max
    return {"unit": "datagram", **_replay(pair, frame, seconds)}


def udp_echo_uso(seconds: float) -> dict:
    """udp_echo with USO: the replies of each batch leave as one UDP super-frame."""
    pair = Pair()
    sock = pair.peer.udp.bind(40000, lambda *a: None)
    frame = _peer_frame(pair, lambda: sock.sendto(bytes(64), (STACK_IP, 7)))
    pair.stack.udp.gso_max = BATCH
    return {"unit": "datagram", **_replay(pair, frame, seconds)}


def ping(seconds: float) -> dict:
    """An ICMP echo request with 56 bytes of data (ping's default) answered by the host."""
    pair = Pair()
    eth = weth.build(STACK_MAC, PEER_MAC, weth.ETHERTYPE_IPV4)
    icmp = wicmp.build(wicmp.TYPE_ECHO_REQUEST, 0, (7 << 16) | 1, bytes(56)) + bytes(56)
    frame = eth + wipv4.build(PEER_IP, STACK_IP, wipv4.PROTO_ICMP, len(icmp), ident=1) + icmp
    pair.peer.udp.bind(40000, lambda *a: None).sendto(bytes(1), (STACK_IP, 7))  # learn MACs
    for _ in range(4):
        pair.step()
    return {"unit": "echo", **_replay(pair, frame, seconds)}


def ping6(seconds: float) -> dict:
    """ping over IPv6: an ICMPv6 echo request with 56 bytes of data, from 2001:db8::1."""
    pair = Pair(v6=True)
    body = (7 << 16 | 1).to_bytes(4, "big") + bytes(56)
    icmp = wicmp6.build(PEER_IP6, STACK_IP6, wicmp6.TYPE_ECHO_REQUEST, 0, body)

    def send() -> None:
        pair.peer.v6.ipv6.send(STACK_IP6, wipv6.ICMPV6, (icmp,), pair.now)

    return {"unit": "echo", **_replay(pair, _peer_frame(pair, send), seconds)}


def tcp_bulk(
    seconds: float,
    port: int,
    protocol: type[Protocol],
    unit_counter: str,
    v6: bool = False,
    soft: bool = False,
) -> dict:
    """Bulk TCP to discard (the host receives) or from chargen (it sends), over either family;
    `soft`: through software GSO/GRO (offload off, gso = gro = "auto")."""
    pair = Pair(v6=v6, soft=soft)
    client = connect(pair.peer.tcp, ("2001:db8::2" if v6 else "192.0.2.2", port), protocol)
    for _ in range(20):
        pair.step()
    c = pair.stack.counters
    start = getattr(c, unit_counter)
    pair.busy = 0.0
    rounds = 0
    while pair.busy < seconds and rounds < 2_000_000:
        pair.step()
        rounds += 1
    moved = getattr(c, unit_counter) - start
    client.close()
    return {"unit": "segment", "count": moved, "seconds": pair.busy}


def tcp_connect(seconds: float) -> dict:
    pair = Pair()
    n = 0
    pair.busy = 0.0
    while pair.busy < seconds and n < 200_000:
        t = connect(pair.peer.tcp, ("192.0.2.2", 7), Sink)
        for _ in range(6):
            pair.step()
        t.close()
        for _ in range(6):
            pair.step()
        n += 1
        if n % 256 == 0:  # let TIME_WAIT go on the peer
            for _ in range(3):
                pair.step(61.0)
    return {"unit": "connection", "count": n, "seconds": pair.busy}


def tcp_echo_rtt(seconds: float, v6: bool = False) -> dict:
    """64 bytes through the TCP echo service, one message in flight (bench/tcp.py's RTT row)."""
    pair = Pair(v6=v6)
    client = connect(pair.peer.tcp, ("2001:db8::2" if v6 else "192.0.2.2", 7), Sink)
    for _ in range(10):
        pair.step()
    proto = client.get_protocol()
    message = bytes(64)
    n = 0
    pair.busy = 0.0
    while pair.busy < seconds and n < 500_000:
        want = proto.received + len(message)
        client.write(message)
        for _ in range(20):
            pair.step(0.00002)  # well below the delayed-ACK timer: no timer work counted
            if proto.received >= want:
                break
        n += 1
    client.close()
    return {"unit": "round trip", "count": n, "seconds": pair.busy}


class _TurnLink:
    """A link for loop_turn: always readable (an eventfd that is never read), hands over the
    same frame once per receive_batch, swallows what is sent. No TAP, no root."""

    name = "turn"
    mtu = 1500
    max_batch = BATCH
    rx_oversize = 0

    def __init__(self, frame: bytes) -> None:
        self.fd = os.eventfd(1, os.EFD_NONBLOCK)
        self.mac = STACK_MAC
        self._frames = [memoryview(frame)]
        self.sent = 0

    def receive_batch(self) -> list[memoryview]:
        return self._frames

    def send_batch(self, frames) -> int:
        self.sent += len(frames)
        return len(frames)

    def close(self) -> None:
        os.close(self.fd)


def loop_turn(seconds: float, as_run: bool = False) -> dict:
    """udp_echo with one datagram per turn of a real Loop (epoll_wait on an always-readable fd,
    deadline sources, histograms, the flush): the loop's per-turn cost on top of the host's.
    The Stack's wiring (runtime.py) in miniature: on_frames -> host -> the link's tx queue.
    `as_run` (loop_turn_run): the turns as run() makes them (run_once from outside asks every
    source each turn), the host registered as the runtime does (announcing its deadlines where
    the checkout has proto/deadlines.py): what a busy turn of `netstack run` costs."""
    from netstack.io.loop import Loop

    pair = Pair()
    payload = bytes(64)
    eth = weth.build(STACK_MAC, PEER_MAC, weth.ETHERTYPE_IPV4)
    udp = wudp.build(PEER_IP, STACK_IP, 40000, 7, payload) + payload
    frame = eth + wipv4.build(PEER_IP, STACK_IP, wipv4.PROTO_UDP, len(udp), ident=1) + udp
    pair.peer.udp.bind(40000, lambda *a: None).sendto(payload, (STACK_IP, 7))
    for _ in range(4):
        pair.step()
    stack = pair.stack
    link = _TurnLink(frame)
    vclock = [pair.now]

    def virtual_clock() -> float:  # the pair's clock (ARP entries stay fresh), moving on
        vclock[0] += 0.000001
        return vclock[0]

    loop = Loop(stack.counters, clock=virtual_clock)

    def on_frames(frames, now):
        stack.receive_batch(frames, now)
        if stack.tx:
            queue.extend(stack.tx)
            stack.tx.clear()

    def poll(now):
        stack.poll(now)
        if stack.tx:
            queue.extend(stack.tx)
            stack.tx.clear()

    queue = loop.add_link(link, on_frames)
    announce = getattr(stack, "announce_deadlines", None) if as_run else None
    if announce is not None:
        loop.add_deadline_source(stack.next_deadline, poll, announces=announce(loop.deadline_moved))
    else:
        loop.add_deadline_source(stack.next_deadline, poll)
    loop._running = as_run
    clock = time.thread_time
    n = 0
    t0 = clock()
    if PROFILER is not None:
        PROFILER.enable()
    while n < 5_000_000:
        for _ in range(1000):
            loop.run_once()
        n += 1000
        if clock() - t0 >= seconds:
            break
    if PROFILER is not None:
        PROFILER.disable()
    busy = clock() - t0
    loop.close()
    link.close()
    return {"unit": "turn", "count": link.sent, "seconds": busy}


def loop_idle(seconds: float) -> dict:
    """A turn with nothing readable and nothing due (run_once(timeout=0): the sleep skipped),
    the real Host as deadline source (IPv4 + IPv6, one TCP connection with its timers armed)
    plus an empty one (the runtime's shutdown source): what deciding how long to sleep costs."""
    from netstack.io.loop import Loop

    pair = Pair(v6=True)
    client = connect(pair.peer.tcp, ("192.0.2.2", 7), Sink)
    for _ in range(10):
        pair.step()
    client.write(bytes(64))
    for _ in range(5):
        pair.step(0.00002)
    stack = pair.stack
    loop = Loop(stack.counters, clock=lambda: pair.now)
    loop.add_deadline_source(stack.next_deadline, stack.poll)
    loop.add_deadline_source(lambda: None, lambda now: None)
    loop._running = True  # turns as run() makes them (run_once from outside asks every source)
    clock = time.thread_time
    n = 0
    t0 = clock()
    if PROFILER is not None:
        PROFILER.enable()
    while n < 5_000_000:
        for _ in range(1000):
            loop.run_once(timeout=0)
        n += 1000
        if clock() - t0 >= seconds:
            break
    if PROFILER is not None:
        PROFILER.disable()
    busy = clock() - t0
    loop.close()
    return {"unit": "turn", "count": n, "seconds": busy}


SCENARIOS = {
    "udp_echo": lambda s: udp_echo(s),
    "udp6_echo": lambda s: udp6_echo(s),
    "udp_echo_uso": lambda s: udp_echo_uso(s),
    "udp_echo_batch": lambda s: udp_echo_batch(s),
    "udp_echo_batch_uso": lambda s: udp_echo_batch(s, uso=True),
    "udp6_echo_uso": lambda s: udp6_echo(s, BATCH),
    "ping": lambda s: ping(s),
    "ping6": lambda s: ping6(s),
    "tcp_discard_rx": lambda s: tcp_bulk(s, 9, Writer, "tcp_segments_rx"),
    "tcp_chargen_tx": lambda s: tcp_bulk(s, 19, Sink, "tcp_segments_tx"),
    "tcp6_discard_rx": lambda s: tcp_bulk(s, 9, Writer, "tcp_segments_rx", v6=True),
    "tcp6_chargen_tx": lambda s: tcp_bulk(s, 19, Sink, "tcp_segments_tx", v6=True),
    # software GSO/GRO (offload off, gso = gro = "auto"): per wire segment, cut and merge in
    "tcp_discard_rx_soft": lambda s: tcp_bulk(s, 9, Writer, "tcp_segments_rx", soft=True),
    "tcp_chargen_tx_soft": lambda s: tcp_bulk(s, 19, Sink, "tcp_segments_tx", soft=True),
    "tcp_echo_rtt": lambda s: tcp_echo_rtt(s),
    "tcp6_echo_rtt": lambda s: tcp_echo_rtt(s, v6=True),
    "tcp_connect": lambda s: tcp_connect(s),
    "loop_turn": lambda s: loop_turn(s),
    "loop_turn_run": lambda s: loop_turn(s, as_run=True),
    "loop_idle": lambda s: loop_idle(s),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=float, default=2.0, help="CPU seconds per scenario")
    p.add_argument("--only", default="", help="comma-separated scenarios")
    p.add_argument("--profile", action="store_true", help="cProfile each scenario")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--repeat", type=int, default=3, help="runs per scenario (best kept)")
    args = p.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(SCENARIOS)
    global PROFILER
    for name in names:
        runs = []
        for _ in range(1 if args.profile else args.repeat):
            PROFILER = prof = cProfile.Profile() if args.profile else None
            runs.append(SCENARIOS[name](args.seconds))
            PROFILER = None
        res = min(runs, key=lambda r: r["seconds"] / max(r["count"], 1))
        us = 1e6 * res["seconds"] / max(res["count"], 1)
        print(
            f"{name:16} {us:7.2f} us per {res['unit']:10} ({res['count']} in "
            f"{res['seconds']:.2f} s: {res['count'] / max(res['seconds'], 1e-9):,.0f}/s of CPU)"
        )
        if prof is not None:
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(args.top)
            text = out.getvalue()
            print(text[text.find("ncalls") :].rstrip() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
