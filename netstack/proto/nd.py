"""Neighbor Discovery for a host (RFC 4861), SLAAC with DAD (RFC 4862), MLDv2 reports (RFC 3810).

Pure: messages and `now` in; frames out through `emit`, IPv6 packets through the IPv6 engine.

Neighbor cache (§7.3): a bounded LRU with NUD states

    INCOMPLETE --NA--> REACHABLE --reachable time--> STALE --used--> DELAY --5 s--> PROBE
    (multicast NS, 3 tries)                                            (unicast NS, 3 tries)

and a bounded queue of packets per INCOMPLETE entry, as the ARP engine has. STALE entries
unused for `stale_time` are removed (Linux's gc does the same).

Routers (§6.3.4): default router list and prefix list from RAs, both bounded (a flood of RAs
cannot grow them); cur hop limit, reachable time, retrans timer and the MTU option applied.
Redirects are ignored (counted as `nd/redirect_ignored`): every off-link packet goes to the
default router, which a host may do (§8 "SHOULD" only matters for path optimisation).

Addresses: a link-local address from an RFC 7217 interface ID, SLAAC addresses from prefixes
with the A flag (§5.5.3, the two-hour rule included), static ones; each passes DAD
(DupAddrDetectTransmits = 1) before use. A DAD failure marks the address DUPLICATE, counts
`nd_dad_conflicts` and calls `on_dad_failure`; stable IDs are retried with the next
DAD_Counter (RFC 7217 §6, IDGEN_RETRIES = 3). Each solicited-node group we join is reported
with an MLDv2 report (RFC 3810 §6.1; the unsolicited report is sent once per join; queries
are answered with a report of every group).
"""

from __future__ import annotations

import dataclasses
import enum
import random
from collections import OrderedDict, deque
from collections.abc import Callable

from netstack.counters import Counters
from netstack.drops import Drop
from netstack.proto.addr6 import (
    INFINITE,
    LINK_LOCAL_PREFIX,
    AddrState,
    Ipv6Interface,
    Origin,
    multicast_mac,
    prefix_matches,
    solicited_node,
    stable_iid,
)
from netstack.proto.deadlines import Announce, unannounced
from netstack.proto.ipv6 import Ipv6Engine
from netstack.wire import ethernet as weth
from netstack.wire import icmpv6 as wicmp6
from netstack.wire import ipv6 as wipv6
from netstack.wire import vnet as wvnet
from netstack.wire.errors import Malformed

Buffer = bytes | bytearray | memoryview
Frame = tuple[Buffer, ...]

MAX_MULTICAST_SOLICIT = 3
MAX_UNICAST_SOLICIT = 3
DELAY_FIRST_PROBE_TIME = 5.0
MAX_RTR_SOLICITATIONS = 3
RTR_SOLICITATION_INTERVAL = 4.0
TWO_HOURS = 7200.0
IDGEN_RETRIES = 3
MLD_REPORT_INTERVAL = 1.0
_ROUTER_ALERT_HBH = bytes((wipv6.ICMPV6, 0, 5, 2, 0, 0, 1, 0))  # RFC 2711 MLD, PadN 0


class NudState(enum.Enum):
    INCOMPLETE = "incomplete"
    REACHABLE = "reachable"
    STALE = "stale"
    DELAY = "delay"
    PROBE = "probe"


@dataclasses.dataclass(slots=True)
class NdConfig:
    cache_size: int = 512
    reachable_time: float = 30.0  # BaseReachableTime; an RA may change it
    retrans_timer: float = 1.0
    stale_time: float = 60.0
    queue_per_destination: int = 16
    queue_total: int = 256
    max_routers: int = 8
    max_prefixes: int = 16
    dad_transmits: int = 1
    slaac: bool = True  # form addresses from RA prefixes with the A flag
    send_rs: bool = True


@dataclasses.dataclass(slots=True, eq=False)
class _Neighbor:
    ip: bytes
    state: NudState
    mac: bytes | None = None
    eth_header: bytes = b""
    deadline: float = 0.0
    tries: int = 0
    is_router: bool = False
    queue: deque[tuple[bytes, ...]] = dataclasses.field(default_factory=deque)


