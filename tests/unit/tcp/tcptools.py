"""smoltcp-style helpers: feed one segment at a time, assert the exact segments that come out.

Segments are written as changes to templates (`SEND`, `RECV`, via dataclasses.replace or the
`seg(...)` shorthand) and compared field by field. The engine under test runs on a fake IPv4
layer that captures what it sends, and a fake clock the test moves by hand.
"""

from __future__ import annotations

import dataclasses
import random

from netstack.counters import Counters
from netstack.proto.ipv4 import Ipv4Config
from netstack.proto.pmtu import PmtuCache
from netstack.proto.tcp.config import TcpConfig
from netstack.proto.tcp.connection import Connection
from netstack.proto.tcp.engine import Listener, TcpEngine
from netstack.wire import ipv4 as wipv4
from netstack.wire import tcp as wtcp
from netstack.wire import vnet as wvnet
from netstack.wire.tcp import ACK, FIN, PSH, RST, SYN, TcpOptions

LOCAL_IP = wipv4.ip_from_str("192.0.2.2")
REMOTE_IP = wipv4.ip_from_str("192.0.2.1")
LOCAL_PORT = 80
REMOTE_PORT = 49500
LOCAL_ISN = 10_000
REMOTE_ISN = 50_000
MSS = 1460  # MTU 1500


class FakeIpv4:
    """What TcpEngine uses of Ipv4Engine: config, register, route, send (captured)."""

    def __init__(self, address: int = LOCAL_IP, mtu: int = 1500) -> None:
        self.config = Ipv4Config(address=address, prefix_len=24, mtu=mtu)
        self.handlers: dict = {}
        self.pmtu = PmtuCache()
        self.sent: list[tuple[int, bytes, float]] = []  # (destination, segment, when)
        self.df: list[bool] = []  # dont_fragment of each send

    def register(self, protocol: int, handler) -> None:
        self.handlers[protocol] = handler

    def route(self, dst: int) -> int | None:
        return dst

    def send(self, dst: int, protocol: int, pieces, now: float, **kw) -> bool:
        assert protocol == wipv4.PROTO_TCP
        self.df.append(bool(kw.get("dont_fragment") or kw.get("gso_size")))
        data = b"".join(bytes(p) for p in pieces)
        if kw.get("gso_size"):  # a TSO super-segment, seen whole as by a receiver with GRO:
            whole = bytearray(data)  # its partial checksum completed, as the kernel would
            wvnet.fill_checksum(whole, wvnet.VnetHeader(wvnet.F_NEEDS_CSUM, csum_offset=16))
            data = bytes(whole)
        self.sent.append((dst, data, now))
        return True


@dataclasses.dataclass(frozen=True)
class Seg:
    """A segment as the tests see it: every field compared, options included."""

    flags: int = ACK
    seq: int = 0
    ack: int = 0
    window: int = 65535
    payload: bytes = b""
    mss: int | None = None
    wscale: int | None = None
    sack_perm: bool = False
    sack: tuple[tuple[int, int], ...] = ()
    ts: tuple[int, int] | None = None
    sport: int = REMOTE_PORT
    dport: int = LOCAL_PORT
    urgent: int = 0  # the urgent pointer (meaningful with URG)

    def options(self) -> TcpOptions | None:
        if (self.mss, self.wscale, self.sack_perm, self.sack, self.ts) == (
            None,
            None,
            False,
            (),
            None,
        ):
            return None
        return TcpOptions(self.mss, self.wscale, self.sack_perm, self.sack, self.ts)

    def __repr__(self) -> str:
        names = [n for bit, n in ((SYN, "S"), (FIN, "F"), (RST, "R"), (PSH, "P"), (0x20, "U"),
                                  (ACK, "."))
                 if self.flags & bit]  # fmt: skip
        extra = [
            f"{k}={getattr(self, k)!r}"
            for k in ("mss", "wscale", "sack_perm", "sack", "ts", "urgent")
            if getattr(self, k) not in (None, False, (), 0)
        ]
        data = f" data={len(self.payload)}" if self.payload else ""
        return (
            f"Seg({''.join(names)} {self.sport}>{self.dport} seq={self.seq} ack={self.ack} "
            f"win={self.window}{data}{' ' + ' '.join(extra) if extra else ''})"
        )


