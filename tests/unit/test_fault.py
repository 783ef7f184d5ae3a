"""Fault injection: the `fault` setting, the per-direction engine on a fake clock, FaultLink over
a fake link, and its delays on the real Loop (over a socketpair: no devices, no root)."""

from __future__ import annotations

import contextlib
import itertools
import random
import socket
import time

import pytest

from netstack.cli import _parser
from netstack.config import ConfigError, build_config, load_toml
from netstack.counters import Counters
from netstack.drops import Drop
from netstack.io.fault import (
    REORDER_MAX_HOLD,
    RX_FORM,
    TX_FORM,
    FaultChannel,
    FaultLink,
    FaultSpec,
    Impairment,
    channel_rng,
    parse_fault,
)
from netstack.io.link import LinkTxError
from netstack.io.loop import Loop


def frames(n: int) -> list[memoryview]:
    return [memoryview(i.to_bytes(4, "big") + bytes(60)) for i in range(n)]


def ids(out) -> list[int]:
    return [
        int.from_bytes(bytes(f if isinstance(f, memoryview) else b"".join(f))[:4], "big")
        for f in out
    ]


def channel(seed: int = 1, counters: Counters | None = None, **impairment) -> FaultChannel:
    return FaultChannel(
        Impairment(**impairment),
        channel_rng(seed, "rx"),
        RX_FORM,
        counters.drop if counters is not None else None,
    )


# -- the setting -------------------------------------------------------------------------------
def test_parse_both_directions() -> None:
    spec = parse_fault("drop=0.05,dup=0.01,reorder=0.25,delay=2ms,corrupt=0.001,seed=7")
    assert spec == FaultSpec(
        Impairment(drop=0.05, dup=0.01, reorder=0.25, corrupt=0.001, delay=0.002),
        Impairment(drop=0.05, dup=0.01, reorder=0.25, corrupt=0.001, delay=0.002),
        seed=7,
    )


@pytest.mark.parametrize(
    "text", ["rx:drop=0.05,tx:drop=0.01", "tx:drop=1%, rx:drop=5%", "drop=1%,rx:drop=0.05"]
)
def test_parse_per_direction_and_overrides(text: str) -> None:
    spec = parse_fault(text)
    assert spec is not None
    assert (spec.rx.drop, spec.tx.drop, spec.seed) == (0.05, 0.01, None)


def test_parse_durations_limit_and_none() -> None:
    spec = parse_fault("rx:delay=250us,tx:delay=1.5s,jitter=3ms,limit=10")
    assert spec is not None
    assert (spec.rx.delay, spec.tx.delay, spec.rx.jitter, spec.tx.limit) == (
        0.00025,
        1.5,
        0.003,
        10,
    )
    for nothing in (None, False, "", "none", "off", " false "):
        assert parse_fault(nothing) is None


