"""Stateful test: one engine facing a scripted, sometimes hostile peer, invariants checked.

The peer is a small model in this file: it keeps its own send sequence and what it received
in order, and Hypothesis makes it send data (in order, ahead of a hole, old, beyond the
window), ACK with any window (zero included), ACK data never sent, send RSTs (exact, in the
window, outside it) and SYNs, and FIN; the engine's application writes, pauses and resumes
reading, shuts down, closes and aborts; the clock advances. After every step the invariant
checker must be silent, and the application must have received an exact prefix of the peer's
in-order stream: old and out-of-window segments carry junk, so taking one shows.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from netstack.proto.tcp.config import TcpConfig
from netstack.proto.tcp.seq import MASK
from netstack.proto.tcp.state import State
from netstack.wire import tcp as wtcp
from netstack.wire.tcp import ACK, FIN, RST, SYN, TcpOptions
from tests.unit.tcp.stateful_kit import App, LinkIpv4, deliver, make_engine, run_timers, violations
from tests.unit.tcp.tcptools import LOCAL_IP, LOCAL_PORT, REMOTE_IP, REMOTE_PORT

PEER_ISN = 0xFFFFF000  # the peer's sequence numbers wrap early in every run
JUNK = 0xEE


def peer_stream(offset: int, n: int) -> bytes:
    return bytes(((offset + i) * 13 + 5) & 0xFF for i in range(n))


class PeerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.inflight: list[tuple[int, int, bytes]] = []
        self.now = 1000.0
        self.peer_sent = 0  # stream bytes the peer sent in order (offset of its SND.NXT)
        self.peer_fin = False
        self.peer_max = 0  # the end of the stream bytes sent at all (ahead of holes too)
        self.acked = 0  # the peer's stream offset the engine has acknowledged
        self.got = bytearray()  # the engine's stream as the peer received it, in order
        self.written = 0
        self.reset = False
        self.our_isn: int | None = None

    @initialize(
        sack=st.booleans(),
        wscale=st.sampled_from([None, 0, 7, 14]),
        ts=st.booleans(),
        buffer=st.sampled_from([2000, 65535, 300_000]),
        active=st.booleans(),
    )
    def open(self, sack: bool, wscale: int | None, ts: bool, buffer: int, active: bool) -> None:
        config = TcpConfig(receive_buffer=buffer, send_buffer=30_000, rto_max=20.0)
        self.ip = LinkIpv4(LOCAL_IP, self.inflight)
        self.engine = make_engine(self.ip, config, 1)
        self.engine.now = self.now
        self.ts = ts
        self.sack = sack
        self.wscale = wscale if wscale is not None else 0
        self.ts_echo = 0
        self.app: App | None = None
        syn_opts = TcpOptions(1460, wscale, sack, (), (self.tsval(), 0) if ts else None)
        if active:
            conn = self.engine.connect((REMOTE_IP, REMOTE_PORT), LOCAL_PORT)
            conn.handler = self.app = App(conn)
            self.engine.flush(self.now)
            (syn,) = self.take()
            assert syn[0].flags == SYN
            self.our_isn = syn[0].seq
            self.send(SYN | ACK, PEER_ISN, self.our_isn + 1, options=syn_opts)
        else:

            def on_ready(listener) -> None:
                while (conn := listener.accept()) is not None:
                    conn.handler = self.app = App(conn)

            self.engine.listen(LOCAL_PORT, None, on_ready)
            self.send(SYN, PEER_ISN, 0, options=syn_opts)
            (synack,) = self.take()
            assert synack[0].flags == SYN | ACK
            self.our_isn = synack[0].seq
            self.send(ACK, PEER_ISN + 1, self.our_isn + 1)
        self.take()
        assert self.app is not None and self.app.established

    # -- the peer's side of the wire ---------------------------------------------------------
    def tsval(self) -> int:
        return int(self.now * 1000) & MASK

    def send(self, flags: int, seq: int, ack: int, payload: bytes = b"", window: int = 65535,
             options: TcpOptions | None = None) -> None:  # fmt: skip
        if options is None and self.ts:
            options = TcpOptions(timestamp=(self.tsval(), self.ts_echo))
        data = wtcp.build(REMOTE_IP, LOCAL_IP, REMOTE_PORT, LOCAL_PORT, seq & MASK, ack & MASK,
                          flags, window, payload, options=options) + payload  # fmt: skip
        deliver(self.engine, REMOTE_IP, LOCAL_IP, data, self.now)

    def take(self) -> list:
        """Parse what the engine sent; the peer takes in-order data into `got`."""
        out = []
        for _, _, data in self.inflight:
            h, payload = wtcp.parse(memoryview(data), LOCAL_IP, REMOTE_IP)
            out.append((h, bytes(payload)))
            if h.options.timestamp is not None:
                self.ts_echo = h.options.timestamp[0]
            if h.flags & ACK and not h.flags & SYN:
                offset = (h.ack - PEER_ISN - 1) & MASK
                if offset <= self.peer_max:
                    self.acked = max(self.acked, offset)
            if h.flags & RST:
                self.reset = True
            elif self.our_isn is not None:
                offset = (h.seq - self.our_isn - 1) & MASK
                if offset <= len(self.got) < offset + len(payload):
                    self.got += payload[len(self.got) - offset :]
        self.inflight.clear()
        return out

    @property
    def seq(self) -> int:
        return PEER_ISN + 1 + self.peer_sent

    @property
    def ack(self) -> int:
        return self.our_isn + 1 + len(self.got)

    def conn(self):
        assert self.app is not None
        return self.app.conn

    def live(self) -> bool:
        return self.app is not None and self.conn().state is not State.CLOSED

    # -- peer rules ---------------------------------------------------------------------------
    @precondition(lambda self: self.live() and not self.peer_fin)
    @rule(size=st.sampled_from([1, 500, 1460]), window=st.sampled_from([0, 100, 65535]))
    def peer_data(self, size: int, window: int) -> None:
        self.send(ACK, self.seq, self.ack, peer_stream(self.peer_sent, size), window)
        self.peer_sent += size
        self.peer_max = max(self.peer_max, self.peer_sent)
        self.take()

    @precondition(lambda self: self.live() and not self.peer_fin)
    @rule(gap=st.sampled_from([1, 1460, 3000]), size=st.sampled_from([1, 1000]))
    def peer_data_ahead(self, gap: int, size: int) -> None:
        """In the window but beyond a hole: held out of order; the peer's later in-order
        sends fill the hole with the same bytes."""
        self.send(ACK, self.seq + gap, self.ack, peer_stream(self.peer_sent + gap, size))
        self.peer_max = max(self.peer_max, self.peer_sent + gap + size)
        self.take()

    @precondition(lambda self: self.live() and self.acked > 0)
    @rule(back=st.sampled_from([0, 1, 100, 70_000]), size=st.sampled_from([1, 200]))
    def peer_old_data(self, back: int, size: int) -> None:
        """Data the engine has acknowledged already, sent again (a needless retransmission
        or an old duplicate: only the front counts, the segment may reach past the ACK):
        what lies below the ACK is junk that must never reach the application."""
        start = max(self.acked - back - size, self.acked - (1 << 30))
        end = start + size
        junk = bytes([JUNK]) * (min(end, self.acked) - start)
        payload = junk + peer_stream(self.acked, end - self.acked) if end > self.acked else junk
        self.send(ACK, PEER_ISN + 1 + start, self.ack, payload)
        self.peer_max = max(self.peer_max, end)
        self.take()

    @precondition(lambda self: self.live())
    @rule(beyond=st.sampled_from([1 << 20, 1 << 30, (1 << 31) + 5]))
    def peer_out_of_window(self, beyond: int) -> None:
        self.send(ACK, self.seq + beyond, self.ack, bytes([JUNK]) * 100)
        self.take()

    @precondition(lambda self: self.live())
    @rule(window=st.sampled_from([0, 1, 500, 65535]), partial=st.booleans())
    def peer_ack(self, window: int, partial: bool) -> None:
        ack = self.ack - (min(len(self.got), 100) if partial else 0)
        self.send(ACK, self.seq, ack, window=window)
        self.take()

    @precondition(lambda self: self.live())
    @rule(ahead=st.sampled_from([1, 100_000, 1 << 31]))
    def peer_ack_unsent(self, ahead: int) -> None:
        """An ACK for data never sent (RFC 5961 5.2: challenge ACK, drop)."""
        self.send(ACK, self.seq, self.conn().snd_nxt + ahead)
        self.take()

    @precondition(lambda self: self.live())
    @rule(where=st.sampled_from(["exact", "in_window", "outside"]))
    def peer_rst(self, where: str) -> None:
        seq = {"exact": self.seq, "in_window": self.seq + 10, "outside": self.seq + (1 << 30)}
        self.send(RST, seq[where], 0, options=TcpOptions())
        self.take()

    @precondition(lambda self: self.live())
    @rule(offset=st.sampled_from([0, 5, -5]))
    def peer_syn(self, offset: int) -> None:
        self.send(SYN, self.seq + offset, 0, options=TcpOptions(1460))
        self.take()

    @precondition(lambda self: self.live() and not self.peer_fin)
    @rule()
    def peer_close(self) -> None:
        self.send(FIN | ACK, self.seq, self.ack)
        self.peer_fin = True
        self.take()

    # -- the engine's application and the clock ----------------------------------------------
    @precondition(lambda self: self.live())
    @rule(size=st.sampled_from([1, 1000, 5000, 40_000]))
    def write(self, size: int) -> None:
        try:
            self.written += self.conn().send(bytes(size))
        except OSError:
            return
        self.engine.flush(self.now)
        self.take()

    @precondition(lambda self: self.live())
    @rule(action=st.sampled_from(["pause", "resume", "shutdown", "close", "abort"]))
    def app_call(self, action: str) -> None:
        conn = self.conn()
        calls = {
            "pause": conn.pause_reading,
            "resume": conn.resume_reading,
            "shutdown": conn.shutdown_write,
            "close": conn.close,
            "abort": conn.abort,
        }
        calls[action]()
        self.engine.flush(self.now)
        self.take()

    @rule(dt=st.sampled_from([0.001, 0.04, 0.3, 2.0, 30.0]))
    def advance(self, dt: float) -> None:
        self.now = run_timers([self.engine], self.now, self.now + dt)
        self.take()

    # -- invariants ---------------------------------------------------------------------------
    @invariant()
    def no_violation(self) -> None:
        if hasattr(self, "engine"):
            assert violations(self.engine) == []

    @invariant()
    def application_sees_the_peer_stream(self) -> None:
        if self.app is not None:
            data = bytes(self.app.data)
            assert data == peer_stream(0, len(data)), "junk or misplaced bytes delivered"
            assert len(data) <= self.peer_max

    def teardown(self) -> None:
        if not hasattr(self, "engine"):
            return
        # However the peer behaved, the connection ends by a bounded time: ours closes, the
        # peer stops answering, the retries run out (or TIME_WAIT / FIN_WAIT_2 time out).
        if self.live():
            self.conn().close()
        self.now = run_timers([self.engine], self.now, self.now + 2000.0)
        self.take()
        assert violations(self.engine) == []
        left = [c for c in self.engine.conns.values() if c.state is not State.TIME_WAIT]
        assert not left, left


PeerMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("NETSTACK_STATEFUL_EXAMPLES", "150")),
    stateful_step_count=60,
    deadline=None,
    derandomize=os.environ.get("NETSTACK_STATEFUL_RANDOM") != "1",  # CI: fixed
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestPeer = PeerMachine.TestCase
