"""One scoreboard record per super-segment (scoreboard.Run) against one per MSS piece.

Before Runs, `Scoreboard.add_pieces` appended a `Sent` per wire piece of a TSO / software-GSO
super-segment (`per_piece_add_pieces` below is that code). A Run stands for the same pieces
until something other than a cumulative ACK looks at them; then it is cut into exactly those
records. So the whole sender must behave the same either way: the same segments on the wire
at the same times, the same recovery state (cwnd, RTT, RACK, the records and byte totals)
after every step, through losses, SACK and D-SACK, RACK's timer, tail loss probes, RTOs and
undo. These tests run one script twice, with Runs and with per-piece records, and compare.
The state is read without cutting the Runs (`pieces_of`), so the Runs live across steps.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from netstack.counters import Counters
from netstack.proto.tcp import invariants
from netstack.proto.tcp.cc import Cubic
from netstack.proto.tcp.config import TcpConfig
from netstack.proto.tcp.recovery import Recovery
from netstack.proto.tcp.scoreboard import Run, Scoreboard, Sent
from netstack.wire.tcp import SYN
from tests.unit.tcp.tcptools import MSS, REMOTE_ISN, listen, make_harness, seg
from tests.unit.tcp.test_fast_ack import MASK, FakeTcb, L, Peer, R
from tests.unit.tcp.test_slim import RECOVERY_FIELDS, TCB_FIELDS, counters_of
from tests.unit.tcp.test_tso import TSO_MAX, TsoIpv4


def per_piece_add_pieces(self, start, end, size, now, psh=False) -> None:
    """Scoreboard.add_pieces as it was before Runs: one Sent per piece."""
    records = self._records
    tx = self._tx
    for piece in range(start, end, size):
        tx += 1
        records.append(Sent(piece, min(piece + size, end), now, False, tx))
    self._tx = tx
    records[-1].psh = psh


def pieces_of(board: Scoreboard) -> tuple:
    """The per-piece records, Runs read as the pieces they stand for (without cutting them)."""
    out = []
    for r in board._records[board._head :]:
        for p in r.pieces() if r.seg else (r,):
            out.append((p.start, p.end, p.sent_at, p.order, p.psh, p.sacked, p.lost, p.rexmit,
                        p.retransmitted))  # fmt: skip
    return tuple(out)


def state_of(conn) -> tuple:
    rec = conn.recovery
    board, rack, rtt, cc = rec.board, rec.rack, rec.rtt, rec.cc
    return (
        tuple(getattr(conn, f, None) for f in TCB_FIELDS),
        tuple(getattr(rec, f) for f in RECOVERY_FIELDS),
        rec.owed and (rec.owed.start, rec.owed.end),
        (rtt.srtt, rtt.rttvar, rtt.rto, rtt.backoff),
        (rack.xmit_ts, rack.order, rack.rtt, rack.min_rtt, rack.fack, rack.reord,
         rack.reo_wnd_mult),
        None if cc is None else (cc.cwnd, cc.ssthresh, repr(cc)),
        (board.sacked_bytes, board.lost_bytes, board.rexmit_bytes, board.high_sacked,
         board._tx, pieces_of(board)),
    )  # fmt: skip


def established_tso(sack: bool, ts: bool):
    """A server connection in ESTABLISHED that sends TSO super-segments (cut into wire
    segments by the fake link), in checked mode."""
    t = make_harness(
        sack=sack, timestamps=ts, send_buffer=400_000, congestion_control="cubic", tso_max=TSO_MAX
    )
    ipv4 = TsoIpv4()
    ipv4.handlers = t.ipv4.handlers
    ipv4.pmtu = t.engine.pmtu
    t.engine.ipv4 = ipv4
    t.ipv4 = ipv4
    invariants.attach(t.engine)
    listener = listen(t)
    syn_ts = (1, 0) if ts else None
    t.send(seg(flags=SYN, seq=REMOTE_ISN, ack=0, mss=MSS, sack_perm=sack, ts=syn_ts))
    synack = t.recv()[0]
    ack_ts = (2, synack.ts[0]) if ts and synack.ts else None
    t.send(seg(seq=R, ack=L, ts=ack_ts))
    conn = listener.handlers[0].conn  # type: ignore[attr-defined]
    assert conn.state.value == "established"
    return t, conn


OP_NAMES = ["write", "write", "deliver", "deliver", "deliver", "ack", "time", "timers"]
OPS = st.lists(st.tuples(st.sampled_from(OP_NAMES), st.integers(0, 1000)), min_size=5, max_size=60)


def play(runs: bool, monkeypatch, seed: int, sack: bool, ts: bool, loss: float, ops) -> tuple:
    """The script (test_fast_ack's lossy, reordering, D-SACKing peer, with TSO); returns a
    log of (step, wire, state) and how many Runs the ACKs met (to show they were exercised)."""
    if not runs:
        monkeypatch.setattr(Scoreboard, "add_pieces", per_piece_add_pieces)
    met = [0]  # ACKs the fused path took with a Run under SND.UNA's new value
    ack_fast = Recovery.ack_fast

    def counted(self, ack, *args):
        board = self.board
        met[0] += any(r.seg and r.start < ack for r in board._records[board._head :])
        ack_fast(self, ack, *args)

    monkeypatch.setattr(Recovery, "ack_fast", counted)
    t, conn = established_tso(sack, ts)
    peer = Peer(random.Random(seed), ts)
    log: list = []
    for step, (op, n) in enumerate(ops):
        if op == "write":
            if conn.state.value != "established":
                break
            conn.send(bytes(1 + n * 150))
            t.engine.flush(t.now)
        elif op == "deliver":
            acks = peer.deliver(loss, n % 3 == 0, sack, t.now)
            if n % 2:
                t.send_batch(*acks)
            else:
                for a in acks:
                    t.now += n / 1e6
                    t.send(a)
        elif op == "ack":
            t.now += n / 1e5
            if n % 4 == 0:
                t.send(peer.ack(sack, t.now))
        elif op == "time":
            t.advance(n / 20_000)
        else:
            t.run_until(t.now + n / 2000)
        out = t.recv_timed()
        peer.take([s for _, s in out])
        log.append((step, op, [(round(w, 9), repr(s)) for w, s in out], state_of(conn)))
    log.append(counters_of(t.engine))
    checker = t.engine.invariants  # type: ignore[attr-defined]
    assert not checker.violations
    monkeypatch.undo()
    return log, met[0]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])  # fmt: skip
@given(
    seed=st.integers(0, 2**31),
    sack=st.booleans(),
    ts=st.booleans(),
    loss=st.sampled_from([0.0, 0.05, 0.2, 0.5]),
    ops=OPS,
)
def test_runs_behave_as_per_piece_records(monkeypatch, seed, sack, ts, loss, ops) -> None:
    with_runs, met = play(True, monkeypatch, seed, sack, ts, loss, ops)
    per_piece, _ = play(False, monkeypatch, seed, sack, ts, loss, ops)
    event(f"ACKs that met a Run: {'none' if not met else '1-9' if met < 10 else '10+'}")
    for a, b in zip(with_runs, per_piece, strict=True):
        assert a == b


@pytest.mark.parametrize(
    "sack,ts,loss,min_acked", [(True, True, 0.0, 20), (True, False, 0.1, 3), (False, True, 0.1, 3)]
)
def test_a_bulk_script_acks_runs_and_matches(monkeypatch, sack, ts, loss, min_acked) -> None:
    """Writes and deliveries only: the ACKs take whole and partial Runs (the fast path), and
    losses cut them; the wire and state stay the per-piece board's."""
    ops = [("write", 1000), ("deliver", 1), ("deliver", 2)] * 12 + [("timers", 1000)] * 3
    ops += [("deliver", 3), ("deliver", 1)] * 5
    with_runs, acked = play(True, monkeypatch, 7, sack, ts, loss, ops)
    per_piece, none = play(False, monkeypatch, 7, sack, ts, loss, ops)
    assert with_runs == per_piece
    assert acked >= min_acked and none == 0


# -- the Scoreboard alone ---------------------------------------------------------------------
def test_a_run_stands_for_the_pieces_and_is_cut_on_the_first_other_look() -> None:
    board = Scoreboard()
    board.add(100, 200, 1.0)
    board.add_pieces(200, 2700, 1000, 2.0, psh=True)  # pieces 200-1200, 1200-2200, 2200-2700
    board.add(2700, 2701, 3.0, fin=True)
    assert len(board._records) == 3 and isinstance(board._records[1], Run)
    assert board._tx == 5
    run = board._records[1]
    assert (run.first_order(), run.last_order(), run.first_end()) == (2, 4, 1200)
    run.start = 1500  # a cumulative ACK took part of the first two pieces
    assert (run.first_order(), run.last_order(), run.first_end()) == (3, 4, 2200)
    got = [(r.start, r.end, r.order, r.psh, r.fin) for r in board]  # cuts the Run
    assert got == [
        (100, 200, 1, False, False),
        (1500, 2200, 3, False, False),
        (2200, 2700, 4, True, False),
        (2700, 2701, 5, False, True),
    ]
    assert not any(isinstance(r, Run) for r in board._records)


def test_a_segment_of_one_piece_is_a_plain_record() -> None:
    board = Scoreboard()
    board.add_pieces(0, 1000, 1000, 1.0)
    assert type(board._records[0]) is Sent and board._tx == 1


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 5000), st.booleans()), min_size=1, max_size=12),
    st.lists(st.tuples(st.integers(0, 6), st.integers(0, 40_000), st.integers(1, 6000)),
             max_size=12),
)  # fmt: skip
def test_scoreboard_operations_match_per_piece_records(sends, ops) -> None:
    """Random sends (super-segments or not) and random ACK, SACK and loss operations on two
    boards, one with Runs and one with per-piece records: the same results and records."""
    new, old = Scoreboard(), Scoreboard()
    seq, now = 1000, 1.0
    for size, gso in sends:
        for board in (new, old):
            if gso:
                if board is new:
                    board.add_pieces(seq, seq + size, 700, now)
                else:
                    per_piece_add_pieces(board, seq, seq + size, 700, now)
            else:
                board.add(seq, seq + size, now)
        seq += size
        now += 0.001
    una = 1000
    for kind, a, b in ops:
        results = []
        for board in (new, old):
            board.delivered.clear()
            if kind == 0:  # cumulative ACK
                ack = min(una + a % 9000, seq)
                sample = board.ack(ack)
                results.append((sample, [(r.start, r.end, r.order) for r in board.delivered]))
            elif kind == 1:  # a SACK block
                left = min(una + a, seq)
                right = min(left + b, seq)
                blocks = [(left, right)] if left < right else []
                results.append((board.sack(blocks), [(r.start, r.end) for r in board.delivered]))
            elif kind == 2:
                results.append(board.mark_lost(700))
            elif kind == 3:
                r = board.next_lost()
                if r is not None:
                    board.retransmitted(r, now)
                results.append(r and (r.start, r.end))
            elif kind == 4:
                board.mark_all_lost(forget_sacks=bool(a % 2))
            elif kind == 5:
                r = board.last_unsacked()
                results.append(r and (r.start, r.end, r.order))
            else:
                board.unmark_lost()
            results.append((board.sacked_bytes, board.lost_bytes, board.rexmit_bytes,
                            board.high_sacked, board._tx))  # fmt: skip
        if kind == 0:
            una = max(una, min(una + a % 9000, seq))
        assert results[0 : len(results) // 2] == results[len(results) // 2 :]
        now += 0.001
    assert pieces_of(new) == pieces_of(old)
    assert [(r.start, r.end, r.order, r.psh) for r in new] == [
        (r.start, r.end, r.order, r.psh) for r in old
    ]


# -- Recovery.ack_fast on Runs, against the same ACK on per-piece records ---------------------
@st.composite
def fast_cases(draw):
    """ack_fast's precondition (open, nothing SACKed or lost) over records of both kinds, and
    RACK's memory anywhere (fack above a Run's first piece included); the ACK anywhere."""
    sack_ok, ts_ok = draw(st.booleans()), draw(st.booleans())
    sizes = draw(st.lists(st.integers(1, 8000), min_size=1, max_size=6))
    kinds = draw(st.lists(st.booleans(), min_size=len(sizes), max_size=len(sizes)))
    gaps = draw(st.lists(st.floats(0, 0.01), min_size=len(sizes), max_size=len(sizes)))
    min_rtt = draw(st.one_of(st.none(), st.floats(0.0005, 0.5)))
    memory = st.tuples(
        st.floats(0, 0.05), st.integers(0, 40), st.floats(0, 0.1), st.integers(0, sum(sizes))
    )
    rack = draw(st.one_of(st.none(), memory))
    acked = draw(st.integers(1, sum(sizes)))
    later = draw(st.floats(0, 0.3))
    ts = draw(st.one_of(st.none(), st.tuples(st.integers(0, MASK), st.integers(0, MASK))))
    return sack_ok, ts_ok, sizes, kinds, gaps, min_rtt, rack, acked, later, ts


def make_recovery(runs: bool, case):
    sack_ok, ts_ok, sizes, kinds, gaps, min_rtt, rack, _, _, _ = case
    tcb = FakeTcb(sack_ok, ts_ok)
    rec = Recovery(tcb, TcpConfig(), Counters())
    rec.cc = Cubic(tcb.mss)
    rec.cc.cwnd = 20 * tcb.mss
    if min_rtt is not None:
        rec.rtt.sample(min_rtt * 2)
        rec.rack.min_rtt = min_rtt
    now, seq = 10.0, tcb.snd_nxt
    for size, tso, gap in zip(sizes, kinds, gaps, strict=True):
        now += gap
        if tso and size > tcb.mss:
            if runs:
                rec.board.add_pieces(seq, seq + size, tcb.mss, now)
            else:
                per_piece_add_pieces(rec.board, seq, seq + size, tcb.mss, now)
        else:
            rec.board.add(seq, seq + size, now)
        seq += size
    tcb.snd_nxt = seq
    rec.rto_at = now + rec.rtt.rto
    if rack is not None:
        ago, order, rtt, fack = rack
        rec.rack.xmit_ts, rec.rack.order, rec.rack.rtt = now - ago, order, rtt
        rec.rack.fack = tcb.snd_una + fack
    return rec, now


# RACK's fack above the first piece of a Run that the ACK covers in part / in whole: only the
# first piece reads as reordered (rare at random: written out).
FACK_INSIDE_PARTIAL = (
    True,
    False,
    [5000],
    [True],
    [0.0],
    None,
    (0.01, 0, 0.01, 2500),
    3500,
    0.1,
    None,
)
FACK_INSIDE_WHOLE = (True, True, [5000, 500], [True, False], [0.0, 0.001], 0.01,
                     (0.01, 0, 0.01, 1500), 5200, 0.05, (5, 0))  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(fast_cases())
@example(FACK_INSIDE_PARTIAL)
@example(FACK_INSIDE_WHOLE)
def test_ack_fast_over_runs_equals_ack_fast_over_pieces(case) -> None:
    acked, later, ts = case[7], case[8], case[9]
    results = []
    for runs in (True, False):
        rec, now = make_recovery(runs, case)
        assert rec.fast_ok()
        una = rec.tcb.snd_una
        flight = rec.tcb.snd_nxt - una
        rec.tcb.snd_una = una + acked
        rec.ack_fast(una + acked, acked, flight, ts, now + later)
        board, rack, rtt, cc = rec.board, rec.rack, rec.rtt, rec.cc
        results.append((
            tuple(getattr(rec, f) for f in RECOVERY_FIELDS), rec.newly_lost, rec.delivered,
            (rtt.srtt, rtt.rttvar, rtt.rto), list(rec.counters.tcp_rtt_seconds.counts),
            (rack.xmit_ts, rack.order, rack.rtt, rack.min_rtt, rack.fack, rack.reord),
            (cc.cwnd, cc.ssthresh), rec.tcb.woken,
            (board.sacked_bytes, board.lost_bytes, board.rexmit_bytes, board._tx),
            pieces_of(board),
        ))  # fmt: skip
    assert results[0] == results[1]
