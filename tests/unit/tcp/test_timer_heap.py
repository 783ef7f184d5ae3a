"""The engine's timer heap does not hold closed connections (engine._prune_timers).

The loop no longer asks TCP for its next deadline after every receive batch (engines announce
an earlier deadline instead, proto/deadlines.py), and next_deadline() was what dropped the
heap's dead leading entries. A connection load (bench/tcp.py's connect/close, the stack the
passive closer) leaves one entry per connection for its SYN-ACK's RTO, a second away: without
pruning at the flush point, thousands of closed connections stayed alive in the heap.
"""

from __future__ import annotations

import dataclasses

from tests.unit.tcp.tcptools import (
    ACK,
    FIN,
    LOCAL_ISN,
    REMOTE_ISN,
    REMOTE_PORT,
    SYN_SEG,
    listen,
    make_harness,
    seg,
)


def test_closed_connections_leave_the_heap_without_next_deadline() -> None:
    t = make_harness()
    listener = listen(t)
    for i in range(200):
        port = REMOTE_PORT + 1 + i
        t.now += 0.0002
        t.send(dataclasses.replace(SYN_SEG, sport=port))
        t.send(seg(seq=REMOTE_ISN + 1, ack=LOCAL_ISN + 1, sport=port))
        t.send(seg(flags=FIN | ACK, seq=REMOTE_ISN + 1, ack=LOCAL_ISN + 1, sport=port))
        conn = listener.handlers[-1].conn  # type: ignore[attr-defined]
        conn.close()  # CLOSE_WAIT -> LAST_ACK: our FIN
        t.engine.flush(t.now)
        t.send(seg(seq=REMOTE_ISN + 2, ack=LOCAL_ISN + 2, sport=port))
        assert conn.state.value == "closed"
        t.recv()
    assert len(t.engine.conns) == 0
    assert len(t.engine._timers) <= 2  # (the last connection's, until the next flush)
    # Nothing a live connection needed was dropped: a new connection's timer still runs.
    t.send(dataclasses.replace(SYN_SEG, sport=REMOTE_PORT))
    t.recv()
    due = t.engine.next_deadline()
    assert due is not None and due > t.now
    t.run_until(due)
    assert any(s.flags & 0x02 for s in t.recv())  # the SYN-ACK, retransmitted on time
