"""TIME_WAIT as a small record (proto/tcp/timewait.py).

The record must answer every segment exactly as the connection's general path does in
TIME_WAIT: the same segments go out, with the same counters and drop reasons, the same state
changes and the same timers. The differential test drives two engines, one keeping the
connection (compact_time_wait=False) and one retiring it into a record, through the same
random segments and clock steps. The others check what the record is for: the engine no
longer holds the connection, its application object follows the record to CLOSED, and
`netstack ss` still lists it.
"""

from __future__ import annotations

import dataclasses
import gc
import weakref

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netstack.histogram import Histogram
from netstack.proto.tcp.connection import Connection
from netstack.proto.tcp.introspect import connection_table
from netstack.proto.tcp.invariants import attach
from netstack.proto.tcp.timewait import TimeWait
from netstack.stats import render_connections
from tests.unit.tcp.tcptools import (
    ACK,
    FIN,
    LOCAL_ISN,
    MSS,
    PSH,
    REMOTE_ISN,
    RST,
    SYN,
    Harness,
    Seg,
    established_passive,
    listen,
    make_harness,
    seg,
    to_us,
)

L, R = LOCAL_ISN + 1, REMOTE_ISN + 1
TS0 = 1000  # the peer's first TSval


def counters_of(t: Harness) -> dict:
    out = {}
    for field in dataclasses.fields(t.counters):
        value = getattr(t.counters, field.name)
        if isinstance(value, Histogram):
            value = (list(value.counts), value.sum)
        out[field.name] = value
    return out


def comparable(events: list) -> list:
    """Events with each exception as (type, args): two runs' ConnectionResetErrors are
    different instances, which never compare equal."""
    return [
        tuple((type(x), x.args) if isinstance(x, BaseException) else x for x in event)
        if isinstance(event, tuple)
        else event
        for event in events
    ]


def time_wait(compact: bool, ts: bool, sack: bool, wscale: bool) -> tuple[Harness, Connection]:
    """An active close into TIME_WAIT with the options asked for, in checked mode."""
    t = make_harness(timestamps=ts, sack=sack, window_scaling=wscale, compact_time_wait=compact)
    attach(t.engine)
    listener = listen(t)
    syn = Seg(flags=SYN, seq=REMOTE_ISN, ack=0, mss=MSS, sack_perm=sack,
              wscale=7 if wscale else None, ts=(TS0, 0) if ts else None)  # fmt: skip
    t.send(syn)
    (synack,) = t.recv()
    echo = synack.ts[0] if synack.ts else 0
    opt = {"ts": (TS0 + 1, echo)} if ts else {}
    t.send(seg(seq=R, ack=L, **opt))
    conn = listener.handlers[0].conn  # type: ignore[attr-defined]
    conn.close()
    t.engine.flush(t.now)
    t.recv()
    opt = {"ts": (TS0 + 2, echo)} if ts else {}
    t.send(seg(flags=FIN | ACK, seq=R, ack=L + 1, **opt))
    t.recv()
    assert conn.state.value == "time_wait"
    return t, conn


FLAGS = [ACK, FIN | ACK, RST, RST | ACK, SYN, SYN | ACK, 0, PSH | ACK, FIN, ACK | 0x20]
SEQ_OFFSETS = [-70_000, -100, -2, -1, 0, 1, 100, 70_000, 1 << 31]
ACK_OFFSETS = [-70_000, -1, 0, 1, 100]
TS_DELTAS = [-(1 << 30), -1000, -1, 0, 1, 1000, 1 << 30]
STEPS = [0.0, 0.1, 0.6, 30.0, 61.0]

