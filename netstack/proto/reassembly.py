"""IPv4 fragment reassembly (RFC 791, RFC 815, RFC 5722), bounded in bytes, datagrams and time.

Pure: fragments and `now` in, a whole datagram out when the last hole fills. Datagrams are keyed
by (src, dst, protocol, ident). Each keeps its fragments as a sorted list of non-overlapping
(start, end, data) pieces: the copy taken on arrival (the receive view dies with the call) plus
one copy into the finished packet is all the copying there is.

Rules, as Linux applies them:
- a fragment that is empty, whose payload is not a multiple of 8 bytes while more follow, or
  that would end beyond 65535 bytes with its header -> that fragment dropped (IPV4_BAD_FRAGMENT);
- a fragment inconsistent with the datagram's known end (data beyond the last fragment, two
  different last fragments) -> the whole datagram dropped (IPV4_BAD_FRAGMENT);
- any overlap (RFC 5722) -> the whole datagram dropped and its key remembered for `timeout`,
  so the rest of its fragments are dropped too (IPV4_FRAGMENT_OVERLAP); an exact
  duplicate (same offset and length) is ignored without counting anything;
- `timeout` after its first fragment arrived, an incomplete datagram is dropped
  (IPV4_REASSEMBLY_TIMEOUT) and, if it holds fragment zero, that fragment is handed back so the
  caller can send ICMP time exceeded (code 1, RFC 792 / RFC 1122 3.3.2).
Limits: at most `max_datagrams` in progress and `max_bytes` of fragment payload held. When a new
fragment would go over either, the OLDEST other datagrams are evicted (IPV4_REASSEMBLY_OVERFLOW)
rather than the new one refused: legitimate datagrams complete within milliseconds, so refusing
would let a few stray fragments block all reassembly for a whole timeout. A datagram that alone
exceeds `max_bytes` is dropped.
Every discarded datagram counts one drop per fragment it held (plus the fragment that caused
it) under one reason, and one `ipv4_reassembly_failures`.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections import OrderedDict

from netstack.counters import Counters
from netstack.drops import Drop
from netstack.wire import ipv4 as wipv4
from netstack.wire.checksum import checksum

MAX_DATAGRAM = 65535
Key = tuple[int, int, int, int]  # (src, dst, protocol, ident)


@dataclasses.dataclass(slots=True, eq=False)
class _Datagram:
    key: Key
    deadline: float
    starts: list[int] = dataclasses.field(default_factory=list)
    ends: list[int] = dataclasses.field(default_factory=list)
    datas: list[bytes] = dataclasses.field(default_factory=list)
    held: int = 0  # payload bytes held
    total: int | None = None  # payload length, known once the last fragment arrived
    first_header: bytes | None = None  # IP header of fragment zero, options included
    first_parsed: wipv4.Ipv4Header | None = None

    def first_fragment(self) -> bytes | None:
        """Fragment zero as it arrived (header + data), for ICMP time exceeded."""
        if self.first_header is None:
            return None
        return self.first_header + self.datas[0]


class Reassembler:
    """Collects fragments per datagram; `add` returns the finished datagram."""

    def __init__(
        self,
        counters: Counters,
        *,
        timeout: float = 30.0,
        max_bytes: int = 4 * 1024 * 1024,
        max_datagrams: int = 64,
    ) -> None:
        self.counters = counters
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.max_datagrams = max(max_datagrams, 1)
        # In arrival order of their first fragment, hence also in deadline order.
        self._datagrams: OrderedDict[Key, _Datagram] = OrderedDict()
        # Keys of datagrams dropped for overlapping: key -> until when (insertion order).
        self._dead: OrderedDict[Key, float] = OrderedDict()
        self._held = 0

    @property
    def held_bytes(self) -> int:
        return self._held

    def __len__(self) -> int:
        """Datagrams in progress."""
        return len(self._datagrams)

    def add(
        self, header: wipv4.Ipv4Header, packet: memoryview, payload: memoryview, now: float
    ) -> tuple[wipv4.Ipv4Header, memoryview] | None:
        """File one fragment; returns (header, whole packet) once the datagram is complete.

        `packet` is the fragment as received (its first header_len bytes are the header),
        `payload` its data trimmed to total_length. Neither is kept: what is needed is copied.
        """
        c = self.counters
        start = header.frag_offset
        size = len(payload)
        end = start + size
        more = header.more_fragments
        if size == 0 or (more and size % 8) or end + header.header_len > MAX_DATAGRAM:
            c.drop(Drop.IPV4_BAD_FRAGMENT)
            return None
        key = (header.src, header.dst, header.protocol, header.ident)
        if key in self._dead:
            c.drop(Drop.IPV4_FRAGMENT_OVERLAP)
            return None

        dg = self._datagrams.get(key)
        if dg is not None:
            i = bisect.bisect_left(dg.starts, start)
            n = len(dg.starts)
            if i < n and dg.starts[i] == start and dg.ends[i] == end:
                return None  # exact duplicate: tolerated silently
            if (i > 0 and dg.ends[i - 1] > start) or (i < n and dg.starts[i] < end):
                self._discard(dg, Drop.IPV4_FRAGMENT_OVERLAP, extra=1)
                self._remember_dead(key, now + self.timeout)
                return None
            # Data beyond the known end, or an end before data already held (a second, different
            # last fragment is always one of the two).
            if (dg.total is not None and end > dg.total) or (
                not more and dg.ends and dg.ends[-1] > end
            ):
                self._discard(dg, Drop.IPV4_BAD_FRAGMENT, extra=1)
                return None
        else:
            if len(self._datagrams) >= self.max_datagrams:
                self._discard(next(iter(self._datagrams.values())), Drop.IPV4_REASSEMBLY_OVERFLOW)
            dg = _Datagram(key=key, deadline=now + self.timeout)
            self._datagrams[key] = dg
            i = 0

        if not self._make_room(dg, size):
            return None
        dg.starts.insert(i, start)
        dg.ends.insert(i, end)
        dg.datas.insert(i, bytes(payload))
        dg.held += size
        self._held += size
        if not more:
            dg.total = end
        if start == 0:
            dg.first_header = bytes(packet[: header.header_len])
            dg.first_parsed = header
        if dg.total is not None and dg.held == dg.total:
            return self._finish(dg)
        return None

    def poll(self, now: float) -> list[bytes]:
        """Drop expired datagrams; returns fragment zero of each one that had it."""
        expired: list[bytes] = []
        datagrams = self._datagrams
        while datagrams:
            dg = next(iter(datagrams.values()))
            if dg.deadline > now:
                break
            first = dg.first_fragment()
            if first is not None:
                expired.append(first)
            self._discard(dg, Drop.IPV4_REASSEMBLY_TIMEOUT)
        dead = self._dead
        while dead and next(iter(dead.values())) <= now:
            dead.popitem(last=False)
        return expired

    def next_deadline(self) -> float | None:
        deadlines = []
        if self._datagrams:
            deadlines.append(next(iter(self._datagrams.values())).deadline)
        if self._dead:
            deadlines.append(next(iter(self._dead.values())))
        return min(deadlines) if deadlines else None

    # -- internals -------------------------------------------------------------------------
    def _make_room(self, dg: _Datagram, size: int) -> bool:
        """Evict the oldest other datagrams until `size` more bytes fit; False if they never do."""
        datagrams = self._datagrams
        while self._held + size > self.max_bytes:
            victim = None
            for other in datagrams.values():
                if other is not dg:
                    victim = other
                    break
            if victim is None:
                self._discard(dg, Drop.IPV4_REASSEMBLY_OVERFLOW, extra=1)
                return False
            self._discard(victim, Drop.IPV4_REASSEMBLY_OVERFLOW)
        return True

    def _finish(self, dg: _Datagram) -> tuple[wipv4.Ipv4Header, memoryview] | None:
        """Copy the pieces behind fragment zero's header, with the header fixed up."""
        first, parsed = dg.first_header, dg.first_parsed
        assert first is not None and parsed is not None and dg.total is not None
        hlen = len(first)
        total_length = hlen + dg.total
        if total_length > MAX_DATAGRAM:
            self._discard(dg, Drop.IPV4_BAD_FRAGMENT)
            return None
        del self._datagrams[dg.key]
        self._held -= dg.held
        out = bytearray(total_length)
        out[:hlen] = first
        for start, data in zip(dg.starts, dg.datas, strict=True):
            out[hlen + start : hlen + start + len(data)] = data
        out[2:4] = total_length.to_bytes(2, "big")
        flags = wipv4.FLAG_DF if parsed.dont_fragment else 0
        out[6:8] = flags.to_bytes(2, "big")  # MF clear, offset 0
        out[10:12] = b"\x00\x00"
        csum = checksum(memoryview(out)[:hlen])
        out[10:12] = csum.to_bytes(2, "big")
        self.counters.ipv4_reassembled += 1
        header = parsed._replace(
            total_length=total_length, more_fragments=False, frag_offset=0, checksum=csum
        )
        return header, memoryview(out)

    def _discard(self, dg: _Datagram, reason: Drop, extra: int = 0) -> None:
        del self._datagrams[dg.key]
        self._held -= dg.held
        self.counters.drop(reason, len(dg.starts) + extra)
        self.counters.ipv4_reassembly_failures += 1

    def _remember_dead(self, key: Key, deadline: float) -> None:
        dead = self._dead
        dead[key] = deadline
        while len(dead) > self.max_datagrams:
            dead.popitem(last=False)
