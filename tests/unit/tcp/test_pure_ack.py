"""Connection._segment_pure_ack against the general segment path, segment by segment.

test_slim.py compares whole exchanges (short connections with loss, duplication and
reordering); these scripts aim at the edges the fast path must hand back to the general path
(or decide exactly as it would): an ACK of our ISN in SYN_RECEIVED (RST), an ACK beyond
SND.NXT (challenge ACK), an old ACK, a wrong SEQ, an old or missing timestamp (PAWS), text,
FIN, RST, URG or SYN bits, SACK blocks, a full accept queue, a window update. Each script runs
twice, with connection.PURE_ACK on and off; what the engine sent after each segment, its
counters (drop reasons), every connection's TCB and the handler events must be the same, and
the on run must have taken the fast path where the script says it can.
"""

from __future__ import annotations

import dataclasses

import pytest

from netstack.proto.tcp import connection as tcpconn
from netstack.proto.tcp.connection import Connection
from netstack.wire.tcp import ACK, FIN, PSH, RST, SYN, URG
from tests.unit.tcp.tcptools import (
    LOCAL_ISN,
    MSS,
    REMOTE_ISN,
    Seg,
    listen,
    make_harness,
    seg,
)
from tests.unit.tcp.test_slim import counters_of, tcbs_of

L, R = LOCAL_ISN, REMOTE_ISN
TS0 = 1000  # the peer's TSval in its SYN
NO_TS = (-1, -1)  # in a script: send this segment without a timestamp even when they are on


def ack(**kw) -> Seg:
    return seg(**{"seq": R + 1, "ack": L + 1, **kw})


def tsed(s: Seg, tsval: int) -> Seg:
    return dataclasses.replace(s, ts=(tsval, 0))


def run(monkeypatch, pure: bool, to: str, script: list[Seg], ts: bool, full: bool):
    """The handshake up to SYN_RECEIVED (or on to LAST_ACK), then `script`; returns what
    was sent and the end state after each segment, and the fast path's hits."""
    monkeypatch.setattr(tcpconn, "PURE_ACK", pure)
    hits = [0]
    original = Connection._segment_pure_ack

    def counted(self, h, payload, now):
        taken = original(self, h, payload, now)
        hits[0] += taken
        return taken

    monkeypatch.setattr(Connection, "_segment_pure_ack", counted)
    t = make_harness(timestamps=ts, sack=True)
    listener = listen(t)
    syn = seg(flags=SYN, seq=R, ack=0, mss=MSS, sack_perm=True)
    t.send(tsed(syn, TS0) if ts else syn)
    steps = [t.recv()]
    if full:  # the accept queue is full by the time the handshake's ACK comes
        listener.backlog = 0
    if to == "last_ack":
        first = ack()
        t.send(tsed(first, TS0 + 1) if ts else first)
        fin = ack(flags=FIN | ACK)
        t.send(tsed(fin, TS0 + 2) if ts else fin)
        (conn,) = t.engine.conns.values()
        conn.close()
        t.engine.flush(t.now)
        assert conn.state.value == "last_ack"
        steps.append(t.recv())
    hits[0] = 0  # only the script's segments count
    for i, s in enumerate(script):
        t.now += 0.001
        if s.ts == NO_TS:
            s = dataclasses.replace(s, ts=None)
        elif ts and s.ts is None:
            s = tsed(s, TS0 + 10 + i)
        t.send(s)
        steps.append(
            (t.recv(), counters_of(t.engine), tcbs_of(t.engine), [e[1:] for e in t.events])
        )
    monkeypatch.undo()
    return steps, hits[0]


