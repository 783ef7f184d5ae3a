"""The loop's cached earliest deadline (io/loop.py): a turn with nothing due asks no deadline
source, yet every timer and source still runs on time on a fake clock.

The cache may only ever be early (a spurious recomputation), never late (a missed deadline):
arming a timer lowers it, and anything that may move a source's deadline marks it stale.
Inside run() the turns trust it; run_once() called from outside always asks again (the caller
may have changed anything between turns): `inside_run` reproduces run()'s turns.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator

import pytest

from netstack.counters import Counters
from netstack.io.fault import FaultLink, parse_fault
from netstack.io.loop import Loop


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Source:
    """A deadline source that counts how often the loop asks it."""

    def __init__(self, deadline: float | None) -> None:
        self.deadline = deadline
        self.asked = 0
        self.polls: list[float] = []

    def next_deadline(self) -> float | None:
        self.asked += 1
        return self.deadline

    def poll(self, now: float) -> None:
        self.polls.append(now)
        self.deadline = None


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def loop(clock: FakeClock) -> Iterator[Loop]:
    with Loop(Counters(), clock=clock) as lp:
        lp._running = True  # turns as run() makes them (run_once from outside re-asks)
        yield lp


def turn(loop: Loop) -> None:
    loop.run_once(timeout=0)


def test_idle_turns_ask_no_source(loop: Loop, clock: FakeClock) -> None:
    src = Source(105.0)
    loop.add_deadline_source(src.next_deadline, src.poll)
    turn(loop)
    asked = src.asked
    assert asked >= 1
    for _ in range(5):
        clock.now += 0.5
        turn(loop)
        assert loop._timeout_ms(clock.now) == math_ms(105.0 - clock.now)
    assert src.asked == asked  # cached: nobody asked again
    clock.now = 105.0
    turn(loop)
    assert src.polls == [105.0]  # on time
    assert loop._timeout_ms(clock.now) == -1


def math_ms(seconds: float) -> int:
    return max(0, -int(-seconds * 1000 // 1))


def test_timer_armed_earlier_lowers_the_cache(loop: Loop, clock: FakeClock) -> None:
    src = Source(110.0)
    loop.add_deadline_source(src.next_deadline, src.poll)
    turn(loop)
    asked = src.asked
    ran: list[float] = []
    loop.call_at(102.0, ran.append)  # earlier than the cached 110
    assert loop._timeout_ms(clock.now) == 2000
    clock.now = 102.0
    turn(loop)
    assert ran == [102.0]
    assert src.polls == []
    # The timer ran: the next look asks the source again, and finds 110.
    assert loop._timeout_ms(clock.now) == 8000
    assert src.asked > asked


def test_timer_armed_later_keeps_the_earlier_deadline(loop: Loop, clock: FakeClock) -> None:
    ran: list[str] = []
    loop.call_at(101.0, lambda now: ran.append("first"))
    turn(loop)
    loop.call_at(150.0, lambda now: ran.append("second"))
    assert loop._timeout_ms(clock.now) == 1000
    clock.now = 101.0
    turn(loop)
    assert ran == ["first"]
    assert loop._timeout_ms(clock.now) == 49000


def test_cancelled_timer_costs_one_early_look(loop: Loop, clock: FakeClock) -> None:
    ran: list[float] = []
    handle = loop.call_at(101.0, ran.append)
    loop.call_at(103.0, ran.append)
    turn(loop)
    handle.cancel()
    # The cache still says 101 (early is allowed): the turn at 101 finds nothing due ...
    clock.now = 101.0
    turn(loop)
    assert ran == []
    # ... and recomputes: 103 now.
    assert loop._timeout_ms(clock.now) == 2000
    clock.now = 103.0
    turn(loop)
    assert ran == [103.0]


def test_rearm_later_fires_at_the_new_time_only(loop: Loop, clock: FakeClock) -> None:
    ran: list[float] = []
    handle = loop.call_at(101.0, ran.append)
    turn(loop)
    handle.cancel()
    loop.call_at(104.0, ran.append)
    for t in (101.0, 102.0, 103.9):
        clock.now = t
        turn(loop)
    assert ran == []
    clock.now = 104.0
    turn(loop)
    assert ran == [104.0]


def test_rearm_earlier_fires_at_the_new_time(loop: Loop, clock: FakeClock) -> None:
    ran: list[float] = []
    handle = loop.call_at(110.0, ran.append)
    turn(loop)
    handle.cancel()
    loop.call_at(101.0, ran.append)
    clock.now = 101.0
    turn(loop)
    assert ran == [101.0]


def test_source_moved_by_deadline_changed(loop: Loop, clock: FakeClock) -> None:
    src = Source(None)
    loop.add_deadline_source(src.next_deadline, src.poll)
    turn(loop)
    assert loop._timeout_ms(clock.now) == -1
    src.deadline = 100.5  # moved outside any loop callback: the source must say so
    loop.deadline_changed()
    assert loop._timeout_ms(clock.now) == 500
    clock.now = 100.5
    turn(loop)
    assert src.polls == [100.5]


def test_source_moved_inside_a_reader_callback(loop: Loop, clock: FakeClock) -> None:
    """What a callback does (a frame in, an application's request) may move any source's
    deadline: the turn that ran it asks again without being told."""
    src = Source(None)
    loop.add_deadline_source(src.next_deadline, src.poll)
    turn(loop)
    r, w = os.pipe()
    os.set_blocking(r, False)

    def on_readable(now: float) -> None:
        os.read(r, 16)
        src.deadline = now  # e.g. a segment queued for the output pass: due at once

    loop.add_reader(r, on_readable)
    try:
        os.write(w, b"x")
        turn(loop)
        assert src.polls == [100.0]  # the same turn
    finally:
        loop.remove_reader(r)
        os.close(r)
        os.close(w)


def test_source_moved_by_a_timer_callback(loop: Loop, clock: FakeClock) -> None:
    src = Source(None)
    loop.add_deadline_source(src.next_deadline, src.poll)
    loop.call_at(101.0, lambda now: setattr(src, "deadline", 101.5))
    turn(loop)
    clock.now = 101.0
    turn(loop)
    assert loop._timeout_ms(clock.now) == 500
    clock.now = 101.5
    turn(loop)
    assert src.polls == [101.5]


def test_source_polled_then_rearmed(loop: Loop, clock: FakeClock) -> None:
    """A source whose poll arms its next deadline (a periodic engine timer)."""
    polls: list[float] = []
    state = {"deadline": 101.0}

    def poll(now: float) -> None:
        polls.append(now)
        state["deadline"] = now + 1.0

    loop.add_deadline_source(lambda: state["deadline"], poll)
    for t in (100.0, 101.0, 101.5, 102.0, 102.999, 103.0):
        clock.now = t
        turn(loop)
    assert polls == [101.0, 102.0, 103.0]
    assert loop._timeout_ms(clock.now) == 1000


def test_clock_jumps_forward_runs_everything_due(loop: Loop, clock: FakeClock) -> None:
    ran: list[str] = []
    src = Source(102.0)
    loop.add_deadline_source(src.next_deadline, src.poll)
    loop.call_at(101.0, lambda now: ran.append("a"))
    loop.call_at(500.0, lambda now: ran.append("b"))
    turn(loop)
    clock.now = 300.0  # e.g. the VM was paused
    turn(loop)
    assert ran == ["a"]
    assert src.polls == [300.0]
    assert loop._timeout_ms(clock.now) == 200_000


def test_clock_jumps_backward_waits_for_the_deadline(loop: Loop, clock: FakeClock) -> None:
    ran: list[float] = []
    loop.call_at(101.0, ran.append)
    turn(loop)
    clock.now = 50.0
    turn(loop)
    assert ran == []
    assert loop._timeout_ms(clock.now) == 51_000
    clock.now = 101.0
    turn(loop)
    assert ran == [101.0]


def test_run_once_from_outside_asks_again(clock: FakeClock) -> None:
    """Between two run_once calls from outside run(), the caller may have changed anything."""
    with Loop(Counters(), clock=clock) as loop:
        src = Source(None)
        loop.add_deadline_source(src.next_deadline, src.poll)
        loop.run_once(timeout=0)
        src.deadline = 100.0  # no deadline_changed()
        loop.run_once(timeout=0)
        assert src.polls == [100.0]


def test_fault_link_holding_a_frame_tells_the_loop() -> None:
    """FaultLink holds delayed tx frames inside send_batch (the loop's flush, no callback of
    ours): its deadline moves there, and it says so."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.setblocking(False)

    class Inner:
        name = "pair"
        mtu = 1500
        rx_oversize = 0
        fd = a.fileno()

        def receive_batch(self) -> list[memoryview]:
            return []

        def send_batch(self, batch) -> int:
            for frame in batch:
                a.send(b"".join(frame))
            return len(batch)

        def close(self) -> None:
            pass

    with Loop() as loop:
        loop._running = True  # as inside run()
        link = FaultLink.around(Inner(), parse_fault("tx:delay=200ms"), loop, loop.counters)
        loop.add_link(link, lambda views, now: None)
        try:
            loop.run_once(timeout=0)
            assert loop._timeout_ms(loop.now()) == -1  # nothing held: cached, no deadline
            loop.tx(link).append((b"out",))
            loop.run_once(timeout=0)  # the flush hands it over: held for 200 ms
            assert 0 <= loop._timeout_ms(loop.now()) <= 200
            start = time.monotonic()
            b.setblocking(False)
            got = None
            while got is None and time.monotonic() < start + 5.0:
                loop.run_once(timeout=1.0)
                with contextlib.suppress(BlockingIOError):
                    got = b.recv(100)
            assert got == b"out"
        finally:
            a.close()
            b.close()


# -- the drain's per-link counters (read once at add_link, not per batch) ------------------------
class CountingLink:
    """Hands over one frame per receive_batch and reports link-level drops as a vnet or
    AF_PACKET link does (attributes the loop counts and zeroes)."""

    name = "counting"
    mtu = 1500
    max_batch = 8

    def __init__(self, *, vnet: bool, kernel: bool) -> None:
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)
        self.fd = self.r
        self.rx_oversize = 0
        if vnet:
            self.rx_vnet_truncated = 0
        if kernel:
            self.rx_kernel_dropped = 0

    def receive_batch(self) -> list[memoryview]:
        try:
            data = os.read(self.r, 100)
        except BlockingIOError:
            return []
        self.rx_oversize += 1
        if hasattr(self, "rx_vnet_truncated"):
            self.rx_vnet_truncated += 2
        if hasattr(self, "rx_kernel_dropped"):
            self.rx_kernel_dropped += 3
        return [memoryview(data)]

    def send_batch(self, frames) -> int:
        return len(frames)

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


