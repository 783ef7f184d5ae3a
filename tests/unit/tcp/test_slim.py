"""The per-segment shortcuts of connection.py against the code they shortcut, differentially.

The slim segment path (Connection._segment_slim) and the window memo (_window_field): the same
seeded exchange — two engines on SimNet, with loss, duplication and reordering, every option
combination, in checked mode — runs twice: with the shortcut, and without it (connection.SLIM
or WINDOW_MEMO = False). Both runs must put exactly the same segments on the link at the same
virtual times, end with the same counters (drop reasons included) and the same TCBs; and the
slim run must actually have taken the slim path.
"""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netstack.api.services import TcpEcho
from netstack.api.tcp import connect, listen
from netstack.histogram import Histogram
from netstack.proto.tcp import connection as tcpconn
from netstack.proto.tcp.config import TcpConfig
from netstack.proto.tcp.recovery import Recovery
from tests.unit.tcp.simnet import SimNet
from tests.unit.tcp.tcptools import LOCAL_IP
from tests.unit.tcp.test_sim import Client

TCB_FIELDS = (
    "state", "snd_una", "snd_nxt", "snd_wnd", "snd_wl1", "snd_wl2", "max_snd_wnd", "rcv_nxt",
    "rcv_adv", "last_ack_sent", "ts_recent", "ts_recent_at", "rcv_seg_mss", "persist_backoff",
    "probes_out", "delack_at", "stats",
)  # fmt: skip


def counters_of(engine) -> dict:
    out = {}
    for field in dataclasses.fields(engine.counters):
        name = field.name
        value = getattr(engine.counters, name)
        if isinstance(value, Histogram):
            value = (list(value.counts), value.sum)
        out[name] = value
    return out


RECOVERY_FIELDS = (
    "ca_state", "recover", "dupacks", "cwnd_limited", "rto_at", "rack_at", "tlp_at",
    "tlp_end", "tlp_probes", "undos", "undo_marker", "reno_sacked", "prr_delivered", "prr_out",
)  # fmt: skip


def recovery_of(c) -> tuple:
    """What recovery keeps across ACKs: the fused ACK path must leave all of it as the
    general per-ACK calls do (cwnd, RTT estimator, RACK, the scoreboard's records and totals)."""
    rec = getattr(c, "recovery", None)
    if rec is None:  # a TIME_WAIT record
        return ()
    board, rack, rtt, cc = rec.board, rec.rack, rec.rtt, rec.cc
    records = tuple(
        (r.start, r.end, r.sent_at, r.order, r.sacked, r.lost, r.rexmit, r.retransmitted)
        for r in board
    )
    return (
        tuple(getattr(rec, f) for f in RECOVERY_FIELDS),
        (rtt.srtt, rtt.rttvar, rtt.rto, rtt.backoff),
        (rack.xmit_ts, rack.order, rack.rtt, rack.min_rtt, rack.fack, rack.reord,
         rack.reo_wnd_mult),
        None if cc is None else (cc.cwnd, cc.ssthresh, repr(cc)),
        (board.sacked_bytes, board.lost_bytes, board.rexmit_bytes, board.high_sacked, records),
    )  # fmt: skip


def tcbs_of(engine) -> list[tuple]:
    conns = sorted(engine.conns.values(), key=lambda c: c.key)
    # (a TIME_WAIT record, timewait.py, has no persist or delayed-ACK state: None)
    return [tuple(getattr(c, f, None) for f in TCB_FIELDS) + recovery_of(c) for c in conns]