@dataclasses.dataclass(slots=True)
class Router:
    address: bytes
    expires: float


@dataclasses.dataclass(slots=True)
class Prefix:
    prefix: bytes
    prefix_len: int
    expires: float


class NdEngine:
    """ND, DAD, SLAAC and MLD for one interface."""

    def __init__(
        self,
        mac: bytes,
        interface: str,
        secret: bytes,
        ipv6: Ipv6Engine,
        counters: Counters,
        emit: Callable[[Frame], None],
        config: NdConfig | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.mac = bytes(mac)
        self.interface = interface
        self.secret = secret
        self.ipv6 = ipv6
        self.addresses = ipv6.addresses
        self.counters = counters
        self.emit = emit
        self.config = config or NdConfig()
        self.rng = rng if rng is not None else random.Random()
        # BaseReachableTime; each REACHABLE period is 0.5..1.5 times it (RFC 4861 6.3.2), so
        # the neighbours' entries do not all go stale together
        self.reachable_time = self.config.reachable_time
        self.retrans_timer = self.config.retrans_timer
        self._cache: OrderedDict[bytes, _Neighbor] = OrderedDict()
        self._queued = 0
        self.routers: list[Router] = []
        self.prefixes: list[Prefix] = []
        self.accept_macs: set[bytes] = {multicast_mac(wipv6.ALL_NODES)}
        self._rs_sent = 0
        self._mld_repeats: list[tuple[float, bytes]] = []
        self._rs_deadline: float | None = None
        self._got_ra = False
        # Told when a deadline may have come earlier (proto/deadlines.py): a neighbour's timer
        # set on the send path exactly; anything an ND/MLD message or start() did as "now".
        self.deadline_moved: Announce = unannounced
        # (entry, now): the loop logs it as an error (a DAD failure needs a human).
        self.on_dad_failure: Callable[[Ipv6Interface, float], None] | None = None
        self.on_address: Callable[[Ipv6Interface, float], None] | None = None  # became usable
        # preferred -> deprecated (lifetime over, or a router withdrew the prefix)
        self.on_deprecated: Callable[[Ipv6Interface, float], None] | None = None
        self._mac_header = weth.build(self.mac, self.mac, wipv6.ETHERTYPE_IPV6)[6:]  # src+type
        ipv6.link_send = self.send
        ipv6.on_link = self._on_link
        ipv6.default_router = self.default_router

    # -- addresses -------------------------------------------------------------------------
    def start(self, now: float, static: list[tuple[bytes, int]], link_local: bool = True) -> None:
        """Form the link-local address (if asked), add static ones; DAD for each."""
        if link_local:
            iid = stable_iid(LINK_LOCAL_PREFIX, self.interface, self.secret)
            self._add(LINK_LOCAL_PREFIX[:8] + iid, 64, Origin.LINK_LOCAL, now)
        for address, prefix_len in static:
            self._add(address, prefix_len, Origin.STATIC, now)
        if self.config.send_rs and not link_local:
            self._rs_deadline = now  # no link-local coming: solicit from ::
        self.deadline_moved(now)  # DAD, MLD and RS timers set above

    def _add(
        self,
        address: bytes,
        prefix_len: int,
        origin: Origin,
        now: float,
        valid: float = INFINITE,
        preferred: float = INFINITE,
    ) -> Ipv6Interface | None:
        entry = Ipv6Interface(address, prefix_len, origin, AddrState.TENTATIVE, valid, preferred)
        if not self.addresses.add(entry):
            self.counters.drop(Drop.ND_PREFIX_LIST_FULL)
            return None
        self._join(solicited_node(address), now)
        entry.dad_deadline = now  # the first DAD solicitation goes out at the next poll
        return entry

    def _join(self, group: bytes, now: float) -> None:
        if group in self.ipv6.groups:
            return
        self.ipv6.groups.add(group)
        self.accept_macs.add(multicast_mac(group))
        self._report([group], now)
        # RFC 3810 6.1: the unsolicited report is sent Robustness Variable (2) times, the
        # repeat at a random point of the Unsolicited Report Interval (1 s)
        self._mld_repeats.append((now + self.rng.uniform(0.0, MLD_REPORT_INTERVAL), group))

    def _report(self, groups: list[bytes], now: float) -> None:
        """MLDv2 report with hop limit 1 and a Router Alert (RFC 3810 §5.2, §5.2.13)."""
        ll = self.addresses.link_local()
        src = ll.address if ll is not None else wipv6.UNSPECIFIED
        dst = wipv6.ALL_MLDV2_ROUTERS
        body = wicmp6.mldv2_report_body(groups)
        msg = wicmp6.build(src, dst, wicmp6.TYPE_MLDV2_REPORT, 0, body)
        header = wipv6.build(src, dst, wipv6.HOPOPTS, len(_ROUTER_ALERT_HBH) + len(msg), 1)
        self.counters.ipv6_tx += 1
        self.counters.mld_reports_tx += 1
        self.counters.icmp6[("tx", "mldv2_report")] += 1
        self.emit((multicast_mac(dst) + self._mac_header, header, _ROUTER_ALERT_HBH, msg))

    def _dad_step(self, entry: Ipv6Interface, now: float) -> None:
        if entry.dad_sent < self.config.dad_transmits:
            entry.dad_sent += 1
            self._send_ns(entry.address, solicited_node(entry.address), now, src=None)
            entry.dad_deadline = now + self.retrans_timer
            return
        entry.dad_deadline = None
        entry.state = AddrState.PREFERRED if now < entry.preferred_until else AddrState.DEPRECATED
        if entry.origin is Origin.LINK_LOCAL and self.config.send_rs and not self._got_ra:
            self._rs_deadline = now
        if self.on_address is not None:
            self.on_address(entry, now)

    def _dad_failed(self, entry: Ipv6Interface, now: float) -> None:
        """RFC 4862 §5.4.5: the address is not used; RFC 7217 §6: try the next DAD_Counter."""
        self.counters.nd_dad_conflicts += 1
        entry.state = AddrState.DUPLICATE
        entry.dad_deadline = None
        if self.on_dad_failure is not None:
            self.on_dad_failure(entry, now)
        if entry.origin is Origin.STATIC:
            return
        retry = entry.dad_counter
        if retry >= IDGEN_RETRIES:
            return
        prefix = entry.address[:8]  # the DUPLICATE entry stays, for status, never used
        iid = stable_iid(prefix, self.interface, self.secret, retry + 1)
        new = self._add(prefix + iid, entry.prefix_len, entry.origin, now,
                        entry.valid_until, entry.preferred_until)  # fmt: skip
        if new is not None:
            new.dad_counter = retry + 1

    # -- sending through the neighbour cache -----------------------------------------------
    def send(self, next_hop: bytes, packet: tuple[Buffer, ...], now: float) -> None:
        """Put an IPv6 packet (pieces) on the link towards `next_hop`, resolving it first."""
        if next_hop[0] == 0xFF:
            self.emit((multicast_mac(next_hop) + self._mac_header, *packet))
            return
        entry = self._cache.get(next_hop)
        if entry is None:
            entry = self._new(next_hop, NudState.INCOMPLETE)
            self._enqueue(entry, packet)
            entry.tries = 0
            self._solicit(entry, now, _packet_source(packet))
            return
        self._cache.move_to_end(next_hop)
        if entry.state is NudState.INCOMPLETE:
            self._enqueue(entry, packet)
            return
        self.emit((entry.eth_header, *packet))
        if entry.state is NudState.STALE:
            entry.state = NudState.DELAY
            entry.deadline = now + DELAY_FIRST_PROBE_TIME
            self.deadline_moved(entry.deadline)

    def _new(self, ip: bytes, state: NudState) -> _Neighbor:
        while len(self._cache) >= max(1, self.config.cache_size):
            _, victim = self._cache.popitem(last=False)
            self._drop_queue(victim, Drop.ND_QUEUE_FULL)
        entry = _Neighbor(ip, state)
        self._cache[ip] = entry
        return entry

    def _enqueue(self, entry: _Neighbor, packet: tuple[Buffer, ...]) -> None:
        cfg = self.config
        if len(entry.queue) >= cfg.queue_per_destination or self._queued >= cfg.queue_total:
            self.counters.drop(Drop.ND_QUEUE_FULL)
            return
        entry.queue.append(wvnet.own_frame(packet))  # copied, a TSO6 VnetMark kept
        self._queued += 1

    def _drop_queue(self, entry: _Neighbor, reason: Drop) -> None:
        if entry.queue:
            self.counters.drop(reason, len(entry.queue))
            self._queued -= len(entry.queue)
            entry.queue.clear()

    def _set_mac(self, entry: _Neighbor, mac: bytes) -> None:
        if entry.mac != mac:
            entry.mac = bytes(mac)
            entry.eth_header = bytes(mac) + self._mac_header

    def _flush(self, entry: _Neighbor) -> None:
        while entry.queue:
            packet = entry.queue.popleft()
            self._queued -= 1
            self.emit((entry.eth_header, *packet))

    def _solicit(self, entry: _Neighbor, now: float, src: bytes | None = None) -> None:
        """Multicast NS while INCOMPLETE, unicast in PROBE (§7.2.2, §7.3.3)."""
        if entry.state is NudState.PROBE and entry.mac is not None:
            self._send_ns(entry.ip, entry.ip, now, src=src or self._source_for(entry.ip),
                          eth_dst=entry.mac)  # fmt: skip
        else:
            self._send_ns(entry.ip, solicited_node(entry.ip), now,
                          src=src or self._source_for(entry.ip))  # fmt: skip
        entry.tries += 1
        entry.deadline = now + self.retrans_timer
        self.deadline_moved(entry.deadline)

    def _source_for(self, dst: bytes) -> bytes | None:
        return self.addresses.select_source(dst)

    def _send_ns(
        self,
        target: bytes,
        dst: bytes,
        now: float,
        *,
        src: bytes | None,
        eth_dst: bytes | None = None,
    ) -> None:
        """NS; src None: from the unspecified address with no link-layer option (DAD)."""
        source = wipv6.UNSPECIFIED if src is None else src
        msg = wicmp6.NdMessage(
            type=wicmp6.TYPE_NEIGHBOR_SOLICIT,
            target=target,
            source_lla=None if src is None else self.mac,
        )
        raw = wicmp6.build_nd(source, dst, msg)
        self.counters.nd_solicitations_tx += 1
        self.counters.icmp6[("tx", "neighbor_solicitation")] += 1
        if eth_dst is not None:  # unicast probe to the cached MAC, not via the cache itself
            header = wipv6.build(source, dst, wipv6.ICMPV6, len(raw), 255)
            self.counters.ipv6_tx += 1
            self.emit((bytes(eth_dst) + self._mac_header, header, raw))
            return
        self.ipv6.send(dst, wipv6.ICMPV6, (raw,), now, src=source, hop_limit=255)

    def _send_na(self, target: bytes, dst: bytes, solicited: bool, now: float) -> None:
        flags = wicmp6.NA_OVERRIDE | (wicmp6.NA_SOLICITED if solicited else 0)
        msg = wicmp6.NdMessage(
            type=wicmp6.TYPE_NEIGHBOR_ADVERT, target=target, flags=flags, target_lla=self.mac
        )
        raw = wicmp6.build_nd(target, dst, msg)
        # to the soliciting neighbour directly: it is on the link (hop limit 255), even with
        # a source outside our prefixes (RFC 4861 7.2.4)
        if self.ipv6.send(dst, wipv6.ICMPV6, (raw,), now, src=target, hop_limit=255,
                          next_hop=dst):  # fmt: skip
            self.counters.nd_advertisements_tx += 1
            self.counters.icmp6[("tx", "neighbor_advertisement")] += 1

    def _send_rs(self, now: float) -> None:
        ll = self.addresses.link_local()
        src = ll.address if ll is not None else wipv6.UNSPECIFIED
        msg = wicmp6.NdMessage(
            type=wicmp6.TYPE_ROUTER_SOLICIT, source_lla=self.mac if ll is not None else None
        )
        raw = wicmp6.build_nd(src, wipv6.ALL_ROUTERS, msg)
        if self.ipv6.send(wipv6.ALL_ROUTERS, wipv6.ICMPV6, (raw,), now, src=src, hop_limit=255):
            self.counters.nd_router_solicitations_tx += 1
            self.counters.icmp6[("tx", "router_solicitation")] += 1

    # -- receive ---------------------------------------------------------------------------
    def receive(
        self, header: wipv6.Ipv6Header, icmp_type: int, code: int, body: memoryview, now: float
    ) -> None:
        """An ND or MLD message (checksum verified by ICMPv6). What it does may set any of
        ND's timers (neighbours, routers, prefixes, addresses, DAD, MLD): the loop is told
        "now" and asks again (ND messages are rare; the walk is what this saves elsewhere)."""
        try:
            self._receive(header, icmp_type, code, body, now)
        finally:
            self.deadline_moved(now)

    def _receive(
        self, header: wipv6.Ipv6Header, icmp_type: int, code: int, body: memoryview, now: float
    ) -> None:
        c = self.counters
        if icmp_type in (wicmp6.TYPE_MLD_QUERY,):
            groups = sorted(g for g in self.ipv6.groups if g != wipv6.ALL_NODES)
            if groups:
                self._report(groups, now)
            return
        if icmp_type in (wicmp6.TYPE_MLD_REPORT, wicmp6.TYPE_MLD_DONE, wicmp6.TYPE_MLDV2_REPORT):
            c.drop(Drop.MLD_IGNORED)
            return
        if icmp_type == wicmp6.TYPE_REDIRECT:
            c.drop(Drop.ND_REDIRECT_IGNORED)
            return
        if header.hop_limit != 255:  # §§6.1, 7.1: not from this link
            c.drop(Drop.ND_BAD_HOP_LIMIT)
            return
        if code != 0:
            c.drop(Drop.ND_BAD_CODE)
            return
        if icmp_type == wicmp6.TYPE_ROUTER_SOLICIT:
            c.drop(Drop.ND_NOT_ROUTER)  # §6.2.6: hosts discard them
            return
        try:
            msg = wicmp6.parse_nd(icmp_type, body)
        except Malformed as bad:
            c.drop(bad.reason)
            return
        if icmp_type == wicmp6.TYPE_NEIGHBOR_SOLICIT:
            self._receive_ns(header, msg, now)
        elif icmp_type == wicmp6.TYPE_NEIGHBOR_ADVERT:
            self._receive_na(header, msg, now)
        else:
            self._receive_ra(header, msg, now)

    def _receive_ns(self, header: wipv6.Ipv6Header, msg: wicmp6.NdMessage, now: float) -> None:
        c = self.counters
        c.nd_solicitations_rx += 1
        src = header.src
        if msg.target[0] == 0xFF:
            c.drop(Drop.ND_BAD_TARGET)
            return
        dad = src == wipv6.UNSPECIFIED
        if dad and (header.dst != solicited_node(msg.target) or msg.source_lla is not None):
            c.drop(Drop.ND_BAD_SOURCE)  # §7.1.1
            return
        entry = self.addresses.find(msg.target)
        if entry is None or entry.state is AddrState.DUPLICATE:
            c.drop(Drop.ND_NOT_FOR_US)
            return
        if entry.state is AddrState.TENTATIVE:
            if dad:  # someone else is trying the same address (RFC 4862 §5.4.3)
                self._dad_failed(entry, now)
            return
        if dad:  # §7.2.4: answer a DAD probe for our address to all-nodes, unsolicited
            self._send_na(msg.target, wipv6.ALL_NODES, False, now)
            return
        if msg.source_lla is not None:
            self._learn(src, msg.source_lla, now)
        self._send_na(msg.target, src, True, now)

    def _learn(self, ip: bytes, mac: bytes, now: float) -> None:
        """§7.2.3: a solicitation's source link-layer option: create/update as STALE."""
        entry = self._cache.get(ip)
        if entry is None:
            entry = self._new(ip, NudState.STALE)
            self._set_mac(entry, mac)
            entry.deadline = now + self.config.stale_time
            return
        if entry.state is NudState.INCOMPLETE or entry.mac != mac:
            self._set_mac(entry, mac)
            entry.state = NudState.STALE
            entry.deadline = now + self.config.stale_time
            self._flush(entry)

    def _receive_na(self, header: wipv6.Ipv6Header, msg: wicmp6.NdMessage, now: float) -> None:
        c = self.counters
        c.nd_advertisements_rx += 1
        if msg.target[0] == 0xFF:
            c.drop(Drop.ND_BAD_TARGET)
            return
        if header.dst[0] == 0xFF and msg.solicited:
            c.drop(Drop.ND_BAD_OPTION)  # §7.1.2: S with a multicast destination
            return
        ours = self.addresses.find(msg.target)
        if ours is not None:
            if ours.state is AddrState.TENTATIVE:
                self._dad_failed(ours, now)  # RFC 4862 §5.4.4
            else:
                c.nd_dad_conflicts += 1  # someone else claims a working address of ours
            return
        entry = self._cache.get(msg.target)
        if entry is None:
            return  # §7.2.5: no entry, nothing to update (unsolicited NAs create none)
        lla = msg.target_lla
        if entry.state is NudState.INCOMPLETE:
            if lla is None:
                return
            self._set_mac(entry, lla)
            self._confirm(entry, msg.solicited, now)
            self._flush(entry)
        elif not msg.override and lla is not None and lla != entry.mac:
            if entry.state is NudState.REACHABLE:
                entry.state = NudState.STALE
                entry.deadline = now + self.config.stale_time
        else:
            changed = lla is not None and lla != entry.mac
            if lla is not None:
                self._set_mac(entry, lla)
            if msg.solicited:
                self._confirm(entry, True, now)
            elif changed:
                entry.state = NudState.STALE
                entry.deadline = now + self.config.stale_time
        entry.is_router = msg.router

    def _confirm(self, entry: _Neighbor, solicited: bool, now: float) -> None:
        if solicited:
            entry.state = NudState.REACHABLE
            entry.deadline = now + self.reachable_time * self.rng.uniform(0.5, 1.5)
        else:
            entry.state = NudState.STALE
            entry.deadline = now + self.config.stale_time
        entry.tries = 0

    def _receive_ra(self, header: wipv6.Ipv6Header, msg: wicmp6.NdMessage, now: float) -> None:
        c = self.counters
        c.nd_router_advertisements_rx += 1
        if not wipv6.is_link_local(header.src):  # §6.1.2
            c.drop(Drop.ND_BAD_SOURCE)
            return
        self._got_ra = True
        self._rs_deadline = None
        if msg.cur_hop_limit:
            self.ipv6.config.hop_limit = msg.cur_hop_limit
        if msg.reachable_time:
            self.reachable_time = min(msg.reachable_time, 3_600_000) / 1000.0
        if msg.retrans_timer:
            self.retrans_timer = max(msg.retrans_timer, 100) / 1000.0
        if msg.mtu is not None and wipv6.MIN_MTU <= msg.mtu <= self.link_mtu:
            self.ipv6.config.mtu = msg.mtu
        self._update_router(header.src, msg.router_lifetime, now)
        if msg.source_lla is not None:
            self._learn(header.src, msg.source_lla, now)
            entry = self._cache.get(header.src)
            if entry is not None:
                entry.is_router = True
        for info in msg.prefixes:
            self._prefix(info, now)

    link_mtu = 65535  # the link's own MTU; the host sets it (an RA may only lower ours)

    def _update_router(self, address: bytes, lifetime: int, now: float) -> None:
        for router in self.routers:
            if router.address == address:
                if lifetime:
                    router.expires = now + lifetime
                else:
                    self.routers.remove(router)
                return
        if not lifetime:
            return
        if len(self.routers) >= self.config.max_routers:
            self.counters.drop(Drop.ND_ROUTER_LIST_FULL)
            return
        self.routers.append(Router(address, now + lifetime))

    def _prefix(self, info: wicmp6.PrefixInfo, now: float) -> None:
        c = self.counters
        if wipv6.is_link_local(info.prefix) or info.prefix_len > 128:
            c.drop(Drop.ND_BAD_PREFIX)  # §6.3.4 / RFC 4862 §5.5.3 b)
            return
        prefix = _masked(info.prefix, info.prefix_len)
        if info.on_link:
            self._update_prefix(prefix, info.prefix_len, info.valid_lifetime, now)
        if not info.autonomous:
            return
        if info.preferred_lifetime > info.valid_lifetime:  # 5.5.3 c)
            c.drop(Drop.ND_BAD_PREFIX)
            return
        valid = _lifetime(info.valid_lifetime)
        preferred = _lifetime(info.preferred_lifetime)
        existing = [
            e
            for e in self.addresses
            if e.origin is Origin.SLAAC and prefix_matches(e.address, prefix, info.prefix_len)
        ]
        if not existing:
            if not info.valid_lifetime or not self.config.slaac:
                return
            if info.prefix_len != 64:  # 5.5.3 d): prefix + interface ID must be 128 bits
                c.drop(Drop.ND_BAD_PREFIX)
                return
            iid = stable_iid(prefix, self.interface, self.secret)
            self._add(prefix[:8] + iid, 64, Origin.SLAAC, now, now + valid, now + preferred)
            return
        for entry in existing:  # 5.5.3 e)
            entry.preferred_until = now + preferred
            if entry.state is AddrState.DEPRECATED and preferred > 0:
                entry.state = AddrState.PREFERRED
            elif entry.state is AddrState.PREFERRED and preferred == 0:
                entry.state = AddrState.DEPRECATED
                if self.on_deprecated is not None:
                    self.on_deprecated(entry, now)
            remaining = entry.valid_until - now
            if valid > TWO_HOURS or valid > remaining:
                entry.valid_until = now + valid
            elif remaining > TWO_HOURS:
                entry.valid_until = now + TWO_HOURS

    def _update_prefix(self, prefix: bytes, prefix_len: int, lifetime: int, now: float) -> None:
        for p in self.prefixes:
            if p.prefix == prefix and p.prefix_len == prefix_len:
                if lifetime:
                    p.expires = now + _lifetime(lifetime)
                else:
                    self.prefixes.remove(p)
                return
        if not lifetime:
            return
        if len(self.prefixes) >= self.config.max_prefixes:
            self.counters.drop(Drop.ND_PREFIX_LIST_FULL)
            return
        self.prefixes.append(Prefix(prefix, prefix_len, now + _lifetime(lifetime)))

    # -- routing help for the IPv6 engine --------------------------------------------------
    def _on_link(self, dst: bytes) -> bool:
        return any(prefix_matches(dst, p.prefix, p.prefix_len) for p in self.prefixes)

    def default_router(self) -> bytes | None:
        """§6.3.6: prefer a router whose entry is not known unreachable, else round-robin
        (here: the first one)."""
        for router in self.routers:
            entry = self._cache.get(router.address)
            if entry is not None and entry.state is not NudState.INCOMPLETE:
                return router.address
        return self.routers[0].address if self.routers else None

    # -- queries ---------------------------------------------------------------------------
    def lookup(self, ip: bytes) -> bytes | None:
        entry = self._cache.get(ip)
        return None if entry is None else entry.mac

    def state(self, ip: bytes) -> NudState | None:
        entry = self._cache.get(ip)
        return None if entry is None else entry.state

    def cache_entries(self) -> int:
        return len(self._cache)

    # -- timers ----------------------------------------------------------------------------
    def poll(self, now: float) -> None:
        for entry in list(self.addresses):
            if entry.dad_deadline is not None and entry.dad_deadline <= now:
                self._dad_step(entry, now)
        if self._mld_repeats and min(t for t, _ in self._mld_repeats) <= now:
            due = [g for t, g in self._mld_repeats if t <= now and g in self.ipv6.groups]
            self._mld_repeats = [(t, g) for t, g in self._mld_repeats if t > now]
            if due:
                self._report(due, now)
        preferred = [e for e in self.addresses if e.state is AddrState.PREFERRED]
        for gone in self.addresses.poll(now):
            self._forget_group(gone)
        if self.on_deprecated is not None:
            for entry in preferred:
                if entry.state is AddrState.DEPRECATED:
                    self.on_deprecated(entry, now)
        self.routers = [r for r in self.routers if r.expires > now]
        self.prefixes = [p for p in self.prefixes if p.expires > now]
        if self._rs_deadline is not None and self._rs_deadline <= now:
            if self._rs_sent < MAX_RTR_SOLICITATIONS:
                self._rs_sent += 1
                self._send_rs(now)
                self._rs_deadline = now + RTR_SOLICITATION_INTERVAL
            else:
                self._rs_deadline = None
        for entry in list(self._cache.values()):
            if entry.deadline <= now:
                self._expire(entry, now)

    def _forget_group(self, gone: Ipv6Interface) -> None:
        group = solicited_node(gone.address)
        if not any(solicited_node(e.address) == group for e in self.addresses):
            self.ipv6.groups.discard(group)
            self.accept_macs.discard(multicast_mac(group))

    def _expire(self, entry: _Neighbor, now: float) -> None:
        state = entry.state
        if state is NudState.REACHABLE:
            entry.state = NudState.STALE
            entry.deadline = now + self.config.stale_time
        elif state is NudState.STALE:
            del self._cache[entry.ip]
        elif state is NudState.DELAY:
            entry.state = NudState.PROBE
            entry.tries = 0
            self._solicit(entry, now)
        elif state is NudState.PROBE:
            if entry.tries < MAX_UNICAST_SOLICIT:
                self._solicit(entry, now)
            else:
                del self._cache[entry.ip]
        elif entry.tries < MAX_MULTICAST_SOLICIT:  # INCOMPLETE
            self._solicit(entry, now)
        else:
            del self._cache[entry.ip]
            self.counters.nd_resolution_failures += 1
            self._drop_queue(entry, Drop.ND_RESOLUTION_FAILED)

    def announce_deadlines(self, moved: Announce) -> None:
        """Tell `moved` when a deadline may have come earlier (proto/deadlines.py)."""
        self.deadline_moved = moved

    def next_deadline(self) -> float | None:
        """The nearest ND, address, RS, MLD, router or prefix deadline: plain loops over the
        few entries, no lists (asked whenever the host's cached deadline comes, IPv4 too)."""
        best = self.addresses.next_deadline()
        rs = self._rs_deadline
        if rs is not None and (best is None or rs < best):
            best = rs
        for e in self._cache.values():
            if best is None or e.deadline < best:
                best = e.deadline
        for t, _ in self._mld_repeats:
            if best is None or t < best:
                best = t
        for r in self.routers:
            if best is None or r.expires < best:
                best = r.expires
        for p in self.prefixes:
            if p.expires != INFINITE and (best is None or p.expires < best):
                best = p.expires
        return best


def _lifetime(seconds: int) -> float:
    return INFINITE if seconds == wicmp6.INFINITY else float(seconds)


def _masked(prefix: bytes, prefix_len: int) -> bytes:
    value = int.from_bytes(prefix, "big")
    mask = ((1 << 128) - 1) ^ ((1 << (128 - prefix_len)) - 1)
    return (value & mask).to_bytes(16, "big")


def _packet_source(packet: tuple[Buffer, ...]) -> bytes | None:
    """§7.2.2: solicit from the source of the packet that prompted it, if it is ours."""
    first = packet[0]
    if len(first) >= wipv6.HEADER_LEN:
        src = bytes(first[8:24])
        return None if src == wipv6.UNSPECIFIED or src[0] == 0xFF else src
    return None