@pytest.mark.parametrize(
    "text",
    [
        "drop=0.05,dup=0.01,reorder=0.25,corrupt=0.001,delay=2ms,seed=7",
        "jitter=500us,rx:drop=0.05,tx:drop=0.01",
        "rx:delay=250us,tx:delay=1.5s,seed=0",
        "rx:limit=10,tx:limit=20",
    ],
)
def test_canonical_text_round_trips(text: str) -> None:
    spec = parse_fault(text)
    assert str(spec) == text
    assert parse_fault(str(spec)) == spec


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("dorp=0.1", "unknown fault 'dorp'"),
        ("drop=2", "probability"),
        ("drop=-1%", "probability"),
        ("drop=lots", "bad drop 'lots'"),
        ("delay=5", "unit"),
        ("delay=2min", "unit"),
        ("delay=-1ms", "unit"),
        ("delay=61s", "between"),
        ("up:drop=0.1", "bad direction 'up'"),
        ("rx:seed=3", "both directions"),
        ("drop", "key=value"),
        ("drop=0.1,,dup=0.1", "key=value"),
        ("drop=0.1,drop=0.2", "given twice"),
        ("limit=0", "limit"),
        ("seed=-4", "non-negative"),
    ],
)
def test_bad_values_are_one_line_errors_naming_fault(text: str, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config({"fault": text}, source="command line")
    message = str(info.value)
    assert message.startswith("command line: bad value for 'fault'")
    assert why in message
    assert "\n" not in message


def test_flag_toml_and_describe(tmp_path) -> None:
    args = _parser().parse_args(["run", "--fault", "rx:drop=0.1,seed=3"])
    assert args.fault == "rx:drop=0.1,seed=3"
    path = tmp_path / "n.toml"
    path.write_text('fault = "delay=2ms,seed=9"\n')
    config = build_config(load_toml(path))
    assert config.fault == FaultSpec(Impairment(delay=0.002), Impairment(delay=0.002), 9)
    assert "fault = delay=2ms,seed=9" in config.describe()
    assert build_config().fault is None


# -- one direction, fake clock -----------------------------------------------------------------
def test_no_impairment_passes_the_same_views_through() -> None:
    ch = channel()
    batch = frames(5)
    out: list = []
    ch.process(batch, 0.0, out)
    assert all(a is b for a, b in zip(out, batch, strict=True))
    assert ch.stats.frames == ch.stats.delivered == 5


@pytest.mark.parametrize(("key", "rate"), [("drop", 0.1), ("dup", 0.05), ("corrupt", 0.02)])
def test_seeded_rates_within_tolerance(key: str, rate: float) -> None:
    n = 20000
    counters = Counters()
    ch = channel(seed=5, counters=counters, **{key: rate})
    batch = frames(n)
    out: list = []
    ch.process(batch, 0.0, out)
    count = {"drop": ch.stats.dropped, "dup": ch.stats.duplicated, "corrupt": ch.stats.corrupted}
    sigma = (n * rate * (1 - rate)) ** 0.5
    assert abs(count[key] - n * rate) < 5 * sigma, count
    extra = {"drop": -count["drop"], "dup": count["dup"], "corrupt": 0}[key]
    assert len(out) == ch.stats.delivered == n + extra
    assert counters.drops == ({Drop.LINK_FAULT_INJECTED: count["drop"]} if key == "drop" else {})


def test_corrupt_flips_exactly_one_bit_in_a_copy() -> None:
    ch = channel(corrupt=1.0)
    original = frames(50)
    keep = [bytes(v) for v in original]
    out: list = []
    ch.process(original, 0.0, out)
    for before, after in zip(keep, out, strict=True):
        diff = int.from_bytes(before, "big") ^ int.from_bytes(bytes(after), "big")
        assert bin(diff).count("1") == 1
    assert [bytes(v) for v in original] == keep  # the received buffer itself is untouched


def test_a_seed_replays_the_same_decisions_exactly() -> None:
    """Drops draw one random() per frame, in order, from the direction's own RNG."""
    n, p = 200, 0.3
    out: list = []
    channel(seed=42, drop=p).process(frames(n), 0.0, out)
    model = channel_rng(42, "rx")
    assert ids(out) == [i for i in range(n) if model.random() >= p]
    again: list = []
    channel(seed=42, drop=p).process(frames(n), 0.0, again)
    other: list = []
    channel(seed=43, drop=p).process(frames(n), 0.0, other)
    assert ids(again) == ids(out) != ids(other)
    tx = channel_rng(42, "tx")
    assert [tx.random() for _ in range(5)] != [channel_rng(42, "rx").random() for _ in range(5)]


def test_delay_holds_copies_until_their_time() -> None:
    ch = channel(delay=0.010)
    batch = frames(3)
    out: list = []
    ch.process(batch, 1.0, out)
    assert out == [] and ch.held == 3 and ch.next_deadline() == pytest.approx(1.010)
    for view in batch:  # the arena is reused after the call: held frames must be copies
        view.release()
    ch.release(1.0099, out)
    assert out == []
    ch.process(frames(1)[:0], 1.0101, out)  # any later call releases what is due, in order
    assert ids(out) == [0, 1, 2] and ch.held == 0 and ch.next_deadline() is None
    assert ch.stats.delayed == 3


def test_jitter_spreads_release_times_within_bounds() -> None:
    ch = channel(delay=0.010, jitter=0.005)
    ch.process(frames(200), 0.0, [])
    times = sorted(when for when, _, _ in ch._held)
    assert times[0] >= 0.010 and times[-1] <= 0.015
    assert times[-1] - times[0] > 0.004  # really spread, not constant


def test_reorder_swaps_with_the_next_frame() -> None:
    ch = channel(reorder=1.0)
    out: list = []
    ch.process(frames(6), 0.0, out)
    assert ids(out) == [1, 0, 3, 2, 5, 4]
    assert ch.stats.reordered == 3 and ch.stats.delivered == 6


def test_reorder_releases_a_lonely_frame_after_the_max_hold() -> None:
    ch = channel(reorder=1.0)
    out: list = []
    ch.process(frames(1), 5.0, out)
    assert out == [] and ch.next_deadline() == pytest.approx(5.0 + REORDER_MAX_HOLD)
    ch.release(5.0 + REORDER_MAX_HOLD, out)
    assert ids(out) == [0] and ch.stats.reordered == 0


def test_reorder_rate_seeded() -> None:
    ch = channel(seed=3, reorder=0.25)
    out: list = []
    ch.process(frames(4000), 0.0, out)
    ch.release(1.0, out)
    assert sorted(ids(out)) == list(range(4000))
    swaps = sum(1 for a, b in itertools.pairwise(ids(out)) if a > b)
    assert swaps == ch.stats.reordered
    # a frame is held with p = 0.25 unless the slot is busy: about p/(1+p) of the frames
    assert abs(swaps / 4000 - 0.25 / 1.25) < 0.03


def test_hold_queue_is_bounded_and_overflow_is_a_counted_drop() -> None:
    counters = Counters()
    ch = channel(counters=counters, delay=1.0, limit=5)
    out: list = []
    ch.process(frames(8), 0.0, out)
    assert ch.held == 5 and ch.stats.overflow == 3
    assert counters.drops[Drop.LINK_FAULT_QUEUE_FULL] == 3
    ch.release(1.0, out)
    assert ids(out) == [0, 1, 2, 3, 4]


def test_tx_form_owns_piece_tuples() -> None:
    ch = FaultChannel(Impairment(delay=0.001), random.Random(1), TX_FORM)
    header, payload = bytearray(b"\x00\x00\x00\x07"), memoryview(b"payload")
    ch.process([(header, payload)], 0.0, [])
    header[3] = 0  # the caller reuses its buffers
    out: list = []
    ch.release(0.001, out)
    assert out == [(b"\x00\x00\x00\x07payload",)]


# -- FaultLink over a fake link ----------------------------------------------------------------
class FakeLink:
    """In-memory Link: `incoming` is what receive_batch returns, `sent` what send_batch took."""

    def __init__(self) -> None:
        self.name, self.mac, self.mtu, self.fd = "fake0", b"\x02" * 6, 1500, 99
        self.max_batch = 64
        self.rx_oversize = 0
        self.incoming: list[memoryview] = []
        self.sent: list[bytes] = []
        self.accept: int | None = None  # frames taken per send_batch (EAGAIN after)
        self.refuse: int | None = None  # index in a batch to refuse for good
        self.closed = False

    def receive_batch(self) -> list[memoryview]:
        batch, self.incoming = self.incoming, []
        return batch

    def send_batch(self, batch) -> int:
        limit = len(batch) if self.accept is None else min(self.accept, len(batch))
        for i, frame in enumerate(batch[:limit]):
            if i == self.refuse:
                self.refuse = None
                raise LinkTxError("refused", 22, i)
            self.sent.append(b"".join(frame))
        return limit

    def close(self) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.now = 10.0

    def __call__(self) -> float:
        return self.now


def fault_link(text: str) -> tuple[FaultLink, FakeLink, Clock, Counters]:
    spec = parse_fault(text)
    assert spec is not None
    inner, clock, counters = FakeLink(), Clock(), Counters()
    return FaultLink(inner, spec, clock=clock, counters=counters), inner, clock, counters


def test_link_attributes_come_from_the_inner_link() -> None:
    link, inner, _, _ = fault_link("drop=0.1")
    assert (link.name, link.mtu, link.fd, link.max_batch) == ("fake0", 1500, 99, 64)
    assert link.mac == inner.mac
    inner.rx_oversize = 2
    link.receive_batch()
    assert (link.rx_oversize, inner.rx_oversize) == (2, 0)
    link.close()
    assert inner.closed


def test_link_directions_are_independent() -> None:
    link, inner, _, counters = fault_link("rx:drop=1,seed=4")
    inner.incoming = frames(10)
    assert link.receive_batch() == []
    assert link.send_batch([(bytes(f),) for f in frames(10)]) == 10
    assert len(inner.sent) == 10
    assert counters.drops == {Drop.LINK_FAULT_INJECTED: 10}
    assert link.stats["rx"].dropped == 10 and link.stats["tx"].dropped == 0


def test_link_seed_defaults_to_random_and_is_reported() -> None:
    a, *_ = fault_link("drop=0.5")
    b, *_ = fault_link("drop=0.5")
    assert a.seed != b.seed
    assert f"seed={a.seed}" in a.describe()
    c, *_ = fault_link("drop=0.5,seed=11")
    assert c.seed == 11


def test_link_tx_delay_is_sent_by_poll() -> None:
    link, inner, _, _ = fault_link("tx:delay=5ms")
    assert link.send_batch([(bytes(f),) for f in frames(2)]) == 2
    assert inner.sent == [] and link.next_deadline() == pytest.approx(10.005)
    link.poll(10.004)
    assert inner.sent == []
    link.poll(10.005)
    assert ids([(s,) for s in inner.sent]) == [0, 1]


def test_link_rx_delay_released_by_receive_batch() -> None:
    link, inner, clock, _ = fault_link("rx:delay=5ms")
    inner.incoming = frames(2)
    assert link.receive_batch() == []
    assert link.rx.due(10.004) is False and link.rx.due(10.005) is True
    clock.now = 10.006
    inner.incoming = frames(3)[2:]
    assert ids(link.receive_batch()) == [0, 1]  # the newcomer (2) is delayed in its turn
    clock.now = 10.012
    assert ids(link.receive_batch()) == [2]


def test_link_backlog_when_the_inner_link_says_eagain() -> None:
    link, inner, clock, _ = fault_link("tx:dup=1")
    inner.accept = 3
    assert link.send_batch([(bytes(f),) for f in frames(2)]) == 2  # 4 copies, 3 taken
    assert len(inner.sent) == 3 and link.next_deadline() is not None
    inner.accept = 0
    assert link.send_batch([(bytes(f),) for f in frames(1)]) == 0  # still backed up
    inner.accept = None
    link.poll(clock.now + 0.002)
    assert ids([(s,) for s in inner.sent]) == [0, 0, 1, 1]
    assert link.next_deadline() is None


def test_link_refused_frame_is_a_tx_error_drop_and_the_rest_go() -> None:
    link, inner, _, counters = fault_link("tx:dup=1")
    inner.refuse = 1
    assert link.send_batch([(bytes(f),) for f in frames(2)]) == 2
    assert ids([(s,) for s in inner.sent]) == [0, 1, 1]
    assert counters.drops[Drop.LINK_TX_ERROR] == 1


# -- on the real loop --------------------------------------------------------------------------
class PairLink:
    """A Link over an AF_UNIX datagram socketpair; `peer` is the far end."""

    def __init__(self) -> None:
        self.sock, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.peer.settimeout(2.0)
        self.name, self.mac, self.mtu, self.fd = "pair0", b"\x02" * 6, 1500, self.sock.fileno()
        self.rx_oversize = 0

    def receive_batch(self) -> list[memoryview]:
        out = []
        while len(out) < 16:
            try:
                out.append(memoryview(self.sock.recv(2048)))
            except BlockingIOError:
                break
        return out

    def send_batch(self, batch) -> int:
        for frame in batch:
            self.sock.send(b"".join(frame))
        return len(batch)

    def close(self) -> None:
        self.sock.close()
        self.peer.close()


def test_loop_delivers_delayed_rx_frames_while_the_fd_is_quiet() -> None:
    loop = Loop()
    inner = PairLink()
    link = FaultLink.around(inner, parse_fault("rx:delay=30ms,seed=1"), loop, loop.counters)
    got: list[tuple[bytes, float]] = []
    loop.add_link(link, lambda views, now: got.extend((bytes(v), now) for v in views))
    try:
        start = time.monotonic()
        inner.peer.send(b"late")
        deadline = start + 2.0
        while not got and time.monotonic() < deadline:
            loop.run_once(timeout=0.5)
        assert got and got[0][0] == b"late"
        assert 0.030 <= got[0][1] - start < 0.5
    finally:
        link.close()
        loop.close()


def test_loop_sends_delayed_tx_frames_at_their_time() -> None:
    loop = Loop()
    inner = PairLink()
    link = FaultLink.around(inner, parse_fault("tx:delay=30ms"), loop, loop.counters)
    loop.add_link(link, lambda views, now: None)
    try:
        start = time.monotonic()
        loop.tx(link).append((b"out", b"going"))
        inner.peer.setblocking(False)
        received = None
        while received is None and time.monotonic() < start + 2.0:
            loop.run_once(timeout=0.5)
            with contextlib.suppress(BlockingIOError):
                received = inner.peer.recv(100)
        assert received == b"outgoing"
        assert time.monotonic() - start >= 0.030
    finally:
        link.close()
        loop.close()
