"""When the loop busy-polls: the adaptive policy behind `busy_poll = "auto"`.

A fixed busy poll (`--busy-poll US`) looks for the next frame after every turn that received
some. On a quiet VM that saves a wakeup from halt per request (a quarter to a third of a TCP
echo round trip); on a busy machine it burns CPU another task (often the peer itself) wanted,
and the round trip gets longer. The adaptive policy keeps the win where it exists and backs
off where it does not, as Linux's adaptive interrupt moderation follows recent history:

- a spin is tried only after a turn that received frames (the loop's rule; idle never spins);
- a spin that found the next frame with the CPU to itself keeps spinning allowed;
- a spin that found nothing, or during which the thread did not get most of the CPU (its
  thread CPU time well below the wall time: another task ran on its CPU meanwhile),
  backs off at once: the next `backoff` received turns sleep without spinning, and `backoff`
  doubles (up to MAX_BACKOFF) with every failure in a row, so a stack whose peer is slower
  than the budget, or which shares its CPU, spends at most one budget per MAX_BACKOFF turns.

Pure bookkeeping (no clocks, no I/O): the loop measures, this decides.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_BACKOFF = 64  # received turns without a spin after repeated failures
# A spin whose thread got less than this share of its wall time shared the CPU with someone.
MIN_CPU_SHARE = 0.75
# Shorter spins are not judged for sharing: two clock reads and one look are most of them.
MIN_JUDGED = 10e-6


@dataclass
class AdaptiveBusyPoll:
    """Success history of recent spins: whether the next received turn may spin."""

    backoff: int = 0  # current back-off length (0: the last spin succeeded)
    skip: int = 0  # received turns left to sleep without spinning
    spins: int = 0
    found: int = 0
    contended: int = 0

    def should_spin(self) -> bool:
        """Called once per received turn whose first look found nothing."""
        if self.skip:
            self.skip -= 1
            return False
        return True

    def record(self, found: bool, wall: float, cpu: float) -> None:
        """The outcome of one spin: found a frame or not; its wall and thread CPU seconds."""
        self.spins += 1
        shared = wall >= MIN_JUDGED and cpu < MIN_CPU_SHARE * wall
        if shared:
            self.contended += 1
        if found:
            self.found += 1
        if found and not shared:
            self.backoff = 0
            return
        self.backoff = min(MAX_BACKOFF, self.backoff * 2 or 1)
        self.skip = self.backoff
