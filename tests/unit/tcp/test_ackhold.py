"""ACK filtering within a receive batch (connection.ACK_HOLD) against processing every ACK.

A bulk sender gets its peer's ACKs in batches (one per two segments, tens per batch); with
ACK_HOLD a pure ACK of new data waits for the batch's flush point, and a later pure ACK of the
same batch that acknowledges more replaces it (RFC 3449's ACK filtering, done where the ACKs
arrive). The same seeded transfer - two engines on SimNet, in checked mode, each arrival
batch handed over between `flush_follows` and the flush as Host.receive_batch does - runs
with the filter and without. Both must put exactly the same segments on the link at the same
virtual times and end with the same counters and TCBs, save what one RTT sample instead of
two changes and nothing else may: the RTT estimator (SRTT, RTTVAR, RTO), the timers set from
it (RTO, TLP), the RTT histogram, and the filter's own counter. The filtered run must
actually have filtered ACKs.
"""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from netstack.api.services import TcpDiscard
from netstack.api.tcp import connect, listen
from netstack.proto.tcp import connection as tcpconn
from netstack.proto.tcp import rtt as rttmod
from netstack.proto.tcp.config import TcpConfig
from tests.unit.tcp.simnet import SimNet
from tests.unit.tcp.tcptools import (
    LOCAL_IP,
    LOCAL_ISN,
    REMOTE_ISN,
    SYN_SEG,
    make_harness,
    seg,
)
from tests.unit.tcp.tcptools import listen as tt_listen
from tests.unit.tcp.test_sim import Client
from tests.unit.tcp.test_slim import RECOVERY_FIELDS, TCB_FIELDS, counters_of, tcbs_of

# What one RTT sample less may change (see the module docstring); everything else must match.
RTT_COUNTERS = ("tcp_rtt_seconds", "tcp_acks_filtered")


class BatchNet(SimNet):
    """SimNet whose engines see each arrival batch as a Host does (flush_follows set while
    the batch's segments are handed over, then the flush), and no ACK is held past it."""

    as_host = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.states: list[tuple] = []  # the sender's state after each of its flush points

    def flushed(self, engine) -> None:
        held = [c for c in engine.conns.values() if getattr(c, "ack_held", None)]
        assert not held, "an ACK still held after the flush point"
        if engine is self.a:
            self.states.append((round(self.now, 9), *map(sender_state, self.a.conns.values())))


def sender_state(c) -> tuple:
    """What a flush point leaves of a connection, RTT estimator aside: the TCB, recovery,
    RACK, congestion control and the scoreboard's totals (not its records: listing the board
    would cut its Runs and change what the next ACK meets)."""
    tcb = tuple(getattr(c, f, None) for f in TCB_FIELDS)
    rec = getattr(c, "recovery", None)
    if rec is None:  # a TIME_WAIT record
        return tcb
    rack, cc, board = rec.rack, rec.cc, rec.board
    return (
        *tcb,
        tuple(getattr(rec, f) for f in RECOVERY_FIELDS if f not in ("rto_at", "tlp_at")),
        (rack.xmit_ts, rack.order, rack.rtt, rack.fack, rack.reord, rack.reo_wnd_mult),
        None if cc is None else (cc.cwnd, cc.ssthresh, repr(cc)),
        (board.sacked_bytes, board.lost_bytes, board.rexmit_bytes, board.high_sacked),
        (len(c.sndbuf), c.sndbuf.free()),
    )


def without_rtt(end: tuple) -> tuple:
    """The end state with the RTT estimator's part left out (what filtering may change)."""
    counters_a, counters_b, tcbs_a, tcbs_b, now = end
    for counters in (counters_a, counters_b):
        for name in RTT_COUNTERS:
            counters.pop(name)
    out = []
    for tcbs in (tcbs_a, tcbs_b):
        rows = []
        for row in tcbs:
            row = list(row)
            if len(row) > 17:  # a connection: TCB fields, then recovery_of's tuples
                rec = list(row[17])
                # RECOVERY_FIELDS: rto_at and tlp_at (5 and 7) come from the RTO and SRTT
                rec[4] = rec[6] = None
                row[17] = tuple(rec)
                row[18] = None  # (srtt, rttvar, rto, backoff)
            rows.append(tuple(row))
        out.append(rows)
    return counters_a, counters_b, out[0], out[1], now


