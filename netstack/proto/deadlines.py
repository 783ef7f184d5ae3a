"""How a protocol engine tells the event loop that its next deadline moved earlier.

The loop caches the earliest deadline of its sources and asks them again only when one of
them says its deadline may have moved earlier (a timer armed, work queued for "now"): an
engine calls its `deadline_moved(when)` there. A deadline that moves later needs no word (the
loop wakes at the old time, asks, and sleeps again). Until the host connects an engine to a
loop the callback is `unannounced`, which does nothing (tests drive engines by hand).
"""

from __future__ import annotations

from collections.abc import Callable

Announce = Callable[[float], None]


def unannounced(when: float) -> None:
    """The callback of an engine that no loop listens to."""
