"""Engines announce an earlier deadline (proto/deadlines.py), so the loop need not ask the
host after every receive batch: no due timer may ever run late because of it.

The loop's side is modelled exactly: it keeps one cached deadline for the host, lowers it on
each announcement, and asks the host again only when the cached one has come (it then polls
what is due and caches the host's new answer). Two whole Hosts back to back on a virtual
clock (tests/unit/tcp/test_lean.py's World) run the same script twice: once with the stack
driven the old way (asked at every step) and once driven only by the cache. Both runs must
put the same frames on the wire at the same virtual times, and at every step of the cached
run the cache must not be later than the host's true next deadline.

The script reaches every announcing engine: TCP (the handshake's and data's timers, loss and
RTOs, TIME_WAIT and LAST_ACK, application writes from outside a receive batch, connections
opened by the stack), ARP (entries going STALE, DELAY/PROBE, resolution of an unknown
neighbour), IPv4 reassembly (a lone first fragment that times out: ICMP time exceeded), ND
and IPv6 (the same over IPv6, DAD and MLD at start). DHCP is checked on its own below.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netstack.api.services import start_services
from netstack.api.tcp import connect
from netstack.counters import Counters
from netstack.proto.dhcp import DhcpClient, DhcpConfig
from netstack.proto.host import Host
from netstack.wire import ethernet as weth
from netstack.wire import ipv4 as wipv4
from netstack.wire import udp as wudp
from tests.unit.tcp.test_lean import (
    PEER_IP,
    PEER_IP6,
    PEER_MAC,
    STACK_IP,
    STACK_IP6,
    STACK_MAC,
    Sink,
    World,
    counters_of,
)


class LoopCache:
    """The loop's cached deadline for one announcing host (io/loop.py)."""

    def __init__(self, host: Host) -> None:
        self.host = host
        assert host.announce_deadlines(self.moved)  # every engine announces
        self.cached = host.next_deadline()
        self.announced = 0
        self.late: list[tuple[float, float | None, float]] = []  # (true, cached, now)

    def moved(self, when: float) -> None:
        self.announced += 1
        if self.cached is None or when < self.cached:
            self.cached = when

    def turn(self, now: float) -> None:
        """The end of a loop turn: check the cache, run what is due as the loop would."""
        true = self.host.next_deadline()
        if true is not None and (self.cached is None or self.cached > true):
            self.late.append((true, self.cached, now))
        if self.cached is not None and self.cached <= now:
            if true is not None and true <= now:
                self.host.poll(now)
            self.cached = self.host.next_deadline()


class CachedWorld(World):
    """World whose stack is polled only when the loop's cached deadline says so."""

    cache: LoopCache | None = None
    mute: str | None = None  # an engine whose announcements are cut (the harness's own test)

    def step(self, dt: float = 0.0005) -> None:
        if self.cache is None:
            self.cache = LoopCache(self.stack)
            if self.mute is not None:
                MUTE[self.mute](self.stack)
        self.now += dt
        now = self.now
        self.cache.turn(now)
        deadline = self.peer.next_deadline()
        if deadline is not None and deadline <= now:
            self.peer.poll(now)
        to_peer = self._out(self.stack)
        self.wire += [(now, f) for f in to_peer]
        to_stack = self._lossy(self._out(self.peer))
        if to_stack:
            self.stack.receive_batch([memoryview(f) for f in to_stack], now)
        to_peer = self._lossy(to_peer)
        if to_peer:
            self.peer.receive_batch([memoryview(f) for f in to_peer], now)


def _silence(engine: object) -> None:
    engine.deadline_moved = lambda when: None  # type: ignore[attr-defined]


MUTE = {
    "tcp": lambda host: _silence(host.tcp),
    "arp": lambda host: _silence(host.arp),
    "reassembly": lambda host: _silence(host.ipv4.reassembler),
    "nd": lambda host: _silence(host.v6.nd),
}


def lone_fragment() -> bytes:
    """The first fragment of a UDP datagram whose rest never comes (reassembly times out)."""
    payload = wudp.build(PEER_IP, STACK_IP, 5000, 9, b"f" * 64) + b"f" * 64
    header = wipv4.build(
        PEER_IP, STACK_IP, wipv4.PROTO_UDP, len(payload), ident=77, more_fragments=True
    )
    return weth.build(STACK_MAC, PEER_MAC, weth.ETHERTYPE_IPV4) + header + payload


Op = tuple[str, float]


