"""IPv6 header (RFC 8200 §3) and its extension header chain (§4).

Addresses are 16-byte `bytes` throughout the stack (hashable, sliceable, what the wire holds).
`parse` checks the fixed header; `walk` follows the extension headers in a bounded loop and
raises `Malformed` (or `ParamProblem`, which says what ICMPv6 Parameter Problem to answer with)
for anything that must be dropped.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import NamedTuple

from netstack.drops import Drop
from netstack.wire.errors import Malformed

HEADER_LEN = 40
MIN_MTU = 1280  # RFC 8200 §5
ETHERTYPE_IPV6 = 0x86DD

# Next header values
HOPOPTS = 0
TCP = 6
UDP = 17
ROUTING = 43
FRAGMENT = 44
ESP = 50
AH = 51
ICMPV6 = 58
NO_NEXT = 59
DSTOPTS = 60
EXTENSION_HEADERS = frozenset({HOPOPTS, ROUTING, FRAGMENT, DSTOPTS})
# Upper-layer headers and the bytes of them a first fragment must hold (RFC 7112).
UPPER_MIN_LEN = {TCP: 20, UDP: 8, ICMPV6: 4}

# Walk at most this many extension headers: a chain that never ends is a drop, not a loop.
MAX_EXTENSION_HEADERS = 8
FRAGMENT_HEADER_LEN = 8

# Option types (§4.2)
OPT_PAD1 = 0
OPT_PADN = 1
OPT_ROUTER_ALERT = 5  # RFC 2711: MLD carries it in hop-by-hop
KNOWN_OPTIONS = frozenset({OPT_PAD1, OPT_PADN, OPT_ROUTER_ALERT})

# ICMPv6 Parameter Problem codes (RFC 4443 §3.4, RFC 7112)
PP_ERRONEOUS_FIELD = 0
PP_UNRECOGNIZED_NEXT_HEADER = 1
PP_UNRECOGNIZED_OPTION = 2
PP_INCOMPLETE_CHAIN = 3

UNSPECIFIED = bytes(16)
ALL_NODES = bytes.fromhex("ff020000000000000000000000000001")
ALL_ROUTERS = bytes.fromhex("ff020000000000000000000000000002")
ALL_MLDV2_ROUTERS = bytes.fromhex("ff020000000000000000000000000016")
LOOPBACK = bytes(15) + b"\x01"

_HEADER = struct.Struct("!IHBB16s16s")  # version/class/flow, payload length, nh, hops, src, dst
_FRAGMENT = struct.Struct("!BxHI")  # next header, offset|flags, identification
assert _HEADER.size == HEADER_LEN and _FRAGMENT.size == FRAGMENT_HEADER_LEN

_new = tuple.__new__


class ParamProblem(Malformed):
    """A drop the sender should hear about: ICMPv6 Parameter Problem `code` at `pointer`
    (offset from the start of the IPv6 header). `even_multicast`: option actions 10 say
    answer even when the destination was a multicast group (RFC 8200 §4.2)."""

    __slots__ = ("code", "even_multicast", "pointer")

    def __init__(self, reason: Drop, code: int, pointer: int, even_multicast: bool = False):
        super().__init__(reason)
        self.code = code
        self.pointer = pointer
        self.even_multicast = even_multicast


class Ipv6Header(NamedTuple):
    traffic_class: int
    flow_label: int
    payload_length: int
    next_header: int
    hop_limit: int
    src: bytes
    dst: bytes


class Fragment(NamedTuple):
    """A Fragment header: where it sat (offset in the IPv6 payload), what follows it."""

    header_offset: int
    next_header: int
    offset: int  # in bytes
    more: bool
    ident: int


class Chain(NamedTuple):
    """Result of walking the extension headers of one packet's payload."""

    upper: int  # the upper-layer protocol (or the fragment's next header, see `fragment`)
    offset: int  # where the upper-layer header (or the fragment data) starts in the payload
    fragment: Fragment | None  # the walk stops after a Fragment header
    nh_at: int  # offset from the IPv6 header of the Next Header field naming `upper`


def parse(view: memoryview) -> tuple[Ipv6Header, memoryview]:
    """The fixed header and a view of the payload trimmed to Payload Length (link padding off)."""
    if len(view) < HEADER_LEN:
        raise Malformed(Drop.IPV6_TRUNCATED)
    vtf, length, nh, hops, src, dst = _HEADER.unpack_from(view)
    if vtf >> 28 != 6:
        raise Malformed(Drop.IPV6_BAD_VERSION)
    if length == 0:  # a jumbogram (RFC 2675) or nonsense: neither is taken
        raise Malformed(Drop.IPV6_BAD_LENGTH)
    if HEADER_LEN + length > len(view):
        raise Malformed(Drop.IPV6_TRUNCATED)
    header = _new(Ipv6Header, ((vtf >> 20) & 0xFF, vtf & 0xFFFFF, length, nh, hops, src, dst))
    return header, view[HEADER_LEN : HEADER_LEN + length]


def build(
    src: bytes,
    dst: bytes,
    next_header: int,
    payload_length: int,
    hop_limit: int = 64,
    traffic_class: int = 0,
    flow_label: int = 0,
) -> bytes:
    vtf = (6 << 28) | (traffic_class << 20) | flow_label
    return _HEADER.pack(vtf, payload_length, next_header, hop_limit, src, dst)


