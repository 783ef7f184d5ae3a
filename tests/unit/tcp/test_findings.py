"""Regression tests for bugs the invariant checker found (tests/fuzz, the stateful tests and
checked-mode kernel runs). Each test is the minimal reproducer of one finding."""

from __future__ import annotations

from netstack.proto.tcp import invariants
from netstack.wire.tcp import ACK, PSH, SYN
from tests.unit.tcp.tcptools import (
    LOCAL_ISN,
    MSS,
    REMOTE_ISN,
    listen,
    make_harness,
    quiet_config,
    seg,
)


def test_paused_reader_buffer_is_bounded_against_tiny_segments() -> None:
    """Found in checked mode by the kernel echo transfer ("receive buffer within its
    capacity": 525536 bytes held in a 524288-byte buffer). With window scaling, every ACK
    rounded the window up to the next scale unit so as not to shrink it; to a reader that
    paused, a peer sending segments smaller than the unit (3 bytes, unit 8) kept a window open
    forever and the buffer grew without bound (306 KB in a 300 KB buffer after 3000 segments,
    growing on). Now the edge may move left by less than a unit once the buffer is full
    (RFC 7323 appendix F), and the window closes within a unit of the buffer's size."""
    t = make_harness(quiet_config(window_scaling=True, receive_buffer=300_000))
    checker = invariants.attach(t.engine)
    listener = listen(t)
    t.send(seg(flags=SYN, seq=REMOTE_ISN, window=65535, mss=MSS, wscale=7))
    t.send(seg(seq=REMOTE_ISN + 1, ack=LOCAL_ISN + 1))
    conn = listener.handlers[0].conn  # type: ignore[attr-defined]
    unit = 1 << conn.rcv_wscale
    assert unit == 8
    conn.pause_reading()
    seq = REMOTE_ISN + 1
    for _ in range(3000):
        window = conn.rcv_adv - conn.rcv_nxt
        size = min(1000 if window > 2000 else 3, window)
        if size <= 0:
            break
        t.send(seg(flags=ACK | PSH, seq=seq, ack=LOCAL_ISN + 1, payload=bytes(size)))
        seq += size
        t.advance(0.05)
    last = t.recv()[-1]
    assert last.window == 0 and conn.rcv_adv - conn.rcv_nxt < unit
    assert conn.rcvbuf.queued < conn.rcv_buf_size + unit
    assert checker.violations == []
