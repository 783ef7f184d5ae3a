"""The lean send of a template segment (Ipv4Engine.send_tcp, via TcpEngine.transmit_fast)
against the general way (build_fast, Ipv4Engine.send, ARP), differentially.

Two whole Hosts back to back on a virtual clock (Ethernet, ARP, IPv4, ICMP, TCP, the echo,
discard and chargen services), the host under test in checked mode. The same seeded script
runs twice, with engine.LEAN and connection.LEAN_TX (the lean data segment) on and off:
writes both ways, frame loss both ways (so retransmissions, RACK and RTOs), idle gaps long
enough for the ARP entry to go STALE (the general path then runs ARP's DELAY/PROBE dance),
ICMP "fragmentation needed" reports (the path MTU goes down), a link MTU change and a change
of prefix that puts the peer behind a gateway (set_address, which must reset the lean send's
route memo), with TSO on or off (software-cut super-segments) and timestamps on or off. Both
runs must put exactly the same frames on the wire at the same virtual times and end with the
same counters, every drop reason included; and the lean run must actually have taken both
lean ways while the other never did.
"""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netstack.api.services import start_services
from netstack.api.tcp import Protocol, connect
from netstack.counters import Counters
from netstack.histogram import Histogram
from netstack.io import softoffload
from netstack.proto.host import Host, HostConfig
from netstack.proto.ipv4 import Ipv4Engine
from netstack.proto.ipv6 import Ipv6Engine
from netstack.proto.tcp import connection as tcpconn
from netstack.proto.tcp import engine as tcpengine
from netstack.proto.tcp.config import TcpConfig
from netstack.proto.tcp.isn import Secrets
from netstack.proto.tcp.recovery import Recovery
from netstack.proto.v6 import Ipv6HostConfig
from netstack.wire import ethernet as weth
from netstack.wire import icmp as wicmp
from netstack.wire import ipv4 as wipv4
from netstack.wire import ipv6 as wipv6

STACK_MAC = bytes.fromhex("02aabbccdd02")
PEER_MAC = bytes.fromhex("02aabbccdd01")
STACK_IP = wipv4.ip_from_str("192.0.2.2")
PEER_IP = wipv4.ip_from_str("192.0.2.1")
GATEWAY = wipv4.ip_from_str("192.0.2.254")
STACK_IP6 = "2001:db8::2"
PEER_IP6 = "2001:db8::1"
TSO_MAX = 65000


class Sink(Protocol):
    def __init__(self) -> None:
        self.received = 0

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received += len(data)


def counters_of(c: Counters) -> dict:
    out = {}
    for field in dataclasses.fields(c):
        value = getattr(c, field.name)
        if isinstance(value, Histogram):
            value = (list(value.counts), value.sum)
        out[field.name] = value
    return out


