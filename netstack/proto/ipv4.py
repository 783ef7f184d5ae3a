"""IPv4 host engine (RFC 791, RFC 1122 3.2.1): receive checks, reassembly, routing, fragmenting.

Pure: packets and `now` in; packets out through `link_send(next_hop, pieces, now)` (the ARP
engine's `send_ipv4`). A host, not a router: it accepts datagrams for its address, the limited
broadcast and its subnet's directed broadcast, and never forwards.

Receive order (each drop counts one reason): wire validation, martian source, destination,
reassembly, protocol dispatch. Send: route, ident, fragment to the MTU by slicing the caller's
buffers (memoryviews, no join), hand each packet to the link.
Counting: `ipv4_rx` / `ipv4_tx` count IP packets on the wire (each fragment is one),
`ipv4_fragments_rx/tx` the fragments among them, `ipv4_reassembled` finished datagrams.
"""

from __future__ import annotations

import dataclasses
import random
import struct
from collections.abc import Callable

from netstack.counters import Counters
from netstack.drops import Drop
from netstack.proto.deadlines import Announce
from netstack.proto.fragment import fragments
from netstack.proto.pmtu import PmtuCache
from netstack.proto.reassembly import Reassembler
from netstack.wire import ipv4 as wipv4
from netstack.wire import tcp as wtcp
from netstack.wire import vnet as wvnet
from netstack.wire.checksum import checksum
from netstack.wire.errors import Malformed

Buffer = bytes | bytearray | memoryview
Handler = Callable[[wipv4.Ipv4Header, memoryview, memoryview, float], None]
LinkSend = Callable[[int, tuple[Buffer, ...], float], None]
IcmpError = Callable[[int, int, Buffer, float], None]

BROADCAST_ALL = 0xFFFFFFFF
MIN_MTU = 68  # RFC 791: every host must take 68-byte datagrams unfragmented
MAX_PAYLOAD = 65535 - wipv4.MIN_HEADER_LEN  # 65515: largest payload of one datagram we build
_IPV4_HEADER = wipv4._HEADER  # "!BBHHHBBHII", 20 bytes, no options
ICMP_TIME_EXCEEDED, CODE_REASSEMBLY_TIME_EXCEEDED = 11, 1
# send_tcp's one pack: the IPv4 header (no options) and the TCP header (plain, or with the
# timestamp option alone), the layouts wipv4._HEADER and wire/tcp.py's build_fast use.
_IP_TCP = struct.Struct("!BBHHHBBHIIHHIIBBHHH")
_IP_TCP_TS = struct.Struct("!BBHHHBBHIIHHIIBBHHH4sII")
_TCP_TS_LEN = wtcp.HEADER_LEN + 12
_TS_PREFIX = wtcp._TS_PREFIX  # NOP, NOP, timestamp kind and length (RFC 7323 3)
_segment_sum = wtcp.segment_sum
_MAX_HOPS = 256  # send_tcp's route memo: destinations remembered before it starts over
ICMP_DEST_UNREACHABLE, CODE_PROTOCOL_UNREACHABLE = 3, 2


@dataclasses.dataclass(slots=True)
class Ipv4Config:
    address: int
    prefix_len: int
    gateway: int | None = None
    mtu: int = 1500
    default_ttl: int = 64
    reassembly_timeout: float = 30.0
    reassembly_max_bytes: int = 4 * 1024 * 1024
    reassembly_max_datagrams: int = 64