def seg(**changes) -> Seg:
    return Seg(**changes)


def to_us(s: Seg, **changes) -> Seg:
    """A template for what we expect the engine to send (ports swapped)."""
    return dataclasses.replace(s, **{"sport": LOCAL_PORT, "dport": REMOTE_PORT, **changes})


def parse(data: bytes, src: int = LOCAL_IP, dst: int = REMOTE_IP) -> Seg:
    h, payload = wtcp.parse(memoryview(data), src, dst)
    o = h.options
    return Seg(
        flags=h.flags, seq=h.seq, ack=h.ack, window=h.window, payload=bytes(payload),
        mss=o.mss, wscale=o.window_scale, sack_perm=o.sack_permitted, sack=o.sack_blocks,
        ts=o.timestamp, sport=h.src_port, dport=h.dst_port, urgent=h.urgent,
    )  # fmt: skip


def ip_header(src: int, dst: int, length: int) -> wipv4.Ipv4Header:
    return wipv4.Ipv4Header(20, 0, 20 + length, 0, True, False, 0, 64, 6, 0, src, dst)


class Harness:
    """One engine on a fake IP layer with a fake clock."""

    def __init__(self, engine: TcpEngine, ipv4: FakeIpv4, now: float = 100.0) -> None:
        self.engine = engine
        self.ipv4 = ipv4
        self.now = now
        self.events: list = []  # (connection, event...) from RecordingHandler

    @property
    def counters(self) -> Counters:
        return self.engine.counters

    def send(self, s: Seg, src: int = REMOTE_IP, dst: int = LOCAL_IP) -> None:
        """Deliver one segment to the engine, then run its flush point."""
        data = wtcp.build(
            src, dst, s.sport, s.dport, s.seq & 0xFFFFFFFF, s.ack & 0xFFFFFFFF, s.flags,
            s.window, s.payload, options=s.options(), urgent=s.urgent,
        ) + s.payload  # fmt: skip
        self.engine.receive(
            ip_header(src, dst, len(data)), memoryview(data), memoryview(data), self.now
        )
        self.engine.flush(self.now)

    def send_batch(self, *segs: Seg, src: int = REMOTE_IP, dst: int = LOCAL_IP) -> None:
        """Deliver several segments as one receive batch (as the host's read loop hands
        them over), then run the flush point once: what a segment left pending for the
        flush meets the state the later ones made."""
        for s in segs:
            data = wtcp.build(
                src, dst, s.sport, s.dport, s.seq & 0xFFFFFFFF, s.ack & 0xFFFFFFFF, s.flags,
                s.window, s.payload, options=s.options(), urgent=s.urgent,
            ) + s.payload  # fmt: skip
            view = memoryview(data)
            self.engine.receive(ip_header(src, dst, len(data)), view, view, self.now)
        self.engine.flush(self.now)

    def recv(self) -> list[Seg]:
        """Everything the engine sent since the last call."""
        return [s for _, s in self.recv_timed()]

    def recv_timed(self) -> list[tuple[float, Seg]]:
        """Everything sent since the last call, with the time it was sent."""
        out = [(now, parse(data, LOCAL_IP, dst)) for dst, data, now in self.ipv4.sent]
        self.ipv4.sent.clear()
        return out

    def expect(self, *segs: Seg) -> None:
        got = self.recv()
        assert got == list(segs), f"\n got: {got}\nwant: {list(segs)}"

    def expect_nothing(self) -> None:
        self.expect()

    def advance(self, seconds: float) -> None:
        """Move the clock and run the timers that came due."""
        self.now += seconds
        self.engine.poll(self.now)

    def run_until(self, when: float) -> None:
        """Step through every deadline up to `when` (each timer fires at its own time)."""
        for _ in range(10_000):
            d = self.engine.next_deadline()
            if d is None or d > when:
                break
            self.now = max(self.now, d)
            self.engine.poll(self.now)
        self.now = max(self.now, when)
        self.engine.poll(self.now)