class World:
    """Peer (the kernel's part) and host under test, frames crossing as joined bytes; the
    stack's super-segments are cut as the link's software GSO would."""

    def __init__(self, seed: int, tso: bool, timestamps: bool, v6: bool = False) -> None:
        self.now = 1000.0
        self.rng = random.Random(seed)
        self.loss = 0.0
        tcp = TcpConfig(
            tso_max=TSO_MAX if tso else 0, tso6_max=TSO_MAX if tso else 0, timestamps=timestamps
        )

        def v6config(address: str, name: str) -> Ipv6HostConfig | None:
            if not v6:
                return None
            static = ((wipv6.from_str(address), 64),)
            return Ipv6HostConfig(interface=name, secret=b"lean", static=static)

        self.peer = Host(
            HostConfig(
                mac=PEER_MAC, address=PEER_IP, prefix_len=24, tcp=tcp,
                ipv6=v6config(PEER_IP6, "peer0"),
            ),
            Counters(),
            random.Random(1),
        )  # fmt: skip
        self.stack = Host(
            HostConfig(
                mac=STACK_MAC, address=STACK_IP, prefix_len=24,
                tcp=dataclasses.replace(tcp, checked=True), ipv6=v6config(STACK_IP6, "tap0"),
            ),
            Counters(),
            random.Random(2),
        )  # fmt: skip
        for host, key in ((self.peer, b"p"), (self.stack, b"s")):  # the same ISNs each run
            host.tcp.secrets = Secrets(key * 32)
        start_services(
            self.stack.udp, {"tcp_echo": 7, "tcp_discard": 9, "tcp_chargen": 19}, self.stack.tcp
        )
        self.wire: list[tuple[float, bytes]] = []  # what the stack sent, when
        self.stack.start(self.now)
        self.peer.start(self.now)
        for _ in range(3):
            self.step()
        if v6:  # duplicate address detection done on both sides (about a second each)
            for _ in range(4):
                self.step(1.0)

    @staticmethod
    def _out(host: Host) -> list[bytes]:
        out: list[bytes] = []
        for frame in host.tx:
            mark = softoffload.gso_mark(frame)
            joined = b"".join(bytes(piece) for piece in frame if piece is not mark)
            out += [joined] if mark is None else softoffload.gso_cut(joined, mark)
        host.tx.clear()
        return out

    def _lossy(self, frames: list[bytes]) -> list[bytes]:
        if not self.loss:
            return frames
        return [f for f in frames if self.rng.random() >= self.loss]

    def step(self, dt: float = 0.0005) -> None:
        self.now += dt
        now = self.now
        for host in (self.stack, self.peer):
            deadline = host.next_deadline()
            if deadline is not None and deadline <= now:
                host.poll(now)
        to_peer = self._out(self.stack)
        self.wire += [(now, f) for f in to_peer]
        to_stack = self._lossy(self._out(self.peer))
        if to_stack:
            self.stack.receive_batch([memoryview(f) for f in to_stack], now)
        to_peer = self._lossy(to_peer)
        if to_peer:
            self.peer.receive_batch([memoryview(f) for f in to_peer], now)

    def run(self, seconds: float, dt: float = 0.0005) -> None:
        end = self.now + seconds
        while self.now < end:
            self.step(dt)

    def frag_needed(self, mtu: int) -> None:
        """The peer reports that the stack's last TCP segment did not fit `mtu` (as a router
        on the path would, RFC 1191)."""
        for _, frame in reversed(self.wire):
            if frame[12:14] == b"\x08\x00" and frame[23] == wipv4.PROTO_TCP:
                quoted = frame[weth.HEADER_LEN : weth.HEADER_LEN + 28]
                break
        else:
            return
        icmp = wicmp.build(wicmp.TYPE_DEST_UNREACHABLE, wicmp.CODE_FRAG_NEEDED, mtu, quoted)
        header = wipv4.build(PEER_IP, STACK_IP, wipv4.PROTO_ICMP, len(icmp) + len(quoted))
        eth = weth.build(STACK_MAC, PEER_MAC, weth.ETHERTYPE_IPV4)
        self.stack.receive_batch([memoryview(eth + header + icmp + quoted)], self.now)


# One scripted exchange: (operation, argument). Writes go from the peer's client to the stack's
# echo / discard service; "chargen" opens a connection that the stack's chargen fills.
Op = tuple[str, float]


