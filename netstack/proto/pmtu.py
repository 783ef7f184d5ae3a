"""Path MTU cache (RFC 8201): per destination, bounded, aging.

Pure: `now` in. Packet Too Big lowers a destination's PMTU (never below the IPv6 minimum of
1280, never raised by a PTB); entries age out after `lifetime` (RFC 8201 §4 suggests 10 min)
so a path that got better is found again. LRU-bounded, so a PTB flood cannot grow it.
"""

from __future__ import annotations

from collections import OrderedDict

MIN_PMTU = 1280


class PmtuCache:
    def __init__(self, max_entries: int = 256, lifetime: float = 600.0) -> None:
        self.max_entries = max(1, max_entries)
        self.lifetime = lifetime
        self._entries: OrderedDict[bytes, tuple[int, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, dst: bytes, link_mtu: int, now: float) -> int:
        entry = self._entries.get(dst)
        if entry is None:
            return link_mtu
        mtu, expires = entry
        if now >= expires:
            del self._entries[dst]
            return link_mtu
        return min(mtu, link_mtu)

    def update(self, dst: bytes, mtu: int, link_mtu: int, now: float) -> bool:
        """A Packet Too Big said `mtu`; True when it lowered the path MTU."""
        mtu = max(MIN_PMTU, mtu)
        if mtu >= self.get(dst, link_mtu, now):
            return False
        self._entries[dst] = (mtu, now + self.lifetime)
        self._entries.move_to_end(dst)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return True
