"""IPv4 header (RFC 791): validate a received packet, build a 20-byte header."""

from __future__ import annotations

import socket
import struct
from typing import NamedTuple

from netstack.drops import Drop
from netstack.wire.checksum import _fold, _from_buffer, _partial
from netstack.wire.errors import Malformed

MIN_HEADER_LEN = 20
PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
FLAG_DF = 0x4000
FLAG_MF = 0x2000
FRAG_OFFSET_MASK = 0x1FFF  # in 8-byte units on the wire
BROADCAST_ALL = 0xFFFFFFFF

VERSION_IHL_OFFSET = 0
TOS_OFFSET = 1
TOTAL_LENGTH_OFFSET = 2
IDENT_OFFSET = 4
FLAGS_FRAG_OFFSET = 6
TTL_OFFSET = 8
PROTOCOL_OFFSET = 9
CHECKSUM_OFFSET = 10
SRC_OFFSET = 12
DST_OFFSET = 16

_HEADER = struct.Struct("!BBHHHBBHII")
assert _HEADER.size == MIN_HEADER_LEN


# NamedTuple's generated __new__ is a Python-level call; tuple.__new__ builds the same
# object for a fraction of the cost on the per-packet path (field count fixed by the code).
_new = tuple.__new__


class Ipv4Header(NamedTuple):
    header_len: int
    tos: int
    total_length: int
    ident: int
    dont_fragment: bool
    more_fragments: bool
    frag_offset: int  # in bytes
    ttl: int
    protocol: int
    checksum: int
    src: int
    dst: int


def parse(
    packet: memoryview, verify_checksum: bool = True, *, allow_truncated: bool = False
) -> tuple[Ipv4Header, memoryview]:
    """Validate the header; return it and the payload trimmed to total_length.

    Trimming drops Ethernet padding; options are skipped via IHL. `allow_truncated` is for the
    datagram quoted inside an ICMP error, which may be cut short: a total_length beyond the
    buffer is then accepted and the payload is whatever is present.
    """
    size = len(packet)
    if size < MIN_HEADER_LEN:
        raise Malformed(Drop.IPV4_TRUNCATED)
    vihl, tos, total, ident, frag, ttl, proto, csum, src, dst = _HEADER.unpack_from(packet)
    if vihl >> 4 != 4:
        raise Malformed(Drop.IPV4_BAD_VERSION)
    hlen = (vihl & 0x0F) << 2
    if hlen < MIN_HEADER_LEN:
        raise Malformed(Drop.IPV4_BAD_HEADER_LENGTH)
    if hlen > size:
        raise Malformed(Drop.IPV4_TRUNCATED)
    if total < hlen:
        raise Malformed(Drop.IPV4_BAD_TOTAL_LENGTH)
    if total > size:
        if not allow_truncated:
            raise Malformed(Drop.IPV4_BAD_TOTAL_LENGTH)
        end = size
    else:
        end = total
    if verify_checksum and _fold(_partial(_from_buffer(packet), hlen, 0)):
        raise Malformed(Drop.IPV4_BAD_CHECKSUM)
    fields = (hlen, tos, total, ident, frag & FLAG_DF != 0, frag & FLAG_MF != 0,
              (frag & FRAG_OFFSET_MASK) << 3, ttl, proto, csum, src, dst)  # fmt: skip
    return _new(Ipv4Header, fields), packet[hlen:end]


def build(
    src: int,
    dst: int,
    protocol: int,
    payload_len: int,
    *,
    ident: int = 0,
    ttl: int = 64,
    tos: int = 0,
    dont_fragment: bool = False,
    more_fragments: bool = False,
    frag_offset: int = 0,
) -> bytes:
    """A 20-byte header (no options) with its checksum; frag_offset in bytes, a multiple of 8."""
    total = MIN_HEADER_LEN + payload_len
    frag = frag_offset >> 3
    if dont_fragment:
        frag |= FLAG_DF
    if more_fragments:
        frag |= FLAG_MF
    vihl_tos = 0x4500 | tos
    ttl_proto = (ttl << 8) | protocol
    # The header sum from the field values: cheaper than packing twice around a C call.
    s = vihl_tos + total + ident + frag + ttl_proto + (src >> 16) + (src & 0xFFFF)
    s += (dst >> 16) + (dst & 0xFFFF)
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return _HEADER.pack(0x45, tos, total, ident, frag, ttl, protocol, s ^ 0xFFFF, src, dst)


def ip_to_str(ip: int) -> str:
    return socket.inet_ntoa(ip.to_bytes(4, "big"))


def ip_from_str(text: str) -> int:
    """Dotted quad -> int; ValueError for anything else (strict: no '127.1', no trailing text)."""
    try:
        return int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
    except (OSError, TypeError, ValueError):
        raise ValueError(f"expected an IPv4 address like 192.0.2.1, got {text!r}") from None