def play(
    script: list[Op], seed: int, tso: bool, timestamps: bool, lean: bool, monkeypatch, v6=False
):
    monkeypatch.setattr(tcpengine, "LEAN", lean)
    monkeypatch.setattr(tcpconn, "LEAN_TX", lean)
    calls = [0, 0]
    real, real6, real_plain = Ipv4Engine.send_tcp, Ipv6Engine.send_tcp, Recovery.sent_plain

    def counted(self, *args) -> bool:
        sent = real(self, *args)
        calls[0] += sent
        return sent

    def counted6(self, *args) -> bool:
        sent = real6(self, *args)
        calls[0] += sent
        return sent

    def counted_plain(self, *args) -> None:
        calls[1] += 1
        real_plain(self, *args)

    monkeypatch.setattr(Ipv4Engine, "send_tcp", counted)
    monkeypatch.setattr(Ipv6Engine, "send_tcp", counted6)
    monkeypatch.setattr(Recovery, "sent_plain", counted_plain)
    w = World(seed, tso, timestamps, v6)
    server = STACK_IP6 if v6 else "192.0.2.2"
    echo = connect(w.peer.tcp, (server, 7), Sink)
    discard = connect(w.peer.tcp, (server, 9), Sink)
    w.run(0.01)
    chargen = None
    for op, arg in script:
        if op == "echo":
            echo.write(bytes(range(256)) * (int(arg) // 256) + b"e" * (int(arg) % 256))
            w.run(0.02)
        elif op == "discard":
            discard.write(b"d" * int(arg))
            w.run(0.02)
        elif op == "chargen" and chargen is None:
            chargen = connect(w.peer.tcp, (server, 19), Sink)
            w.run(arg)
            chargen.close()
        elif op == "loss":
            w.loss = arg
        elif op == "idle":  # long enough and the stack's ARP entry for the peer goes STALE
            w.run(arg, dt=0.5)
        elif v6:  # the rest are IPv4's (ICMP, set_address)
            continue
        elif op == "frag_needed":
            w.frag_needed(int(arg))
            w.run(0.02)
        elif op == "mtu":  # set_address: same address, a gateway, a lower link MTU
            w.stack.set_address(STACK_IP, 24, GATEWAY, mtu=int(arg))
            w.run(0.02)
        elif op == "off_link":  # a /32: the peer now lies behind a gateway nobody answers for
            w.stack.set_address(STACK_IP, 32, GATEWAY)
            w.run(arg)
    w.loss = 0.0
    echo.close()
    discard.close()
    w.run(2.0, dt=0.01)
    w.run(10.0, dt=0.5)
    monkeypatch.undo()
    return w.wire, counters_of(w.stack.counters), calls


def assert_same(
    script: list[Op], seed: int, tso: bool, timestamps: bool, monkeypatch, v6: bool = False
) -> list[int]:
    args = (script, seed, tso, timestamps)
    lean_wire, lean_counters, lean_calls = play(*args, True, monkeypatch, v6)
    gen_wire, gen_counters, gen_calls = play(*args, False, monkeypatch, v6)
    assert gen_calls == [0, 0]
    assert len(lean_wire) == len(gen_wire)
    for i, (a, b) in enumerate(zip(lean_wire, gen_wire, strict=True)):
        assert a == b, f"frame {i} differs"
    assert lean_counters == gen_counters
    return lean_calls


SCRIPT: list[Op] = [
    ("echo", 64),
    ("echo", 3000),
    ("discard", 100_000),
    ("chargen", 0.05),
    ("idle", 45.0),  # ARP STALE: the next segment goes the general way (DELAY, then probe)
    ("echo", 64),
    ("echo", 64),
    ("loss", 0.1),
    ("echo", 20_000),
    ("discard", 50_000),
    ("loss", 0.0),
    ("frag_needed", 1000),
    ("echo", 5000),
    ("mtu", 1200),
    ("echo", 5000),
    ("off_link", 0.5),
    ("echo", 64),
    ("mtu", 1500),
    ("echo", 5000),
    ("discard", 30_000),
]


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("tso", [False, True])
@pytest.mark.parametrize("timestamps", [True, False])
def test_scripted_exchange_is_byte_identical(tso, timestamps, v6, monkeypatch) -> None:
    sends, segments = assert_same(SCRIPT, 3, tso, timestamps, monkeypatch, v6)
    # The lean ways were taken, not only the general ones (with TSO most data goes in
    # super-segments, which the lean data segment leaves to the general way).
    assert sends > 50 and segments > (0 if tso else 50)


def test_lean_send_falls_back_where_it_must(monkeypatch) -> None:
    """No neighbour entry, an over-MTU datagram, no route: send_tcp declines and changes
    nothing (the IPv4 ID sequence, the counters, the queue)."""
    w = World(1, False, True)
    connect(w.peer.tcp, ("192.0.2.2", 7), Sink)
    w.run(0.01)  # the handshake: the stack's entry for the peer is REACHABLE
    ipv4 = w.stack.ipv4
    before = (ipv4._ident, counters_of(w.stack.counters), len(w.stack.tx))
    args = (0, 1, 2, 3, 4, 0x10, 100, None, b"x")
    unknown = wipv4.ip_from_str("192.0.2.77")  # on-link, never ARPed
    assert not ipv4.send_tcp(unknown, True, *args)
    assert not ipv4.send_tcp(PEER_IP, True, *args[:-1], b"x" * 1461)  # 20 + 20 + 1461 > 1500
    assert not ipv4.send_tcp(wipv4.ip_from_str("198.51.100.1"), True, *args)  # no gateway
    assert not ipv4.send_tcp(wipv4.ip_from_str("192.0.2.255"), True, *args)  # broadcast
    assert (ipv4._ident, counters_of(w.stack.counters), len(w.stack.tx)) == before
    assert ipv4.send_tcp(PEER_IP, True, *args[:-1], b"x" * 1460)


ops = st.one_of(
    st.tuples(st.just("echo"), st.integers(1, 30_000).map(float)),
    st.tuples(st.just("discard"), st.integers(1, 60_000).map(float)),
    st.tuples(st.just("chargen"), st.sampled_from([0.01, 0.03])),
    st.tuples(st.just("loss"), st.sampled_from([0.0, 0.05, 0.2])),
    st.tuples(st.just("idle"), st.sampled_from([1.0, 40.0, 70.0])),
    st.tuples(st.just("frag_needed"), st.sampled_from([576.0, 1000.0, 1400.0])),
    st.tuples(st.just("mtu"), st.sampled_from([600.0, 1280.0, 1500.0])),
    st.tuples(st.just("off_link"), st.sampled_from([0.1, 2.0])),
)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    script=st.lists(ops, min_size=1, max_size=8),
    seed=st.integers(0, 1000),
    tso=st.booleans(),
    timestamps=st.booleans(),
    v6=st.booleans(),
)
def test_generated_exchanges_are_byte_identical(script, seed, tso, timestamps, v6, monkeypatch):
    assert_same(script, seed, tso, timestamps, monkeypatch, v6)


def test_lean_send6_falls_back_where_it_must() -> None:
    """IPv6: no route, a datagram over the path MTU (a Packet Too Big lowered it): send_tcp
    declines and changes nothing; within the minimum MTU it needs no path MTU lookup."""
    w = World(1, False, True, v6=True)
    connect(w.peer.tcp, (STACK_IP6, 7), Sink)
    w.run(0.01)
    ipv6 = w.stack.v6.ipv6
    peer, ours = wipv6.from_str(PEER_IP6), wipv6.from_str(STACK_IP6)
    ipv6.pmtu.report(peer, 1300, ipv6.config.mtu, w.now)
    before = (counters_of(w.stack.counters), len(w.stack.tx))
    args = (0, 1, 2, 3, 4, 0x10, 100, None)
    nowhere = wipv6.from_str("2001:db9::1")  # off-link, and no router
    assert not ipv6.send_tcp(nowhere, ours, *args, b"x", w.now)
    assert not ipv6.send_tcp(peer, ours, *args, b"x" * 1241, w.now)  # 40 + 20 + 1241 > 1300
    assert (counters_of(w.stack.counters), len(w.stack.tx)) == before
    assert ipv6.send_tcp(peer, ours, *args, b"x" * 1240, w.now)
    assert w.stack.counters.ipv6_tx == before[0]["ipv6_tx"] + 1