def run(switches: dict, monkeypatch, seed, loss, duplicate, jitter, size, config_a, config_b):
    """One echo exchange with connection.py's `switches` set; returns (trace of every
    transmission, end state, hits of the slim path and of the fused ACK)."""
    for name, value in switches.items():
        monkeypatch.setattr(tcpconn, name, value)
    hits = [0]
    original = tcpconn.Connection._segment_slim

    def counted(self, h, payload, now):
        taken = original(self, h, payload, now)
        hits[0] += taken
        return taken

    monkeypatch.setattr(tcpconn.Connection, "_segment_slim", counted)
    fused = [0]
    ack_fast = Recovery.ack_fast

    def counted_fast(self, *args):
        fused[0] += 1
        ack_fast(self, *args)

    monkeypatch.setattr(Recovery, "ack_fast", counted_fast)
    pure = [0]
    pure_ack = tcpconn.Connection._segment_pure_ack

    def counted_pure(self, h, payload, now):
        taken = pure_ack(self, h, payload, now)
        pure[0] += taken
        return taken

    monkeypatch.setattr(tcpconn.Connection, "_segment_pure_ack", counted_pure)
    net = SimNet(seed, loss=loss, duplicate=duplicate, jitter=jitter,
                 config_a=config_a, config_b=config_b)  # fmt: skip
    net.same_isns()  # the same ISNs in both runs
    trace = net.trace()
    listen(net.b, 7, TcpEcho)
    data = (hashlib.sha256(str(seed).encode()).digest() * (size // 32 + 1))[:size]
    client = Client(data)
    connect(net.a, (LOCAL_IP, 7), lambda: client)
    # 25 % loss without SACK or timestamps: Karn keeps the backed-off RTO (up to 120 s, as
    # Linux does) and a 200 KB echo can take thousands of virtual seconds; the test is about
    # equivalence, so it gives the time.
    net.run(20_000, stop=lambda: bool(client.lost))
    assert bytes(client.received) == data
    end = (counters_of(net.a), counters_of(net.b), tcbs_of(net.a), tcbs_of(net.b), net.now)
    monkeypatch.undo()
    return trace, end, {"slim": hits[0], "fast_ack": fused[0], "pure_ack": pure[0]}


def run_bursts(switches: dict, monkeypatch) -> tuple[list[tuple], tuple]:
    """Bursts of data to the echo service with idle gaps longer than the RTO between them
    (RFC 5681 4.1's restart), and a half-close at the end: the idle output passes."""
    for name, value in switches.items():
        monkeypatch.setattr(tcpconn, name, value)
    net = SimNet(5, delay=0.02)
    net.same_isns()  # the same ISNs in both runs
    trace = net.trace()
    listen(net.b, 7, TcpEcho)
    client = Client(b"")
    client.pump = lambda: None  # type: ignore[method-assign]  # written by hand below
    transport = connect(net.a, (LOCAL_IP, 7), lambda: client)
    net.run(1.0)
    for size in (100_000, 3000, 60_000, 1):
        transport.write(bytes(size))
        net.run(5.0)  # the echo, then seconds of idleness (RTO ~ 0.2-1 s)
    transport.write_eof()
    net.run(5.0, stop=lambda: bool(client.lost))
    end = (counters_of(net.a), counters_of(net.b), tcbs_of(net.a), tcbs_of(net.b), net.now)
    monkeypatch.undo()
    return trace, end


def test_idle_output_passes_match_the_general_path(monkeypatch) -> None:
    slim = run_bursts({}, monkeypatch)
    general = run_bursts({"SLIM": False}, monkeypatch)
    assert len(slim[0]) == len(general[0]) > 100
    assert slim == general


def assert_same(monkeypatch, *args, switch: str = "SLIM") -> dict[str, int]:
    slim_trace, slim_end, hits = run({}, monkeypatch, *args)
    general_trace, general_end, general_hits = run({switch: False}, monkeypatch, *args)
    if switch in ("SLIM", "FAST_ACK"):
        assert general_hits["fast_ack"] == 0
    if switch == "SLIM":
        assert general_hits["slim"] == 0
    if switch == "PURE_ACK":
        assert general_hits["pure_ack"] == 0
    assert len(slim_trace) == len(general_trace)
    for i, (a, b) in enumerate(zip(slim_trace, general_trace, strict=True)):
        assert a == b, f"transmission {i} differs"
    assert slim_end == general_end
    return hits


configs = st.builds(
    TcpConfig,
    timestamps=st.booleans(),
    sack=st.booleans(),
    window_scaling=st.booleans(),
    receive_buffer=st.sampled_from([2000, 8192, 65535, 300_000]),
    send_buffer=st.sampled_from([1500, 10_000, 100_000]),
    nagle=st.booleans(),
    ooo_max_pieces=st.sampled_from([2, 256]),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])  # fmt: skip
@given(
    seed=st.integers(0, 2**31),
    loss=st.sampled_from([0.0, 0.02, 0.1]),
    duplicate=st.sampled_from([0.0, 0.05]),
    jitter=st.sampled_from([0.0, 0.003, 0.03]),
    size=st.sampled_from([1, 3000, 70_000, 200_000]),
    config_a=configs,
    config_b=configs,
)
def test_slim_path_sends_what_the_general_path_sends(
    monkeypatch, seed, loss, duplicate, jitter, size, config_a, config_b
):
    assert_same(monkeypatch, seed, loss, duplicate, jitter, size, config_a, config_b)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])  # fmt: skip
@given(
    seed=st.integers(0, 2**31),
    loss=st.sampled_from([0.0, 0.05]),
    jitter=st.sampled_from([0.0, 0.01]),
    size=st.sampled_from([3000, 200_000]),
    config_a=configs,
    config_b=configs,
)
def test_window_memo_sends_what_the_computation_sends(
    monkeypatch, seed, loss, jitter, size, config_a, config_b
):
    args = (seed, loss, 0.0, jitter, size, config_a, config_b)
    assert_same(monkeypatch, *args, switch="WINDOW_MEMO")


