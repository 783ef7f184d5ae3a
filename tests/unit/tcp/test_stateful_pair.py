"""Stateful test: two engines over a link the test drives, with the TCP invariants checked.

Hypothesis chooses the sequence: the applications write, pause and resume reading, shut
down, close and abort; the link delivers segments out of order, drops, duplicates, corrupts
and holds them (delay); the clock advances and timers fire. After every step the invariant
checker (netstack/proto/tcp/invariants.py) must have nothing to say and each side must have
received an exact prefix of what the other wrote. At the end the link turns perfect (a finite
loss budget), both applications finish, and by a bounded virtual time both sides are CLOSED
or in TIME_WAIT, with every byte delivered unless an error was reported.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from netstack.proto.tcp.config import TcpConfig
from netstack.proto.tcp.state import State
from tests.unit.tcp.stateful_kit import (
    App,
    LinkIpv4,
    deliver,
    make_engine,
    run_timers,
    stream,
    violations,
)
from tests.unit.tcp.tcptools import LOCAL_IP, REMOTE_IP

PORT = 80
LOSS_BUDGET = 25  # drops + corruptions per run: afterwards the link is perfect
SETTLE = 1500.0  # virtual seconds the end may take (RTO backoff up to rto_max included)
sides = st.sampled_from(["a", "b"])

configs = st.builds(
    TcpConfig,
    timestamps=st.booleans(),
    sack=st.booleans(),
    window_scaling=st.booleans(),
    receive_buffer=st.sampled_from([3000, 8192, 65535, 200_000]),
    send_buffer=st.sampled_from([2000, 20_000, 100_000]),
    congestion_control=st.sampled_from(["reno", "cubic"]),
    nagle=st.booleans(),
    ooo_max_pieces=st.sampled_from([2, 256]),
    rto_max=st.sampled_from([10.0, 120.0]),
)


class PairMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.inflight: list[tuple[int, int, bytes]] = []
        self.now = 1000.0
        self.lost = 0
        self.aborted = {"a": False, "b": False}
        self.closed_app = {"a": False, "b": False}
        self.written = {"a": 0, "b": 0}

    @initialize(config_a=configs, config_b=configs, seed=st.integers(0, 1000))
    def connect(self, config_a: TcpConfig, config_b: TcpConfig, seed: int) -> None:
        self.ip = {"a": LinkIpv4(REMOTE_IP, self.inflight), "b": LinkIpv4(LOCAL_IP, self.inflight)}
        self.engine = {
            "a": make_engine(self.ip["a"], config_a, seed),
            "b": make_engine(self.ip["b"], config_b, seed + 1),
        }
        for e in self.engine.values():
            e.now = self.now
        self.apps: dict[str, App] = {}

        def on_ready(listener) -> None:
            while (conn := listener.accept()) is not None:
                conn.handler = self.apps["b"] = App(conn)

        self.engine["b"].listen(PORT, None, on_ready)
        conn = self.engine["a"].connect((LOCAL_IP, PORT))
        conn.handler = self.apps["a"] = App(conn)
        self.engine["a"].flush(self.now)
        for _ in range(10):  # the handshake over a perfect link
            self.deliver_all()
        assert "b" in self.apps and self.apps["a"].established, "no handshake"

    # -- helpers ------------------------------------------------------------------------------
    def engine_for(self, dst: int):
        return self.engine["a"] if dst == REMOTE_IP else self.engine["b"]

    def deliver_at(self, index: int) -> None:
        src, dst, data = self.inflight.pop(index)
        deliver(self.engine_for(dst), src, dst, data, self.now)

    def deliver_all(self) -> None:
        self.now += 0.001
        for _ in range(len(self.inflight)):
            if self.inflight:
                self.deliver_at(0)

    def other(self, side: str) -> str:
        return "b" if side == "a" else "a"

    # -- the applications -------------------------------------------------------------------
    @rule(side=sides, size=st.sampled_from([1, 100, 1460, 5000, 70_000]))
    def write(self, side: str, size: int) -> None:
        conn = self.apps[side].conn
        try:
            taken = conn.send(stream(side, self.written[side], size))
        except OSError:  # closed for sending (EPIPE) or the error the connection reported
            return
        self.written[side] += taken
        self.engine[side].flush(self.now)

    @rule(side=sides)
    def pause_reading(self, side: str) -> None:
        self.apps[side].conn.pause_reading()
        self.engine[side].flush(self.now)

    @rule(side=sides)
    def resume_reading(self, side: str) -> None:
        self.apps[side].conn.resume_reading()
        self.engine[side].flush(self.now)

    @rule(side=sides)
    def shutdown(self, side: str) -> None:
        self.apps[side].conn.shutdown_write()
        self.engine[side].flush(self.now)

    @rule(side=sides)
    def close(self, side: str) -> None:
        conn = self.apps[side].conn
        if conn.rcvbuf.queued:  # close() with unread data is an abort (RFC 1122 4.2.2.13)
            self.aborted[side] = True
        self.closed_app[side] = True
        conn.close()
        self.engine[side].flush(self.now)

    @precondition(lambda self: not any(self.aborted.values()))
    @rule(side=sides)
    def abort(self, side: str) -> None:
        self.aborted[side] = True
        self.apps[side].conn.abort()
        self.engine[side].flush(self.now)

    # -- the link -----------------------------------------------------------------------------
    @precondition(lambda self: self.inflight)
    @rule(pick=st.integers(0, 50))
    def deliver_one(self, pick: int) -> None:
        """Deliver one segment, not necessarily the oldest: reordering."""
        self.deliver_at(pick % len(self.inflight))

    @precondition(lambda self: self.inflight)
    @rule()
    def deliver_everything(self) -> None:
        self.deliver_all()

    @precondition(lambda self: self.inflight and self.lost < LOSS_BUDGET)
    @rule(pick=st.integers(0, 50))
    def drop(self, pick: int) -> None:
        self.inflight.pop(pick % len(self.inflight))
        self.lost += 1

    @precondition(lambda self: self.inflight)
    @rule(pick=st.integers(0, 50))
    def duplicate(self, pick: int) -> None:
        self.inflight.append(self.inflight[pick % len(self.inflight)])

    @precondition(lambda self: self.inflight and self.lost < LOSS_BUDGET)
    @rule(pick=st.integers(0, 50), where=st.integers(0, 2000), bit=st.integers(0, 7))
    def corrupt(self, pick: int, where: int, bit: int) -> None:
        i = pick % len(self.inflight)
        src, dst, data = self.inflight[i]
        raw = bytearray(data)
        raw[where % len(raw)] ^= 1 << bit
        self.inflight[i] = (src, dst, bytes(raw))
        self.lost += 1

    @rule(dt=st.sampled_from([0.001, 0.01, 0.04, 0.2, 1.0, 5.0]))
    def advance(self, dt: float) -> None:
        """Time passes with the segments in flight held (delay): timers fire."""
        self.now = run_timers(list(self.engine.values()), self.now, self.now + dt)

    # -- invariants ---------------------------------------------------------------------------
    @invariant()
    def no_violation(self) -> None:
        for side, engine in getattr(self, "engine", {}).items():
            assert violations(engine) == [], (side, violations(engine))

    @invariant()
    def delivered_in_order_exactly_once(self) -> None:
        """What each application received is a prefix of what the other side wrote."""
        for side, app in getattr(self, "apps", {}).items():
            other = self.other(side)
            got = bytes(app.data)
            assert got == stream(other, 0, len(got)), f"{side} got a corrupted stream"
            assert len(got) <= self.written[other]

    def settle(self) -> None:
        """Run the perfect link and the timers until both sides are done or SETTLE passes."""
        end = self.now + SETTLE
        engines = list(self.engine.values())
        while self.now < end:
            if self.inflight:
                self.deliver_all()
                continue
            deadlines = [d for e in engines if (d := e.next_deadline()) is not None]
            if not deadlines or (all(done(e) for e in engines)):
                break
            self.now = run_timers(engines, self.now, max(self.now, min(deadlines)))

    def teardown(self) -> None:
        if not hasattr(self, "apps") or "b" not in self.apps:
            return
        # A perfect link from now on (a finite loss budget); both applications read
        # everything and shut down their sending side.
        for side in "ab":
            conn = self.apps[side].conn
            conn.resume_reading()
            conn.shutdown_write()
            self.engine[side].flush(self.now)
        self.settle()
        self.no_violation()
        self.delivered_in_order_exactly_once()
        for side in "ab":
            other = self.other(side)
            app = self.apps[side]
            clean = not (self.aborted[side] or self.aborted[other] or self.closed_app[side])
            if clean and not app.error and not self.apps[other].error:
                # Neither side aborted nor was told of an error: every byte arrived.
                assert len(app.data) == self.written[other], (side, len(app.data))
                assert app.eof
        # Then both applications close. A half-closed side may wait in FIN_WAIT_2 for as
        # long as its application keeps it open (RFC 9293: no timeout; e.g. when the peer
        # aborted in CLOSING, which sends no RST, RFC 9293 3.10.5); once closed, it is
        # orphaned and gives up after fin_wait2_timeout: both sides end by a bounded time.
        for side in "ab":
            self.apps[side].conn.close()
            self.engine[side].flush(self.now)
        self.settle()
        self.no_violation()
        for side, engine in self.engine.items():
            assert done(engine), (side, engine.connections_by_state(), self.now)


def done(engine) -> bool:
    """Only listeners and TIME_WAIT left (CLOSED connections leave the table)."""
    return all(c.state in (State.TIME_WAIT,) for c in engine.conns.values())


PairMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("NETSTACK_STATEFUL_EXAMPLES", "150")),
    stateful_step_count=80,
    deadline=None,
    derandomize=os.environ.get("NETSTACK_STATEFUL_RANDOM") != "1",  # CI: fixed
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestPair = PairMachine.TestCase
