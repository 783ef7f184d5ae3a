"""Each TCP invariant fires on a deliberately broken engine (and stays quiet on the real one).

The breakages are monkeypatched into the real engine, one rule at a time, so each test shows
the checker (netstack/proto/tcp/invariants.py) can fail; the stateful tests then rely on it.
"""

from __future__ import annotations

import contextlib

import pytest

from netstack.proto.tcp import invariants
from netstack.proto.tcp.buffers import ReceiveBuffer, SendBuffer
from netstack.proto.tcp.config import TcpConfig
from netstack.proto.tcp.connection import Connection
from netstack.proto.tcp.invariants import InvariantViolation
from netstack.proto.tcp.rtt import RttEstimator
from netstack.wire.tcp import ACK, PSH
from tests.unit.tcp.tcptools import (
    LOCAL_ISN,
    REMOTE_ISN,
    established_passive,
    make_harness,
    seg,
)
from tests.unit.tcp.test_stateful_pair import PairMachine

SEQ0, ACK0 = REMOTE_ISN + 1, LOCAL_ISN + 1


def checked(**overrides):
    t = make_harness(**overrides)
    checker = invariants.attach(t.engine)
    t, conn = established_passive(t)
    t.recv()
    return t, conn, checker


def fired(checker, action) -> list[str]:
    """Run `action`; the violations it caused (raised from a flush, or caught by the engine,
    which resets a connection whose output raised, and recorded by the checker)."""
    before = len(checker.violations)
    with contextlib.suppress(InvariantViolation):
        action()
    return checker.violations[before:]


def assert_fired(found: list[str], rule: str) -> None:
    assert any(rule in v for v in found), found


# -- RFC 5681 4.2: the duplicate window-update ACK (issue 11 item 1), reintroduced -----------
def _uncapped_window_update_due(self: Connection) -> bool:
    """The pre-fix rule: free space compared uncapped by what the header can carry."""
    free = self.rcv_buf_size - self.rcvbuf.queued
    cur = self.rcv_adv - self.rcv_nxt
    return free - cur >= self.rcv_mss and free >= 2 * cur


def _paused_reader_polled(t, conn) -> None:
    """Issue 11's reproducer: no wscale, reading paused, 1000 bytes in (held), flushes with
    no segment arriving (touch + poll at 0.5 / 1.0 / 1.5 s)."""
    conn.pause_reading()
    t.send(seg(flags=ACK | PSH, seq=SEQ0, ack=ACK0, payload=bytes(1000)))
    for _ in range(3):
        t.engine.touch(conn)
        t.advance(0.5)


def test_duplicate_ack_rule_catches_the_window_update_bug(monkeypatch) -> None:
    monkeypatch.setattr(Connection, "_window_update_due", _uncapped_window_update_due)
    t, conn, checker = checked(receive_buffer=300_000)
    found = fired(checker, lambda: _paused_reader_polled(t, conn))
    assert_fired(found, "no duplicate pure ACK without an arrival (RFC 5681 4.2)")


def test_fixed_engine_sends_no_duplicate_window_updates() -> None:
    t, conn, checker = checked(receive_buffer=300_000)
    _paused_reader_polled(t, conn)
    assert checker.violations == []
    acks = [s for s in t.recv() if not s.payload]
    assert len({(s.ack, s.window) for s in acks}) == len(acks)  # no two alike


# -- RFC 9293 3.8.6: never beyond the peer's window ------------------------------------------
def _send_ignoring_window(self: Connection, now: float) -> bool:
    snd_end = self.snd_base + self.sndbuf.end
    if snd_end <= self.snd_nxt:
        return False
    self._send_segment(self.snd_nxt, min(self.mss, snd_end - self.snd_nxt), False, snd_end, now)
    return True


def test_window_rule_fires_when_the_peer_window_is_ignored(monkeypatch) -> None:
    t, conn, checker = checked()
    t.send(seg(seq=SEQ0, ack=ACK0, window=1000))
    monkeypatch.setattr(Connection, "_send_data", _send_ignoring_window)
    found = fired(checker, lambda: (conn.send(bytes(5000)), t.engine.flush(t.now)))
    assert_fired(found, "never send beyond the peer's window")


# -- never retransmit below SND.UNA -----------------------------------------------------------
def test_retransmission_below_snd_una_fires(monkeypatch) -> None:
    t, conn, checker = checked()
    conn.send(bytes(300))
    t.engine.flush(t.now)
    t.send(seg(seq=SEQ0, ack=ACK0 + 300))
    assert checker.violations == []
    original = Connection.output

    def stale_retransmit(self: Connection, now: float) -> None:
        self._xmit(ACK | PSH, self.snd_una - 100, bytes(100), now)
        original(self, now)

    monkeypatch.setattr(Connection, "output", stale_retransmit)
    found = fired(checker, lambda: (t.engine.touch(conn), t.engine.flush(t.now)))
    assert_fired(found, "never retransmit below SND.UNA")


# -- SND.UNA <= SND.NXT <= SND.MAX, RCV.NXT only grows ----------------------------------------
@pytest.mark.parametrize(
    ("breakage", "rule"),
    [
        (lambda c: setattr(c, "snd_nxt", c.snd_nxt + 5000), "SND.UNA <= SND.NXT <= SND.MAX"),
        (lambda c: setattr(c, "snd_una", c.snd_nxt + 1), "SND.UNA <= SND.NXT <= SND.MAX"),
        (lambda c: setattr(c, "rcv_nxt", c.rcv_nxt - 10), "RCV.NXT only grows"),
    ],
)
def test_sequence_variables(monkeypatch, breakage, rule: str) -> None:
    t, _conn, checker = checked()
    original = Connection.segment

    def broken(self: Connection, h, payload, now: float) -> None:
        original(self, h, payload, now)
        breakage(self)

    monkeypatch.setattr(Connection, "segment", broken)
    found = fired(checker, lambda: t.send(seg(flags=ACK | PSH, seq=SEQ0, ack=ACK0, payload=b"x")))
    assert_fired(found, rule)


