"""The one event loop: epoll, timers, batched receive, transmit flushes.

A turn: wait in epoll (timeout = nearest timer or deadline source) -> drain each readable link
a bounded number of batches -> hand the views to its on_frames -> flush every link's tx queue
with one send_batch (the replies to what was received leave first) -> run due timers and
deadline sources -> flush what they queued. The loop owns the clock; everything
it calls gets `now` as an argument. Only `stop()` may be called from another thread.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from netstack._ffi import ffi, lib
from netstack.counters import Counters
from netstack.drops import Drop
from netstack.io.busypoll import AdaptiveBusyPoll
from netstack.io.link import Frame, Link, LinkError, LinkTxError
from netstack.io.timers import TimerCallback, TimerHandle, TimerHeap
from netstack.logsetup import RateLimitedLog
from netstack.wire import vnet as wvnet
from netstack.wire.vnet import own_frame

log = logging.getLogger("netstack.io.loop")

EPOLLIN: int = lib.EPOLLIN
EPOLLOUT: int = lib.EPOLLOUT
EPOLLERR: int = lib.EPOLLERR
EPOLLHUP: int = lib.EPOLLHUP
_READ_EVENTS = EPOLLIN | EPOLLERR | EPOLLHUP
_WRITE_EVENTS = EPOLLOUT | EPOLLERR | EPOLLHUP

FramesCallback = Callable[[list[memoryview], float], None]
ReaderCallback = Callable[[float], None]
# (direction "rx" | "tx", a received view or a Frame of pieces, now)
FrameObserver = Callable[[str, "memoryview | Frame", float], None]

MAX_EVENTS = 64


@dataclass(eq=False)
class _LinkState:
    link: Link
    on_frames: FramesCallback
    queue: list[Frame]
    want_out: bool = False  # EPOLLOUT registered because the kernel said EAGAIN
    tx_errors: int = field(default=0)
    # Read once at add_link, not per batch (the hot turn's getattrs): the batch size, and
    # whether the link has the drop counters of a vnet / AF_PACKET link at all.
    max_batch: int = 1 << 30
    counts_vnet: bool = False
    counts_kernel: bool = False
    tx_refused: Any = None  # io/tap.py with io_uring: frames let go behind one that went

    def __post_init__(self) -> None:
        link = self.link
        self.tx_refused = getattr(link, "tx_refused", None)
        self.max_batch = getattr(link, "max_batch", 1 << 30)
        self.counts_vnet = hasattr(link, "rx_vnet_truncated")
        self.counts_kernel = hasattr(link, "rx_kernel_dropped")


class Loop:
    """Single-threaded epoll loop over links, extra readers, timers and deadline sources."""

    def __init__(
        self,
        counters: Counters | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_batches_per_turn: int = 4,
        tx_queue_limit: int = 4096,
        busy_poll: float = 0.0,
        busy_poll_adaptive: bool = False,
    ) -> None:
        self.counters = counters if counters is not None else Counters()
        # Seconds to keep looking (zero-timeout epoll) for the next frame after a turn that
        # received some, before sleeping: a request/response peer's next request then finds
        # the stack awake, not idle (a wakeup from idle costs tens of us on a VM). 0: off.
        self.busy_poll = busy_poll
        # busy_poll = "auto": spin only while recent spins found work with the CPU to
        # themselves (io/busypoll.py); None: every received turn spins (the fixed knob).
        self.busy_adaptive: AdaptiveBusyPoll | None = (
            AdaptiveBusyPoll() if busy_poll_adaptive and busy_poll else None
        )
        self._received = False  # this turn read frames from a link
        self.clock = clock
        self.max_batches_per_turn = max_batches_per_turn
        self.tx_queue_limit = tx_queue_limit
        self.timers = TimerHeap(on_error=self._callback_failed, on_schedule=self._timer_armed)
        # The earliest deadline of the timers and sources, cached: a turn with nothing due asks
        # no source. Never later than the true one (a timer armed lowers it; anything that may
        # move a source's deadline marks it stale: every callback the loop makes, and
        # deadline_changed()). Too early only costs one recomputation.
        self._deadline: float | None = None
        self._deadline_stale = True
        self.frame_observers: list[FrameObserver] = []
        # Links that failed for good (interface deleted, ...): removed from the loop, which stops.
        self.failed_links: list[tuple[Link, LinkError]] = []
        epfd = lib.ns_epoll_create()
        if epfd < 0:
            raise OSError(-epfd, os.strerror(-epfd))
        self._epfd = epfd
        self._links: dict[int, _LinkState] = {}
        # The same states as a tuple, replaced (never changed) when a link comes or goes: the
        # flushes walk it twice a turn, and a link removed meanwhile cannot change it under them.
        self._states: tuple[_LinkState, ...] = ()
        self._readers: dict[int, ReaderCallback] = {}
        self._writers: dict[int, ReaderCallback] = {}
        self._sources: list[tuple[Callable[[], float | None], Callable[[float], None]]] = []
        # How many sources do not announce their deadline moving earlier (deadline_moved):
        # while any is registered, a dispatched batch makes every source be asked again.
        self._asking = 0
        self._fds = ffi.new("int[]", MAX_EVENTS)
        self._events = ffi.new("uint32_t[]", MAX_EVENTS)
        self._running = False
        self._stop_requested = False
        # Signals the owner handles itself (else SIGINT/SIGTERM just stop the loop):
        # handler(signum, now) runs at a safe point of a turn, never inside another callback.
        self.signal_handlers: dict[int, Callable[[int, float], None]] = {}
        self._pending_signals: list[int] = []
        self._tx_warnings = RateLimitedLog(log)
        # Woken by signals (set_wakeup_fd) and by stop() from other threads.
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._wake_fd = self._wake_r.fileno()
        self._ctl(lib.EPOLL_CTL_ADD, self._wake_fd, EPOLLIN)

    # -- registration ------------------------------------------------------------------------
    def now(self) -> float:
        return self.clock()

    def add_link(
        self, link: Link, on_frames: FramesCallback, tx_queue: list[Frame] | None = None
    ) -> list[Frame]:
        """Poll `link`; received batches go to on_frames(views, now). Returns its tx queue.

        Pass `tx_queue` to adopt an existing list (e.g. a host's) as the queue.
        """
        if link.fd in self._links or link.fd in self._readers:
            raise ValueError(f"fd {link.fd} is already registered")
        queue = tx_queue if tx_queue is not None else []
        self._ctl(lib.EPOLL_CTL_ADD, link.fd, EPOLLIN)
        self._links[link.fd] = _LinkState(link, on_frames, queue)
        self._states = tuple(self._links.values())
        return queue

    def remove_link(self, link: Link) -> None:
        if self._links.pop(link.fd, None) is not None:
            self._states = tuple(self._links.values())
            self._ctl(lib.EPOLL_CTL_DEL, link.fd, 0)

    def tx(self, link: Link) -> list[Frame]:
        """The list of frames waiting to go out on `link`; append to it, the loop flushes it."""
        return self._links[link.fd].queue

    def drain_link(self, link: Link, now: float) -> None:
        """Read `link` now as if epoll had said it is readable.

        For wrappers that hold frames of their own (io.fault delays): their release time is a
        deadline, not an fd event. Call it from a deadline source or timer.
        """
        state = self._links.get(link.fd)
        if state is not None:
            self._drain(state, now)

    def add_reader(self, fd: int, callback: ReaderCallback) -> None:
        """Call callback(now) whenever fd is readable (level-triggered: drain it)."""
        if fd in self._links or fd in self._readers:
            raise ValueError(f"fd {fd} is already registered")
        had = fd in self._writers
        self._readers[fd] = callback
        self._update_extra(fd, had)

    def remove_reader(self, fd: int) -> None:
        if self._readers.pop(fd, None) is not None:
            self._update_extra(fd, True)

    def add_writer(self, fd: int, callback: ReaderCallback) -> None:
        """Call callback(now) whenever fd is writable (level-triggered: remove the writer once
        there is nothing left to write, or the loop spins). For extra fds such as the front's
        kernel sockets; an fd may have a reader and a writer at once."""
        if fd in self._links or fd in self._writers:
            raise ValueError(f"fd {fd} is already registered for writing")
        had = fd in self._readers
        self._writers[fd] = callback
        self._update_extra(fd, had)

    def remove_writer(self, fd: int) -> None:
        if self._writers.pop(fd, None) is not None:
            self._update_extra(fd, True)

    def _update_extra(self, fd: int, registered: bool) -> None:
        """Make epoll's interest for a reader/writer fd match the two tables."""
        events = (EPOLLIN if fd in self._readers else 0) | (EPOLLOUT if fd in self._writers else 0)
        if not events:
            if registered:
                self._ctl(lib.EPOLL_CTL_DEL, fd, 0)
        else:
            self._ctl(lib.EPOLL_CTL_MOD if registered else lib.EPOLL_CTL_ADD, fd, events)

    def call_at(self, when: float, callback: TimerCallback) -> TimerHandle:
        """Run callback(now) once the clock reaches `when` (loop clock, seconds)."""
        return self.timers.schedule(when, callback)

    def call_later(self, delay: float, callback: TimerCallback) -> TimerHandle:
        return self.timers.schedule(self.clock() + delay, callback)

    def add_deadline_source(
        self,
        next_deadline: Callable[[], float | None],
        poll: Callable[[float], None],
        *,
        announces: bool = False,
    ) -> None:
        """A sans-I/O engine's timers: poll(now) runs when next_deadline() has passed.

        `announces`: the source calls `deadline_moved(when)` whenever its deadline may have
        become earlier than its last answer (a timer armed, work queued for "now"), from
        wherever that happens. The loop then need not ask it again after every dispatched
        batch: that walk over the host's engines was 3.5-6 us of every busy turn. A deadline
        that moves later need not be announced (the loop wakes early, asks, sleeps again).
        """
        self._sources.append((next_deadline, poll))
        if not announces:
            self._asking += 1
        self._deadline_stale = True

    def deadline_changed(self) -> None:
        """A deadline source's deadline may have moved earlier outside the loop's callbacks
        (e.g. a link that holds frames it was given to send): ask every source again."""
        self._deadline_stale = True

    def deadline_moved(self, when: float) -> None:
        """An announcing source's (or a timer's) deadline is now `when` or later: the cached
        earliest deadline is lowered to it (if stale, the recomputation sees it anyway)."""
        deadline = self._deadline
        if deadline is None or when < deadline:
            self._deadline = when

    _timer_armed = deadline_moved

    # -- running -----------------------------------------------------------------------------
    def run(self) -> None:
        """Turn until stop(); SIGINT/SIGTERM stop it when run from the main thread, unless
        `signal_handlers` takes them (the Stack does, for a graceful shutdown)."""
        restore = self._install_signals()
        self._running = True
        try:
            while not self._stop_requested:
                self.run_once()
        finally:
            self._running = False
            self._stop_requested = False
            restore()

    def stop(self) -> None:
        """Ask run() to return after the current turn; idempotent, callable from any thread."""
        self._stop_requested = True
        with contextlib.suppress(OSError):  # buffer full (already woken) or closed
            self._wake_w.send(b"\0")

    def run_once(self, timeout: float | None = None) -> None:
        """One turn. `timeout` (seconds) caps the wait; None waits for the next deadline."""
        now = self.clock()
        if not self._running:  # called from outside run(): the caller may have moved deadlines
            self._deadline_stale = True
        self._flush_ready(now)  # queued outside a turn (before run, ...)
        # Look first without waiting: under load something is ready, and the nearest deadline
        # (cached; every source asked again only when it is stale) is only needed to sleep.
        n = lib.ns_epoll_wait(self._epfd, self._fds, self._events, MAX_EVENTS, 0)
        if self._received:
            self._received = False
            if n == 0 and self.busy_poll and (timeout is None or timeout > 0):
                budget = self.busy_poll if timeout is None else min(timeout, self.busy_poll)
                # A spin never makes a due timer late: it ends by the nearest deadline.
                self._timeout_ms(now)  # brings the cached deadline up to date
                deadline = self._deadline
                if deadline is not None:
                    budget = min(budget, deadline - now)
                adaptive = self.busy_adaptive
                if budget > 0 and (adaptive is None or adaptive.should_spin()):
                    n = self._busy_poll(budget, adaptive)
                if n == 0:
                    now = self.clock()  # the sleep below counts from the spin's end
        if n == 0:
            wait = self._timeout_ms(now)
            if timeout is not None:
                cap = max(0, math.ceil(timeout * 1000))
                wait = cap if wait < 0 else min(wait, cap)
            if wait:
                n = lib.ns_epoll_wait(self._epfd, self._fds, self._events, MAX_EVENTS, wait)
        if n < 0:
            raise OSError(-n, os.strerror(-n))
        self.counters.loop_wakeups += 1
        now = self.clock()
        busy_since = time.perf_counter()  # a measurement, not protocol time: not self.clock
        if n:
            if self._asking:  # what the callbacks do may move a silent source's deadline
                self._deadline_stale = True
            self._dispatch(n, now)
            # Replies leave before the timers run: a request/response peer (a TCP echo round
            # trip, a handshake) waits for them, and the timer pass then overlaps its turn.
            self._flush_ready(now)
        if self._pending_signals:
            self._deadline_stale = True
            self._run_signal_handlers(now)
        deadline = self._deadline
        if self._deadline_stale or (deadline is not None and deadline <= now):
            self._run_due(now)
        self._flush(now)
        self.counters.loop_iteration_seconds.observe(time.perf_counter() - busy_since)

    def _busy_poll(self, budget: float, adaptive: AdaptiveBusyPoll | None = None) -> int:
        """Look for events without sleeping for up to `budget` seconds (see busy_poll). With
        the adaptive policy, tell it what the spin found and whether the thread had the CPU
        to itself meanwhile (thread CPU time against wall time). No sched_yield between
        looks: measured no better under load (bench/PROFILE.md, ninth pass) and a system
        call per look; the scheduler preempts a spin for a woken task."""
        wall = time.perf_counter
        cpu0 = time.thread_time() if adaptive is not None else 0.0
        start = wall()
        end = start + budget
        epoll_wait, epfd, fds, events = lib.ns_epoll_wait, self._epfd, self._fds, self._events
        self.counters.loop_busy_poll_spins += 1
        while True:
            n = epoll_wait(epfd, fds, events, MAX_EVENTS, 0)
            if n or wall() >= end:
                break
        if adaptive is not None:
            adaptive.record(n > 0, wall() - start, time.thread_time() - cpu0)
        if n > 0:
            self.counters.loop_busy_polls += 1
        return n

    def _dispatch(self, n: int, now: float) -> None:
        links = self._links
        if n == 1:  # the light turn: one fd, most often the link
            state = links.get(self._fds[0])
            if state is not None:
                self._drain(state, now)
                return
        fds = ffi.unpack(self._fds, n)
        for i, fd in enumerate(fds):
            state = links.get(fd)
            if state is not None:
                self._drain(state, now)
            elif fd == self._wake_fd:
                self._drain_wakeups()
            else:
                events = self._events[i]
                if events & _READ_EVENTS:
                    reader = self._readers.get(fd)
                    if reader is not None:
                        try:
                            reader(now)
                        except Exception as err:
                            self._callback_failed(err)
                if events & _WRITE_EVENTS:
                    writer = self._writers.get(fd)  # looked up again: the reader may have gone
                    if writer is not None:
                        try:
                            writer(now)
                        except Exception as err:
                            self._callback_failed(err)

    def _drain(self, state: _LinkState, now: float) -> None:
        link = state.link
        max_batch = state.max_batch
        for _ in range(self.max_batches_per_turn):
            try:
                frames = link.receive_batch()
            except LinkError as err:  # e.g. the interface was deleted under us
                self._link_failed(state, err)
                return
            if link.rx_oversize:
                self.counters.drop(Drop.LINK_RX_OVERSIZE, link.rx_oversize)
                link.rx_oversize = 0
            if state.counts_vnet and link.rx_vnet_truncated:
                self.counters.drop(Drop.LINK_VNET_TRUNCATED, link.rx_vnet_truncated)
                link.rx_vnet_truncated = 0
            if state.counts_kernel and link.rx_kernel_dropped:
                self.counters.drop(Drop.LINK_RX_KERNEL_DROPPED, link.rx_kernel_dropped)
                link.rx_kernel_dropped = 0
            if not frames:
                return
            self._received = True
            count = len(frames)
            self.counters.loop_batch_frames.observe(count)
            if self.frame_observers:
                self._observe_rx(link, frames, now)
            try:
                state.on_frames(frames, now)
            except Exception:
                log.exception("on_frames for %s failed; frames dropped", link.name)
            # (software GRO hands on fewer frames than it read: `rx_read` says how many it read)
            if count < max_batch and getattr(link, "rx_read", 0) < max_batch:
                return
            # Frames queued so far may be views into this link's arena, which the next
            # receive_batch overwrites: send them before reading again.
            self._flush(now)

    def _observe_rx(self, link: Link, frames: list[memoryview], now: float) -> None:
        metas = getattr(link, "rx_meta", None)
        observers = self.frame_observers
        for i, frame in enumerate(frames):
            # A frame whose virtio-net header says something is shown as the pieces
            # (VnetMark, frame): a pcap completes a partial checksum with it.
            seen = (wvnet.meta_mark(metas[i]), frame) if metas and metas[i] else frame
            for observer in observers:
                observer("rx", seen, now)

    def _link_failed(self, state: _LinkState, err: LinkError) -> None:
        """A link that cannot be read is gone: drop it and stop the loop."""
        log.error("link %s failed: %s; stopping", state.link.name, err)
        self.failed_links.append((state.link, err))
        self.remove_link(state.link)
        self.stop()

    def _callback_failed(self, err: Exception) -> None:
        log.error("callback failed; the loop goes on", exc_info=err)

    def _run_signal_handlers(self, now: float) -> None:
        while self._pending_signals:
            signum = self._pending_signals.pop(0)
            try:
                self.signal_handlers[signum](signum, now)
            except Exception as err:
                self._callback_failed(err)

    def _drain_wakeups(self) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while self._wake_r.recv(4096):
                pass

    def _run_due(self, now: float) -> None:
        """Run the due timers and sources; cache the earliest deadline when nothing ran (what
        runs may arm or move anything: then the next look recomputes it)."""
        timers = self.timers
        earliest = timers.next_deadline()
        ran = earliest is not None and earliest <= now
        if ran:
            timers.run_expired(now)
        for next_deadline, poll in self._sources:
            deadline = next_deadline()
            if deadline is None:
                continue
            if deadline <= now:
                ran = True
                try:
                    poll(now)
                except Exception as err:
                    self._callback_failed(err)
            elif earliest is None or deadline < earliest:
                earliest = deadline
        if ran:
            self._deadline_stale = True
        else:
            self._deadline, self._deadline_stale = earliest, False

    def _flush_ready(self, now: float) -> None:
        """Send what is queued on links not waiting for EPOLLOUT (those are retried once per
        turn, by _flush, after epoll said they are writable)."""
        for state in self._states:
            if state.queue and not state.want_out:
                self._flush_link(state, now)

    def _flush(self, now: float) -> None:
        for state in self._states:
            if state.queue:
                self._flush_link(state, now)
            elif state.want_out:
                self._set_want_out(state, False)

    def _flush_link(self, state: _LinkState, now: float) -> None:
        link, queue, counters = state.link, state.queue, self.counters
        while queue:
            try:
                written = link.send_batch(queue)
                refused = False
            except LinkTxError as err:
                written, refused = err.written, True
                state.tx_errors += 1
                self._tx_warnings.warning(now, "link %s: %s (frame dropped)", link.name, err)
            if written:
                counters.tx_packets += written
                sent = queue if written == len(queue) else queue[:written]
                size = 0
                for frame in sent:
                    size += sum(map(len, frame))
                counters.tx_bytes += size
                if self.frame_observers:
                    for frame in sent:
                        for observer in self.frame_observers:
                            observer("tx", frame, now)
                del queue[:written]
            if not refused:
                break
            del queue[0]  # the frame the kernel refused for good
            counters.drop(Drop.LINK_TX_ERROR)
        lost = state.tx_refused
        if lost is not None and lost[0]:  # refused for good behind a frame that went
            counters.drop(Drop.LINK_TX_ERROR, lost[0])
            lost[0] = 0
        if not queue:  # the common case: all written
            if state.want_out:
                self._set_want_out(state, False)
            return
        excess = len(queue) - self.tx_queue_limit
        if excess > 0:
            del queue[:excess]
            counters.drop(Drop.LINK_TX_QUEUE_FULL, excess)
        # Left for EPOLLOUT: own the bytes, since views may point into a receive arena.
        queue[:] = [own_frame(frame) for frame in queue]  # VnetMarks kept
        if not state.want_out:
            self._set_want_out(state, True)

    def _set_want_out(self, state: _LinkState, want: bool) -> None:
        events = EPOLLIN | EPOLLOUT if want else EPOLLIN
        self._ctl(lib.EPOLL_CTL_MOD, state.link.fd, events)
        state.want_out = want

    def _timeout_ms(self, now: float) -> int:
        """Milliseconds until the nearest deadline (rounded up), -1 when there is none."""
        if self._deadline_stale:
            deadline = self.timers.next_deadline()
            for next_deadline, _ in self._sources:
                d = next_deadline()
                if d is not None and (deadline is None or d < deadline):
                    deadline = d
            self._deadline, self._deadline_stale = deadline, False
        else:
            deadline = self._deadline
        if deadline is None:
            return -1
        return max(0, math.ceil((deadline - now) * 1000))

    def _ctl(self, op: int, fd: int, events: int) -> None:
        rc = lib.ns_epoll_ctl(self._epfd, op, fd, events)
        if rc < 0 and not (op == lib.EPOLL_CTL_DEL and rc in (-errno.EBADF, -errno.ENOENT)):
            raise OSError(-rc, os.strerror(-rc))

    # -- signals -----------------------------------------------------------------------------
    def _install_signals(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        signums = {signal.SIGINT, signal.SIGTERM, *self.signal_handlers}
        previous = {sig: signal.getsignal(sig) for sig in signums}
        old_wakeup = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)

        def on_signal(signum: int, frame: object) -> None:
            if signum in self.signal_handlers:
                self._pending_signals.append(signum)  # the wakeup fd ends the epoll wait
                return
            log.info("%s: stopping", signal.Signals(signum).name)
            self.stop()

        for sig in previous:
            signal.signal(sig, on_signal)

        def restore() -> None:
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

        return restore

    def close(self) -> None:
        """Release the epoll fd and wakeup sockets (links are closed by their owners)."""
        if self._epfd >= 0:
            os.close(self._epfd)
            self._epfd = -1
            self._wake_r.close()
            self._wake_w.close()

    def __enter__(self) -> Loop:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
