"""Regression tests for bugs the invariant checker found (tests/fuzz, the stateful tests and
checked-mode kernel runs). Each test is the minimal reproducer of one finding."""

from __future__ import annotations

import random

from netstack.proto.tcp import invariants
from netstack.wire import tcp as wtcp
from netstack.wire.tcp import ACK, PSH, SYN
from tests.unit.tcp.tcptools import (
    LOCAL_IP,
    LOCAL_ISN,
    LOCAL_PORT,
    MSS,
    REMOTE_IP,
    REMOTE_ISN,
    REMOTE_PORT,
    ip_header,
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


def test_paused_reader_buffer_is_bounded_when_a_batch_owes_several_acks() -> None:
    """Found in checked mode by the kernel echo transfer over a lossy link, after the fix
    above: 524304 bytes held in a 524288-byte buffer (scale unit 16). An ACK owed to an
    earlier segment of the batch (ACK number below RCV.NXT) rounded its window up again from
    an edge the same flush had just rounded up: two units of overshoot. Batches of segments
    of every size into a paused reader: the buffer never holds a unit or more beyond its size."""
    rng = random.Random(8)
    t = make_harness(quiet_config(window_scaling=True, receive_buffer=300_000))
    checker = invariants.attach(t.engine)
    listener = listen(t)
    t.send(seg(flags=SYN, seq=REMOTE_ISN, window=65535, mss=MSS, wscale=7))
    t.send(seg(seq=REMOTE_ISN + 1, ack=LOCAL_ISN + 1))
    conn = listener.handlers[0].conn  # type: ignore[attr-defined]
    unit = 1 << conn.rcv_wscale
    conn.pause_reading()
    seq = REMOTE_ISN + 1
    for _ in range(400):
        for _ in range(rng.randint(1, 6)):  # one receive batch
            window = conn.rcv_adv - seq
            size = min(rng.choice([1448, 1448, 1, 2, 3]), window)  # full ones owe ACKs
            if size <= 0:
                break
            data = wtcp.build(REMOTE_IP, LOCAL_IP, REMOTE_PORT, LOCAL_PORT, seq, LOCAL_ISN + 1,
                              ACK, 65535, bytes(size)) + bytes(size)  # fmt: skip
            view = memoryview(data)
            t.engine.receive(ip_header(REMOTE_IP, LOCAL_IP, len(data)), view, view, t.now)
            seq += size
        t.engine.flush(t.now)
        t.advance(0.05)
        assert conn.rcvbuf.queued < conn.rcv_buf_size + unit
    assert checker.violations == []


def test_syn_received_keeps_the_syn_ack_window() -> None:
    """Found by the `host` fuzz target in checked mode (tests/fuzz/crashes/host/crash-6081...):
    in SYN_RECEIVED, an out-of-window segment got an ACK whose (scaled) window offered the
    whole 512 KB buffer; the SYN-ACK retransmitted next could only say 65535 (a SYN's window
    is never scaled, RFC 7323 2.2): the right edge moved 448 KB left. The SYN-ACK's window
    now stands until the handshake completes, as with Linux's request sockets."""
    t = make_harness(quiet_config(window_scaling=True, receive_buffer=512 * 1024))
    checker = invariants.attach(t.engine)
    listen(t)
    t.send(seg(flags=SYN, seq=REMOTE_ISN, window=65535, mss=MSS, wscale=2))
    (synack,) = t.recv()
    t.send(seg(seq=8, ack=LOCAL_ISN + 1))  # out of window: answered with an ACK
    (ack,) = t.recv()
    t.advance(1.5)  # the SYN-ACK goes again
    (again,) = t.recv()
    assert again.flags == synack.flags and again.window == synack.window == 65535
    unit = 1 << 4  # our scale for 512 KB
    assert ack.ack + (ack.window << 4) < synack.ack + synack.window + unit
    assert checker.violations == []