class Ipv4Engine:
    """Validates and dispatches received datagrams; routes and fragments sent ones."""

    def __init__(
        self,
        config: Ipv4Config,
        counters: Counters,
        link_send: LinkSend,
        rng: random.Random,
    ) -> None:
        if not 0 <= config.prefix_len <= 32:
            raise ValueError(f"prefix length {config.prefix_len} out of range")
        if not MIN_MTU <= config.mtu <= 65535:
            raise ValueError(f"MTU {config.mtu} out of range {MIN_MTU}..65535")
        self.config = config
        self.counters = counters
        self.link_send = link_send
        self._set_subnet()
        self.icmp_error: IcmpError | None = None
        # While the host has no address (address 0: DHCP not yet bound) only the datagrams this
        # accepts are delivered, whatever their destination (the DHCP client's, on UDP 68).
        self.unbound_filter: Callable[[wipv4.Ipv4Header, memoryview], bool] | None = None
        # Set by the host around one received super-frame (virtio-net GSO).
        self.rx_gso = False
        # The host's link fast path (ARP's ready_header, the tx queue's append); None: every
        # packet goes through link_send.
        self.link_header: Callable[[int], bytes | None] | None = None
        self.link_emit: Callable[[tuple[Buffer, ...]], None] | None = None
        self._handlers: dict[int, Handler] = {}
        # Path MTU estimates per destination (RFC 1191), fed by TCP and UDP from validated
        # "fragmentation needed" reports; read by TCP (its MSS) and the UDP API.
        self.pmtu = PmtuCache(counters=counters)
        self._pmtu_scan_at = 0.0
        self._ident = rng.getrandbits(16)
        self._reassembler = Reassembler(
            counters,
            timeout=config.reassembly_timeout,
            max_bytes=config.reassembly_max_bytes,
            max_datagrams=config.reassembly_max_datagrams,
        )

    # -- addresses and routes --------------------------------------------------------------
    def set_address(self, address: int, prefix_len: int, gateway: int | None) -> None:
        """Change our address at run time (DHCP); 0 means none: only `unbound_filter`'s
        datagrams are then delivered."""
        if not 0 <= prefix_len <= 32:
            raise ValueError(f"prefix length {prefix_len} out of range")
        self.config.address = address
        self.config.prefix_len = prefix_len
        self.config.gateway = gateway
        self._set_subnet()

    def _set_subnet(self) -> None:
        config = self.config
        self.netmask = (0xFFFFFFFF << (32 - config.prefix_len)) & 0xFFFFFFFF
        self.network = config.address & self.netmask
        # RFC 3021: /31 and /32 have no broadcast address.
        self.subnet_broadcast: int | None = (
            self.network | (~self.netmask & 0xFFFFFFFF) if config.prefix_len <= 30 else None
        )
        # send_tcp's memo of route(): unicast destination -> next hop. Every change of the
        # address, prefix or gateway comes through here (set_address), so it starts over.
        self._hops: dict[int, int] = {}

    def is_local(self, dst: int) -> bool:
        return dst == self.config.address

    def is_broadcast(self, dst: int) -> bool:
        return dst == BROADCAST_ALL or dst == self.subnet_broadcast

    def route(self, dst: int) -> int | None:
        """Next hop for `dst`: itself on-link, 0xFFFFFFFF for broadcasts, else the gateway."""
        if self.is_broadcast(dst):
            return BROADCAST_ALL
        if dst == 0 or dst >> 24 == 127 or not self.config.address:
            return None  # without an address (DHCP unbound) only broadcasts may leave
        if dst & self.netmask == self.network or dst & 0xF0000000 == 0xE0000000:
            return dst  # on-link (multicast is link-local here: the link maps it to a MAC)
        return self.config.gateway

    def path_mtu(self, dst: int, now: float) -> int:
        """RFC 1191: the largest datagram (IP header included) believed to reach `dst`
        unfragmented: the link MTU unless a report lowered it (and it has not aged out)."""
        return self.pmtu.path_mtu(dst, self.config.mtu, now)

    def _bad_source(self, src: int, dst: int) -> bool:
        """RFC 1122 3.2.1.3 martians; 0.0.0.0 only towards the limited broadcast (DHCP/BOOTP)."""
        if src == 0:
            return dst != BROADCAST_ALL
        return (
            src >= 0xE0000000  # multicast, class E and the limited broadcast
            or src >> 24 in (0, 127)
            or src == self.config.address
            or src == self.subnet_broadcast
        )

    # -- receive ---------------------------------------------------------------------------
    def register(self, protocol: int, handler: Handler) -> None:
        self._handlers[protocol] = handler

    def receive(self, packet: memoryview, now: float) -> None:
        """Validate one received IPv4 packet (a view valid only during the call) and deliver it."""
        c = self.counters
        c.ipv4_rx += 1
        try:
            header, payload = wipv4.parse(packet)
        except Malformed as bad:
            parsed = self._parse_big(packet) if self.rx_gso else None
            if parsed is None:
                c.drop(bad.reason)
                return
            header, payload = parsed
        dst = header.dst
        if self._bad_source(header.src, dst):
            c.drop(Drop.IPV4_BAD_SOURCE)
            return
        address = self.config.address
        if not address:
            accept = self.unbound_filter
            if accept is None or not accept(header, payload):
                c.drop(Drop.IPV4_NO_ADDRESS)
                return
        elif dst != address and dst != BROADCAST_ALL and dst != self.subnet_broadcast:
            c.drop(Drop.IPV4_NOT_FOR_US)
            return
        if header.more_fragments or header.frag_offset:
            c.ipv4_fragments_rx += 1
            whole = self._reassembler.add(header, packet, payload, now)
            if whole is None:
                return
            header, packet = whole
            payload = packet[header.header_len :]
        else:
            packet = packet[: header.total_length]
        handler = self._handlers.get(header.protocol)
        if handler is None:
            c.drop(Drop.IPV4_UNKNOWN_PROTOCOL)
            self._report(ICMP_DEST_UNREACHABLE, CODE_PROTOCOL_UNREACHABLE, packet, dst, now)
            return
        handler(header, payload, packet, now)

    @staticmethod
    def _parse_big(packet: memoryview) -> tuple[wipv4.Ipv4Header, memoryview] | None:
        """A super-frame over 64 KiB (Linux BIG TCP) has total length 0: its length is the
        frame's. Header checks as usual, on a copy with the field set to a legal value."""
        if len(packet) <= 0xFFFF or packet[2:4] != b"\0\0":
            return None
        hlen = (packet[0] & 0x0F) << 2
        if hlen < wipv4.MIN_HEADER_LEN or checksum(packet[:hlen]):  # the header's own sum
            return None
        try:
            head = bytearray(packet[:hlen])
            head[2:4] = hlen.to_bytes(2, "big")
            header, _ = wipv4.parse(memoryview(bytes(head)), verify_checksum=False)
        except Malformed:
            return None
        return header._replace(total_length=len(packet)), packet[hlen:]

    def _report(self, icmp_type: int, code: int, packet: Buffer, dst: int, now: float) -> None:
        """ICMP error about `packet`; never about broadcasts (RFC 1122 3.2.2)."""
        if self.icmp_error is not None and dst == self.config.address:
            self.icmp_error(icmp_type, code, packet, now)

    # -- send ------------------------------------------------------------------------------
    def send(
        self,
        dst: int,
        protocol: int,
        payload: tuple[Buffer, ...],
        now: float,
        *,
        ttl: int | None = None,
        tos: int = 0,
        dont_fragment: bool = False,
        gso_size: int = 0,
        l4_header_len: int = 0,
    ) -> bool:
        """Route and send one datagram, fragmenting it to the MTU; False if it was dropped.

        gso_size (TCP with TSO): the datagram is a super-frame the link's kernel cuts into
        segments of gso_size payload bytes after l4_header_len bytes of TCP header; it is
        never fragmented (DF set) and leaves with a VnetMark saying so.
        """
        c = self.counters
        next_hop = self.route(dst)
        if next_hop is None:
            c.drop(Drop.IPV4_NO_ROUTE)
            return False
        length = 0
        for piece in payload:
            length += piece.nbytes if type(piece) is memoryview else len(piece)
        if length > MAX_PAYLOAD:
            c.drop(Drop.IPV4_TOO_BIG)
            return False
        src = self.config.address
        ttl = self.config.default_ttl if ttl is None else ttl
        ident = self._ident
        self._ident = (ident + 1) & 0xFFFF
        total = wipv4.MIN_HEADER_LEN + length
        if total <= self.config.mtu:
            # wipv4.build, inline (the per-packet path): the header sum from the field values
            frag = wipv4.FLAG_DF if dont_fragment else 0
            ttl_proto = (ttl << 8) | protocol
            s = (0x4500 | tos) + total + ident + frag + ttl_proto + (src >> 16) + (src & 0xFFFF)
            s += (dst >> 16) + (dst & 0xFFFF)
            s = (s & 0xFFFF) + (s >> 16)
            s = (s & 0xFFFF) + (s >> 16)
            header = _IPV4_HEADER.pack(
                0x45, tos, total, ident, frag, ttl, protocol, s ^ 0xFFFF, src, dst
            )
            c.ipv4_tx += 1
            link_header = self.link_header
            if link_header is not None and (eth := link_header(next_hop)) is not None:
                self.link_emit((eth, header, *payload))  # type: ignore[misc]
            else:
                self.link_send(next_hop, (header, *payload), now)
            return True
        if gso_size:
            return self._send_gso(
                next_hop, dst, protocol, payload, length, ident, ttl, tos, gso_size,
                l4_header_len, now,
            )  # fmt: skip
        if dont_fragment:
            c.drop(Drop.IPV4_FRAGMENTATION_NEEDED)
            return False

        def header(offset: int, size: int, more: bool) -> tuple[bytes]:
            return (
                wipv4.build(src, dst, protocol, size, ident=ident, ttl=ttl, tos=tos,
                            more_fragments=more, frag_offset=offset),
            )  # fmt: skip

        room = self.config.mtu - wipv4.MIN_HEADER_LEN
        for pieces in fragments(payload, length, room, header):
            c.ipv4_tx += 1
            c.ipv4_fragments_tx += 1
            self.link_send(next_hop, pieces, now)
        return True

    def send_tcp(
        self,
        dst: int,
        dont_fragment: bool,
        base: int,
        src_port: int,
        dst_port: int,
        seq: int,
        ack: int,
        flags: int,
        window: int,
        timestamp: tuple[int, int] | None,
        payload: Buffer,
    ) -> bool:
        """The lean send of a template TCP segment (TcpEngine.transmit_fast): Ethernet, IPv4
        and TCP headers from one pack, the frame straight onto the link's queue. Returns
        False, having changed nothing but ARP's use mark, where `send` has more to do than
        that — no route or a broadcast next hop, a neighbour ARP must resolve or confirm
        first, a datagram over the MTU — and the caller goes the general way.

        WHY: a segment per call, not three layers (TCP header, `send`, the link header):
        the bytes, the IPv4 ID sequence and the counters are `send`'s exactly (tests/unit/
        tcp/test_lean.py compares both ways frame by frame). `base`: the connection's
        `wire.tcp.template_sum` (pseudo-header addresses, protocol, ports).
        """
        hop = self._hops.get(dst)
        if hop is None:
            hop = self.route(dst)
            if hop is None or hop == BROADCAST_ALL:
                return False
            hops = self._hops
            if len(hops) >= _MAX_HOPS:
                hops.clear()
            hops[dst] = hop
        link_header = self.link_header
        if link_header is None:
            return False
        cfg = self.config
        plen = len(payload)
        tlen = wtcp.HEADER_LEN if timestamp is None else _TCP_TS_LEN
        total = wipv4.MIN_HEADER_LEN + tlen + plen
        if total > cfg.mtu:
            return False
        eth = link_header(hop)
        if eth is None:
            return False
        src = cfg.address
        ttl = cfg.default_ttl
        ident = self._ident
        self._ident = (ident + 1) & 0xFFFF
        frag = wipv4.FLAG_DF if dont_fragment else 0
        ttl_proto = (ttl << 8) | wipv4.PROTO_TCP
        s = 0x4500 + total + ident + frag + ttl_proto + (src >> 16) + (src & 0xFFFF)
        s += (dst >> 16) + (dst & 0xFFFF)
        s = (s & 0xFFFF) + (s >> 16)
        s = (s & 0xFFFF) + (s >> 16)
        ip_sum = s ^ 0xFFFF
        csum = _segment_sum(base, seq, ack, flags, window, timestamp, payload)
        if timestamp is None:
            header = _IP_TCP.pack(
                0x45, 0, total, ident, frag, ttl, wipv4.PROTO_TCP, ip_sum, src, dst,
                src_port, dst_port, seq, ack, tlen << 2, flags, window, csum, 0,
            )  # fmt: skip
        else:
            tsval, tsecr = timestamp
            header = _IP_TCP_TS.pack(
                0x45, 0, total, ident, frag, ttl, wipv4.PROTO_TCP, ip_sum, src, dst,
                src_port, dst_port, seq, ack, tlen << 2, flags, window, csum, 0,
                _TS_PREFIX, tsval, tsecr,
            )  # fmt: skip
        self.counters.ipv4_tx += 1
        self.link_emit((eth, header, payload) if plen else (eth, header))  # type: ignore[misc]
        return True

    def _send_gso(
        self,
        next_hop: int,
        dst: int,
        protocol: int,
        payload: tuple[Buffer, ...],
        length: int,
        ident: int,
        ttl: int,
        tos: int,
        gso_size: int,
        l4_header_len: int,
        now: float,
    ) -> bool:
        """One super-frame: DF set, its total length the whole (<= 65535, checked above).

        RFC 6864: the ID of an atomic datagram (DF, no fragments) identifies nothing; the
        kernel numbers the segments ID, ID + 1, ... (Linux's default), and our counter skips
        as many so that consecutive datagrams keep distinct IDs anyway.
        """
        c = self.counters
        segments = wvnet.segments(length - l4_header_len, gso_size)
        self._ident = (ident + segments) & 0xFFFF
        header = wipv4.build(
            self.config.address, dst, protocol, length, ident=ident, ttl=ttl, tos=tos,
            dont_fragment=True,
        )  # fmt: skip
        mark = wvnet.tcp4_gso_mark(wvnet.ETH_LEN + wipv4.MIN_HEADER_LEN, l4_header_len, gso_size)
        c.ipv4_tx += segments
        c.gso_frames_tx += 1
        c.gso_segments_tx += segments
        self.link_send(next_hop, (mark, header, *payload), now)
        return True

    # -- timers ----------------------------------------------------------------------------
    def poll(self, now: float) -> None:
        """Expire reassembly; ICMP time exceeded for datagrams whose fragment zero arrived."""
        for first in self._reassembler.poll(now):
            dst = int.from_bytes(first[16:20], "big")
            self._report(ICMP_TIME_EXCEEDED, CODE_REASSEMBLY_TIME_EXCEEDED, first, dst, now)
        if len(self.pmtu) and now >= self._pmtu_scan_at:  # aged estimates leave the gauge
            self._pmtu_scan_at = now + 10.0
            self.pmtu.expire(now)

    def next_deadline(self) -> float | None:
        return self._reassembler.next_deadline()

    def announce_deadlines(self, moved: Announce) -> None:
        """Tell `moved` when a reassembly deadline comes earlier (proto/deadlines.py)."""
        self._reassembler.deadline_moved = moved

    @property
    def reassembler(self) -> Reassembler:
        return self._reassembler
