"""TimerHeap on a fake clock, and the Loop's time handling (timers, deadline sources, stop,
signals, tx flushing) with in-memory links over socketpairs: no devices, no root."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest

from netstack.counters import Counters
from netstack.drops import Drop
from netstack.io.link import LinkError, LinkTxError
from netstack.io.loop import Loop
from netstack.io.timers import TimerHeap


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- TimerHeap ---------------------------------------------------------------------------------
def test_runs_due_timers_in_deadline_order() -> None:
    heap, ran = TimerHeap(), []
    heap.schedule(3.0, lambda now: ran.append(("c", now)))
    heap.schedule(1.0, lambda now: ran.append(("a", now)))
    heap.schedule(2.0, lambda now: ran.append(("b", now)))
    assert heap.next_deadline() == 1.0
    assert heap.run_expired(0.5) == 0
    assert heap.run_expired(2.0) == 2
    assert ran == [("a", 2.0), ("b", 2.0)]
    assert heap.next_deadline() == 3.0
    assert len(heap) == 1


def test_equal_deadlines_run_in_scheduling_order() -> None:
    heap, ran = TimerHeap(), []
    for i in range(5):
        heap.schedule(1.0, lambda now, i=i: ran.append(i))
    heap.run_expired(1.0)
    assert ran == [0, 1, 2, 3, 4]


def test_cancel_is_lazy_and_idempotent() -> None:
    heap, ran = TimerHeap(), []
    first = heap.schedule(1.0, ran.append)
    heap.schedule(2.0, ran.append)
    first.cancel()
    first.cancel()
    assert first.cancelled
    assert len(heap) == 1
    assert heap.next_deadline() == 2.0
    heap.run_expired(5.0)
    assert ran == [5.0]
    assert heap.next_deadline() is None
    assert len(heap) == 0


def test_cancel_after_firing_is_harmless() -> None:
    heap = TimerHeap()
    handle = heap.schedule(1.0, lambda now: None)
    heap.run_expired(1.0)
    handle.cancel()
    assert len(heap) == 0


def test_callback_cancelling_a_later_due_timer() -> None:
    heap, ran = TimerHeap(), []
    second = heap.schedule(1.0, lambda now: ran.append("second"))
    heap.schedule(0.5, lambda now: second.cancel())
    # same deadline order: 0.5 runs first and cancels the other
    assert heap.run_expired(1.0) == 1
    assert ran == []
    assert len(heap) == 0


def test_rearm_at_now_waits_for_next_run() -> None:
    heap, ran = TimerHeap(), []

    def again(now: float) -> None:
        ran.append(now)
        heap.schedule(now, again)

    heap.schedule(1.0, again)
    assert heap.run_expired(1.0) == 1
    assert heap.run_expired(1.0) == 1
    assert ran == [1.0, 1.0]


def test_many_cancelled_timers_are_compacted() -> None:
    heap = TimerHeap()
    handles = [heap.schedule(float(i), lambda now: None) for i in range(1000)]
    for h in handles[:900]:
        h.cancel()
    assert len(heap) == 100
    assert len(heap._heap) < 1000
    assert heap.next_deadline() == 900.0


def test_on_error_keeps_running_the_batch() -> None:
    errors, ran = [], []
    heap = TimerHeap(on_error=errors.append)
    heap.schedule(1.0, lambda now: 1 / 0)
    heap.schedule(1.0, ran.append)
    assert heap.run_expired(1.0) == 2
    assert ran == [1.0]
    assert isinstance(errors[0], ZeroDivisionError)


def test_without_on_error_the_exception_propagates() -> None:
    heap = TimerHeap()
    heap.schedule(1.0, lambda now: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        heap.run_expired(1.0)


# -- Loop: time ----------------------------------------------------------------------------------
@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def loop(clock: FakeClock):
    with Loop(Counters(), clock=clock) as lp:
        yield lp


def test_loop_runs_timers_when_due(loop: Loop, clock: FakeClock) -> None:
    ran = []
    loop.call_later(5.0, ran.append)
    loop.call_at(101.0, ran.append)
    assert loop._timeout_ms(clock.now) == 1000
    clock.now = 101.0
    loop.run_once(timeout=0)
    assert ran == [101.0]
    clock.now = 106.0
    loop.run_once(timeout=0)
    assert ran == [101.0, 106.0]
    assert loop._timeout_ms(clock.now) == -1
    assert loop.counters.loop_wakeups == 2


def test_timeout_rounds_up(loop: Loop, clock: FakeClock) -> None:
    loop.call_at(100.0004, lambda now: None)
    assert loop._timeout_ms(clock.now) == 1
    clock.now = 200.0
    assert loop._timeout_ms(clock.now) == 0


def test_deadline_source_polled_only_when_due(loop: Loop, clock: FakeClock) -> None:
    state = {"deadline": 102.0, "polls": []}

    def poll(now: float) -> None:
        state["polls"].append(now)
        state["deadline"] = None

    loop.add_deadline_source(lambda: state["deadline"], poll)
    assert loop._timeout_ms(clock.now) == 2000
    loop.run_once(timeout=0)
    assert state["polls"] == []
    clock.now = 102.5
    loop.run_once(timeout=0)
    assert state["polls"] == [102.5]
    assert loop._timeout_ms(clock.now) == -1


def test_failing_callbacks_do_not_kill_the_loop(loop: Loop, clock: FakeClock) -> None:
    ran = []
    loop.call_at(100.0, lambda now: 1 / 0)
    loop.call_at(100.0, ran.append)
    loop.add_deadline_source(lambda: 0.0, lambda now: 1 / 0)
    loop.run_once(timeout=0)
    assert ran == [100.0]


def test_stop_from_another_thread_wakes_epoll() -> None:
    with Loop(Counters()) as lp:
        threading.Timer(0.05, lp.stop).start()
        start = time.monotonic()
        lp.run()  # no deadlines: epoll would wait forever without the wakeup
        assert time.monotonic() - start < 5
        lp.stop()
        lp.stop()  # idempotent


def test_sigterm_stops_run_and_handlers_are_restored() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with Loop(Counters()) as lp:
        lp.call_later(0.02, lambda now: os.kill(os.getpid(), signal.SIGTERM))
        lp.call_later(10.0, lambda now: pytest.fail("SIGTERM did not stop the loop"))
        start = time.monotonic()
        lp.run()
        assert time.monotonic() - start < 5
    assert signal.getsignal(signal.SIGTERM) == before


def test_reader_callback(loop: Loop, clock: FakeClock) -> None:
    a, b = socket.socketpair()
    got = []
    with a, b:
        loop.add_reader(a.fileno(), lambda now: got.append((a.recv(100), now)))
        b.send(b"hi")
        loop.run_once(timeout=1)
        assert got == [(b"hi", 100.0)]
        loop.remove_reader(a.fileno())


# -- Loop: links (a Link over a datagram socketpair) ----------------------------------------------
class PairLink:
    """A Link whose other end is a plain socket; `accept` caps frames per send_batch."""

    def __init__(self, max_batch: int = 8) -> None:
        self.sock, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.peer.setblocking(False)
        self.name, self.mac, self.mtu, self.fd = "pair0", b"\x02" * 6, 1500, self.sock.fileno()
        self.max_batch = max_batch
        self.rx_oversize = 0
        self.accept: int | None = None
        self.refuse_index: int | None = None
        self.batches: list[int] = []

    def receive_batch(self) -> list[memoryview]:
        frames = []
        while len(frames) < self.max_batch:
            try:
                frames.append(memoryview(self.sock.recv(2048)))
            except BlockingIOError:
                break
        return frames

    def send_batch(self, frames) -> int:
        self.batches.append(len(frames))
        limit = len(frames) if self.accept is None else min(self.accept, len(frames))
        for i, frame in enumerate(frames[:limit]):
            if i == self.refuse_index:
                self.refuse_index = None
                raise LinkTxError("refused", 22, i)
            self.sock.send(b"".join(frame))
        return limit

    def close(self) -> None:
        self.sock.close()
        self.peer.close()

    def sent(self) -> list[bytes]:
        out = []
        while True:
            try:
                out.append(self.peer.recv(2048))
            except BlockingIOError:
                return out


@pytest.fixture
def pair():
    link = PairLink()
    yield link
    link.close()


def test_frames_dispatched_in_bounded_batches(loop: Loop, pair: PairLink) -> None:
    batches = []
    loop.add_link(pair, lambda frames, now: batches.append([bytes(f) for f in frames]))
    for i in range(50):
        pair.peer.send(bytes([i]) * 60)
    loop.run_once(timeout=1)
    # at most max_batches_per_turn batches of max_batch per turn; the rest next turn
    assert [len(b) for b in batches] == [8, 8, 8, 8]
    loop.run_once(timeout=1)
    assert sum(len(b) for b in batches) == 50
    assert batches[0][0] == b"\0" * 60


def test_tx_queue_flushed_once_per_turn(loop: Loop, pair: PairLink) -> None:
    seen = []
    loop.frame_observers.append(lambda d, f, now: seen.append(d))
    queue = loop.add_link(pair, lambda frames, now: loop.tx(pair).append((b"re:", frames[0])))
    assert loop.tx(pair) is queue
    queue.append((b"ab", b"cd"))
    loop.run_once(timeout=0)
    assert pair.sent() == [b"abcd"]
    pair.peer.send(b"x")
    loop.run_once(timeout=1)
    assert pair.sent() == [b"re:x"]
    assert pair.batches == [1, 1]
    assert loop.counters.tx_packets == 2
    assert loop.counters.tx_bytes == 8
    assert seen == ["tx", "rx", "tx"]


def test_replies_leave_before_due_timers_run(loop: Loop, pair: PairLink, clock: FakeClock) -> None:
    """A request/response peer waits for the reply, not for our timers: what on_frames queued
    is written before the turn's timers and deadline sources run; what they queue still
    leaves in the same turn."""
    order: list[str] = []

    def on_frames(frames, now) -> None:
        loop.tx(pair).append((b"re:", frames[0]))

    def poll(now: float) -> None:
        order.append(f"poll after {len(pair.batches)} writes")
        loop.tx(pair).append((b"timer",))

    loop.add_link(pair, on_frames)
    loop.add_deadline_source(lambda: clock.now, poll)  # always due
    loop.call_at(clock.now, lambda now: order.append(f"timer after {len(pair.batches)} writes"))
    pair.peer.send(b"x")
    loop.run_once(timeout=1)
    assert order == ["timer after 1 writes", "poll after 1 writes"]
    assert pair.sent() == [b"re:x", b"timer"]
    assert pair.batches == [1, 1]


def test_adopts_an_existing_tx_list(loop: Loop, pair: PairLink) -> None:
    host_tx: list = [(b"hello",)]
    assert loop.add_link(pair, lambda f, n: None, tx_queue=host_tx) is host_tx
    loop.run_once(timeout=0)
    assert pair.sent() == [b"hello"]
    assert host_tx == []


def test_eagain_keeps_frames_and_bounds_the_queue(loop: Loop, pair: PairLink) -> None:
    loop.tx_queue_limit = 10
    queue = loop.add_link(pair, lambda f, n: None)
    pair.accept = 3
    queue.extend((bytes([i]),) for i in range(20))
    loop.run_once(timeout=0)
    # before the wait: 3 written, 17 left, the 7 oldest dropped to get back to the limit;
    # after the turn (EPOLLOUT said writable): 3 more written
    assert pair.sent() == [bytes([i]) for i in (0, 1, 2, 10, 11, 12)]
    assert queue == [(bytes([i]),) for i in range(13, 20)]
    assert loop.counters.drops[Drop.LINK_TX_QUEUE_FULL] == 7
    assert loop._links[pair.fd].want_out
    loop.run_once(timeout=0)  # blocked queues are not retried before the wait
    assert len(pair.sent()) == 3
    pair.accept = None
    loop.run_once(timeout=0)
    assert len(pair.sent()) == 4
    assert queue == []
    assert not loop._links[pair.fd].want_out
    assert loop.counters.tx_packets == 20 - 7


def test_refused_frame_is_dropped_and_the_rest_sent(loop: Loop, pair: PairLink) -> None:
    queue = loop.add_link(pair, lambda f, n: None)
    pair.refuse_index = 1
    queue.extend([(b"a",), (b"bad",), (b"c",)])
    loop.run_once(timeout=0)
    assert pair.sent() == [b"a", b"c"]
    assert loop.counters.drops[Drop.LINK_TX_ERROR] == 1
    assert queue == []


def test_on_frames_exception_is_contained(loop: Loop, pair: PairLink) -> None:
    loop.add_link(pair, lambda frames, now: 1 / 0)
    pair.peer.send(b"x")
    loop.run_once(timeout=1)
    assert loop.counters.loop_wakeups == 1


def test_failed_link_is_removed_and_stops_the_loop(loop: Loop, pair: PairLink) -> None:
    def broken() -> list[memoryview]:
        raise LinkError("gone")

    loop.add_link(pair, lambda f, n: None)
    pair.receive_batch = broken
    pair.peer.send(b"x")
    loop.run_once(timeout=1)
    assert loop.failed_links and loop.failed_links[0][0] is pair
    assert pair.fd not in loop._links
    assert loop._stop_requested


class _CountingLib:
    """The loop's cffi `lib` with every ns_epoll_wait timeout recorded (ms; 0 = a look)."""

    def __init__(self, real) -> None:
        self.real = real
        self.timeouts: list[int] = []

    def __getattr__(self, name: str):
        return getattr(self.real, name)

    def ns_epoll_wait(self, epfd, fds, events, n, timeout):
        self.timeouts.append(timeout)
        return self.real.ns_epoll_wait(epfd, fds, events, n, timeout)


