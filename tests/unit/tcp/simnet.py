"""Two TCP engines on an impaired in-memory link, on a virtual clock (h11/aioquic style).

The link delays every segment by `delay` plus random jitter (so segments reorder), and loses
or duplicates them with the given probabilities. `run()` advances the clock from event to
event — the next arrival or either engine's next deadline — so minutes of virtual time take
milliseconds.

Both engines run in checked mode (netstack/proto/tcp/invariants.py): every segment and every
flush is checked against the TCP invariants, and `run()` fails on any violation.
"""

from __future__ import annotations

import heapq
import itertools
import random

from netstack.counters import Counters
from netstack.proto.tcp import invariants
from netstack.proto.tcp.config import TcpConfig
from netstack.proto.tcp.engine import TcpEngine
from netstack.proto.tcp.isn import Secrets
from netstack.wire import ipv4 as wipv4
from netstack.wire import vnet as wvnet
from tests.unit.tcp.tcptools import LOCAL_IP, REMOTE_IP, FakeIpv4, ip_header


class LinkIpv4(FakeIpv4):
    def __init__(self, net: SimNet, address: int, mtu: int) -> None:
        super().__init__(address, mtu)
        self.net = net

    def send(self, dst: int, protocol: int, pieces, now: float, **kw) -> bool:
        data = b"".join(bytes(p) for p in pieces)
        gso = kw.get("gso_size", 0)
        if gso:  # a TSO super-segment (wire/vnet.py): as the link's kernel would treat it
            self.net.super_segments += 1
            if self.net.offload == "gro":  # handed to the peer whole, checksum vouched for
                self.net.transmit(self.config.address, dst, data, trusted=True)
                return True
            assert self.net.offload == "wire", "a super-segment without offloads"
            for segment in _cut(self.config.address, dst, data, gso):
                self.net.transmit(self.config.address, dst, segment)
            return True
        self.net.transmit(self.config.address, dst, data)
        return True


def _cut(src: int, dst: int, tcp: bytes, gso_size: int) -> list[bytes]:
    """Software GSO of a TCP super-segment (Ethernet and IPv4 put around, then off)."""
    frame = bytes(14) + wipv4.build(src, dst, wipv4.PROTO_TCP, len(tcp), dont_fragment=True) + tcp
    l4 = 14 + 20
    header = wvnet.VnetHeader(
        wvnet.F_NEEDS_CSUM, wvnet.GSO_TCPV4, l4 + (tcp[12] >> 4) * 4, gso_size, l4, 16
    )
    return [segment[l4:] for segment in wvnet.software_segments(frame, header)]


class SimNet:
    def __init__(
        self,
        seed: int,
        *,
        loss: float = 0.0,
        duplicate: float = 0.0,
        delay: float = 0.005,
        jitter: float = 0.0,
        config_a: TcpConfig | None = None,
        config_b: TcpConfig | None = None,
        mtu: int = 1500,
        offload: str = "off",
    ) -> None:
        """offload: what happens to TSO super-segments (engines with tso_max): "wire" cuts
        them into segments (lost one by one), "gro" delivers them whole with their checksum
        trusted (as a receiver with GRO and offloads); "off": none may be sent."""
        self.rng = random.Random(seed)
        self.offload = offload
        self.super_segments = 0
        self.loss = loss
        self.duplicate = duplicate
        self.delay = delay
        self.jitter = jitter
        self.now = 1000.0
        self._queue: list[tuple[float, int, int, int, bytes, bool]] = []
        self._seq = itertools.count()
        self.delivered = 0
        self.lost = 0
        self.ip_a = LinkIpv4(self, REMOTE_IP, mtu)  # the client side
        self.ip_b = LinkIpv4(self, LOCAL_IP, mtu)  # the server side
        self.a = TcpEngine(self.ip_a, Counters(), random.Random(seed + 1), config_a)  # type: ignore[arg-type]
        self.b = TcpEngine(self.ip_b, Counters(), random.Random(seed + 2), config_b)  # type: ignore[arg-type]
        self.a.now = self.b.now = self.now
        self.checkers = [
            getattr(e, "invariants", None) or invariants.attach(e) for e in (self.a, self.b)
        ]
        self.engines = {REMOTE_IP: self.a, LOCAL_IP: self.b}
        self.drop_filter = None  # optional callable(src, dst, data) -> bool: drop it

    # Hand each arrival batch over as Host.receive_batch does: `flush_follows` set while its
    # segments go in, then the flush (ACK filtering, connection.ACK_HOLD, needs it).
    as_host = False

    def flushed(self, engine) -> None:
        """Called after each arrival batch's flush (a subclass checks what must hold then)."""

    def same_isns(self) -> None:
        """Fixed ISN secrets, so two runs of one seed put the same bytes on the link."""
        for engine, key in ((self.a, b"a"), (self.b, b"b")):
            engine.secrets = Secrets(key * 32)

    def trace(self) -> list[tuple]:
        """Record every transmission from now on: (virtual time, src, dst, bytes)."""
        trace: list[tuple] = []
        transmit = self.transmit

        def traced(src, dst, data, trusted=False):
            trace.append((round(self.now, 9), src, dst, bytes(data)))
            transmit(src, dst, data, trusted)

        self.transmit = traced  # type: ignore[method-assign]
        return trace

    def transmit(self, src: int, dst: int, data: bytes, trusted: bool = False) -> None:
        if self.drop_filter is not None and self.drop_filter(src, dst, data):
            self.lost += 1
            return
        copies = 1
        if self.rng.random() < self.loss:
            self.lost += 1
            return
        if self.rng.random() < self.duplicate:
            copies = 2
        for _ in range(copies):
            when = self.now + self.delay + self.rng.random() * self.jitter
            heapq.heappush(self._queue, (when, next(self._seq), src, dst, data, trusted))

    def step(self) -> bool:
        """Advance to the next event and handle it; False when nothing is left to happen."""
        candidates = [d for e in (self.a, self.b) if (d := e.next_deadline()) is not None]
        if self._queue:
            candidates.append(self._queue[0][0])
        if not candidates:
            return False
        self.now = max(self.now, min(candidates))
        batch: dict[int, list[tuple[int, bytes]]] = {}
        while self._queue and self._queue[0][0] <= self.now:
            _, _, src, dst, data, trusted = heapq.heappop(self._queue)
            batch.setdefault(dst, []).append((src, data, trusted))
        for dst, frames in batch.items():
            engine = self.engines[dst]
            engine.flush_follows = self.as_host
            try:
                for src, data, trusted in frames:
                    view = memoryview(data)
                    engine.csum_trusted = trusted
                    engine.receive(ip_header(src, dst, len(data)), view, view, self.now)
                    engine.csum_trusted = False
                    self.delivered += 1
            finally:
                engine.flush_follows = False
            engine.flush(self.now)
            self.flushed(engine)
        for engine in (self.a, self.b):
            d = engine.next_deadline()
            if d is not None and d <= self.now:
                engine.poll(self.now)
        return True

    def run(self, until: float, stop=None, max_steps: int = 2_000_000) -> None:
        """Step until `until` (virtual seconds from now), `stop()` is true, or quiet."""
        end = self.now + until
        try:
            for _ in range(max_steps):
                if stop is not None and stop():
                    return
                if self.now > end or not self.step():
                    return
            raise AssertionError("simulation did not settle within max_steps")
        finally:
            self.assert_checked()

    def assert_checked(self) -> None:
        """No TCP invariant was violated (a violation inside an engine's output resets the
        connection there; this makes sure it is reported as what it was)."""
        found = [v for c in self.checkers for v in c.violations]
        assert not found, found