def build_fragment(next_header: int, offset: int, more: bool, ident: int) -> bytes:
    return _FRAGMENT.pack(next_header, offset | int(more), ident)


def _check_options(payload: memoryview, start: int, end: int, dst_multicast: bool) -> None:
    """TLV options of a hop-by-hop or destination options header (§4.2); unknown types are
    handled by their two high bits: 00 skip, 01 discard, 10 discard + Parameter Problem,
    11 discard + Parameter Problem unless the destination was multicast."""
    i = start
    while i < end:
        kind = payload[i]
        if kind == OPT_PAD1:
            i += 1
            continue
        if i + 2 > end or i + 2 + payload[i + 1] > end:
            raise Malformed(Drop.IPV6_BAD_EXTENSION)
        if kind not in KNOWN_OPTIONS:
            action = kind >> 6
            if action == 1:
                raise Malformed(Drop.IPV6_UNKNOWN_OPTION)
            if action == 2 or (action == 3 and not dst_multicast):
                raise ParamProblem(
                    Drop.IPV6_UNKNOWN_OPTION, PP_UNRECOGNIZED_OPTION, HEADER_LEN + i, action == 2
                )
            if action == 3:
                raise Malformed(Drop.IPV6_UNKNOWN_OPTION)
        i += 2 + payload[i + 1]


def walk(
    payload: memoryview, next_header: int, dst_multicast: bool = False, start: int = 0
) -> Chain:
    """Follow the extension headers from `next_header` over `payload` (the IPv6 payload).

    Stops at the first upper-layer header, or right after a Fragment header (the rest is
    fragment data). Hop-by-hop only first; Routing type 0 dropped (RFC 5095); a Routing
    header with segments left asks us to forward, which a host does not do.
    """
    offset = start
    nh_at = 6 if start == 0 else HEADER_LEN + start - FRAGMENT_HEADER_LEN
    # where the Next Header field naming the current header sits (for a pointer)
    end = len(payload)
    for index in range(MAX_EXTENSION_HEADERS + 1):
        if next_header not in EXTENSION_HEADERS:
            if next_header == NO_NEXT:
                raise Malformed(Drop.IPV6_NO_NEXT_HEADER)
            return _new(Chain, (next_header, offset, None, nh_at))
        if index == MAX_EXTENSION_HEADERS:
            break
        if next_header == HOPOPTS and offset != 0:
            raise ParamProblem(Drop.IPV6_HOP_BY_HOP_NOT_FIRST, PP_UNRECOGNIZED_NEXT_HEADER, nh_at)
        if next_header == FRAGMENT:
            if offset + FRAGMENT_HEADER_LEN > end:
                raise Malformed(Drop.IPV6_BAD_EXTENSION)
            nh, off_flags, ident = _FRAGMENT.unpack_from(payload, offset)
            frag = _new(Fragment, (offset, nh, off_flags & 0xFFF8, bool(off_flags & 1), ident))
            return _new(Chain, (nh, offset + FRAGMENT_HEADER_LEN, frag, HEADER_LEN + offset))
        if offset + 2 > end:
            raise Malformed(Drop.IPV6_BAD_EXTENSION)
        length = (payload[offset + 1] + 1) * 8
        if offset + length > end:
            raise Malformed(Drop.IPV6_BAD_EXTENSION)
        if next_header == ROUTING:
            routing_type, segments_left = payload[offset + 2], payload[offset + 3]
            if routing_type == 0:
                raise Malformed(Drop.IPV6_ROUTING_TYPE0)
            if segments_left:
                raise ParamProblem(
                    Drop.IPV6_ROUTING_UNSUPPORTED, PP_ERRONEOUS_FIELD, HEADER_LEN + offset + 2
                )
        else:
            _check_options(payload, offset + 2, offset + length, dst_multicast)
        next_header = payload[offset]
        nh_at = HEADER_LEN + offset
        offset += length
    raise Malformed(Drop.IPV6_CHAIN_TOO_LONG)


def chain_complete(payload: memoryview, next_header: int, start: int) -> bool:
    """RFC 7112: does a first fragment's data hold the rest of the header chain, through the
    upper-layer header's first bytes? (Unknown upper layers: the chain's end is enough.)"""
    try:
        chain = walk(payload, next_header, start=start)
    except Malformed as bad:
        # A header running past the fragment's end is the incomplete chain itself; any other
        # fault is dropped, with its own reason, after reassembly.
        return bad.reason is not Drop.IPV6_BAD_EXTENSION
    if chain.fragment is not None:
        return True
    return chain.offset + UPPER_MIN_LEN.get(chain.upper, 0) <= len(payload)


def pseudo_header(src: bytes, dst: bytes, next_header: int, length: int) -> bytes:
    """The 40-byte IPv6 pseudo-header (RFC 8200 §8.1), to checksum in front of the payload."""
    return src + dst + struct.pack("!I3xB", length, next_header)


def is_multicast(address: bytes) -> bool:
    return address[0] == 0xFF


def is_link_local(address: bytes) -> bool:
    return address[0] == 0xFE and address[1] & 0xC0 == 0x80


def to_str(address: bytes) -> str:
    return str(ipaddress.IPv6Address(bytes(address)))


def from_str(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed
