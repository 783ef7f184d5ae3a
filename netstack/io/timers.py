"""A heap of one-shot timers with lazy cancellation; pure (times are arguments, no clock).

Cancelling only marks the handle; the heap drops dead entries when they reach the top, and is
rebuilt when more than half of it is dead, so a storm of cancelled timers cannot grow it forever.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable

TimerCallback = Callable[[float], None]


class TimerHandle:
    """A scheduled callback; `cancel()` is idempotent and safe after the timer fired."""

    __slots__ = ("_heap", "callback", "when")

    def __init__(self, when: float, callback: TimerCallback, heap: TimerHeap) -> None:
        self.when = when
        self.callback: TimerCallback | None = callback
        self._heap: TimerHeap | None = heap

    @property
    def cancelled(self) -> bool:
        return self.callback is None

    def cancel(self) -> None:
        heap = self._heap
        if self.callback is None:
            return
        self.callback = None
        if heap is not None:  # still queued: tell the heap one of its entries died
            self._heap = None
            heap._on_cancel()

    def __repr__(self) -> str:
        state = "cancelled" if self.callback is None else "pending"
        return f"TimerHandle(when={self.when!r}, {state})"


class TimerHeap:
    """Timers ordered by deadline, then by scheduling order."""

    def __init__(
        self,
        on_error: Callable[[Exception], None] | None = None,
        on_schedule: Callable[[float], None] | None = None,
    ) -> None:
        """`on_error`, if given, receives what a callback raised and the run goes on.
        `on_schedule(when)`, if given, hears of every timer armed (a cached earliest deadline
        is lowered with it; cancelling only ever moves the earliest deadline later)."""
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._on_error = on_error
        self._on_schedule = on_schedule
        self._seq = itertools.count()
        self._dead = 0

    def __len__(self) -> int:
        """Live (not cancelled, not yet run) timers."""
        return len(self._heap) - self._dead

    def schedule(self, when: float, callback: TimerCallback) -> TimerHandle:
        """Run callback(now) at the first run_expired(now) with now >= when."""
        handle = TimerHandle(when, callback, self)
        heapq.heappush(self._heap, (when, next(self._seq), handle))
        if self._on_schedule is not None:
            self._on_schedule(when)
        return handle

    def next_deadline(self) -> float | None:
        """The earliest live deadline, or None when nothing is scheduled."""
        heap = self._heap
        while heap and heap[0][2].callback is None:
            heapq.heappop(heap)
            self._dead -= 1
        return heap[0][0] if heap else None

    def run_expired(self, now: float) -> int:
        """Run every timer due at `now`; returns how many ran.

        Timers scheduled by the callbacks for `now` or earlier wait for the next call, so a
        callback that re-arms itself at `now` cannot spin this forever.
        """
        heap = self._heap
        due: list[TimerHandle] = []
        while heap and heap[0][0] <= now:
            handle = heapq.heappop(heap)[2]
            if handle.callback is None:
                self._dead -= 1
            else:
                handle._heap = None
                due.append(handle)
        ran = 0
        for handle in due:
            callback = handle.callback
            if callback is not None:  # an earlier callback of this batch may have cancelled it
                handle.callback = None
                ran += 1
                if self._on_error is None:
                    callback(now)
                    continue
                try:
                    callback(now)
                except Exception as err:
                    self._on_error(err)
        return ran

    def _on_cancel(self) -> None:
        self._dead += 1
        if self._dead > 64 and self._dead * 2 > len(self._heap):
            self._heap = [entry for entry in self._heap if entry[2].callback is not None]
            heapq.heapify(self._heap)
            self._dead = 0