@pytest.mark.parametrize(
    "loss,duplicate,jitter,config,min_hits",
    [
        (0.0, 0.0, 0.0, TcpConfig(), 150),
        (0.0, 0.0, 0.0, TcpConfig(timestamps=False, sack=False), 150),
        (0.0, 0.0, 0.0, TcpConfig(receive_buffer=8192, window_scaling=False), 150),
        (0.05, 0.05, 0.01, TcpConfig(), 1),
        (0.02, 0.0, 0.005, TcpConfig(timestamps=False, sack=False), 1),
    ],
)
def test_bulk_takes_the_slim_path_and_matches(
    monkeypatch, loss, duplicate, jitter, config, min_hits
):
    """A 300 KB echo: on a clean link most of the server's segments (it stays ESTABLISHED
    while the client, having written everything and half-closed, is in FIN_WAIT) go the slim
    way; with losses fewer (out-of-order data, SACK blocks, duplicate ACKs go the general
    way). Either way the wire and the end state are the general path's."""
    hits = assert_same(monkeypatch, 11, loss, duplicate, jitter, 300_000, config, config)
    assert hits["slim"] >= min_hits


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])  # fmt: skip
@given(
    seed=st.integers(0, 2**31),
    loss=st.sampled_from([0.0, 0.02, 0.1, 0.25]),
    duplicate=st.sampled_from([0.0, 0.05]),
    jitter=st.sampled_from([0.0, 0.003, 0.03]),
    size=st.sampled_from([1, 3000, 70_000, 200_000]),
    config_a=configs,
    config_b=configs,
)
def test_fused_ack_sends_what_the_general_ack_path_sends(
    monkeypatch, seed, loss, duplicate, jitter, size, config_a, config_b
):
    """The fused ACK (Recovery.ack_fast) against recovery's general per-ACK calls, through
    loss (RTOs at 25 %), duplication, reordering (RACK's timer, D-SACK undo) and every option
    combination: the same wire, counters, TCBs, and recovery state (cwnd, RTT, RACK, the
    scoreboard's records)."""
    args = (seed, loss, duplicate, jitter, size, config_a, config_b)
    assert_same(monkeypatch, *args, switch="FAST_ACK")


@pytest.mark.parametrize(
    "loss,duplicate,jitter,config,min_fused",
    [
        (0.0, 0.0, 0.0, TcpConfig(), 30),
        (0.0, 0.0, 0.0, TcpConfig(timestamps=False, sack=False), 30),
        (0.0, 0.0, 0.0, TcpConfig(timestamps=False), 30),
        (0.05, 0.05, 0.01, TcpConfig(), 1),  # loss, SACK recovery, reordering
        (0.1, 0.0, 0.03, TcpConfig(), 1),  # RACK timers, undo
        (0.02, 0.0, 0.005, TcpConfig(timestamps=False, sack=False), 1),  # NewReno
        (0.3, 0.0, 0.0, TcpConfig(sack=False), 1),  # RTOs
    ],
)
def test_bulk_takes_the_fused_ack_and_matches(
    monkeypatch, loss, duplicate, jitter, config, min_fused
):
    """A 300 KB echo: the fused ACK takes most ACKs of new data on a clean link, and the ACKs
    around losses go the general way; either way wire, counters and state are the same."""
    hits = assert_same(monkeypatch, 11, loss, duplicate, jitter, 300_000, config, config,
                       switch="FAST_ACK")  # fmt: skip
    assert hits["fast_ack"] >= min_fused


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])  # fmt: skip
@given(
    seed=st.integers(0, 2**31),
    loss=st.sampled_from([0.0, 0.02, 0.1, 0.25]),
    duplicate=st.sampled_from([0.0, 0.05]),
    jitter=st.sampled_from([0.0, 0.003, 0.03]),
    size=st.sampled_from([1, 3000, 70_000, 200_000]),
    config_a=configs,
    config_b=configs,
)
def test_lean_data_segment_sends_what_xmit_sends(
    monkeypatch, seed, loss, duplicate, jitter, size, config_a, config_b
):
    """_send_segment's lean form (connection.LEAN_TX) against _xmit and Recovery.sent: the
    same wire, the same TCBs and scoreboards at the end."""
    args = (seed, loss, duplicate, jitter, size, config_a, config_b)
    assert_same(monkeypatch, *args, switch="LEAN_TX")


