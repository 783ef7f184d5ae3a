"""ARP resolver and responder (RFC 826, RFC 1122 2.3.2, RFC 5227): a bounded cache with timers.

Pure: frames and `now` come in as arguments; frames go out through `emit`. The cache is an LRU
(`OrderedDict`, most recently used last). Each entry moves through

    INCOMPLETE --reply--> REACHABLE --reachable_time--> STALE --first use--> PROBE --reply--> ...

INCOMPLETE: a broadcast request went out; packets wait in a bounded queue. Requests are resent
every `retry_interval`, `max_retries` times after the first; when the last one goes unanswered
the entry is deleted and the queued packets are handed to `on_unreachable`.
REACHABLE: confirmed by an ARP packet from the neighbour less than `reachable_time` ago.
STALE: still used to send; unused for `stale_time` after the last confirmation -> deleted.
PROBE: a STALE entry that was used: still used to send, while unicast requests to the cached
MAC go out on the INCOMPLETE schedule; unanswered -> deleted.

Timers live in a heap of (deadline, seq, entry) with lazy deletion: an entry owns at most one
live heap item (`entry.armed`); a confirmation only moves `entry.deadline`, and the timer
re-arms itself when it fires early. The heap is rebuilt if stale items ever pile up.
"""

from __future__ import annotations

import dataclasses
import enum
import heapq
import itertools
from collections import OrderedDict, deque
from collections.abc import Callable

from netstack.counters import Counters
from netstack.drops import Drop
from netstack.proto.deadlines import Announce, unannounced
from netstack.wire import arp as warp
from netstack.wire import ethernet as weth
from netstack.wire.errors import Malformed
from netstack.wire.vnet import own_frame

Buffer = bytes | bytearray | memoryview
Frame = tuple[Buffer, ...]
UnreachableHandler = Callable[[int, list[tuple[Buffer, ...]], float], None]

BROADCAST_IP = 0xFFFFFFFF
ZERO_MAC = b"\x00" * 6
MIN_FRAME_LEN = 60  # shortest Ethernet frame without FCS; ARP frames are zero-padded to it
DEFEND_INTERVAL = 10.0  # RFC 5227 2.4(b): defend our address at most once per this many s
_PAD = b"\x00" * (MIN_FRAME_LEN - weth.HEADER_LEN - warp.HEADER_LEN)


class ArpState(enum.Enum):
    INCOMPLETE = "incomplete"
    REACHABLE = "reachable"
    STALE = "stale"
    PROBE = "probe"  # STALE and being refreshed by unicast requests


# For ready_header, once per frame sent: a member read through the class costs ~0.16 us
# (EnumType attribute lookup), a module global ~0.02.
_REACHABLE = ArpState.REACHABLE
_PROBE = ArpState.PROBE


@dataclasses.dataclass(slots=True)
class ArpConfig:
    cache_size: int = 512
    reachable_time: float = 30.0
    stale_time: float = 60.0
    retry_interval: float = 1.0
    max_retries: int = 3
    queue_per_destination: int = 16
    queue_total: int = 256


@dataclasses.dataclass(slots=True, eq=False)
class _Entry:
    ip: int
    state: ArpState
    mac: bytes | None = None
    eth_header: bytes = b""  # prebuilt Ethernet header towards `mac`
    confirmed: float = 0.0
    deadline: float = 0.0  # when this entry's next timer event is due
    armed: float | None = None  # deadline of this entry's live heap item, if any
    tries: int = 0  # requests sent in the current INCOMPLETE / PROBE round
    # (sequence number, copied packet); the sequence number orders the global queue
    queue: deque[tuple[int, tuple[bytes, ...]]] = dataclasses.field(default_factory=deque)


def _is_multicast_ip(ip: int) -> bool:
    return ip & 0xF0000000 == 0xE0000000


def _bad_sender_ip(ip: int) -> bool:
    """0.0.0.0, broadcast, multicast, loopback: not an address a neighbour can own."""
    return ip == 0 or ip == BROADCAST_IP or _is_multicast_ip(ip) or ip >> 24 == 127


def multicast_mac(ip: int) -> bytes:
    """RFC 1112 6.4: 01:00:5e plus the low 23 bits of the group address."""
    return bytes((0x01, 0x00, 0x5E, (ip >> 16) & 0x7F, (ip >> 8) & 0xFF, ip & 0xFF))


