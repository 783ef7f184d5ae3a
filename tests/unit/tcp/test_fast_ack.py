"""The fused ACK path (Recovery.ack_fast, from Connection._segment_slim) against recovery's
general per-ACK calls, on one connection driven by a scripted lossy peer.

test_slim.py compares whole SimNet exchanges; here a peer model (a receiver that loses,
reorders and duplicates what the sender sends, and answers with cumulative ACKs, SACK and
D-SACK blocks, at random times) pushes the sender through RTOs, tail loss probes, RACK's
timer, SACK recovery and undo, so that the fused path meets the states next to them: an
ACK that delivers a retransmission while older originals are still out (where RACK's loss
detection cannot be skipped, and ack_fast runs it in full). The same script runs with
connection.FAST_ACK on and off; after every step the wire and the state must agree.
"""

from __future__ import annotations

import copy
import random

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from netstack.counters import Counters
from netstack.proto.tcp import connection as tcpconn
from netstack.proto.tcp import invariants
from netstack.proto.tcp.cc import Cubic
from netstack.proto.tcp.config import TcpConfig
from netstack.proto.tcp.recovery import Recovery
from netstack.proto.tcp.scoreboard import Run
from netstack.wire.tcp import SYN
from tests.unit.tcp.tcptools import (
    LOCAL_ISN,
    MSS,
    REMOTE_ISN,
    Seg,
    listen,
    make_harness,
    seg,
)
from tests.unit.tcp.test_slim import TCB_FIELDS, counters_of, recovery_of

L = LOCAL_ISN + 1
R = REMOTE_ISN + 1
MASK = 0xFFFFFFFF


class Peer:
    """A receiver: keeps what arrived (byte ranges above L), ACKs the first hole, SACKs the
    newest ranges above it (RFC 2018: the block with the latest arrival first), D-SACKs a
    duplicate (RFC 2883)."""

    def __init__(self, rng: random.Random, ts: bool) -> None:
        self.rng = rng
        self.ts = ts
        self.arrived: list[tuple[int, int]] = []  # merged ranges, offsets from L
        self.latest: tuple[int, int] | None = None
        self.dsack: tuple[int, int] | None = None
        self.tsecr = 0
        self.queue: list[Seg] = []  # segments on their way to the peer

    def take(self, segs: list[Seg]) -> None:
        for s in segs:
            if s.payload or s.flags & 0x01:  # data (or FIN)
                self.queue.append(s)
                if s.ts is not None:
                    self.tsecr = s.ts[0]

    def deliver(self, loss: float, reorder: bool, sack: bool, now: float) -> list[Seg]:
        """The segments on their way arrive (some lost, a pair swapped); returns the ACKs a
        receiver sends for them: every second in-order segment, each out-of-order or
        duplicate one at once (RFC 5681 4.2), a last one for an odd tail."""
        queue = self.queue
        self.queue = []
        if reorder and len(queue) > 1:
            i = self.rng.randrange(len(queue) - 1)
            queue[i], queue[i + 1] = queue[i + 1], queue[i]
        acks = []
        pending = 0
        for s in queue:
            if self.rng.random() < loss:
                continue
            start = (s.seq - L) & MASK
            end = start + len(s.payload)
            before = self.cum()
            if any(a <= start and end <= b for a, b in self.arrived):
                self.dsack = (start, end)
            self.latest = (start, end)
            self._add(start, end)
            pending += 1
            if self.dsack or start != before or self.cum() != end or pending >= 2:
                acks.append(self.ack(sack, now))
                pending = 0
        if pending:
            acks.append(self.ack(sack, now))
        return acks

    def _add(self, start: int, end: int) -> None:
        ranges = sorted([*self.arrived, (start, end)])
        merged: list[list[int]] = []
        for a, b in ranges:
            if merged and a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        self.arrived = [(a, b) for a, b in merged]

    def cum(self) -> int:
        return self.arrived[0][1] if self.arrived and self.arrived[0][0] == 0 else 0

    def ack(self, sack: bool, now: float) -> Seg:
        cum = self.cum()
        blocks: list[tuple[int, int]] = []
        if sack:
            if self.dsack is not None:
                blocks.append(self.dsack)
            above = [r for r in self.arrived if r[0] > cum]
            latest = self.latest
            above.sort(key=lambda r: not (latest and r[0] <= latest[0] < r[1]))
            blocks += above[: (3 if self.ts else 4) - len(blocks)]  # what fits the option space
        self.dsack = None
        ts = (int(now * 1000) & MASK, self.tsecr) if self.ts else None
        return seg(
            seq=R,
            ack=(L + cum) & MASK,
            window=65535,
            sack=tuple(((L + a) & MASK, (L + b) & MASK) for a, b in blocks),
            ts=ts,
        )