def run(hold: bool, monkeypatch, seed, loss, jitter, size, config, offload):
    """The client writes `size` bytes to discard and closes; returns (every transmission,
    end state, ACKs filtered)."""
    monkeypatch.setattr(tcpconn, "ACK_HOLD", hold)
    net = BatchNet(seed, loss=loss, jitter=jitter, config_a=config, config_b=config,
                   offload=offload)  # fmt: skip
    net.same_isns()  # the same ISNs in both runs
    trace = net.trace()
    listen(net.b, 9, TcpDiscard)
    data = (hashlib.sha256(str(seed).encode()).digest() * (size // 32 + 1))[:size]
    client = Client(data)
    connect(net.a, (LOCAL_IP, 9), lambda: client)
    net.run(20_000, stop=lambda: bool(client.lost))
    assert client.lost == [None]
    filtered = net.a.counters.tcp_acks_filtered
    end = (counters_of(net.a), counters_of(net.b), tcbs_of(net.a), tcbs_of(net.b), net.now)
    run.states = net.states  # type: ignore[attr-defined]
    monkeypatch.undo()
    return trace, end, filtered


TSO = TcpConfig(tso_max=65536)


@pytest.mark.parametrize(
    "seed,loss,jitter,size,config,offload,min_filtered",
    [
        (1, 0.0, 0.0, 2_000_000, TcpConfig(), "off", 100),
        (2, 0.0, 0.0, 2_000_000, TcpConfig(timestamps=False), "off", 100),
        (3, 0.0, 0.0, 2_000_000, TcpConfig(sack=False), "off", 100),
        (4, 0.0, 0.0, 2_000_000, TcpConfig(window_scaling=False), "off", 100),
        (5, 0.0, 0.0, 3_000_000, TSO, "wire", 100),
        # reordering (RACK, D-SACK): every arrival its own batch, so nothing to filter, but
        # every ACK held to its flush point
        (6, 0.0, 0.002, 2_000_000, TcpConfig(), "off", 0),
        (7, 0.0, 0.002, 3_000_000, TSO, "wire", 0),
    ],
)
def test_filtered_acks_send_what_every_ack_sends(
    monkeypatch, seed, loss, jitter, size, config, offload, min_filtered
):
    held_trace, held_end, filtered = run(True, monkeypatch, seed, loss, jitter, size, config,
                                         offload)  # fmt: skip
    held_states = run.states  # type: ignore[attr-defined]
    all_trace, all_end, none = run(False, monkeypatch, seed, loss, jitter, size, config, offload)
    all_states = run.states  # type: ignore[attr-defined]
    assert none == 0
    assert filtered >= min_filtered
    assert len(held_trace) == len(all_trace)
    for i, (a, b) in enumerate(zip(held_trace, all_trace, strict=True)):
        assert a == b, f"transmission {i} differs"
    assert without_rtt(held_end) == without_rtt(all_end)
    assert len(held_states) == len(all_states) >= 10
    for i, (a, b) in enumerate(zip(held_states, all_states, strict=True)):
        assert a == b, f"the sender's state after flush point {i} differs"


SMALL = TcpConfig(send_buffer=40_000)  # application-limited: cwnd is not what stops it


@pytest.mark.parametrize(
    "seed,loss,config",
    [
        (11, 0.01, SMALL),
        (12, 0.05, SMALL),
        (12, 0.02, TcpConfig(send_buffer=40_000, sack=False, timestamps=False)),  # NewReno
        (11, 0.05, SMALL),  # a timer set from SRTT fires 0.2 us apart: the runs part there
    ],
)
def test_filtered_acks_through_loss(monkeypatch, seed, loss, config):
    """Through loss (SACK, RACK, TLP, RTOs, NewReno) the filter still runs and the transfer
    ends cleanly. The two runs send the same segments at the same times with the same end
    state (RTT part aside) until a timer set from the RTT estimator (RTO, TLP, RACK's
    reordering window) fires at another time; from there they may part, and the first
    difference must be just that: the same segment, a moment apart."""
    held_trace, held_end, filtered = run(True, monkeypatch, seed, loss, 0.0, 1_000_000, config,
                                         "off")  # fmt: skip
    all_trace, all_end, _ = run(False, monkeypatch, seed, loss, 0.0, 1_000_000, config, "off")
    assert filtered >= 1
    if held_trace == all_trace:
        assert without_rtt(held_end) == without_rtt(all_end)
        return
    i = next(i for i, (a, b) in enumerate(zip(held_trace, all_trace, strict=False)) if a != b)
    (t_a, *rest_a), (t_b, *rest_b) = held_trace[i], all_trace[i]
    assert rest_a == rest_b, f"transmission {i} differs in more than its time"
    assert abs(t_a - t_b) < 0.001


def write_buffer_mid_batch(hold: bool, monkeypatch) -> tuple[list[tuple[int, int, int]], int]:
    """The sender's get_write_buffer_size() and SND.UNA read by the application between the
    segments of its arrival batches (as another connection's callback could), per segment;
    and how often an ACK was held when the application looked."""
    monkeypatch.setattr(tcpconn, "ACK_HOLD", hold)
    net = BatchNet(21, config_a=SMALL)
    net.same_isns()
    listen(net.b, 9, TcpDiscard)
    client = Client(bytes(600_000))
    transport = connect(net.a, (LOCAL_IP, 9), lambda: client)
    seen: list[tuple[int, int, int]] = []
    held = 0
    receive = net.a.receive

    def receive_and_look(ip, segment, packet, now):
        nonlocal held
        receive(ip, segment, packet, now)
        conn = transport._conn  # the TCB the application's call must see processed
        held += conn.ack_held is not None
        seen.append((transport.get_write_buffer_size(), conn.snd_una, conn.recovery.dupacks))

    net.a.receive = receive_and_look  # type: ignore[method-assign]
    net.run(100, stop=lambda: bool(client.lost))
    monkeypatch.undo()
    return seen, held


def test_application_reads_between_segments_see_every_ack(monkeypatch) -> None:
    """An ACK held to the flush point is processed before the application reads the send
    buffer (Connection.release_ack): what it sees mid-batch is what it sees without holding."""
    held, n_held = write_buffer_mid_batch(True, monkeypatch)
    every, none = write_buffer_mid_batch(False, monkeypatch)
    assert n_held > 100 and none == 0
    assert len(held) == len(every) > 100
    assert held == every


def test_an_rtt_sample_weighs_as_the_acks_it_stands_for(monkeypatch) -> None:
    """Every filtered ACK is in the weight of the sample its replacement took (RFC 7323
    appendix G's 1/n gain per ACK): one sample per batch would otherwise move SRTT and
    RTTVAR as one ACK of the n per RTT, k times slower than the ACKs it replaced."""
    weights: list[int] = []
    sample = rttmod.RttEstimator.sample

    def recorded(self, r, samples_per_rtt=1, acks=1):
        weights.append(acks)
        sample(self, r, samples_per_rtt, acks)

    monkeypatch.setattr(rttmod.RttEstimator, "sample", recorded)
    _, _, filtered = run(True, monkeypatch, 1, 0.0, 0.0, 2_000_000, TcpConfig(), "off")
    assert filtered >= 100
    assert sum(weights) - len(weights) == filtered


def test_the_estimator_moves_by_the_acks_a_sample_stands_for() -> None:
    one, four, each = (rttmod.RttEstimator(1.0, 0.2, 60.0) for _ in range(3))
    for est in (one, four, each):
        est.sample(0.100)
    one.sample(0.200, 8)
    four.sample(0.200, 8, acks=4)
    for _ in range(4):
        each.sample(0.200, 8)
    assert one.srtt == pytest.approx(0.100 + 0.1 / 64)  # alpha / n
    assert four.srtt == pytest.approx(each.srtt, rel=0.01)  # ~ four samples of it
    assert four.rttvar == pytest.approx(each.rttvar, rel=0.05)
    capped = rttmod.RttEstimator(1.0, 0.2, 60.0)
    capped.sample(0.100)
    capped.sample(0.200, 2, acks=9)  # never more than one whole RFC 6298 step
    assert capped.srtt == pytest.approx(0.100 + 0.1 / 8)


@pytest.mark.parametrize(
    "ts1,ts2",
    [
        (200, 150),  # the later ACK's TSval is older than the held one's: PAWS drops it
        (200, 200),  # equal: both pass
        (200, 260),
    ],
)
def test_a_replacing_ack_passes_paws_as_it_would_after_the_held_one(monkeypatch, ts1, ts2):
    """With timestamps, TS.Recent would be the held ACK's TSval by the time the later one
    arrives (RFC 7323 4.3): a later ACK whose TSval fails against it must not replace it."""

    def play(hold: bool) -> tuple:
        monkeypatch.setattr(tcpconn, "ACK_HOLD", hold)
        t = make_harness(timestamps=True)
        listener = tt_listen(t)
        t.send(dataclasses.replace(SYN_SEG, ts=(100, 0)))
        ours = t.recv()[0].ts[0]
        t.send(seg(seq=REMOTE_ISN + 1, ack=LOCAL_ISN + 1, ts=(101, ours)))
        conn = listener.handlers[0].conn
        conn.send(b"x" * 4000)
        t.engine.flush(t.now)
        ours = t.recv()[-1].ts[0]
        t.engine.flush_follows = True
        t.send_batch(
            seg(seq=REMOTE_ISN + 1, ack=LOCAL_ISN + 1001, ts=(ts1, ours)),
            seg(seq=REMOTE_ISN + 1, ack=LOCAL_ISN + 2001, ts=(ts2, ours)),
        )
        t.engine.flush_follows = False
        t.engine.flush(t.now)
        return (conn.snd_una, conn.ts_recent, conn.rcv_nxt, t.counters.drops.copy(),
                tuple(t.recv()), t.counters.tcp_acks_filtered)  # fmt: skip

    held, every = play(True), play(False)
    assert held[:-1] == every[:-1]
    assert held[-1] == (1 if ts2 >= ts1 else 0)


def two_acks(monkeypatch, hold: bool, *, ooo: bool = False, closed: bool = False,
             windows: tuple[int, int] = (20000, 8000)) -> tuple:  # fmt: skip
    """A connection with 4 000 bytes out (and our FIN, `closed`; after out-of-order data from
    the peer, `ooo`) gets one batch of two pure ACKs (+1 000, +2 000) with `windows`; returns
    the TCB's window, ACK and state fields, what it sent, and the ACKs filtered."""
    monkeypatch.setattr(tcpconn, "ACK_HOLD", hold)
    t = make_harness()
    listener = tt_listen(t)
    t.send(dataclasses.replace(SYN_SEG, window=8000))
    t.recv()
    t.send(seg(seq=REMOTE_ISN + 1, ack=LOCAL_ISN + 1, window=8000))
    conn = listener.handlers[0].conn
    conn.send(b"x" * 4000)
    if closed:
        conn.close()
    t.engine.flush(t.now)
    t.recv()
    if ooo:
        t.send(seg(seq=REMOTE_ISN + 101, ack=LOCAL_ISN + 1, window=8000, payload=b"y" * 50))
        t.recv()
        assert conn.snd_wl1 > conn.rcv_nxt
    t.engine.flush_follows = True
    t.send_batch(
        seg(seq=REMOTE_ISN + 1, ack=LOCAL_ISN + 1001, window=windows[0]),
        seg(seq=REMOTE_ISN + 1, ack=LOCAL_ISN + 2001, window=windows[1]),
    )
    t.engine.flush_follows = False
    t.engine.flush(t.now)
    fields = ("max_snd_wnd", "snd_wnd", "snd_una", "snd_wl1", "snd_wl2", "state", "fin_seq")
    return (*(getattr(conn, f) for f in fields), tuple(t.recv()), t.counters.tcp_acks_filtered)


@pytest.mark.parametrize(
    "case,filtered",
    [
        (dict(windows=(20000, 8000)), 1),  # the held ACK's window is the largest seen
        (dict(windows=(8000, 20000)), 1),
        # out-of-order data from the peer carried a window (SND.WL1 > RCV.NXT): neither
        # ACK's window is taken, so the first may not be held (its window folded into the
        # largest seen would widen RFC 5961's old-ACK range and the small-window test)
        (dict(ooo=True), 0),
        (dict(closed=True), 0),  # our FIN is out (FIN_WAIT_1): held only in ESTABLISHED
    ],
)
def test_a_batch_of_two_acks_leaves_what_both_would(monkeypatch, case, filtered) -> None:
    held, every = two_acks(monkeypatch, True, **case), two_acks(monkeypatch, False, **case)
    assert held[:-1] == every[:-1]
    assert (held[-1], every[-1]) == (filtered, 0)