F = 2  # LAST_ACK: SND.NXT is L + 2 (our SYN and FIN), RCV.NXT R + 2 (their SYN and FIN)
SCRIPTS = {
    # to SYN_RECEIVED: (script, fast-path hits expected with PURE_ACK on)
    "handshake ack": ("syn_received", [ack()], 1),
    "handshake ack with PSH": ("syn_received", [ack(flags=PSH | ACK)], 1),
    "ack of our ISN (RST)": ("syn_received", [ack(ack=L), ack()], 1),
    "ack beyond SND.NXT (RST)": ("syn_received", [ack(ack=L + 5), ack()], 1),
    # (an empty segment inside the window is acceptable: the general path takes it)
    "SEQ inside the window": ("syn_received", [ack(seq=R + 7), ack()], 0),
    "SEQ below RCV.NXT": ("syn_received", [ack(seq=R), ack()], 1),
    "text on the ACK": ("syn_received", [ack(flags=PSH | ACK, payload=b"x")], 0),
    "FIN on the ACK": ("syn_received", [ack(flags=FIN | ACK)], 0),
    "RST": ("syn_received", [ack(flags=RST | ACK)], 0),
    "URG": ("syn_received", [ack(flags=URG | ACK, urgent=0)], 0),
    "SYN again": ("syn_received", [seg(flags=SYN, seq=R, mss=MSS), ack()], 1),
    "window update": ("syn_received", [ack(window=1000), ack(window=3000)], 1),
    # to LAST_ACK (our FIN is L + 1, SND.NXT L + 2; RCV.NXT R + 2)
    "last ack": ("last_ack", [ack(seq=R + 2, ack=L + F)], 1),
    "old ack first": ("last_ack", [ack(seq=R + 2, ack=L + 1), ack(seq=R + 2, ack=L + F)], 2),
    "ack below SND.UNA": ("last_ack", [ack(seq=R + 2, ack=L - 5), ack(seq=R + 2, ack=L + 2)], 1),
    "ack beyond SND.NXT": ("last_ack", [ack(seq=R + 2, ack=L + 9), ack(seq=R + 2, ack=L + 2)], 1),
    "old SEQ, then ack": ("last_ack", [ack(seq=R + 1, ack=L + 2), ack(seq=R + 2, ack=L + 2)], 1),
    "FIN again": ("last_ack", [ack(flags=FIN | ACK, seq=R + 1, ack=L + 2)], 0),
    "RST in LAST_ACK": ("last_ack", [ack(flags=RST | ACK, seq=R + 2, ack=L + 2)], 0),
    "SACK blocks": ("last_ack", [ack(seq=R + 2, ack=L + 1, sack=((L + 1, L + 2),))], 1),
}  # fmt: skip


# (a full accept queue matters in SYN_RECEIVED only)
CASES = [(name, False) for name in SCRIPTS] + [
    (name, True) for name, (to, _, _) in SCRIPTS.items() if to == "syn_received"
]


@pytest.mark.parametrize("name,full", CASES)
@pytest.mark.parametrize("ts", [False, True])
def test_pure_ack_decides_as_the_general_path(monkeypatch, name, full, ts) -> None:
    to, script, want = SCRIPTS[name]
    fast, hits = run(monkeypatch, True, to, script, ts, full)
    general, general_hits = run(monkeypatch, False, to, script, ts, full)
    assert general_hits == 0
    for i, (a, b) in enumerate(zip(fast, general, strict=True)):
        assert a == b, f"after step {i}"
    if full:
        want = 0  # a full accept queue: the general path drops the handshake ACK
    assert hits == want


@pytest.mark.parametrize("to", ["syn_received", "last_ack"])
def test_old_or_missing_timestamp_goes_the_general_way(monkeypatch, to) -> None:
    """PAWS (an older TSval than TS.Recent) and a segment without a timestamp when they are
    on: the general path decides (PAWS drop, challenge-free), the same either way."""
    seq, acknum = (R + 1, L + 1) if to == "syn_received" else (R + 2, L + 2)
    script = [tsed(ack(seq=seq, ack=acknum), TS0 - 50), ack(seq=seq, ack=acknum, ts=NO_TS)]
    fast, hits = run(monkeypatch, True, to, script, True, False)
    general, _ = run(monkeypatch, False, to, script, True, False)
    assert fast == general
    assert hits == 0