def established(sack: bool, ts: bool):
    """A server connection in ESTABLISHED, in checked mode (proto/tcp/invariants.py)."""
    t = make_harness(sack=sack, timestamps=ts, send_buffer=200_000, congestion_control="cubic")
    invariants.attach(t.engine)  # every segment and flush checked; raises on a violation
    listener = listen(t)
    syn_ts = (1, 0) if ts else None
    t.send(seg(flags=SYN, seq=REMOTE_ISN, ack=0, mss=MSS, sack_perm=sack, ts=syn_ts))
    synack = t.recv()[0]
    ack_ts = (2, synack.ts[0]) if ts and synack.ts else None
    t.send(seg(seq=R, ack=L, ts=ack_ts))
    conn = listener.handlers[0].conn  # type: ignore[attr-defined]
    assert conn.state.value == "established"
    return t, conn


# (repeats weigh the choice: data flows and is ACKed more often than time jumps)
OP_NAMES = ["write", "write", "deliver", "deliver", "ack", "ack", "ack", "time", "timers"]
OPS = st.lists(
    st.tuples(st.sampled_from(OP_NAMES), st.integers(0, 1000)),
    min_size=5,
    max_size=80,
)


def play(fast: bool, monkeypatch, seed: int, sack: bool, ts: bool, loss: float, ops) -> list:
    """The script; returns a log of (step, wire, state) to compare."""
    monkeypatch.setattr(tcpconn, "FAST_ACK", fast)
    t, conn = established(sack, ts)
    peer = Peer(random.Random(seed), ts)
    log: list = []
    for step, (op, n) in enumerate(ops):
        if op == "write":
            if conn.state.value != "established":
                break  # (the retries ran out: nothing more to drive)
            conn.send(bytes(1 + n * 40))
            t.engine.flush(t.now)
        elif op == "deliver":
            acks = peer.deliver(loss, n % 3 == 0, sack, t.now)
            if n % 2:
                t.send_batch(*acks)  # one receive batch
            else:
                for a in acks:
                    t.now += n / 1e6
                    t.send(a)
        elif op == "ack":  # a window update or duplicate ACK, now and then
            t.now += n / 1e5
            if n % 4 == 0:
                t.send(peer.ack(sack, t.now))
        elif op == "time":
            t.advance(n / 20_000)  # up to 50 ms: RACK's timer, probes
        else:
            t.run_until(t.now + n / 2000)  # up to 0.5 s: RTOs
        out = t.recv_timed()
        peer.take([s for _, s in out])
        state = tuple(getattr(conn, f, None) for f in TCB_FIELDS) + recovery_of(conn)
        log.append((step, op, [(round(w, 9), repr(s)) for w, s in out], state))
    log.append(counters_of(t.engine))
    checker = t.engine.invariants  # type: ignore[attr-defined]
    assert not checker.violations and checker.segments_checked
    monkeypatch.undo()
    return log


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])  # fmt: skip
@given(
    seed=st.integers(0, 2**31),
    sack=st.booleans(),
    ts=st.booleans(),
    loss=st.sampled_from([0.0, 0.1, 0.3, 0.6]),
    ops=OPS,
)
def test_fused_ack_matches_the_general_path(monkeypatch, seed, sack, ts, loss, ops) -> None:
    fused = play(True, monkeypatch, seed, sack, ts, loss, ops)
    general = play(False, monkeypatch, seed, sack, ts, loss, ops)
    for a, b in zip(fused, general, strict=True):
        assert a == b


