"""The soak's timeline: phases of equal length, cycling clean / flood / loss / clean / reorder /
delay, the last one always clean so the load ends quietly.

Flood phases are when the SYN floods run (connection failures then are expected and not
judged); impairment phases set the relay's faults (both directions) for their duration.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

CYCLE = ("clean", "flood", "loss", "clean", "reorder", "delay")
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

    def __init__(self, phases: Sequence[Phase]) -> None:
        self.phases = list(phases)

    def at(self, t: float) -> Phase | None:
        for phase in self.phases:
            if phase.start <= t < phase.end:
                return phase
        return None

    def kind_at(self, t: float) -> str:
        phase = self.at(t)
        return phase.kind if phase is not None else ("warmup" if t < 0 else "settle")

    def touches_flood(self, t0: float, t1: float) -> bool:
        return any(p.flood and p.start < t1 and t0 < p.end for p in self.phases)
