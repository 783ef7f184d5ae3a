"""A fixed-bucket histogram of plain ints, cheap enough to observe into on the packet path.

The loop (frames per batch, time per turn) and TCP (round-trip times) call `observe()`; the
Prometheus exporter reads `snapshot()` from its own thread at scrape time. No locks, no library
calls: `observe` is one bisect over a tuple and two additions. Counts are per bucket (not
cumulative) so an observation touches one slot; `snapshot` accumulates them.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from typing import NamedTuple


class HistogramSnapshot(NamedTuple):
    """Cumulative view for an exporter: [(upper bound, count <= bound), ...], +Inf last."""

    buckets: list[tuple[float, int]]
    sum: float
    count: int


class Histogram:
    """Counts of observations per upper bound (Prometheus `le` semantics: value <= bound)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        if not bounds or list(bounds) != sorted(set(bounds)):
            raise ValueError("bounds must be a non-empty, strictly increasing sequence")
        self.bounds: tuple[float, ...] = tuple(bounds)
        # counts[i] holds bounds[i-1] < value <= bounds[i]; the last slot is +Inf.
        self.counts: list[int] = [0] * (len(self.bounds) + 1)
        self.sum: float = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def snapshot(self) -> HistogramSnapshot:
        """A consistent-enough copy for another thread: buckets and count agree exactly.

        `list(counts)` is one C-level copy under the GIL, so the buckets and the total derived
        from them never disagree; `sum` may lag or lead by the observation in flight.
        """
        counts = list(self.counts)
        total = self.sum
        cumulative: list[tuple[float, int]] = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), counts, strict=True):
            running += n
            cumulative.append((bound, running))
        return HistogramSnapshot(cumulative, total, running)


# Bucket bounds shared by the stack's histograms (fixed: they become `le` label values).
BATCH_FRAMES_BOUNDS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
ITERATION_SECONDS_BOUNDS = (
    1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1, 1.0,
)  # fmt: skip
RTT_SECONDS_BOUNDS = (
    1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