@pytest.fixture
def epoll_calls(monkeypatch) -> _CountingLib:
    from netstack.io import loop as loopmod

    counting = _CountingLib(loopmod.lib)
    monkeypatch.setattr(loopmod, "lib", counting)
    return counting


def test_busy_poll_looks_before_sleeping_after_a_turn_that_received(
    pair: PairLink, clock: FakeClock, epoll_calls: _CountingLib
) -> None:
    with Loop(Counters(), clock=clock, busy_poll=0.003) as loop:
        loop.add_link(pair, lambda f, n: None)
        pair.peer.send(b"x")
        loop.run_once(timeout=1)  # a turn that received a frame
        epoll_calls.timeouts.clear()
        start = time.perf_counter()
        loop.run_once(timeout=0.05)  # nothing comes: looks for 3 ms, then sleeps
        assert time.perf_counter() - start >= 0.003
        looks = epoll_calls.timeouts[:-1]
        assert len(looks) > 2 and set(looks) == {0} and epoll_calls.timeouts[-1] == 50
        epoll_calls.timeouts.clear()
        loop.run_once(timeout=0.01)  # the turn before received nothing: it sleeps at once
        assert epoll_calls.timeouts == [0, 10]
        assert loop.counters.loop_busy_polls == 0


def test_no_busy_poll_by_default(pair: PairLink, loop: Loop, epoll_calls: _CountingLib) -> None:
    loop.add_link(pair, lambda f, n: None)
    pair.peer.send(b"x")
    loop.run_once(timeout=1)
    epoll_calls.timeouts.clear()
    loop.run_once(timeout=0.01)
    assert epoll_calls.timeouts == [0, 10]


