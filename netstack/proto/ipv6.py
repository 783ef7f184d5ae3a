"""IPv6 host engine (RFC 8200): receive checks, extension headers, reassembly, routing,
fragmentation to the path MTU. A host: no forwarding, so the hop limit is only set on send.

Pure: packets and `now` in; packets out through `link_send(next_hop, pieces, now)` (the ND
engine's `send`). Receive order (one drop reason each): fixed header, source, destination
(our usable addresses and the groups we joined), extension headers (with ICMPv6 Parameter
Problem where RFC 8200 asks for one), reassembly, upper-layer dispatch.
Counting: `ipv6_rx/tx` count packets on the wire (each fragment is one).
"""

from __future__ import annotations

import dataclasses
import random
import struct
from collections.abc import Callable

from netstack.counters import Counters
from netstack.drops import Drop
from netstack.proto.addr6 import AddressTable
from netstack.proto.deadlines import Announce
from netstack.proto.fragment import byte_view, fragments
from netstack.proto.pmtu import PmtuCache
from netstack.proto.reassembly6 import Reassembler6
from netstack.wire import icmpv6 as wicmp6
from netstack.wire import ipv6 as wipv6
from netstack.wire import tcp as wtcp
from netstack.wire.errors import Malformed

Buffer = bytes | bytearray | memoryview
# (header, upper-layer payload, whole packet, now)
Handler = Callable[[wipv6.Ipv6Header, memoryview, memoryview, float], None]
LinkSend = Callable[[bytes, tuple[Buffer, ...], float], None]
# (type, code, 32-bit word, offending packet, now, allowed although it went to a group)
IcmpError = Callable[[int, int, int, Buffer, float, bool], None]
MAX_PAYLOAD = 65535
# send_tcp's one pack: the IPv6 header (wipv6._HEADER) and the TCP header, plain or with the
# timestamp option alone (wire/tcp.py build_fast's layouts).
_IP_TCP = struct.Struct("!IHBB16s16sHHIIBBHHH")
_IP_TCP_TS = struct.Struct("!IHBB16s16sHHIIBBHHH4sII")
_TCP_TS_LEN = wtcp.HEADER_LEN + 12
_segment_sum = wtcp.segment_sum
_VERSION_WORD = 6 << 28  # version 6, traffic class 0, flow label 0


@dataclasses.dataclass(slots=True)
class Ipv6Config:
    mtu: int = 1500
    hop_limit: int = 64
    reassembly_timeout: float = 60.0  # RFC 8200 §4.5
    reassembly_max_bytes: int = 4 * 1024 * 1024
    reassembly_max_datagrams: int = 64


