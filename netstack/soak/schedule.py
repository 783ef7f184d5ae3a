"""The soak's timeline: phases of equal length, cycling clean / loss / reorder / delay / flood /
clean, the last one always clean so the load ends quietly.

Flood phases are when the SYN floods run. Connection failures then are expected and not judged,
and neither are they for `flood_tail` seconds after a flood: the half-open connections a
random-source flood leaves keep the listener's SYN queue full (SYN cookies, which a reordered
first segment defeats) until their SYN-ACK retries run out. The impairment phases come before
the flood in each cycle so that they are judged on their own. Impairment phases set the relay's
faults (both directions) for their duration.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

CYCLE = ("clean", "loss", "reorder", "delay", "flood", "clean")
IMPAIRMENTS = ("loss", "reorder", "delay")


@dataclasses.dataclass(frozen=True)
class Impairments:
    """The relay faults of each impairment phase, in the fault-setting syntax."""

    loss: str = "drop=0.03"
    reorder: str = "reorder=0.1"
    delay: str = "delay=20ms,jitter=5ms"

    def text(self, kind: str) -> str:
        return getattr(self, kind) if kind in IMPAIRMENTS else "none"


@dataclasses.dataclass(frozen=True)
class Phase:
    kind: str  # clean, flood, loss, reorder, delay
    start: float  # seconds since the load started
    end: float
    impairment: str  # relay setting for both directions ("none" when clean)

    @property
    def flood(self) -> bool:
        return self.kind == "flood"


def default_phase_length(duration: float) -> float:
    """About eight phases per run, 10 s to 5 min each."""
    return min(300.0, max(10.0, duration / 8))


def build_schedule(
    duration: float,
    phase_length: float,
    *,
    flood: bool = True,
    impair: Impairments | None = Impairments(),
) -> list[Phase]:
    """Phases covering [0, duration); kinds that are switched off become clean."""
    phases: list[Phase] = []
    start, i = 0.0, 0
    while start < duration - 1e-9:
        end = min(duration, start + phase_length)
        kind = CYCLE[i % len(CYCLE)]
        if end >= duration or (kind == "flood" and not flood):
            kind = "clean"
        if kind in IMPAIRMENTS and impair is None:
            kind = "clean"
        text = impair.text(kind) if impair is not None else "none"
        phases.append(Phase(kind, start, end, text))
        start, i = end, i + 1
    return phases


class Timeline:
    """Which phase a moment of the load falls in, and whether an interval touched a flood."""

    def __init__(self, phases: Sequence[Phase], flood_tail: float = 0.0) -> None:
        self.phases = list(phases)
        self.flood_tail = flood_tail

    def at(self, t: float) -> Phase | None:
        for phase in self.phases:
            if phase.start <= t < phase.end:
                return phase
        return None

    def kind_at(self, t: float) -> str:
        phase = self.at(t)
        return phase.kind if phase is not None else ("warmup" if t < 0 else "settle")

    def touches_flood(self, t0: float, t1: float) -> bool:
        """True if [t0, t1] overlaps a flood phase or the `flood_tail` seconds after one."""
        return any(p.flood and p.start < t1 and t0 < p.end + self.flood_tail for p in self.phases)