def test_rack_detection_runs_when_a_retransmission_is_delivered_before_originals(
    monkeypatch,
) -> None:
    """The case ack_fast cannot skip: in the open state (after an undo) an ACK delivers a
    retransmitted record sent after originals that are still out; RACK must look at them."""
    calls = []
    detect = Recovery._rack_detect

    def counted(self, now):
        calls.append(now)
        detect(self, now)

    ops = [("write", 200), ("deliver", 1), ("ack", 1), ("write", 400)]
    ops += [("time", 300), ("timers", 500), ("deliver", 0), ("ack", 10), ("deliver", 0)]
    ops += [("ack", 10), ("time", 50), ("ack", 10), ("write", 50), ("deliver", 1), ("ack", 5)]
    fused = play(True, monkeypatch, 3, True, True, 0.3, ops)
    monkeypatch.setattr(Recovery, "_rack_detect", counted)
    again = play(True, monkeypatch, 3, True, True, 0.3, ops)
    general = play(False, monkeypatch, 3, True, True, 0.3, ops)
    assert fused == again == general
    assert calls  # (some detection ran; the hypothesis test covers the rest)


# -- Recovery.ack_fast alone, on generated scoreboards -------------------------------------------
class FakeTcb:
    """What Recovery reads of a connection (recovery.Tcb)."""

    def __init__(self, sack_ok: bool, ts_ok: bool) -> None:
        self.iss = 1000
        self.snd_una = self.snd_nxt = 1001
        self.mss = 1000
        self.sack_ok = sack_ok
        self.ts_ok = ts_ok
        self.woken = 0

    def tsval(self, now: float) -> int:
        return int(now * 1000) & MASK

    def wake(self) -> None:
        self.woken += 1


def snapshot(rec: Recovery) -> tuple:
    board, rack, rtt, cc = rec.board, rec.rack, rec.rtt, rec.cc
    assert cc is not None
    return (
        tuple(getattr(rec, f) for f in (*RECOVERY_STATE, "newly_lost", "delivered")),
        rec.owed and (rec.owed.start, rec.owed.end),
        (rtt.srtt, rtt.rttvar, rtt.rto, rtt.backoff),
        (rack.xmit_ts, rack.order, rack.rtt, rack.min_rtt, rack.fack, rack.reord),
        (cc.cwnd, cc.ssthresh, repr(cc)),
        (board.sacked_bytes, board.lost_bytes, board.rexmit_bytes, board.high_sacked),
        tuple((r.start, r.end, r.sent_at, r.order, r.sacked, r.lost, r.rexmit, r.retransmitted)
              for r in board),
        (rec.tcb.snd_una, rec.tcb.woken, list(rec.counters.tcp_rtt_seconds.counts),
         rec.counters.tcp_fast_retransmits),
    )  # fmt: skip


RECOVERY_STATE = (
    "ca_state", "recover", "dupacks", "cwnd_limited", "rto_at", "rack_at", "tlp_at",
    "tlp_end", "reno_sacked", "prr_delivered", "prr_out", "undo_marker",
)  # fmt: skip