def play(world_type: type[World], script: list[Op], seed: int, v6: bool):
    w = world_type(seed, False, True, v6)
    start_services(w.peer.udp, {"tcp_discard": 9}, w.peer.tcp)
    start_services(w.stack.udp, {"udp_echo": 7}, None)
    server, peer = (STACK_IP6, PEER_IP6) if v6 else ("192.0.2.2", "192.0.2.1")
    echo = connect(w.peer.tcp, (server, 7), Sink)
    out = None
    w.run(0.01)
    for op, arg in script:
        if op == "echo":
            echo.write(b"e" * int(arg))
            w.run(0.02)
        elif op == "out":  # the stack's application writes from outside a receive batch
            if out is None:
                out = connect(w.stack.tcp, (peer, 9), Sink)
                w.run(0.01)
            out.write(b"o" * int(arg))
            w.run(0.02)
        elif op == "close_out" and out is not None:
            out.close()  # the stack closes actively: FIN_WAIT, TIME_WAIT
            out = None
            w.run(arg)
        elif op == "loss":
            w.loss = arg
        elif op == "idle":
            w.run(arg, dt=0.5)
        elif op == "fragment" and not v6:
            w.stack.receive_batch([memoryview(lone_fragment())], w.now)
            w.run(arg, dt=0.5)
    w.loss = 0.0
    echo.close()
    if out is not None:
        out.close()
    w.run(2.0, dt=0.01)
    w.run(70.0, dt=0.5)
    return w


def assert_never_late(script: list[Op], seed: int, v6: bool) -> LoopCache:
    asked = play(World, script, seed, v6)
    cached = play(CachedWorld, script, seed, v6)
    assert isinstance(cached, CachedWorld) and cached.cache is not None
    assert cached.cache.late == []
    assert len(cached.wire) == len(asked.wire)
    for i, (a, b) in enumerate(zip(cached.wire, asked.wire, strict=True)):
        assert a == b, f"frame {i} differs (time or bytes)"
    assert counters_of(cached.stack.counters) == counters_of(asked.stack.counters)
    return cached.cache


SCRIPT: list[Op] = [
    ("echo", 64),
    ("out", 3000),
    ("echo", 20_000),
    ("idle", 45.0),  # ARP / ND entries go STALE: the next segment runs DELAY, then a probe
    ("out", 64),
    ("loss", 0.2),
    ("echo", 30_000),
    ("out", 20_000),
    ("loss", 0.0),
    ("fragment", 40.0),  # reassembly times out after 30 s: ICMP time exceeded, on time
    ("close_out", 1.0),
    ("out", 100),
    ("echo", 64),
]


@pytest.mark.parametrize("v6", [False, True])
def test_scripted_exchange_never_late(v6: bool) -> None:
    cache = assert_never_late(SCRIPT, 3, v6)
    assert cache.announced > 10  # the engines did announce (the test is not vacuous)


ops = st.one_of(
    st.tuples(st.just("echo"), st.integers(1, 20_000).map(float)),
    st.tuples(st.just("out"), st.integers(1, 20_000).map(float)),
    st.tuples(st.just("close_out"), st.sampled_from([0.1, 1.0, 70.0])),
    st.tuples(st.just("loss"), st.sampled_from([0.0, 0.1, 0.3])),
    st.tuples(st.just("idle"), st.sampled_from([0.3, 5.0, 40.0])),
    st.tuples(st.just("fragment"), st.sampled_from([1.0, 35.0])),
)


@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    script=st.lists(ops, min_size=1, max_size=6),
    seed=st.integers(0, 1000),
    v6=st.booleans(),
)
def test_generated_exchanges_never_late(script: list[Op], seed: int, v6: bool) -> None:
    assert_never_late(script, seed, v6)


# Quiet scripts: nothing else pending, so a deadline nobody announced is not picked up by
# the re-ask another due timer would cause.
FRAGMENT_ALONE: list[Op] = [("idle", 100.0), ("fragment", 40.0)]
ND_ALONE: list[Op] = [("idle", 100.0), ("echo", 64), ("idle", 100.0)]


@pytest.mark.parametrize(("script", "v6"), [(FRAGMENT_ALONE, False), (ND_ALONE, True)])
def test_quiet_exchanges_never_late(script: list[Op], v6: bool) -> None:
    assert_never_late(script, 5, v6)


@pytest.mark.parametrize(
    ("mute", "v6", "script"),
    [
        ("tcp", False, SCRIPT),
        ("arp", False, SCRIPT),
        ("reassembly", False, FRAGMENT_ALONE),
        ("nd", True, ND_ALONE),
    ],
)
def test_each_engines_announcements_are_needed(mute: str, v6: bool, script: list[Op]) -> None:
    """The harness can fail: with one engine's announcements cut off, an exchange finds the
    cache later than a true deadline (a timer would then run late)."""
    world = type("Muted", (CachedWorld,), {"mute": mute})
    w = play(world, script, 5, v6)
    assert isinstance(w, CachedWorld) and w.cache is not None
    assert w.cache.late


