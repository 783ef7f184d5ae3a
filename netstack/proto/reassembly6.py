"""IPv6 fragment reassembly (RFC 8200 §4.5), with the bounds of the IPv4 Reassembler.

Keyed by (src, dst, identification) (§4.5: the Fragment header's next header is not part of
the key). Overlapping fragments drop the whole datagram and, for the timeout, any later
fragment of it (RFC 5722). Bounded in bytes held, datagrams in progress, and time (60 s,
§4.5). The unfragmentable part (IPv6 header and the extension headers before the Fragment
header) is taken from fragment zero; the result is a whole packet with no Fragment header.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections import OrderedDict

from netstack.counters import Counters
from netstack.drops import Drop

MAX_PAYLOAD = 65535  # the Payload Length field
Key = tuple[bytes, bytes, int]


@dataclasses.dataclass(slots=True, eq=False)
class _Datagram:
    key: Key
    deadline: float
    starts: list[int] = dataclasses.field(default_factory=list)
    ends: list[int] = dataclasses.field(default_factory=list)
    datas: list[bytes] = dataclasses.field(default_factory=list)
    held: int = 0
    total: int | None = None
    unfragmentable: bytes | None = None  # IPv6 header + headers before the Fragment header
    next_header: int = 0  # from fragment zero's Fragment header
    first: bytes | None = None  # fragment zero as it arrived, for ICMPv6 time exceeded


class Reassembler6:
    def __init__(
        self,
        counters: Counters,
        *,
        timeout: float = 60.0,
        max_bytes: int = 4 * 1024 * 1024,
        max_datagrams: int = 64,
    ) -> None:
        self.counters = counters
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.max_datagrams = max(max_datagrams, 1)
        self._datagrams: OrderedDict[Key, _Datagram] = OrderedDict()
        self._dead: OrderedDict[Key, float] = OrderedDict()
        self._held = 0

    @property
    def held_bytes(self) -> int:
        return self._held

    def __len__(self) -> int:
        return len(self._datagrams)

    def add(
        self,
        key: Key,
        offset: int,
        more: bool,
        data: memoryview,
        unfragmentable: memoryview,
        next_header: int,
        packet: memoryview,
        now: float,
    ) -> tuple[bytes, int] | None:
        """File one fragment's data; returns (whole packet, offset of its upper-layer part
        = len(unfragmentable)) when complete. Nothing passed in is kept: copies are taken."""
        c = self.counters
        size = len(data)
        end = offset + size
        # §4.5: a non-final fragment whose length is no multiple of 8, or data past 65535.
        if size == 0 or (more and size % 8) or len(unfragmentable) - 40 + end > MAX_PAYLOAD:
            c.drop(Drop.IPV6_BAD_FRAGMENT)
            return None
        if key in self._dead:
            c.drop(Drop.IPV6_FRAGMENT_OVERLAP)
            return None
        dg = self._datagrams.get(key)
        if dg is not None:
            i = bisect.bisect_left(dg.starts, offset)
            n = len(dg.starts)
            if i < n and dg.starts[i] == offset and dg.ends[i] == end:
                return None  # exact duplicate: tolerated silently (RFC 5722 allows it)
            if (i > 0 and dg.ends[i - 1] > offset) or (i < n and dg.starts[i] < end):
                self._discard(dg, Drop.IPV6_FRAGMENT_OVERLAP, extra=1)
                self._dead[key] = now + self.timeout
                while len(self._dead) > self.max_datagrams:
                    self._dead.popitem(last=False)
                return None
            if (dg.total is not None and end > dg.total) or (
                not more and dg.ends and dg.ends[-1] > end
            ):
                self._discard(dg, Drop.IPV6_BAD_FRAGMENT, extra=1)
                return None
        else:
            if len(self._datagrams) >= self.max_datagrams:
                self._discard(next(iter(self._datagrams.values())), Drop.IPV6_REASSEMBLY_OVERFLOW)
            dg = _Datagram(key=key, deadline=now + self.timeout)
            self._datagrams[key] = dg
            i = 0
        while self._held + size > self.max_bytes:
            victim = next((o for o in self._datagrams.values() if o is not dg), None)
            if victim is None:
                self._discard(dg, Drop.IPV6_REASSEMBLY_OVERFLOW, extra=1)
                return None
            self._discard(victim, Drop.IPV6_REASSEMBLY_OVERFLOW)
        dg.starts.insert(i, offset)
        dg.ends.insert(i, end)
        dg.datas.insert(i, bytes(data))
        dg.held += size
        self._held += size
        if not more:
            dg.total = end
        if offset == 0:
            dg.unfragmentable = bytes(unfragmentable)
            dg.next_header = next_header
            dg.first = bytes(packet[:1232])  # what an ICMPv6 error may quote
        if dg.total is not None and dg.held == dg.total and dg.unfragmentable is not None:
            return self._finish(dg)
        return None

    def _finish(self, dg: _Datagram) -> tuple[bytes, int]:
        del self._datagrams[dg.key]
        self._held -= dg.held
        unfrag = bytearray(dg.unfragmentable or b"")
        assert dg.total is not None
        # The Next Header field that named the Fragment header now names what followed it:
        # the last extension header before it, or the IPv6 header itself.
        nh_at = _last_next_header_field(unfrag)
        unfrag[nh_at] = dg.next_header
        unfrag[4:6] = (len(unfrag) - 40 + dg.total).to_bytes(2, "big")
        out = bytearray(len(unfrag) + dg.total)
        out[: len(unfrag)] = unfrag
        base = len(unfrag)
        for start, data in zip(dg.starts, dg.datas, strict=True):
            out[base + start : base + start + len(data)] = data
        self.counters.ipv6_reassembled += 1
        return bytes(out), base

    def poll(self, now: float) -> list[bytes]:
        """Expire datagrams; returns fragment zero of each that had one (RFC 8200 §4.5:
        Time Exceeded code 1 only then)."""
        expired = []
        while self._datagrams:
            dg = next(iter(self._datagrams.values()))
            if dg.deadline > now:
                break
            if dg.first is not None:
                expired.append(dg.first)
            self._discard(dg, Drop.IPV6_REASSEMBLY_TIMEOUT)
        while self._dead and next(iter(self._dead.values())) <= now:
            self._dead.popitem(last=False)
        return expired

    def next_deadline(self) -> float | None:
        found: list[float] = []
        if self._datagrams:
            found.append(next(iter(self._datagrams.values())).deadline)
        if self._dead:
            found.append(next(iter(self._dead.values())))
        return min(found) if found else None

    def _discard(self, dg: _Datagram, reason: Drop, extra: int = 0) -> None:
        del self._datagrams[dg.key]
        self._held -= dg.held
        self.counters.drop(reason, len(dg.starts) + extra)
        self.counters.ipv6_reassembly_failures += 1


def _last_next_header_field(unfrag: bytearray) -> int:
    """Offset of the Next Header field naming the Fragment header (validated already by the
    walk that found it: every header here is a whole hop-by-hop/destination/routing one)."""
    at = 6
    i = 40
    while i < len(unfrag):
        at = i
        i += (unfrag[i + 1] + 1) * 8
    return at