@st.composite
def scoreboards(draw):
    """A sender in the open state with nothing SACKed or lost (ack_fast's precondition), some
    records retransmitted (tail probes, or left from an episode), an RTT history or none,
    RACK's memory of earlier deliveries, and an ACK somewhere in the flight."""
    sack_ok, ts_ok = draw(st.booleans()), draw(st.booleans())
    tcb = FakeTcb(sack_ok, ts_ok)
    rec = Recovery(tcb, TcpConfig(), Counters())
    rec.cc = Cubic(tcb.mss)
    rec.cc.cwnd = draw(st.integers(2, 40)) * tcb.mss
    rec.cwnd_limited = draw(st.booleans())
    if draw(st.booleans()):
        rec.rtt.sample(draw(st.floats(0.001, 0.5)))
        rec.rack.min_rtt = draw(st.floats(0.0005, 0.5))
    now = 10.0
    seq = tcb.snd_nxt
    sizes = draw(st.lists(st.integers(1, 3000), min_size=1, max_size=20))
    for size in sizes:
        now += draw(st.floats(0, 0.01))
        end = seq + size
        if size > tcb.mss and draw(st.booleans()):
            rec.board.add_pieces(seq, end, tcb.mss, now)  # a TSO segment
        else:
            rec.board.add(seq, end, now)
        seq = end
    tcb.snd_nxt = seq
    rec.rto_at = now + rec.rtt.rto
    picks = draw(st.lists(st.integers(0, 10**6), max_size=4)) if draw(st.booleans()) else []
    if picks:  # listing the board cuts its Runs into pieces: without picks they stay Runs
        records = list(rec.board)
        for i in picks:
            now += draw(st.floats(0, 0.01))
            rec.board.retransmitted(records[i % len(records)], now)  # as a probe's copy
    if draw(st.booleans()):  # RACK remembers a delivery sent after some of these
        rec.rack.xmit_ts = now - draw(st.floats(0, 0.05))
        rec.rack.order = draw(st.integers(0, rec.board._tx + 2))
        rec.rack.rtt = draw(st.floats(0, 0.1))
        rec.rack.fack = draw(st.integers(tcb.snd_una, seq))
    acked = draw(st.integers(1, seq - tcb.snd_una))
    now += draw(st.floats(0, 0.3))
    ts = None
    if draw(st.booleans()):
        ts = (draw(st.integers(0, MASK)), draw(st.integers(0, MASK)))
    return rec, acked, ts, now


@settings(max_examples=400, deadline=None)
@given(scoreboards())
def test_ack_fast_equals_the_general_calls(setup) -> None:
    rec, acked, ts, now = setup
    assert rec.fast_ok()
    event(f"Runs on the board: {any(isinstance(r, Run) for r in rec.board._records)}")
    general = copy.deepcopy(rec)  # (with its own copy of the TCB)
    una = rec.tcb.snd_una
    ack = una + acked
    flight = rec.tcb.snd_nxt - una
    # the general path, in the connection's order (_segment_slim / _process_ack, _new_ack)
    general.take_sack((), ack)
    general.tcb.snd_una = ack
    general.on_new_ack(ack, acked, flight, ts, now)
    if general.tcb.sack_ok:
        general.on_sack_ack(ts, ack, acked, 0, None, now)
    rec.tcb.snd_una = ack
    rec.ack_fast(ack, acked, flight, ts, now)
    assert snapshot(rec) == snapshot(general)


def test_ack_fast_runs_rack_when_a_delivered_copy_is_newer_than_what_is_out() -> None:
    """An ACK delivers a record retransmitted after originals that are still out (its copy was
    sent later): RACK's detection cannot be skipped, finds them lost, and starts recovery."""
    tcb = FakeTcb(sack_ok=True, ts_ok=False)
    rec = Recovery(tcb, TcpConfig(), Counters())
    rec.cc = Cubic(tcb.mss)
    for i in range(10):
        rec.board.add(1001 + i * 1000, 2001 + i * 1000, 10.0 + i * 0.001)
    tcb.snd_nxt = 11001
    rec.rack.min_rtt = 0.01  # (so RACK takes the copy's delivery as its own)
    third = list(rec.board)[2]
    rec.board.retransmitted(third, 10.012)  # sent after records 4-10
    general = copy.deepcopy(rec)
    general.take_sack((), 4001)
    general.tcb.snd_una = 4001
    general.on_new_ack(4001, 3000, 10000, None, 10.3)
    general.on_sack_ack(None, 4001, 3000, 0, None, 10.3)
    tcb.snd_una = 4001
    rec.ack_fast(4001, 3000, 10000, None, 10.3)
    assert snapshot(rec) == snapshot(general)
    assert rec.ca_state == "recovery" and rec.board.lost_bytes == 7000