def test_missing_announcement_is_caught() -> None:
    """The harness can fail: with TCP's timer announcements cut off, the cached run misses a
    retransmission timer (the stack's SYN-ACK is lost; nothing else wakes it)."""
    w = CachedWorld(3, False, True)
    assert w.cache is not None
    w.stack.tcp.deadline_moved = lambda when: None
    connect(w.peer.tcp, ("192.0.2.2", 7), Sink)
    for _ in range(100):  # ARP, then the peer's SYN arrives: the stack queues its SYN-ACK
        w.step()
        if w.stack.tcp.conns:
            break
    assert w.stack.tcp.conns
    w.loss = 1.0  # and lost, as everything after it
    w.run(3.0, dt=0.01)
    assert w.cache.late  # the SYN-ACK's RTO was never cached


# -- DHCP: the client's every timer is announced ------------------------------------------------
class FakeDhcpHost:
    """What the client asks of its host; the sent messages are only counted."""

    def __init__(self) -> None:
        self.sent = 0

    def dhcp_send(self, dst: int, payload: bytes, now: float) -> None:
        self.sent += 1

    def dhcp_probe(self, address: int, now: float) -> None:
        pass

    def dhcp_announce(self, address: int, now: float) -> None:
        pass

    def dhcp_configure(self, lease, now: float) -> None:
        pass


def test_dhcp_timers_are_announced() -> None:
    """INIT's random start delay, then DISCOVER retransmissions with back-off: each timer the
    client sets is announced no later than it is due, and the cache-driven client sends
    exactly when an always-asked one does."""
    times: dict[str, list[float]] = {}
    for mode in ("asked", "cached"):
        host = FakeDhcpHost()
        client = DhcpClient(STACK_MAC, host, Counters(), random.Random(5), DhcpConfig())
        cached: list[float | None] = [None]

        def moved(when: float, cached=cached) -> None:
            if cached[0] is None or when < cached[0]:
                cached[0] = when

        client.announce_deadlines(moved)
        now, sent_at = 0.0, []
        client.start(now)
        for _ in range(20_000):
            now += 0.01
            true = client.next_deadline()
            if mode == "cached":
                assert true is None or (cached[0] is not None and cached[0] <= true)
                due = cached[0] is not None and cached[0] <= now
            else:
                due = true is not None and true <= now
            if due:
                before = host.sent
                if true is not None and true <= now:
                    client.poll(now)
                cached[0] = client.next_deadline()
                if host.sent > before:
                    sent_at.append(round(now, 2))
        times[mode] = sent_at
    assert len(times["asked"]) >= 3
    assert times["cached"] == times["asked"]


def test_the_stack_registers_its_host_as_announcing(tmp_path) -> None:
    """The runtime wires the host's engines and its shutdown to the loop: without --fault,
    no source is asked again after a receive batch (with IPv6 on as well)."""
    from netstack.config import build_config
    from netstack.notify import Notifier
    from netstack.runtime import Stack
    from tests.unit.test_notify import FakeClock, FakeLink, Manager

    for extra in ({}, {"address6": "2001:db8::2/64", "ipv6_secret": "00" * 16}):
        manager = Manager(tmp_path / f"notify{len(extra)}.sock")
        config = build_config({"metrics_address": "none", **extra})
        stack = Stack(config, FakeLink(), clock=FakeClock(100.0), notifier=Notifier(manager.env))
        try:
            assert stack.loop._asking == 0
            assert stack.host.tcp.deadline_moved == stack.loop.deadline_moved
        finally:
            stack.close()
            manager.close()


def test_a_batch_that_raises_still_announces_its_work() -> None:
    """A receive batch that fails after TCP queued work (here the UDP flush at its end) skips
    the batch's TCP flush point: the work waits for the next poll, and the loop is told "now"
    so that poll comes at once."""
    w = CachedWorld(3, False, True)
    echo = connect(w.peer.tcp, ("192.0.2.2", 7), Sink)
    w.run(0.01)
    assert w.cache is not None and w.stack.tcp.conns
    echo.write(b"ping")
    w.peer.poll(w.now)  # the peer's data segment, not yet delivered
    frames = [memoryview(f) for f in w._out(w.peer)]
    assert frames
    real_flush = w.stack.udp.flush

    def failing_flush(now: float) -> None:
        raise RuntimeError("a bug after TCP's segment processing")

    w.stack.udp.flush = failing_flush  # type: ignore[method-assign]
    w.cache.cached = None  # nothing due as far as the loop knows
    with pytest.raises(RuntimeError):
        w.stack.receive_batch(frames, w.now)
    w.stack.udp.flush = real_flush  # type: ignore[method-assign]
    assert not w.stack.tcp.flush_follows
    assert w.cache.cached is not None and w.cache.cached <= w.now  # announced: due now
    assert not w.stack.tx  # the echo has not gone out yet
    w.cache.turn(w.now)  # the loop's turn: polls the host, whose TCP flush sends the echo
    assert w.stack.tx
    assert w.cache.late == []