def test_adaptive_busy_poll_sleeps_at_once_after_a_spin_that_found_nothing(
    pair: PairLink, clock: FakeClock, epoll_calls: _CountingLib
) -> None:
    with Loop(Counters(), clock=clock, busy_poll=0.003, busy_poll_adaptive=True) as loop:
        assert loop.busy_adaptive is not None
        loop.add_link(pair, lambda f, n: None)
        pair.peer.send(b"x")
        loop.run_once(timeout=1)
        epoll_calls.timeouts.clear()
        loop.run_once(timeout=0.05)  # nothing comes: the first spin looks, finds nothing
        assert len(epoll_calls.timeouts) > 2 and epoll_calls.timeouts[-1] == 50
        assert loop.counters.loop_busy_poll_spins == 1
        assert loop.busy_adaptive.backoff == 1
        pair.peer.send(b"y")
        loop.run_once(timeout=1)  # received again, but the policy backs off: no spin
        epoll_calls.timeouts.clear()
        loop.run_once(timeout=0.01)
        assert epoll_calls.timeouts == [0, 10]
        assert loop.counters.loop_busy_poll_spins == 1
        epoll_calls.timeouts.clear()
        loop.run_once(timeout=0.01)  # idle (nothing received): never spins
        assert epoll_calls.timeouts == [0, 10]