class ArpEngine:
    """Answers ARP for our address and resolves next hops for IPv4, queueing while it waits."""

    def __init__(
        self,
        mac: bytes,
        ip: int,
        counters: Counters,
        emit: Callable[[Frame], None],
        on_unreachable: UnreachableHandler,
        config: ArpConfig | None = None,
    ) -> None:
        self.mac = bytes(mac)
        self.ip = ip
        self.counters = counters
        self.emit = emit
        self.on_unreachable = on_unreachable
        self.config = config if config is not None else ArpConfig()
        self._cache: OrderedDict[int, _Entry] = OrderedDict()
        # Every queued packet in arrival order: seq -> destination ip (oldest first).
        self._queued: OrderedDict[int, int] = OrderedDict()
        self._seq = itertools.count()
        self._timers: list[tuple[float, int, _Entry]] = []
        self.deadline_moved: Announce = unannounced  # told when an entry timer is armed
        self._last_defend: float | None = None
        # Sees every valid ARP packet before it is handled (the DHCP client's RFC 5227 probe
        # watches for the address it is about to use): watch(packet, now).
        self.watch: Callable[[warp.ArpPacket, float], None] | None = None
        self._broadcast_header = weth.build(weth.BROADCAST, self.mac, weth.ETHERTYPE_IPV4)

    # -- public API ------------------------------------------------------------------------
    def receive(self, eth: weth.EthernetHeader, payload: memoryview, now: float) -> None:
        """RFC 826 packet reception: merge the sender, answer requests for our address."""
        c = self.counters
        try:
            pkt = warp.parse(payload)
        except Malformed as bad:
            c.drop(bad.reason)
            return
        if pkt.op == warp.OP_REQUEST:
            c.arp_requests_rx += 1
        elif pkt.op == warp.OP_REPLY:
            c.arp_replies_rx += 1
        else:
            c.drop(Drop.ARP_BAD_OPCODE)
            return
        if self.watch is not None:
            self.watch(pkt, now)
        sender_ip, sender_mac = pkt.sender_ip, pkt.sender_mac
        if weth.is_multicast(sender_mac):
            c.drop(Drop.ARP_BAD_SENDER)
            return
        if sender_ip == 0:
            # RFC 5227 probe: someone checks whether our address is free. Answer to defend it.
            if pkt.op == warp.OP_REQUEST and pkt.target_ip == self.ip and self.ip:
                self._send(warp.OP_REPLY, sender_mac, sender_mac, 0)
            else:
                c.drop(Drop.ARP_BAD_SENDER if pkt.op == warp.OP_REPLY else Drop.ARP_NOT_FOR_US)
            return
        if sender_ip == self.ip:
            if sender_mac != self.mac:
                # Someone else claims our address (RFC 5227 2.4): count, never cache, defend.
                c.arp_conflicts += 1
                self._defend(now)
            c.drop(Drop.ARP_BAD_SENDER)
            return
        if _bad_sender_ip(sender_ip):
            c.drop(Drop.ARP_BAD_SENDER)
            return

        entry = self._cache.get(sender_ip)
        if entry is not None:
            self._confirm(entry, sender_mac, now)
        if pkt.target_ip != self.ip or not self.ip:  # no address yet (DHCP): not for us
            if entry is None:
                c.drop(Drop.ARP_NOT_FOR_US)
            return
        if entry is None:
            entry = self._new_entry(sender_ip, ArpState.REACHABLE, now)
            self._confirm(entry, sender_mac, now)
        if pkt.op == warp.OP_REQUEST:
            self._send(warp.OP_REPLY, sender_mac, sender_mac, sender_ip)

    def send_ipv4(self, next_hop: int, packet: tuple[Buffer, ...], now: float) -> None:
        """Put an IPv4 packet (pieces) on the link towards `next_hop`, resolving it first."""
        if next_hop == BROADCAST_IP:
            self.emit((self._broadcast_header, *packet))
            return
        if _is_multicast_ip(next_hop):
            self.emit((weth.build(multicast_mac(next_hop), self.mac, weth.ETHERTYPE_IPV4), *packet))
            return
        entry = self._cache.get(next_hop)
        if entry is None:
            entry = self._new_entry(next_hop, ArpState.INCOMPLETE, now)
            self._enqueue(entry, packet)
            self._solicit(entry, now)
            return
        self._cache.move_to_end(next_hop)
        if entry.state is ArpState.INCOMPLETE:
            self._enqueue(entry, packet)
            return
        self.emit((entry.eth_header, *packet))
        if entry.state is ArpState.STALE:
            entry.state = ArpState.PROBE
            entry.tries = 0
            self._solicit(entry, now)

    def ready_header(self, next_hop: int) -> bytes | None:
        """The Ethernet header towards a unicast `next_hop` whose entry can be used with no
        side effect (REACHABLE or PROBE: send_ipv4 would only emit); None otherwise, and the
        caller goes through send_ipv4. Marks the entry used, as send_ipv4 does."""
        entry = self._cache.get(next_hop)
        if entry is None:
            return None
        state = entry.state
        if state is not _REACHABLE and state is not _PROBE:
            return None
        self._cache.move_to_end(next_hop)
        return entry.eth_header

    def peek_header(self, next_hop: int) -> bytes | None:
        """ready_header without marking the entry used (the UDP echo batch checks its peers
        with this before each C run, then marks the used ones in order: proto/host.py)."""
        entry = self._cache.get(next_hop)
        if entry is None:
            return None
        state = entry.state
        if state is not _REACHABLE and state is not _PROBE:
            return None
        return entry.eth_header

    def touch(self, next_hop: int) -> None:
        """Mark `next_hop`'s entry used, as ready_header does (its place in the LRU order)."""
        if next_hop in self._cache:
            self._cache.move_to_end(next_hop)

    def announce(self, now: float) -> None:
        """Gratuitous ARP (RFC 5227 announcement): request with sender = target = our address."""
        self._send(warp.OP_REQUEST, weth.BROADCAST, ZERO_MAC, self.ip)

    def probe(self, target_ip: int) -> None:
        """RFC 5227 probe: is `target_ip` taken? A request with sender IP 0.0.0.0."""
        self._send(warp.OP_REQUEST, weth.BROADCAST, ZERO_MAC, target_ip, sender_ip=0)

    def lookup(self, ip: int) -> bytes | None:
        """The MAC we would send to for `ip` right now, without side effects."""
        entry = self._cache.get(ip)
        return None if entry is None else entry.mac

    def state(self, ip: int) -> ArpState | None:
        entry = self._cache.get(ip)
        return None if entry is None else entry.state

    def cache_entries(self) -> int:
        return len(self._cache)

    def queued_packets(self) -> int:
        return len(self._queued)

    def poll(self, now: float) -> None:
        """Run every entry timer that is due."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            when, _, entry = heapq.heappop(timers)
            if entry.armed != when or self._cache.get(entry.ip) is not entry:
                continue  # superseded or deleted
            entry.armed = None
            if entry.deadline > now:
                self._arm(entry)  # confirmed meanwhile: sleep until the new deadline
            else:
                self._expire(entry, now)

    def announce_deadlines(self, moved: Announce) -> None:
        """Tell `moved` when an entry timer is armed (proto/deadlines.py)."""
        self.deadline_moved = moved

    def next_deadline(self) -> float | None:
        timers = self._timers
        while timers:
            when, _, entry = timers[0]
            if entry.armed == when and self._cache.get(entry.ip) is entry:
                return when
            heapq.heappop(timers)
        return None

    # -- internals -------------------------------------------------------------------------
    def _send(
        self, op: int, eth_dst: bytes, target_mac: bytes, target_ip: int, sender_ip: int = -1
    ) -> None:
        sender = self.ip if sender_ip < 0 else sender_ip
        arp = warp.build(op, self.mac, sender, target_mac, target_ip)
        self.emit((weth.build(eth_dst, self.mac, weth.ETHERTYPE_ARP) + arp + _PAD,))
        if op == warp.OP_REQUEST:
            self.counters.arp_requests_tx += 1
        else:
            self.counters.arp_replies_tx += 1

    def _defend(self, now: float) -> None:
        last = self._last_defend
        if last is None or now - last >= DEFEND_INTERVAL:
            self._last_defend = now
            self.announce(now)

    def _new_entry(self, ip: int, state: ArpState, now: float) -> _Entry:
        cache = self._cache
        while len(cache) >= max(self.config.cache_size, 1):
            _, victim = cache.popitem(last=False)  # least recently used
            self._discard_queue(victim, Drop.ARP_QUEUE_FULL)
        entry = _Entry(ip=ip, state=state)
        cache[ip] = entry
        return entry

    def _confirm(self, entry: _Entry, mac: bytes, now: float) -> None:
        """The neighbour spoke: (re)learn its MAC, mark it REACHABLE, release waiting packets."""
        if entry.mac != mac:
            entry.mac = bytes(mac)
            entry.eth_header = weth.build(entry.mac, self.mac, weth.ETHERTYPE_IPV4)
        was_incomplete = entry.state is ArpState.INCOMPLETE
        entry.state = ArpState.REACHABLE
        entry.confirmed = now
        self._cache.move_to_end(entry.ip)
        self._set_deadline(entry, now + self.config.reachable_time)
        if was_incomplete and entry.queue:
            header, queued = entry.eth_header, self._queued
            while entry.queue:
                seq, packet = entry.queue.popleft()
                del queued[seq]
                self.emit((header, *packet))

    def _solicit(self, entry: _Entry, now: float) -> None:
        """Send one request (broadcast when INCOMPLETE, unicast when PROBE), schedule the next."""
        if entry.state is ArpState.PROBE:
            assert entry.mac is not None
            self._send(warp.OP_REQUEST, entry.mac, ZERO_MAC, entry.ip)
        else:
            self._send(warp.OP_REQUEST, weth.BROADCAST, ZERO_MAC, entry.ip)
        entry.tries += 1
        self._set_deadline(entry, now + self.config.retry_interval)

    def _expire(self, entry: _Entry, now: float) -> None:
        cfg = self.config
        state = entry.state
        if state is ArpState.REACHABLE:
            entry.state = ArpState.STALE
            self._set_deadline(entry, entry.confirmed + cfg.stale_time)  # may be due already
        elif state is ArpState.STALE:
            self._delete(entry)
        elif entry.tries <= cfg.max_retries:
            self._solicit(entry, now)
        elif state is ArpState.PROBE:
            self._delete(entry)
        else:  # INCOMPLETE, out of retries
            self._delete(entry)
            self.counters.arp_resolution_failures += 1
            packets = [packet for _, packet in entry.queue]
            self._discard_queue(entry, Drop.ARP_RESOLUTION_FAILED)
            self.on_unreachable(entry.ip, packets, now)

    def _delete(self, entry: _Entry) -> None:
        del self._cache[entry.ip]
        entry.armed = None

    def _set_deadline(self, entry: _Entry, deadline: float) -> None:
        entry.deadline = deadline
        if entry.armed is None or deadline < entry.armed:
            self._arm(entry)

    def _arm(self, entry: _Entry) -> None:
        entry.armed = entry.deadline
        heapq.heappush(self._timers, (entry.deadline, next(self._seq), entry))
        self.deadline_moved(entry.deadline)
        if len(self._timers) > 4 * len(self._cache) + 64:
            cache = self._cache
            live = [t for t in self._timers if t[2].armed == t[0] and cache.get(t[2].ip) is t[2]]
            heapq.heapify(live)
            self._timers = live

    def _enqueue(self, entry: _Entry, packet: tuple[Buffer, ...]) -> None:
        """Keep a copy (the caller's views die with the call); oldest packets go first."""
        cfg, c, queued = self.config, self.counters, self._queued
        if cfg.queue_per_destination <= 0 or cfg.queue_total <= 0:
            c.drop(Drop.ARP_QUEUE_FULL)
            return
        if len(entry.queue) >= cfg.queue_per_destination:
            seq, _ = entry.queue.popleft()
            del queued[seq]
            c.drop(Drop.ARP_QUEUE_FULL)
        elif len(queued) >= cfg.queue_total:
            seq, ip = queued.popitem(last=False)
            self._cache[ip].queue.popleft()
            c.drop(Drop.ARP_QUEUE_FULL)
        seq = next(self._seq)
        entry.queue.append((seq, own_frame(packet)))  # a super-frame keeps its VnetMark
        queued[seq] = entry.ip

    def _discard_queue(self, entry: _Entry, reason: Drop) -> None:
        if entry.queue:
            queued = self._queued
            for seq, _ in entry.queue:
                del queued[seq]
            self.counters.drop(reason, len(entry.queue))
            entry.queue.clear()
