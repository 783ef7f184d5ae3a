"""ICMPv6 (RFC 4443), Neighbor Discovery messages (RFC 4861 §4) and MLDv2 reports (RFC 3810 §5.2).

The checksum covers the IPv6 pseudo-header (RFC 4443 §2.3). ND messages parse into frozen
values; options are validated as RFC 4861 §4.6 says (a zero length drops the whole message).
"""

from __future__ import annotations

import dataclasses
import struct
from typing import NamedTuple

from netstack.drops import Drop
from netstack.wire import ipv6 as wipv6
from netstack.wire.checksum import Buffer, checksum
from netstack.wire.errors import Malformed

HEADER_LEN = 4  # type, code, checksum; the rest is per type

TYPE_DEST_UNREACHABLE = 1
TYPE_PACKET_TOO_BIG = 2
TYPE_TIME_EXCEEDED = 3
TYPE_PARAMETER_PROBLEM = 4
TYPE_ECHO_REQUEST = 128
TYPE_ECHO_REPLY = 129
TYPE_MLD_QUERY = 130
TYPE_MLD_REPORT = 131
TYPE_MLD_DONE = 132
TYPE_ROUTER_SOLICIT = 133
TYPE_ROUTER_ADVERT = 134
TYPE_NEIGHBOR_SOLICIT = 135
TYPE_NEIGHBOR_ADVERT = 136
TYPE_REDIRECT = 137
TYPE_MLDV2_REPORT = 143
ERROR_TYPES = frozenset({1, 2, 3, 4})  # every type < 128 is an error (§2.1); these we know

CODE_NO_ROUTE = 0
CODE_ADDRESS_UNREACHABLE = 3
CODE_PORT_UNREACHABLE = 4
CODE_HOP_LIMIT_EXCEEDED = 0
CODE_REASSEMBLY_TIME_EXCEEDED = 1

# Bounded metric label values; anything else is "other".
TYPE_NAMES: dict[int, str] = {
    1: "destination_unreachable",
    2: "packet_too_big",
    3: "time_exceeded",
    4: "parameter_problem",
    128: "echo_request",
    129: "echo_reply",
    130: "mld_query",
    131: "mld_report",
    132: "mld_done",
    133: "router_solicitation",
    134: "router_advertisement",
    135: "neighbor_solicitation",
    136: "neighbor_advertisement",
    137: "redirect",
    143: "mldv2_report",
}

# ND option types (RFC 4861 §4.6)
OPT_SOURCE_LLA = 1
OPT_TARGET_LLA = 2
OPT_PREFIX_INFO = 3
OPT_REDIRECTED_HEADER = 4
OPT_MTU = 5

NA_ROUTER = 0x80000000
NA_SOLICITED = 0x40000000
NA_OVERRIDE = 0x20000000
RA_MANAGED = 0x80
RA_OTHER = 0x40
PREFIX_ON_LINK = 0x80
PREFIX_AUTONOMOUS = 0x40
INFINITY = 0xFFFFFFFF

MLD_CHANGE_TO_EXCLUDE = 4  # RFC 3810 §5.2.12: "join, any source"
MLD_CHANGE_TO_INCLUDE = 3

_HEADER = struct.Struct("!BBH")
_ECHO = struct.Struct("!BBHHH")
_WORD = struct.Struct("!BBHI")
_RA = struct.Struct("!BBHBBHII")
_PREFIX = struct.Struct("!BBBBIII16s")
_MTU_OPT = struct.Struct("!BBHI")
assert _PREFIX.size == 32 and _RA.size == 16

_new = tuple.__new__


class Icmpv6Header(NamedTuple):
    type: int
    code: int
    checksum: int


def parse(view: memoryview, src: bytes, dst: bytes) -> tuple[Icmpv6Header, memoryview]:
    """Header plus the message body after the 4-byte header; the checksum is verified."""
    if len(view) < HEADER_LEN:
        raise Malformed(Drop.ICMPV6_TRUNCATED)
    if checksum(wipv6.pseudo_header(src, dst, wipv6.ICMPV6, len(view)), view):
        raise Malformed(Drop.ICMPV6_BAD_CHECKSUM)
    return _new(Icmpv6Header, _HEADER.unpack_from(view)), view[HEADER_LEN:]