def run_short(switch: str, monkeypatch, seed, loss, duplicate, jitter, size, config_a, config_b):
    """A short connection as bench/tcpclient.c makes them, with connection.py's `switch`
    on or off: the handshake's ACK goes alone (the client writes nothing when it is made),
    then `size` bytes to the echo service and a half-close, and the run goes on until both
    sides are done (the server's LAST_ACK answered, the client's TIME_WAIT over).
    Returns (trace of every transmission, end state, pure-ACK path hits)."""
    if switch:
        monkeypatch.setattr(tcpconn, switch, False)
    pure = [0]
    pure_ack = tcpconn.Connection._segment_pure_ack

    def counted_pure(self, h, payload, now):
        taken = pure_ack(self, h, payload, now)
        pure[0] += taken
        return taken

    monkeypatch.setattr(tcpconn.Connection, "_segment_pure_ack", counted_pure)
    net = SimNet(seed, loss=loss, duplicate=duplicate, jitter=jitter,
                 config_a=config_a, config_b=config_b)  # fmt: skip
    net.same_isns()  # the same ISNs in both runs
    trace = net.trace()
    listen(net.b, 7, TcpEcho)
    data = (hashlib.sha256(str(seed).encode()).digest() * (size // 32 + 1))[:size]
    client = Client(data)
    pump = client.pump
    client.pump = lambda: None  # type: ignore[method-assign]  # nothing with the ACK
    connect(net.a, (LOCAL_IP, 7), lambda: client)
    net.run(60.0, stop=lambda: client.made)
    client.pump = pump  # type: ignore[method-assign]
    if client.made:
        client.pump()
    net.run(20_000, stop=lambda: bool(client.lost))
    net.run(300.0)  # the server's LAST_ACK answered (or timed out), TIME_WAIT over
    end = (counters_of(net.a), counters_of(net.b), tcbs_of(net.a), tcbs_of(net.b), net.now)
    monkeypatch.undo()
    return trace, end, pure[0]


def assert_short_same(monkeypatch, *args) -> int:
    fast_trace, fast_end, hits = run_short("", monkeypatch, *args)
    general_trace, general_end, general_hits = run_short("PURE_ACK", monkeypatch, *args)
    assert general_hits == 0
    assert len(fast_trace) == len(general_trace)
    for i, (a, b) in enumerate(zip(fast_trace, general_trace, strict=True)):
        assert a == b, f"transmission {i} differs"
    assert fast_end == general_end
    return hits


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])  # fmt: skip
@given(
    seed=st.integers(0, 2**31),
    loss=st.sampled_from([0.0, 0.1, 0.3]),
    duplicate=st.sampled_from([0.0, 0.1]),
    jitter=st.sampled_from([0.0, 0.003, 0.03]),
    size=st.sampled_from([0, 1, 3000]),
    config_a=configs,
    config_b=configs,
)
def test_pure_ack_path_on_short_connections(
    monkeypatch, seed, loss, duplicate, jitter, size, config_a, config_b
):
    """Connection._segment_pure_ack on tcpclient.c's kind of connection: the handshake ACK
    alone (SYN_RECEIVED), the ACKs of the echo in CLOSE_WAIT, LAST_ACK's ACK; with loss (a
    lost SYN-ACK, FIN or last ACK resent), duplicates (old ACKs, duplicate SYNs in
    SYN_RECEIVED), reordering and every option combination: the same wire, counters (drop
    reasons included) and TCBs as the general path."""
    assert_short_same(monkeypatch, seed, loss, duplicate, jitter, size, config_a, config_b)


@pytest.mark.parametrize(
    "config,size",
    [
        (TcpConfig(), 0),
        (TcpConfig(), 3000),
        (TcpConfig(timestamps=False, sack=False, window_scaling=False), 0),
        (TcpConfig(timestamps=False), 1),
    ],
)
def test_short_connection_takes_the_pure_ack_path(monkeypatch, config, size) -> None:
    """On a clean link the server's handshake ACK and its last ACK (and the client's ACK of
    the echo, in CLOSE_WAIT) go the pure-ACK way, and the wire is the general path's."""
    hits = assert_short_same(monkeypatch, 3, 0.0, 0.0, 0.0, size, config, config)
    assert hits >= 2


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])  # fmt: skip
@given(
    seed=st.integers(0, 2**31),
    loss=st.sampled_from([0.0, 0.02, 0.1, 0.25]),
    duplicate=st.sampled_from([0.0, 0.05]),
    jitter=st.sampled_from([0.0, 0.003, 0.03]),
    size=st.sampled_from([1, 3000, 70_000]),
    config_a=configs,
    config_b=configs,
)
def test_pure_ack_path_sends_what_the_general_path_sends(
    monkeypatch, seed, loss, duplicate, jitter, size, config_a, config_b
):
    """Connection._segment_pure_ack (the handshake's final ACK, the closing states' ACKs)
    against the general segment path, through loss (the handshake's segments and the FINs
    lost and resent), duplication (old ACKs, duplicate SYNs in SYN_RECEIVED), reordering and
    every option combination: the same wire, counters (drop reasons) and TCBs."""
    args = (seed, loss, duplicate, jitter, size, config_a, config_b)
    assert_same(monkeypatch, *args, switch="PURE_ACK")