@pytest.mark.parametrize(("vnet", "kernel"), [(True, True), (False, False), (True, False)])
def test_link_drop_counters_counted_per_batch(vnet: bool, kernel: bool) -> None:
    from netstack.drops import Drop

    with Loop(Counters()) as loop:
        link = CountingLink(vnet=vnet, kernel=kernel)
        got: list[bytes] = []
        loop.add_link(link, lambda views, now: got.extend(bytes(v) for v in views))
        try:
            for _ in range(2):
                os.write(link.w, b"frame")
                loop.run_once(timeout=1.0)
            drops = loop.counters.drops
            assert got == [b"frame", b"frame"]
            assert drops[Drop.LINK_RX_OVERSIZE] == 2
            assert drops[Drop.LINK_VNET_TRUNCATED] == (4 if vnet else 0)
            assert drops[Drop.LINK_RX_KERNEL_DROPPED] == (6 if kernel else 0)
            assert link.rx_oversize == 0
            assert getattr(link, "rx_vnet_truncated", 0) == 0
            assert getattr(link, "rx_kernel_dropped", 0) == 0
            assert loop.counters.loop_batch_frames.count == 2
        finally:
            link.close()


# -- announcing sources (add_deadline_source(..., announces=True), proto/deadlines.py) ---------
@contextlib.contextmanager
def pipe_reader(loop: Loop, on_readable) -> Iterator[int]:
    """A pipe whose read end is a loop reader; yields the write end."""
    r, w = os.pipe()
    os.set_blocking(r, False)

    def callback(now: float) -> None:
        os.read(r, 16)
        on_readable(now)

    loop.add_reader(r, callback)
    try:
        yield w
    finally:
        loop.remove_reader(r)
        os.close(r)
        os.close(w)