segments = st.lists(
    st.tuples(
        st.sampled_from(FLAGS),
        st.sampled_from(SEQ_OFFSETS),
        st.sampled_from(ACK_OFFSETS),
        st.sampled_from([0, 1, 10]),  # payload length
        st.sampled_from([0, 100, 65535]),  # window
        st.one_of(st.none(), st.sampled_from(TS_DELTAS)),
        st.sampled_from(STEPS),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ts=st.booleans(),
    sack=st.booleans(),
    wscale=st.booleans(),
    script=segments,
)
def test_record_answers_as_the_connection_does(ts, sack, wscale, script) -> None:
    runs = [time_wait(compact, ts, sack, wscale) for compact in (False, True)]
    (kept, kept_conn), (retired, retired_conn) = runs
    assert type(kept.engine.conns[kept_conn.key]) is Connection
    assert type(retired.engine.conns[retired_conn.key]) is TimeWait
    for flags, dseq, dack, plen, window, dts, step in script:
        s = seg(flags=flags, seq=R + 1 + dseq, ack=L + 1 + dack, window=window,
                payload=b"x" * plen, urgent=1 if flags & 0x20 else 0,
                ts=((TS0 + 2 + dts) & 0xFFFFFFFF, 0) if dts is not None else None)  # fmt: skip
        for t, _ in runs:
            t.advance(step)
            t.send(s)
        a, b = kept.recv_timed(), retired.recv_timed()
        assert a == b, f"after {s}"
        assert kept_conn.state is retired_conn.state
        assert kept.engine.connections_by_state() == retired.engine.connections_by_state()
        assert counters_of(kept) == counters_of(retired)
        assert comparable(kept.events) == comparable(retired.events)
        assert kept.engine.next_deadline() == retired.engine.next_deadline()
    for t, _ in runs:
        t.advance(120.0)
    assert kept.recv_timed() == retired.recv_timed()
    assert counters_of(kept) == counters_of(retired)
    assert kept_conn.state is retired_conn.state


def test_the_engine_no_longer_holds_the_connection() -> None:
    t, conn = time_wait(True, ts=True, sack=True, wscale=True)
    gone = weakref.ref(conn)
    listener = t.engine.listeners[80]
    listener.handlers.clear()  # type: ignore[attr-defined]  # the application lets go
    del conn
    # The timer heap's entries for it lapse when they come due (the RTO's, within seconds;
    # the engine's heap is lazy): then nothing holds it.
    t.advance(2.0)
    gc.collect()
    assert gone() is None
    (record,) = t.engine.conns.values()
    assert type(record) is TimeWait and record.state.value == "time_wait"
    # Still the old incarnation's TIME_WAIT: a retransmitted FIN is ACKed, timer restarted.
    t.advance(28.0)
    t.send(seg(flags=FIN | ACK, seq=R, ack=L + 1, ts=(TS0 + 2, 0)))
    (ack,) = t.recv()
    assert (ack.flags, ack.seq, ack.ack) == (ACK, L + 1, R + 1)
    t.advance(59.0)
    assert t.engine.connections_by_state()["time_wait"] == 1
    t.advance(1.0)
    assert t.engine.conns == {} and t.engine.connections_by_state()["time_wait"] == 0


def test_the_application_connection_follows_the_record() -> None:
    t, conn = time_wait(True, ts=False, sack=False, wscale=False)
    assert type(t.engine.conns[conn.key]) is TimeWait
    t.advance(60.0)
    assert conn.state.value == "closed"
    # reopened by a newer SYN (RFC 6191)
    t, conn = time_wait(True, ts=False, sack=False, wscale=False)
    t.send(Seg(flags=SYN, seq=R + 100_000, ack=0, mss=MSS))
    assert conn.state.value == "closed"
    (synack,) = t.recv()
    assert synack.flags == SYN | ACK
    assert t.engine.connections_by_state()["syn_received"] == 1


def test_abort_of_a_retired_connection_forgets_the_record() -> None:
    t, conn = time_wait(True, ts=False, sack=False, wscale=False)
    conn.abort()
    t.engine.flush(t.now)
    assert conn.state.value == "closed"
    assert t.engine.conns == {}
    assert t.engine.connections_by_state()["time_wait"] == 0
    assert t.engine.time_wait_count == 0
    t.expect_nothing()


def test_unread_data_keeps_the_connection() -> None:
    """Received data the application has not taken keeps the whole connection (its window
    may still open when it reads): the record is only made when it answers the same."""
    t, conn = established_passive(compact_time_wait=True)
    conn.pause_reading()
    t.send(seg(flags=PSH | ACK, seq=R, ack=L, payload=b"unread"))
    t.recv()
    conn.shutdown_write()
    t.engine.flush(t.now)
    t.recv()
    t.send(seg(flags=FIN | ACK, seq=R + 6, ack=L + 1))
    assert conn.state.value == "time_wait"
    assert t.engine.conns[conn.key] is conn
    conn.resume_reading()
    t.engine.flush(t.now)
    assert type(t.engine.conns[conn.key]) is TimeWait


def test_ss_lists_time_wait_records() -> None:
    t, conn = time_wait(True, ts=True, sack=True, wscale=True)
    table = connection_table(t.engine, t.now)
    (entry,) = table["connections"]
    assert entry["state"] == "time_wait"
    assert entry["recv_q"] == entry["send_q"] == 0
    assert entry["tcp_info"]["tcpi_state"] == 6  # Linux's TCP_TIME_WAIT
    assert set(entry["tcp_info"]) == set(conn.tcp_info())  # every field ss prints
    assert set(entry) - {"local", "peer", "recv_q", "send_q", "tcp_info"} <= set(conn.info())
    text = render_connections(table)
    assert "TIME-WAIT" in text and ":80" in text


def test_record_is_a_fraction_of_the_connection() -> None:
    """What TIME_WAIT costs per entry: the record's own size against the connection's
    (its buffers, recovery and congestion state not even counted)."""
    import sys

    t, conn = time_wait(True, ts=True, sack=True, wscale=True)
    record = t.engine.conns[conn.key]
    assert sys.getsizeof(record) * 3 < sys.getsizeof(conn) + sys.getsizeof(conn.recovery) * 2


def test_retransmitted_fin_to_the_record_is_acked_with_our_window() -> None:
    t, conn = time_wait(True, ts=False, sack=False, wscale=False)
    t.send(seg(flags=FIN | ACK, seq=R, ack=L + 1))
    t.expect(to_us(seg(seq=L + 1, ack=R + 1, window=65534)))
    t.send(seg(flags=RST, seq=R + 1))
    assert conn.state.value == "closed" and t.engine.conns == {}