@pytest.mark.parametrize("adaptive", [False, True])
def test_busy_poll_finds_the_next_frame_without_sleeping(
    pair: PairLink, clock: FakeClock, epoll_calls: _CountingLib, adaptive: bool
) -> None:
    """Fixed and adaptive alike: the spin after a received turn finds the next request (10 ms
    later, inside a 2 s budget) without sleeping; the adaptive policy keeps spinning allowed."""
    got: list[bytes] = []
    with Loop(Counters(), clock=clock, busy_poll=2.0, busy_poll_adaptive=adaptive) as loop:
        loop.add_link(pair, lambda frames, now: got.extend(bytes(f) for f in frames))
        pair.peer.send(b"request 1")
        loop.run_once(timeout=1)
        sender = threading.Timer(0.01, pair.peer.send, (b"request 2",))
        sender.start()
        epoll_calls.timeouts.clear()
        loop.run_once(timeout=5)
        sender.join()
        assert got == [b"request 1", b"request 2"]
        assert set(epoll_calls.timeouts) == {0}  # never slept
        assert loop.counters.loop_busy_polls == 1
        assert loop.counters.loop_busy_poll_spins == 1
        if not adaptive:
            assert loop.busy_adaptive is None
            return
        policy = loop.busy_adaptive
        assert policy is not None and policy.found == 1
        # Found with the CPU to itself (an unloaded test machine), or judged shared: either
        # way the history says so, and the next received turn follows it.
        assert policy.backoff == (0 if policy.contended == 0 else 1)