def test_announcing_source_is_not_asked_after_a_batch(loop: Loop, clock: FakeClock) -> None:
    """The point of announcing: a dispatched callback that moved nothing costs no walk."""
    src = Source(110.0)
    loop.add_deadline_source(src.next_deadline, src.poll, announces=True)
    turn(loop)
    asked = src.asked
    with pipe_reader(loop, lambda now: None) as w:
        for _ in range(3):
            os.write(w, b"x")
            turn(loop)
    assert src.asked == asked
    assert loop._timeout_ms(clock.now) == 10_000


def test_announced_now_runs_in_the_same_turn(loop: Loop, clock: FakeClock) -> None:
    src = Source(None)
    loop.add_deadline_source(src.next_deadline, src.poll, announces=True)
    turn(loop)

    def on_readable(now: float) -> None:
        src.deadline = now  # work queued for "now" (TCP's dirty connection) ...
        loop.deadline_moved(now)  # ... and said so

    with pipe_reader(loop, on_readable) as w:
        os.write(w, b"x")
        turn(loop)
    assert src.polls == [100.0]


def test_announced_later_deadline_runs_on_time(loop: Loop, clock: FakeClock) -> None:
    src = Source(200.0)
    loop.add_deadline_source(src.next_deadline, src.poll, announces=True)
    turn(loop)

    def on_readable(now: float) -> None:
        src.deadline = now + 0.25  # a timer armed earlier than the cached 200
        loop.deadline_moved(src.deadline)

    with pipe_reader(loop, on_readable) as w:
        os.write(w, b"x")
        turn(loop)
    assert src.polls == []
    assert loop._timeout_ms(clock.now) == 250
    clock.now = 100.25
    turn(loop)
    assert src.polls == [100.25]