# -- RFC 9293 3.8.6: the advertised right edge never moves left ------------------------------
def test_shrinking_window_fires(monkeypatch) -> None:
    t, _conn, checker = checked()
    monkeypatch.setattr(Connection, "_window_field", lambda self, ack=None: 10)
    found = fired(
        checker,
        lambda: (t.send(seg(flags=ACK | PSH, seq=SEQ0, ack=ACK0, payload=b"x")), t.advance(1)),
    )
    assert_fired(found, "advertised right edge never shrinks")


# -- RFC 6298: RTO bounds, backoff, timer restart --------------------------------------------
def _timeouts(t, conn, n: int) -> None:
    conn.send(bytes(100))
    t.engine.flush(t.now)
    for _ in range(n):
        t.run_until(t.engine.next_deadline() or t.now)


def test_rto_above_rto_max_fires(monkeypatch) -> None:
    def uncapped(self: RttEstimator) -> None:
        self.backoff += 1
        self.rto *= 2

    monkeypatch.setattr(RttEstimator, "back_off", uncapped)
    t, conn, checker = checked(rto_max=3.0)
    found = fired(checker, lambda: _timeouts(t, conn, 4))
    assert_fired(found, "RTO within [rto_min, rto_max]")


def test_backoff_other_than_doubling_fires(monkeypatch) -> None:
    def triple(self: RttEstimator) -> None:
        self.backoff += 1
        self.rto = min(self.rto * 3, self.rto_max)

    monkeypatch.setattr(RttEstimator, "back_off", triple)
    t, conn, checker = checked()
    found = fired(checker, lambda: _timeouts(t, conn, 2))
    assert_fired(found, "RTO backoff doubles (RFC 6298 5.5)")


def test_timer_not_restarted_with_the_new_rto_fires(monkeypatch) -> None:
    original = Connection.on_timer

    def late(self: Connection, now: float) -> None:
        original(self, now)
        if self.recovery.rto_at is not None:
            self.recovery.rto_at += 1.0

    monkeypatch.setattr(Connection, "on_timer", late)
    t, conn, checker = checked()
    found = fired(checker, lambda: _timeouts(t, conn, 2))
    assert_fired(found, "timer restarts with the backed-off RTO (RFC 6298 5.6)")


def test_real_engine_backs_off_as_rfc_6298_says() -> None:
    t, conn, checker = checked(rto_max=10.0)
    _timeouts(t, conn, 8)
    assert checker.violations == [] and conn.recovery.rtt.rto == 10.0


# -- buffers within their bounds ------------------------------------------------------------
def test_send_buffer_overfilled_fires(monkeypatch) -> None:
    monkeypatch.setattr(SendBuffer, "free", lambda self: 1 << 30)
    original = SendBuffer.write

    def greedy(self: SendBuffer, data) -> int:
        self.capacity += len(data)
        taken = original(self, data)
        self.capacity -= len(data)
        return taken

    monkeypatch.setattr(SendBuffer, "write", greedy)
    t, conn, checker = checked(send_buffer=1000)
    found = fired(checker, lambda: (conn.send(bytes(5000)), t.engine.flush(t.now)))
    assert_fired(found, "send buffer within its capacity")


def test_receive_buffer_overfilled_fires(monkeypatch) -> None:
    t, conn, checker = checked(receive_buffer=2000)
    monkeypatch.setattr(Connection, "_window_field", lambda self, ack=None: 0xFFFF)
    # A broken engine taking whatever fits a 64 KB window into a 2000-byte buffer.
    wide = property(lambda self: self.rcv_nxt + 0xFFFF, lambda self, value: None)
    monkeypatch.setattr(Connection, "rcv_adv", wide)
    conn.pause_reading()

    def flood() -> None:
        for i in range(4):
            payload = bytes(1000)
            t.send(seg(flags=ACK, seq=SEQ0 + 1000 * i, ack=ACK0, payload=payload))

    found = fired(checker, flood)
    assert_fired(found, "receive buffer within its capacity")


# -- exactly-once in-order delivery, and a bounded end (the stateful pair's checks) -----------
def _pair() -> PairMachine:
    m = PairMachine()
    m.connect(config_a=TcpConfig(), config_b=TcpConfig(), seed=1)
    return m


def test_duplicated_delivery_is_caught(monkeypatch) -> None:
    original = ReceiveBuffer.pop
    monkeypatch.setattr(ReceiveBuffer, "pop", lambda self: (data := original(self)) + data[:1])
    m = _pair()
    m.write("a", 5000)
    m.deliver_everything()
    with pytest.raises(AssertionError, match="corrupted stream"):
        m.delivered_in_order_exactly_once()


def test_connection_that_never_ends_is_caught(monkeypatch) -> None:
    monkeypatch.setattr(Connection, "shutdown_write", lambda self: None)  # no FIN, ever
    m = _pair()
    m.write("a", 100)
    m.deliver_everything()
    m.closed_app = {"a": True, "b": True}  # skip the delivery check: the end is under test
    with pytest.raises(AssertionError, match="established"):
        m.teardown()


def test_the_pair_ends_cleanly_with_the_real_engine() -> None:
    m = _pair()
    m.write("a", 100_000)
    m.write("b", 3000)
    m.drop(0)
    m.advance(1.0)
    m.teardown()
    assert bytes(m.apps["b"].data) == bytes(m.apps["b"].data)[:100_000]
    assert len(m.apps["b"].data) == 100_000 or m.written["a"] < 100_000