def build(src: bytes, dst: bytes, icmp_type: int, code: int, *body: Buffer) -> bytes:
    """A whole ICMPv6 message with its checksum (small messages: the body is joined)."""
    data = b"".join(bytes(b) for b in body)
    head = _HEADER.pack(icmp_type, code, 0)
    csum = checksum(wipv6.pseudo_header(src, dst, wipv6.ICMPV6, 4 + len(data)), head, data)
    return _HEADER.pack(icmp_type, code, csum) + data


def header(src: bytes, dst: bytes, icmp_type: int, code: int, word: int, *data: Buffer) -> bytes:
    """The 8 bytes in front of `data` (echo, errors): type, code, checksum, one 32-bit word.
    `data` is not copied, only summed: the caller sends header + data as an iovec list."""
    length = 8 + sum(len(d) for d in data)
    head = _WORD.pack(icmp_type, code, 0, word)
    csum = checksum(wipv6.pseudo_header(src, dst, wipv6.ICMPV6, length), head, *data)
    return _WORD.pack(icmp_type, code, csum, word)


def word(body: memoryview) -> int:
    """The 32-bit field after the header (echo id/seq, MTU, pointer); body must hold 4 bytes."""
    return int.from_bytes(body[:4], "big")


# -- Neighbor Discovery -------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, slots=True)
class PrefixInfo:
    prefix: bytes
    prefix_len: int
    on_link: bool
    autonomous: bool
    valid_lifetime: int
    preferred_lifetime: int


@dataclasses.dataclass(frozen=True, slots=True)
class NdMessage:
    """Any of RS, RA, NS, NA; fields not in a type keep their defaults."""

    type: int
    target: bytes = wipv6.UNSPECIFIED  # NS/NA
    flags: int = 0  # NA: R/S/O bits (in the 32-bit word); RA: M/O byte
    source_lla: bytes | None = None
    target_lla: bytes | None = None
    cur_hop_limit: int = 0  # RA
    router_lifetime: int = 0
    reachable_time: int = 0  # ms
    retrans_timer: int = 0  # ms
    mtu: int | None = None
    prefixes: tuple[PrefixInfo, ...] = ()

    @property
    def router(self) -> bool:
        return bool(self.flags & NA_ROUTER)

    @property
    def solicited(self) -> bool:
        return bool(self.flags & NA_SOLICITED)

    @property
    def override(self) -> bool:
        return bool(self.flags & NA_OVERRIDE)


# Fixed part after the 4-byte ICMPv6 header, per ND type (RFC 4861 §4: the minimum lengths of
# §§6.1.1, 6.1.2, 7.1.1, 7.1.2 are these plus 4).
ND_FIXED = {
    TYPE_ROUTER_SOLICIT: 4,
    TYPE_ROUTER_ADVERT: 12,
    TYPE_NEIGHBOR_SOLICIT: 20,
    TYPE_NEIGHBOR_ADVERT: 20,
}


def _options(view: memoryview) -> list[tuple[int, memoryview]]:
    out = []
    i = 0
    end = len(view)
    while i < end:
        if i + 2 > end:
            raise Malformed(Drop.ND_BAD_OPTION)
        length = view[i + 1] * 8
        if length == 0 or i + length > end:
            raise Malformed(Drop.ND_BAD_OPTION)
        out.append((view[i], view[i + 2 : i + length]))
        i += length
        if len(out) > 64:  # more options than any honest message carries
            raise Malformed(Drop.ND_BAD_OPTION)
    return out


def _lla(data: memoryview) -> bytes:
    if len(data) != 6:  # Ethernet: the option is exactly 8 bytes (RFC 2464 §8)
        raise Malformed(Drop.ND_BAD_OPTION)
    return bytes(data)