class RecordingHandler:
    """A Connection handler that writes down every event."""

    def __init__(self, conn: Connection, log: list) -> None:
        self.conn = conn
        self.log = log
        self.data = bytearray()
        self.eof = False
        self.closed: list = []

    def on_established(self) -> None:
        self.log.append(("established",))

    def on_data(self, data: bytes) -> None:
        assert type(data) is bytes
        self.data += data
        self.log.append(("data", bytes(data)))

    def on_eof(self) -> None:
        self.eof = True
        self.log.append(("eof",))

    def on_closed(self, exc) -> None:
        self.closed.append(exc)
        self.log.append(("closed", exc))

    def on_pause_writing(self) -> None:
        self.log.append(("pause_writing",))

    def on_resume_writing(self) -> None:
        self.log.append(("resume_writing",))

    def on_urgent(self, mark: int) -> None:
        self.log.append(("urgent", mark))


def quiet_config(**overrides) -> TcpConfig:
    """No options by default, so segments read plainly; tests turn on what they test. Quick-ACK
    mode is off too (the ACK rules alone: delayed ACK, every second full segment), as the
    receive tests were written; tests of Linux's quick ACKs pass quick_acks=16."""
    base = dict(
        timestamps=False, sack=False, window_scaling=False, receive_buffer=65535,
        send_buffer=65536, congestion_control="reno", quick_acks=0,
    )  # fmt: skip
    base.update(overrides)
    return TcpConfig(**base)


def make_harness(config: TcpConfig | None = None, mtu: int = 1500, **overrides) -> Harness:
    ipv4 = FakeIpv4(mtu=mtu)
    config = config if config is not None else quiet_config(**overrides)
    engine = TcpEngine(ipv4, Counters(), random.Random(1), config, secret=b"test-secret")  # type: ignore[arg-type]
    engine.choose_isn = lambda conn, now: LOCAL_ISN
    return Harness(engine, ipv4)


def listen(t: Harness, port: int = LOCAL_PORT, backlog: int | None = None) -> Listener:
    """A listener whose connections are accepted at once with a RecordingHandler."""
    handlers: list[RecordingHandler] = []

    def on_ready(listener: Listener) -> None:
        while (conn := listener.accept()) is not None:
            conn.handler = RecordingHandler(conn, t.events)
            handlers.append(conn.handler)

    listener = t.engine.listen(port, backlog, on_ready)
    listener.handlers = handlers  # type: ignore[attr-defined]
    return listener


# Templates: the peer's SYN and the engine's SYN-ACK for the default harness.
SYN_SEG = Seg(flags=SYN, seq=REMOTE_ISN, ack=0, window=65535, mss=MSS)
SYNACK_SEG = to_us(Seg(flags=SYN | ACK, seq=LOCAL_ISN, ack=REMOTE_ISN + 1, window=65535, mss=MSS))


def established_passive(t: Harness | None = None, **overrides) -> tuple[Harness, Connection]:
    """A server-side connection in ESTABLISHED (handshake done, events cleared)."""
    t = t if t is not None else make_harness(**overrides)
    listener = listen(t)
    t.send(SYN_SEG)
    t.expect(dataclasses.replace(SYNACK_SEG, window=min(t.engine.config.receive_buffer, 65535)))
    t.send(seg(seq=REMOTE_ISN + 1, ack=LOCAL_ISN + 1))
    t.expect_nothing()
    conn = listener.handlers[0].conn  # type: ignore[attr-defined]
    assert conn.state.value == "established"
    t.events.clear()
    return t, conn


def established_active(t: Harness | None = None, **overrides) -> tuple[Harness, Connection]:
    """A client-side connection (local port LOCAL_PORT) in ESTABLISHED."""
    t = t if t is not None else make_harness(**overrides)
    conn = t.engine.connect((REMOTE_IP, REMOTE_PORT), local_port=LOCAL_PORT)
    conn.handler = RecordingHandler(conn, t.events)
    t.engine.flush(t.now)
    t.expect(to_us(Seg(flags=SYN, seq=LOCAL_ISN, ack=0, mss=MSS)))
    t.send(seg(flags=SYN | ACK, seq=REMOTE_ISN, ack=LOCAL_ISN + 1, mss=MSS))
    t.expect(to_us(seg(seq=LOCAL_ISN + 1, ack=REMOTE_ISN + 1)))
    assert conn.state.value == "established"
    t.events.clear()
    return t, conn