def test_unannounced_move_is_missed_by_design(loop: Loop, clock: FakeClock) -> None:
    """An announcing source that breaks its promise is not asked (what the engines' tests in
    test_deadline_announce.py guard against): its move is seen only when the cached deadline
    comes."""
    src = Source(105.0)
    loop.add_deadline_source(src.next_deadline, src.poll, announces=True)
    turn(loop)
    with pipe_reader(loop, lambda now: setattr(src, "deadline", 101.0)) as w:
        os.write(w, b"x")
        turn(loop)
    clock.now = 101.0
    turn(loop)
    assert src.polls == []  # late: the cache still said 105
    clock.now = 105.0
    turn(loop)
    assert src.polls == [105.0]


def test_a_silent_source_makes_a_batch_ask_everyone(loop: Loop, clock: FakeClock) -> None:
    """One source that does not announce (FaultLink, the shutdown source): every batch asks
    all of them again, as before."""
    loud = Source(110.0)
    silent = Source(None)
    loop.add_deadline_source(loud.next_deadline, loud.poll, announces=True)
    loop.add_deadline_source(silent.next_deadline, silent.poll)
    turn(loop)
    asked = loud.asked
    with pipe_reader(loop, lambda now: setattr(silent, "deadline", now)) as w:
        os.write(w, b"x")
        turn(loop)
    assert silent.polls == [100.0]
    assert loud.asked > asked


def test_timers_announce_through_the_same_path(loop: Loop, clock: FakeClock) -> None:
    """call_at from inside a callback lowers the cache like an announcement."""
    src = Source(110.0)
    loop.add_deadline_source(src.next_deadline, src.poll, announces=True)
    turn(loop)
    ran: list[float] = []
    with pipe_reader(loop, lambda now: loop.call_at(now + 0.5, ran.append)) as w:
        os.write(w, b"x")
        turn(loop)
    assert loop._timeout_ms(clock.now) == 500
    clock.now = 100.5
    turn(loop)
    assert ran == [100.5]