def parse_nd(icmp_type: int, body: memoryview) -> NdMessage:
    """An RS/RA/NS/NA body (after the 4-byte header) into a value; Malformed(nd/...) if bad."""
    fixed = ND_FIXED[icmp_type]
    if len(body) < fixed:
        raise Malformed(Drop.ND_TRUNCATED)
    fields: dict = {}
    if icmp_type in (TYPE_NEIGHBOR_SOLICIT, TYPE_NEIGHBOR_ADVERT):
        fields["flags"] = word(body) & 0xE0000000 if icmp_type == TYPE_NEIGHBOR_ADVERT else 0
        fields["target"] = bytes(body[4:20])
    elif icmp_type == TYPE_ROUTER_ADVERT:
        hop, flags, lifetime, reach, retrans = struct.unpack_from("!BBHII", body)
        fields.update(
            cur_hop_limit=hop,
            flags=flags & (RA_MANAGED | RA_OTHER),  # preference bits: not used by a host
            router_lifetime=lifetime,
            reachable_time=reach,
            retrans_timer=retrans,
        )
    prefixes = []
    for kind, data in _options(body[fixed:]):
        if kind == OPT_SOURCE_LLA and icmp_type != TYPE_NEIGHBOR_ADVERT:
            fields["source_lla"] = _lla(data)
        elif kind == OPT_TARGET_LLA and icmp_type == TYPE_NEIGHBOR_ADVERT:
            fields["target_lla"] = _lla(data)
        elif kind == OPT_MTU and icmp_type == TYPE_ROUTER_ADVERT:
            if len(data) != 6:
                raise Malformed(Drop.ND_BAD_OPTION)
            fields["mtu"] = int.from_bytes(data[2:6], "big")
        elif kind == OPT_PREFIX_INFO and icmp_type == TYPE_ROUTER_ADVERT:
            if len(data) != 30:
                raise Malformed(Drop.ND_BAD_OPTION)
            plen, flags, valid, preferred, _, prefix = _PREFIX.unpack_from(b"\0\0" + bytes(data))[
                2:
            ]
            prefixes.append(
                PrefixInfo(
                    prefix,
                    plen,
                    bool(flags & PREFIX_ON_LINK),
                    bool(flags & PREFIX_AUTONOMOUS),
                    valid,
                    preferred,
                )
            )
        # other options: skipped (RFC 4861 §4.6: unknown options are ignored)
    return NdMessage(type=icmp_type, prefixes=tuple(prefixes), **fields)


def lla_option(kind: int, mac: bytes) -> bytes:
    return bytes((kind, 1)) + bytes(mac)


def prefix_option(info: PrefixInfo) -> bytes:
    flags = (PREFIX_ON_LINK if info.on_link else 0) | (PREFIX_AUTONOMOUS if info.autonomous else 0)
    return _PREFIX.pack(
        OPT_PREFIX_INFO, 4, info.prefix_len, flags, info.valid_lifetime,
        info.preferred_lifetime, 0, info.prefix,
    )  # fmt: skip


def mtu_option(mtu: int) -> bytes:
    return _MTU_OPT.pack(OPT_MTU, 1, 0, mtu)


def nd_body(msg: NdMessage) -> bytes:
    """The body of an ND message (after the 4-byte header), options included."""
    if msg.type in (TYPE_NEIGHBOR_SOLICIT, TYPE_NEIGHBOR_ADVERT):
        out = struct.pack("!I", msg.flags) + msg.target
    elif msg.type == TYPE_ROUTER_ADVERT:
        out = struct.pack(
            "!BBHII", msg.cur_hop_limit, msg.flags, msg.router_lifetime,
            msg.reachable_time, msg.retrans_timer,
        )  # fmt: skip
    else:
        out = bytes(4)
    if msg.source_lla is not None:
        out += lla_option(OPT_SOURCE_LLA, msg.source_lla)
    if msg.target_lla is not None:
        out += lla_option(OPT_TARGET_LLA, msg.target_lla)
    if msg.mtu is not None:
        out += mtu_option(msg.mtu)
    for info in msg.prefixes:
        out += prefix_option(info)
    return out


def build_nd(src: bytes, dst: bytes, msg: NdMessage) -> bytes:
    return build(src, dst, msg.type, 0, nd_body(msg))


def mldv2_report_body(groups: list[bytes], record_type: int = MLD_CHANGE_TO_EXCLUDE) -> bytes:
    """RFC 3810 §5.2: reserved, record count, then one record per group with no sources."""
    out = struct.pack("!HH", 0, len(groups))
    for group in groups:
        out += struct.pack("!BBH", record_type, 0, 0) + group
    return out
