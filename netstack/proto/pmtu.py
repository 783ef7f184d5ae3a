"""Per-destination path MTU cache (RFC 1191, with RFC 5927's caution about forged reports).

Pure: reports and lookups take `now`; nothing here reads a clock. The IPv4 engine owns one
cache keyed by int addresses, the IPv6 engine another keyed by 16-byte addresses, with the
IPv6 minimum of 1280 as its floor (RFC 8201 4; a Packet Too Big below it is dropped before it
gets here). TCP (after validating the quoted segment, RFC 5927 4.1) and UDP (a bound socket sent
the datagram) feed it "fragmentation needed" reports, and both read it back.

Choices (each by RFC section, Linux as the reference where the RFC leaves room):
- RFC 1191 3: a report only ever lowers the estimate; a value not below the current one is
  ignored (Linux's __ip_rt_update_pmtu).
- RFC 1191 5 / 7: a router that reports 0 (pre-RFC 1191), or a value that cannot be right
  (below 68 or not below the quoted datagram's length), gets the plateau table's next value
  below the quoted datagram's length. Here the stack stays with the RFC against today's
  Linux: Linux guessed plateaus too (ip_rt_frag_needed/guess_mtu) until 3.6; since then a 0
  is just a value below min_pmtu, so the estimate drops to 552 and locks.
- Floor: Linux's net.ipv4.route.min_pmtu, 552 (not RFC 1191's absolute 68, nor 576). A report
  below it sets the estimate to 552 and "locks" it: senders then stop setting DF towards that
  destination, so a forged tiny MTU cannot make TCP send 28-byte segments (RFC 5927 7.2;
  Linux's mtu lock). The floor is a parameter (68 at the least, RFC 791).
- RFC 1191 6.3: an estimate is forgotten (raised back to the first hop's MTU) 10 minutes
  after it was set (Linux's net.ipv4.route.mtu_expires = 600 s); a later, lower report
  restarts the clock.
- Bounded: at most `max_entries` destinations, least recently used evicted first.
"""

from __future__ import annotations

import dataclasses

from netstack.counters import Counters

MIN_MTU = 68  # RFC 791: every host takes 68-byte datagrams
LINUX_MIN_PMTU = 552  # net.ipv4.route.min_pmtu (512 + 20 + 20)
EXPIRES = 600.0  # RFC 1191 6.3 / net.ipv4.route.mtu_expires
MAX_ENTRIES = 4096
# RFC 1191 7, table 7-1: the plateaus of common MTUs, highest first.
PLATEAUS = (65535, 32000, 17914, 8166, 4352, 2002, 1492, 1006, 508, 296, MIN_MTU)


def plateau_below(length: int) -> int:
    """RFC 1191 5: the greatest plateau value less than the length of the datagram that
    did not fit (68 at the least)."""
    for value in PLATEAUS:
        if value < length:
            return value
    return MIN_MTU


def next_hop_mtu(reported: int, quoted_length: int) -> int:
    """The MTU a "fragmentation needed" message means: its next-hop MTU field, or the plateau
    estimate when the field is 0 or cannot be right (RFC 1191 5; see the module notes)."""
    if reported < MIN_MTU or reported >= quoted_length:
        return plateau_below(quoted_length)
    return reported


@dataclasses.dataclass(slots=True)
class Entry:
    mtu: int
    expires: float
    locked: bool  # the floor clamped it: send without DF


class PmtuCache:
    """destination address (IPv4 int or IPv6 bytes) -> Entry, LRU-bounded, each entry aging
    out after `expires`."""

    def __init__(
        self,
        min_mtu: int = LINUX_MIN_PMTU,
        expires: float = EXPIRES,
        max_entries: int = MAX_ENTRIES,
        counters: Counters | None = None,
    ) -> None:
        if min_mtu < MIN_MTU:
            raise ValueError(f"a PMTU floor below {MIN_MTU} (RFC 791) is not allowed")
        self.min_mtu = min_mtu
        self.expires = expires
        self.max_entries = max_entries
        self._entries: dict[int | bytes, Entry] = {}  # insertion order = recency (LRU first)
        self.updates = 0  # estimates lowered here (a generation number for TCP's MSS check)
        self.expired = 0
        self.counters = counters  # netstack_pmtu_updates_total, summed over both families

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, dst: int | bytes, now: float) -> Entry | None:
        """The live entry for `dst` (refreshing its recency), or None (use the link MTU)."""
        entries = self._entries
        if not entries:  # the common case: no report ever arrived
            return None
        entry = entries.get(dst)
        if entry is None:
            return None
        if now >= entry.expires:
            del entries[dst]
            self.expired += 1
            return None
        del entries[dst]
        entries[dst] = entry
        return entry

    def path_mtu(self, dst: int | bytes, link_mtu: int, now: float) -> int:
        entry = self.lookup(dst, now)
        return link_mtu if entry is None else min(entry.mtu, link_mtu)

    def report(self, dst: int | bytes, mtu: int, link_mtu: int, now: float) -> Entry | None:
        """A validated "fragmentation needed" for `dst` with next-hop MTU `mtu` (already
        through next_hop_mtu). Returns the new entry when the estimate went down, else None."""
        current = self.path_mtu(dst, link_mtu, now)
        locked = mtu < self.min_mtu
        if locked:
            mtu = self.min_mtu
        if mtu >= current:
            return None
        entries = self._entries
        entries.pop(dst, None)
        entry = Entry(mtu, now + self.expires, locked)
        entries[dst] = entry
        while len(entries) > self.max_entries:
            del entries[next(iter(entries))]
        self.updates += 1
        if self.counters is not None:
            self.counters.pmtu_updates += 1
        return entry

    def expire(self, now: float) -> None:
        """Drop every aged entry (a scan; called rarely, e.g. from a metrics read)."""
        for dst in [d for d, e in self._entries.items() if now >= e.expires]:
            del self._entries[dst]
            self.expired += 1