class Ipv6Engine:
    def __init__(
        self,
        config: Ipv6Config,
        addresses: AddressTable,
        counters: Counters,
        link_send: LinkSend,
        rng: random.Random,
    ) -> None:
        if not wipv6.MIN_MTU <= config.mtu <= 65535:
            raise ValueError(f"IPv6 needs an MTU of at least {wipv6.MIN_MTU}, not {config.mtu}")
        self.config = config
        self.addresses = addresses
        self.counters = counters
        self.link_send = link_send
        self.rng = rng
        self.groups: set[bytes] = {wipv6.ALL_NODES}
        # RFC 8201: the same cache as IPv4's, with the IPv6 minimum MTU as its floor
        self.pmtu = PmtuCache(min_mtu=wipv6.MIN_MTU, max_entries=256, counters=counters)
        self.icmp_error: IcmpError | None = None
        # Set by ND from router advertisements: on-link prefixes and the default router.
        self.on_link: Callable[[bytes], bool] = lambda dst: False
        self.default_router: Callable[[], bytes | None] = lambda: None
        self._handlers: dict[int, Handler] = {}
        self._reassembler = Reassembler6(
            counters,
            timeout=config.reassembly_timeout,
            max_bytes=config.reassembly_max_bytes,
            max_datagrams=config.reassembly_max_datagrams,
        )

    @property
    def reassembler(self) -> Reassembler6:
        return self._reassembler

    def register(self, protocol: int, handler: Handler) -> None:
        self._handlers[protocol] = handler

    # -- receive ---------------------------------------------------------------------------
    def receive(self, packet: memoryview, now: float) -> None:
        c = self.counters
        c.ipv6_rx += 1
        try:
            header, payload = wipv6.parse(packet)
        except Malformed as bad:
            c.drop(bad.reason)
            return
        packet = packet[: wipv6.HEADER_LEN + header.payload_length]
        src, dst = header.src, header.dst
        if src[0] == 0xFF or src == wipv6.LOOPBACK or self.addresses.is_ours(src):
            c.drop(Drop.IPV6_BAD_SOURCE)
            return
        multicast = dst[0] == 0xFF
        if multicast:
            if dst not in self.groups:
                c.drop(Drop.IPV6_NOT_FOR_US)
                return
        else:
            entry = self.addresses.find(dst)
            if entry is None or not entry.usable:
                c.drop(Drop.IPV6_NOT_FOR_US if entry is None else Drop.IPV6_TENTATIVE)
                return
        try:
            chain = wipv6.walk(payload, header.next_header, multicast)
        except wipv6.ParamProblem as problem:
            c.drop(problem.reason)
            self._report(wicmp6.TYPE_PARAMETER_PROBLEM, problem.code, problem.pointer, packet,
                         multicast, now, problem.even_multicast)  # fmt: skip
            return
        except Malformed as bad:
            c.drop(bad.reason)
            return
        frag = chain.fragment
        if frag is not None:
            if frag.offset == 0 and not frag.more:  # atomic fragment (RFC 6946): no reassembly
                chain = self._resume(header, payload, frag.next_header, chain.offset, multicast,
                                     packet, now)  # fmt: skip
                if chain is None:
                    return
            else:
                whole = self._reassemble(header, packet, payload, chain, multicast, now)
                if whole is None:
                    return
                packet, base = whole
                header, payload = wipv6.parse(packet)
                # resume after the (now removed) fragment header
                chain = self._resume(header, payload, frag.next_header,
                                     base - wipv6.HEADER_LEN, multicast, packet, now)  # fmt: skip
                if chain is None:
                    return
        handler = self._handlers.get(chain.upper)
        if handler is None:
            c.drop(Drop.IPV6_UNKNOWN_PROTOCOL)
            self._report(wicmp6.TYPE_PARAMETER_PROBLEM, wipv6.PP_UNRECOGNIZED_NEXT_HEADER,
                         chain.nh_at, packet, multicast, now)  # fmt: skip
            return
        handler(header, payload[chain.offset :], packet, now)

    def _resume(
        self,
        header: wipv6.Ipv6Header,
        payload: memoryview,
        next_header: int,
        start: int,
        multicast: bool,
        packet: memoryview,
        now: float,
    ) -> wipv6.Chain | None:
        """Walk on from `start` (after a Fragment header, or a reassembled unfragmentable
        part); a second Fragment header there is a bad fragment."""
        c = self.counters
        try:
            chain = wipv6.walk(payload, next_header, multicast, start=start)
        except wipv6.ParamProblem as problem:
            c.drop(problem.reason)
            self._report(wicmp6.TYPE_PARAMETER_PROBLEM, problem.code, problem.pointer, packet,
                         multicast, now, problem.even_multicast)  # fmt: skip
            return None
        except Malformed as bad:
            c.drop(bad.reason)
            return None
        if chain.fragment is not None:
            c.drop(Drop.IPV6_BAD_FRAGMENT)
            return None
        return chain

    def _reassemble(
        self,
        header: wipv6.Ipv6Header,
        packet: memoryview,
        payload: memoryview,
        chain: wipv6.Chain,
        multicast: bool,
        now: float,
    ) -> tuple[memoryview, int] | None:
        c = self.counters
        frag = chain.fragment
        assert frag is not None
        c.ipv6_fragments_rx += 1
        if frag.offset == 0 and not wipv6.chain_complete(payload, frag.next_header, chain.offset):
            c.drop(Drop.IPV6_FRAGMENT_CHAIN_INCOMPLETE)  # RFC 7112 §5
            self._report(wicmp6.TYPE_PARAMETER_PROBLEM, wipv6.PP_INCOMPLETE_CHAIN, 0, packet,
                         multicast, now)  # fmt: skip
            return None
        data = payload[chain.offset :]
        if frag.more and len(data) % 8:  # §4.5: Parameter Problem code 0 at Payload Length
            c.drop(Drop.IPV6_BAD_FRAGMENT)
            self._report(wicmp6.TYPE_PARAMETER_PROBLEM, wipv6.PP_ERRONEOUS_FIELD, 4, packet,
                         multicast, now)  # fmt: skip
            return None
        unfragmentable = packet[: wipv6.HEADER_LEN + frag.header_offset]
        whole = self._reassembler.add(
            (header.src, header.dst, frag.ident), frag.offset, frag.more, data, unfragmentable,
            frag.next_header, packet, now,
        )  # fmt: skip
        if whole is None:
            return None
        out, base = whole
        return memoryview(out), base

    def _report(
        self,
        icmp_type: int,
        code: int,
        word: int,
        packet: Buffer,
        multicast: bool,
        now: float,
        even_multicast: bool = False,
    ) -> None:
        """RFC 4443 §2.4 (e.3): no error about a packet to a group, save the exceptions."""
        if self.icmp_error is not None and (not multicast or even_multicast):
            self.icmp_error(icmp_type, code, word, packet, now, even_multicast)

    # -- send ------------------------------------------------------------------------------
    def route(self, dst: bytes) -> bytes | None:
        """Next hop: the destination itself on-link (link-local, multicast, our prefixes),
        else the default router (RFC 4861 §5.2, no redirects)."""
        if dst[0] == 0xFF or wipv6.is_link_local(dst):
            return dst
        if self.addresses.on_link(dst) or self.on_link(dst):
            return dst
        return self.default_router()

    def path_mtu(self, dst: bytes, now: float) -> int:
        return self.pmtu.path_mtu(dst, self.config.mtu, now)

    def send(
        self,
        dst: bytes,
        next_header: int,
        payload: tuple[Buffer, ...],
        now: float,
        *,
        src: bytes | None = None,
        hop_limit: int | None = None,
        traffic_class: int = 0,
        next_hop: bytes | None = None,
    ) -> bool:
        """Route and send one datagram, fragmenting it to the path MTU; False if dropped.
        `next_hop`: skip routing (ND answers a neighbour on the link, whatever its prefix)."""
        c = self.counters
        if next_hop is None:
            next_hop = self.route(dst)
        if next_hop is None:
            c.drop(Drop.IPV6_NO_ROUTE)
            return False
        if src is None:
            src = self.addresses.select_source(dst)
            if src is None:
                c.drop(Drop.IPV6_NO_SOURCE)
                return False
        length = sum(len(byte_view(p)) for p in payload)
        if length > MAX_PAYLOAD:
            c.drop(Drop.IPV6_TOO_BIG)
            return False
        hops = self.config.hop_limit if hop_limit is None else hop_limit
        mtu = self.path_mtu(dst, now)
        if wipv6.HEADER_LEN + length <= mtu:
            header = wipv6.build(src, dst, next_header, length, hops, traffic_class)
            c.ipv6_tx += 1
            self.link_send(next_hop, (header, *payload), now)
            return True
        # §4.5 / §5: fragment at the source; identification unpredictable (RFC 7739).
        ident = self.rng.getrandbits(32)

        def header(offset: int, size: int, more: bool) -> tuple[bytes, bytes]:
            length = wipv6.FRAGMENT_HEADER_LEN + size
            return (
                wipv6.build(src, dst, wipv6.FRAGMENT, length, hops, traffic_class),
                wipv6.build_fragment(next_header, offset, more, ident),
            )

        room = mtu - wipv6.HEADER_LEN - wipv6.FRAGMENT_HEADER_LEN
        for pieces in fragments(payload, length, room, header):
            c.ipv6_tx += 1
            c.ipv6_fragments_tx += 1
            self.link_send(next_hop, pieces, now)
        return True

    def send_tcp(
        self,
        dst: bytes,
        src: bytes,
        base: int,
        src_port: int,
        dst_port: int,
        seq: int,
        ack: int,
        flags: int,
        window: int,
        timestamp: tuple[int, int] | None,
        payload: Buffer,
        now: float,
    ) -> bool:
        """The lean send of a template TCP segment (TcpEngine.transmit_fast): the IPv6 and
        TCP headers from one pack, then the ND engine's link send as for any packet (so
        neighbour states move as they would). Returns False, having changed nothing, where
        the general way (fast6.send_one, `send`) has more to do: no route, or a datagram
        over the path MTU. `base`: the connection's `wire.tcp.template_sum`.

        WHY: one call where there were four (build_fast, the family's sender, send_one,
        wipv6.build); the bytes and counters are the general way's (tests/unit/tcp/
        test_lean.py compares both frame by frame)."""
        next_hop = self.route(dst)
        if next_hop is None:
            return False
        plen = len(payload)
        tlen = wtcp.HEADER_LEN if timestamp is None else _TCP_TS_LEN
        length = tlen + plen
        size = wipv6.HEADER_LEN + length
        # Every path takes the IPv6 minimum MTU (RFC 8200 5): within it, no lookup.
        if size > wipv6.MIN_MTU and size > self.path_mtu(dst, now):
            return False
        hops = self.config.hop_limit
        csum = _segment_sum(base, seq, ack, flags, window, timestamp, payload)
        if timestamp is None:
            header = _IP_TCP.pack(
                _VERSION_WORD, length, wipv6.TCP, hops, src, dst,
                src_port, dst_port, seq, ack, tlen << 2, flags, window, csum, 0,
            )  # fmt: skip
        else:
            tsval, tsecr = timestamp
            header = _IP_TCP_TS.pack(
                _VERSION_WORD, length, wipv6.TCP, hops, src, dst,
                src_port, dst_port, seq, ack, tlen << 2, flags, window, csum, 0,
                wtcp._TS_PREFIX, tsval, tsecr,
            )  # fmt: skip
        self.counters.ipv6_tx += 1
        self.link_send(next_hop, (header, payload) if plen else (header,), now)
        return True

    # -- timers ----------------------------------------------------------------------------
    def poll(self, now: float) -> None:
        for first in self._reassembler.poll(now):
            if self.icmp_error is not None and first[24] != 0xFF:
                self.icmp_error(wicmp6.TYPE_TIME_EXCEEDED, wicmp6.CODE_REASSEMBLY_TIME_EXCEEDED,
                                0, first, now, False)  # fmt: skip

    def next_deadline(self) -> float | None:
        return self._reassembler.next_deadline()

    def announce_deadlines(self, moved: Announce) -> None:
        """Tell `moved` when a reassembly deadline comes earlier (proto/deadlines.py)."""
        self._reassembler.deadline_moved = moved
