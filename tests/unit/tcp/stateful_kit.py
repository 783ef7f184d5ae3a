"""Pieces the stateful TCP tests share: a hand-driven link, an application that records what
it was given, and the byte streams each side writes (so delivery can be checked exactly)."""

from __future__ import annotations

import random

from netstack.counters import Counters
from netstack.proto.tcp import invariants
from netstack.proto.tcp.config import TcpConfig
from netstack.proto.tcp.connection import Connection
from netstack.proto.tcp.engine import TcpEngine
from tests.unit.tcp.tcptools import FakeIpv4, ip_header


def stream(side: str, offset: int, n: int) -> bytes:
    """Bytes offset..offset+n of the stream `side` writes: position-dependent, so a byte
    delivered twice, out of order or from the other stream shows."""
    salt = 7 if side == "a" else 131
    return bytes(((offset + i) * 31 + salt + ((offset + i) >> 8)) & 0xFF for i in range(n))


class App:
    """A Connection handler that records every event and reads at once unless paused (the
    connection itself holds data while reading is paused)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.data = bytearray()
        self.eof = False
        self.closed: list[Exception | None] = []
        self.established = False

    def on_established(self) -> None:
        self.established = True

    def on_data(self, data: bytes) -> None:
        self.data += data

    def on_eof(self) -> None:
        self.eof = True

    def on_closed(self, exc: Exception | None) -> None:
        self.closed.append(exc)

    def on_pause_writing(self) -> None:
        pass

    def on_resume_writing(self) -> None:
        pass

    @property
    def error(self) -> bool:
        return any(exc is not None for exc in self.closed)


class LinkIpv4(FakeIpv4):
    """The IPv4 layer under one engine: what it sends goes into the shared in-flight list."""

    def __init__(self, address: int, inflight: list, mtu: int = 1500) -> None:
        super().__init__(address, mtu)
        self.inflight = inflight

    def send(self, dst: int, protocol: int, pieces, now: float, **kw) -> bool:
        self.inflight.append((self.config.address, dst, b"".join(bytes(p) for p in pieces)))
        return True


def make_engine(ipv4: FakeIpv4, config: TcpConfig, seed: int) -> TcpEngine:
    engine = TcpEngine(ipv4, Counters(), random.Random(seed), config, secret=b"stateful")  # type: ignore[arg-type]
    invariants.attach(engine)
    return engine


def deliver(engine: TcpEngine, src: int, dst: int, data: bytes, now: float) -> None:
    view = memoryview(data)
    engine.receive(ip_header(src, dst, len(data)), view, view, now)
    engine.flush(now)


def run_timers(engines: list[TcpEngine], now: float, until: float) -> float:
    """Fire every timer of `engines` due up to `until`, each at its own time."""
    for _ in range(100_000):
        due = [d for e in engines if (d := e.next_deadline()) is not None and d <= until]
        if not due:
            break
        now = max(now, min(due))
        for e in engines:
            d = e.next_deadline()
            if d is not None and d <= now:
                e.poll(now)
    for e in engines:
        e.poll(max(now, until))
    return max(now, until)


def violations(engine: TcpEngine) -> list[str]:
    return engine.invariants.violations  # type: ignore[attr-defined]
