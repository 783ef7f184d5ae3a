"""RFC 7323 timestamps (RTTM, PAWS, TS.Recent rules) and sequence numbers across 2^32."""

from __future__ import annotations

import dataclasses

import pytest

from netstack.drops import Drop
from tests.unit.tcp.tcptools import (
    ACK,
    FIN,
    SYN_SEG,
    listen,
    make_harness,
    seg,
)

MASK = 0xFFFFFFFF


def ts_established(local_isn=10_000, remote_isn=50_000, ts0=1000):
    t = make_harness(timestamps=True)
    t.engine.choose_isn = lambda conn, now: local_isn
    listener = listen(t)
    t.send(dataclasses.replace(SYN_SEG, seq=remote_isn, ts=(ts0, 0)))
    (synack,) = t.recv()
    assert synack.ts is not None and synack.ts[1] == ts0
    our_ts = synack.ts[0]
    t.send(seg(seq=remote_isn + 1, ack=local_isn + 1, ts=(ts0 + 1, our_ts)))
    conn = listener.handlers[0].conn  # type: ignore[attr-defined]
    t.events.clear()
    return t, conn, (local_isn + 1) & MASK, (remote_isn + 1) & MASK


def test_every_segment_carries_tsval_and_echoes_ts_recent() -> None:
    t, conn, L, R = ts_established()
    t.send(seg(seq=R, ack=L, payload=b"x", ts=(1005, 0)))
    conn.send(b"y")
    t.engine.flush(t.now)
    (out,) = t.recv()
    assert out.ts is not None
    assert out.ts[1] == 1005  # TS.Recent
    assert out.ts[0] == (int(t.now * 1000) + conn.ts_offset) & MASK  # a 1 ms clock


def test_rtt_from_the_echoed_timestamp() -> None:
    t, conn, L, R = ts_established()
    conn.send(b"y")
    t.engine.flush(t.now)
    (out,) = t.recv()
    t.now += 0.250
    # A cumulative ACK echoing our TSval.
    conn.recovery.board.first().retransmitted = True  # type: ignore[union-attr]  # no clock sample
    conn.recovery.rtt.srtt = None  # so that this sample alone sets SRTT
    t.send(seg(seq=R, ack=(L + 1) & MASK, ts=(1010, out.ts[0])))
    assert conn.recovery.rtt.srtt == pytest.approx(0.250, abs=0.001)


def test_paws_drops_an_old_timestamp() -> None:
    t, _conn, L, R = ts_established()
    t.send(seg(seq=R, ack=L, payload=b"new", ts=(2000, 0)))
    t.send(seg(seq=R + 3, ack=L, payload=b"old", ts=(1500, 0)))  # wrapped-around old dup
    assert [e[1] for e in t.events if e[0] == "data"] == [b"new"]
    assert t.counters.drops[Drop.TCP_PAWS] == 1
    (reply,) = t.recv()
    assert reply.flags == ACK and reply.ack == R + 3  # answered with an ACK


def test_paws_lets_a_timestamp_that_wrapped_through() -> None:
    t, _conn, L, R = ts_established(ts0=0xFFFFFF00)
    t.send(seg(seq=R, ack=L, payload=b"a", ts=(0x00000010, 0)))  # later, modulo 2^32
    assert [e[1] for e in t.events if e[0] == "data"] == [b"a"]


def test_rst_is_exempt_from_paws() -> None:
    t, conn, L, R = ts_established()
    t.send(seg(seq=R, ack=L, payload=b"x", ts=(5000, 0)))
    t.send(seg(flags=0x04, seq=R + 1, ack=0, ts=(1, 0)))
    assert conn.state.value == "closed"


def test_ts_recent_only_from_segments_at_the_left_edge() -> None:
    """RFC 7323 4.3: an out-of-order segment's TSval does not become TS.Recent."""
    t, conn, L, R = ts_established()
    t.send(seg(seq=R + 100, ack=L, payload=b"later", ts=(3000, 0)))
    assert conn.ts_recent != 3000
    t.send(seg(seq=R, ack=L, payload=b"x" * 100, ts=(2500, 0)))
    assert conn.ts_recent == 2500


def test_timestamps_off_when_the_syn_had_none() -> None:
    t = make_harness(timestamps=True)
    listener = listen(t)
    t.send(SYN_SEG)
    (synack,) = t.recv()
    assert synack.ts is None
    t.send(seg(seq=50_001, ack=10_001))
    assert not listener.handlers[0].conn.ts_ok  # type: ignore[attr-defined]


# -- sequence wrap ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("local_isn", "remote_isn"),
    [(0xFFFFFF00, 50_000), (10_000, 0xFFFFFF00), (0xFFFFFFFF, 0xFFFFFFFF)],
)
def test_transfer_and_close_across_the_wrap(local_isn: int, remote_isn: int) -> None:
    t, conn, L, R = ts_established(local_isn, remote_isn)
    # Receive 1000 bytes in 100-byte segments: RCV.NXT wraps.
    got = bytearray()
    for i in range(10):
        t.send(seg(seq=(R + 100 * i) & MASK, ack=L, payload=bytes([i]) * 100, ts=(2000 + i, 0)))
    got += b"".join(e[1] for e in t.events if e[0] == "data")
    assert got == b"".join(bytes([i]) * 100 for i in range(10))
    # Send 3000 bytes: SND.NXT wraps; ACK them with wrapped numbers.
    conn.send(b"s" * 3000)
    t.engine.flush(t.now)
    segs = [s for s in t.recv() if s.payload]
    assert [s.seq for s in segs] == [(L + o) & MASK for o in (0, 1448, 2896)]
    t.send(seg(seq=(R + 1000) & MASK, ack=(L + 3000) & MASK, ts=(2100, 0)))
    assert conn.snd_una - conn.snd_base == 3000 and len(conn.sndbuf) == 0
    # An out-of-order segment and a SACK-less dupack across the wrap still behave.
    t.send(seg(seq=(R + 1100) & MASK, ack=(L + 3000) & MASK, payload=b"z", ts=(2101, 0)))
    (dup,) = t.recv()
    assert dup.ack == (R + 1000) & MASK
    # Close.
    t.send(seg(flags=FIN | ACK, seq=(R + 1000) & MASK, ack=(L + 3000) & MASK, ts=(2102, 0)))
    conn.close()
    t.engine.flush(t.now)
    fin = next(s for s in t.recv() if s.flags & FIN)
    assert fin.seq == (L + 3000) & MASK
    t.send(seg(seq=(R + 1001) & MASK, ack=(L + 3001) & MASK, ts=(2103, 0)))
    assert conn.state.value == "closed"
