"""Fragment reassembly for IPv4 and IPv6: one engine, bounded in bytes, datagrams and time.

Pure: fragments and `now` in, a whole datagram out when the last hole fills. Each datagram
keeps its fragments as a sorted list of non-overlapping (start, end, data) pieces: the copy
taken on arrival (the receive view dies with the call) plus one copy into the finished packet
is all the copying there is. What differs between the families is a `Family` value: drop
reasons, counter names, and two hooks, one that rebuilds the whole packet from fragment zero's
header part and one that gives fragment zero back for the ICMP error on timeout. The IPv4
adapter is `Reassembler` below, the IPv6 one `Reassembler6` in reassembly6.py.

Rules (both families, as Linux applies them):
- a fragment that is empty, whose payload is not a multiple of 8 bytes while more follow, or
  that would end beyond 65535 bytes with its header part (IPv4: the header, in Total Length;
  IPv6: the extension headers before the Fragment header, in Payload Length) -> that fragment
  dropped (`bad`);
- a fragment inconsistent with the datagram's known end (data beyond the last fragment, two
  different last fragments) -> the whole datagram dropped (`bad`); so is a datagram whose
  fragment zero brings a header part too long for the data already held;
- any overlap (RFC 5722, and RFC 8200 §4.5 for IPv6) -> the whole datagram dropped and its key
  remembered for `timeout`, so the rest of its fragments are dropped too (`overlap`); an exact
  duplicate (same offset and length) is ignored without counting anything;
- `timeout` after its first fragment arrived, an incomplete datagram is dropped (`timeout`)
  and, if it holds fragment zero, that fragment is handed back so the caller can send ICMP
  time exceeded (code 1, RFC 792 / RFC 1122 3.3.2, RFC 4443 §3.3 / RFC 8200 §4.5).
Limits: at most `max_datagrams` in progress and `max_bytes` held, where each fragment is
charged its data plus FRAGMENT_OVERHEAD (what keeping it costs beyond its data: the bytes
object and the list entries), so a flood of 8-byte fragments cannot hold ~15x `max_bytes` of
memory. When a new fragment would go over either limit, the OLDEST other datagrams are evicted
(`overflow`) rather than the new one refused: legitimate datagrams complete within
milliseconds, so refusing would let a few stray fragments block all reassembly for a whole
timeout. A datagram that alone exceeds `max_bytes` is dropped.
Every discarded datagram counts one drop per fragment it held (plus the fragment that caused
it) under one reason, and one reassembly failure.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

from netstack.counters import Counters
from netstack.drops import Drop
from netstack.proto.deadlines import Announce, unannounced
from netstack.wire import ipv4 as wipv4
from netstack.wire.checksum import checksum

MAX_DATAGRAM = 65535  # the largest Total Length (IPv4) or Payload Length (IPv6)
# Bytes charged per fragment held beyond its data: a bytes object's header (33), two offsets
# (28 each once past the small-int cache) and three list slots (8 each, plus growth), rounded
# up. Measured by tests/unit/test_reassembly_common.py with tracemalloc.
FRAGMENT_OVERHEAD = 128
Key = tuple[int, int, int, int]  # IPv4: (src, dst, protocol, ident)
R = TypeVar("R")


@dataclasses.dataclass(slots=True, eq=False)
class Datagram:
    """One datagram in progress."""

    key: Hashable
    deadline: float
    starts: list[int] = dataclasses.field(default_factory=list)
    ends: list[int] = dataclasses.field(default_factory=list)
    datas: list[bytes] = dataclasses.field(default_factory=list)
    held: int = 0  # data bytes held
    total: int | None = None  # data length, known once the last fragment arrived
    head: bytes | None = None  # fragment zero's header part, kept for the rebuild
    meta: Any = None  # what else the family keeps from fragment zero

    def join(self, out: bytearray, base: int) -> None:
        """Copy the pieces into `out` from `base` on."""
        for start, data in zip(self.starts, self.datas, strict=True):
            out[base + start : base + start + len(data)] = data


@dataclasses.dataclass(frozen=True, slots=True)
class Family(Generic[R]):
    """What one address family changes in reassembly."""

    bad: Drop
    overlap: Drop
    overflow: Drop
    timeout: Drop
    reassembled: str  # the Counters attribute counting finished datagrams
    failures: str  # ... and given-up ones
    rebuild: Callable[[Datagram], R | None]  # whole packet from a complete datagram; None: bad
    quote: Callable[[Datagram], bytes]  # fragment zero, for time exceeded (head is set)


class Reassembly(Generic[R]):
    """Collects fragments per datagram; `file` returns the finished datagram."""

    family: Family[R]  # set by each family's subclass
    default_timeout: float

    def __init__(
        self,
        counters: Counters,
        *,
        timeout: float | None = None,
        max_bytes: int = 4 * 1024 * 1024,
        max_datagrams: int = 64,
    ) -> None:
        self.counters = counters
        self.timeout = self.default_timeout if timeout is None else timeout
        self.max_bytes = max_bytes
        self.max_datagrams = max(max_datagrams, 1)
        # In arrival order of their first fragment, hence also in deadline order.
        self._datagrams: OrderedDict[Hashable, Datagram] = OrderedDict()
        # Keys of datagrams dropped for overlapping: key -> until when (insertion order).
        self._dead: OrderedDict[Hashable, float] = OrderedDict()
        self._held = 0  # data bytes held
        self._charged = 0  # ... plus FRAGMENT_OVERHEAD per fragment: what max_bytes bounds
        # Told when a new datagram or dead key brings the next deadline earlier (deadlines.py).
        self.deadline_moved: Announce = unannounced

    @property
    def held_bytes(self) -> int:
        """Data bytes held (without the per-fragment charge)."""
        return self._held

    @property
    def charged_bytes(self) -> int:
        """What counts against `max_bytes`: data plus FRAGMENT_OVERHEAD per fragment."""
        return self._charged

    def __len__(self) -> int:
        """Datagrams in progress."""
        return len(self._datagrams)

    def file(
        self,
        key: Hashable,
        start: int,
        more: bool,
        data: memoryview,
        head_len: int,
        zero: tuple[bytes, Any] | None,
        now: float,
    ) -> R | None:
        """File one fragment's data; returns the family's rebuilt packet once complete.

        `head_len`: the bytes of header part that count with the data against 65535;
        `zero`: for fragment zero, (header part, family data) to keep. `data` is not kept.
        """
        family = self.family
        c = self.counters
        size = len(data)
        end = start + size
        if size == 0 or (more and size % 8) or end + head_len > MAX_DATAGRAM:
            c.drop(family.bad)
            return None
        if key in self._dead:
            c.drop(family.overlap)
            return None

        dg = self._datagrams.get(key)
        if dg is not None:
            i = bisect.bisect_left(dg.starts, start)
            n = len(dg.starts)
            if i < n and dg.starts[i] == start and dg.ends[i] == end:
                return None  # exact duplicate: tolerated silently (RFC 5722 allows it)
            if (i > 0 and dg.ends[i - 1] > start) or (i < n and dg.starts[i] < end):
                self._discard(dg, family.overlap, extra=1)
                self._remember_dead(key, now + self.timeout)
                return None
            # Data beyond the known end, or an end before data already held (a second, different
            # last fragment is always one of the two).
            if (dg.total is not None and end > dg.total) or (
                not more and dg.ends and dg.ends[-1] > end
            ):
                self._discard(dg, family.bad, extra=1)
                return None
        else:
            if len(self._datagrams) >= self.max_datagrams:
                self._discard(next(iter(self._datagrams.values())), family.overflow)
            dg = Datagram(key=key, deadline=now + self.timeout)
            self._datagrams[key] = dg
            self.deadline_moved(dg.deadline)
            i = 0

        if not self._make_room(dg, size + FRAGMENT_OVERHEAD):
            return None
        dg.starts.insert(i, start)
        dg.ends.insert(i, end)
        dg.datas.insert(i, bytes(data))
        dg.held += size
        self._held += size
        self._charged += size + FRAGMENT_OVERHEAD
        if not more:
            dg.total = end
        if zero is not None:
            dg.head, dg.meta = zero
        if dg.total is not None and dg.held == dg.total and dg.head is not None:
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
            if dg.head is not None:
                expired.append(self.family.quote(dg))
            self._discard(dg, self.family.timeout)
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
    def _make_room(self, dg: Datagram, charge: int) -> bool:
        """Evict the oldest other datagrams until `charge` more fits; False if it never does."""
        datagrams = self._datagrams
        while self._charged + charge > self.max_bytes:
            victim = None
            for other in datagrams.values():
                if other is not dg:
                    victim = other
                    break
            if victim is None:
                self._discard(dg, self.family.overflow, extra=1)
                return False
            self._discard(victim, self.family.overflow)
        return True

    def _finish(self, dg: Datagram) -> R | None:
        family = self.family
        whole = family.rebuild(dg)
        if whole is None:
            self._discard(dg, family.bad)
            return None
        self._forget(dg)
        counters = self.counters
        setattr(counters, family.reassembled, getattr(counters, family.reassembled) + 1)
        return whole

    def _forget(self, dg: Datagram) -> None:
        del self._datagrams[dg.key]
        self._held -= dg.held
        self._charged -= dg.held + FRAGMENT_OVERHEAD * len(dg.starts)

    def _discard(self, dg: Datagram, reason: Drop, extra: int = 0) -> None:
        self._forget(dg)
        counters = self.counters
        counters.drop(reason, len(dg.starts) + extra)
        setattr(counters, self.family.failures, getattr(counters, self.family.failures) + 1)

    def _remember_dead(self, key: Hashable, deadline: float) -> None:
        dead = self._dead
        dead[key] = deadline
        self.deadline_moved(deadline)
        while len(dead) > self.max_datagrams:
            dead.popitem(last=False)


# -- IPv4 (RFC 791, RFC 815) -----------------------------------------------------------------
Ipv4Whole = tuple[wipv4.Ipv4Header, memoryview]


def _rebuild4(dg: Datagram) -> Ipv4Whole | None:
    """Fragment zero's header (options included) before the data, fixed up: total length,
    MF clear, offset 0, DF as fragment zero had it, a new checksum."""
    first, parsed = dg.head, dg.meta
    assert first is not None and dg.total is not None
    hlen = len(first)
    total_length = hlen + dg.total
    if total_length > MAX_DATAGRAM:
        return None
    out = bytearray(total_length)
    out[:hlen] = first
    dg.join(out, hlen)
    out[2:4] = total_length.to_bytes(2, "big")
    flags = wipv4.FLAG_DF if parsed.dont_fragment else 0
    out[6:8] = flags.to_bytes(2, "big")  # MF clear, offset 0
    out[10:12] = b"\x00\x00"
    csum = checksum(memoryview(out)[:hlen])
    out[10:12] = csum.to_bytes(2, "big")
    header = parsed._replace(
        total_length=total_length, more_fragments=False, frag_offset=0, checksum=csum
    )
    return header, memoryview(out)


def _quote4(dg: Datagram) -> bytes:
    """Fragment zero as it arrived (header + data): its data is the first piece held."""
    assert dg.head is not None
    return dg.head + dg.datas[0]


IPV4: Family[Ipv4Whole] = Family(
    bad=Drop.IPV4_BAD_FRAGMENT,
    overlap=Drop.IPV4_FRAGMENT_OVERLAP,
    overflow=Drop.IPV4_REASSEMBLY_OVERFLOW,
    timeout=Drop.IPV4_REASSEMBLY_TIMEOUT,
    reassembled="ipv4_reassembled",
    failures="ipv4_reassembly_failures",
    rebuild=_rebuild4,
    quote=_quote4,
)


class Reassembler(Reassembly[Ipv4Whole]):
    """IPv4: datagrams keyed by (src, dst, protocol, ident); 30 s as Linux's ipfrag_time."""

    family = IPV4
    default_timeout = 30.0

    def add(
        self, header: wipv4.Ipv4Header, packet: memoryview, payload: memoryview, now: float
    ) -> Ipv4Whole | None:
        """File one fragment; returns (header, whole packet) once the datagram is complete.

        `packet` is the fragment as received (its first header_len bytes are the header),
        `payload` its data trimmed to total_length. Neither is kept: what is needed is copied.
        """
        start = header.frag_offset
        zero = (bytes(packet[: header.header_len]), header) if start == 0 else None
        key = (header.src, header.dst, header.protocol, header.ident)
        return self.file(key, start, header.more_fragments, payload, header.header_len, zero, now)