def test_adaptive_without_a_budget_is_off(pair: PairLink, clock: FakeClock) -> None:
    with Loop(Counters(), clock=clock, busy_poll=0.0, busy_poll_adaptive=True) as loop:
        assert loop.busy_adaptive is None


@pytest.mark.parametrize("adaptive", [False, True])
def test_a_busy_poll_never_spins_past_the_nearest_timer(
    pair: PairLink, clock: FakeClock, epoll_calls: _CountingLib, adaptive: bool
) -> None:
    """A due timer: no spin at all, the timer runs in that turn. A timer due within the
    budget: the spin ends by it (30 s budget, the timer 20 ms away), and the sleep after the
    spin counts from the spin's end (review finding: it ran up to the budget late). The
    bound below is a third of the budget: a busy machine cannot stretch 20 ms that far."""
    fired: list[float] = []
    with Loop(Counters(), clock=clock, busy_poll=30.0, busy_poll_adaptive=adaptive) as loop:
        loop.add_link(pair, lambda f, n: None)
        pair.peer.send(b"x")
        loop.run_once(timeout=1)
        loop.call_at(clock.now, fired.append)
        loop.run_once(timeout=5)
        assert fired == [clock.now] and loop.counters.loop_busy_poll_spins == 0
        pair.peer.send(b"y")
        loop.run_once(timeout=1)
        loop.call_at(clock.now + 0.02, fired.append)
        epoll_calls.timeouts.clear()
        started = time.perf_counter()
        loop.run_once(timeout=5)
        assert time.perf_counter() - started < 10  # not the 30 s budget
        assert loop.counters.loop_busy_poll_spins == 1
        assert epoll_calls.timeouts[-1] == 20  # the fake clock did not move: 20 ms to sleep


@pytest.mark.parametrize("cpu_share", [1.0, 0.0])
def test_adaptive_spin_judges_sharing_from_thread_cpu_against_wall(
    pair: PairLink, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, cpu_share: float
) -> None:
    """The spin reports (wall, thread CPU) in that order: a spin whose thread got the whole
    wall keeps spinning allowed, one that got none of it (another task had the CPU) backs
    off, whatever this machine's load."""
    real = time.perf_counter
    start = real()
    monkeypatch.setattr(time, "thread_time", lambda: cpu_share * (real() - start))
    # a budget far beyond the sender's 20 ms, so a busy machine's delay still lands in the spin
    with Loop(Counters(), clock=clock, busy_poll=30.0, busy_poll_adaptive=True) as loop:
        loop.add_link(pair, lambda f, n: None)
        pair.peer.send(b"request 1")
        loop.run_once(timeout=1)
        sender = threading.Timer(0.02, pair.peer.send, (b"request 2",))
        sender.start()
        loop.run_once(timeout=5)
        sender.join()
        policy = loop.busy_adaptive
        assert policy is not None and policy.found == 1
        assert (policy.contended, policy.backoff) == ((0, 0) if cpu_share else (1, 1))
