"""UDP header (RFC 768) with the IPv4 pseudo-header checksum."""

from __future__ import annotations

import struct
from typing import NamedTuple

from netstack.drops import Drop
from netstack.wire.checksum import Buffer, _fold, _from_buffer, _partial
from netstack.wire.errors import Malformed

HEADER_LEN = 8
SRC_PORT_OFFSET = 0
DST_PORT_OFFSET = 2
LENGTH_OFFSET = 4
CHECKSUM_OFFSET = 6
PROTO_UDP = 17

_HEADER = struct.Struct("!HHHH")
assert _HEADER.size == HEADER_LEN


# NamedTuple's generated __new__ is a Python-level call; tuple.__new__ builds the same
# object for a fraction of the cost on the per-packet path (field count fixed by the code).
_new = tuple.__new__


class UdpHeader(NamedTuple):
    src_port: int
    dst_port: int
    length: int
    checksum: int


def parse(
    view: memoryview, src_ip: int, dst_ip: int, verify_checksum: bool = True
) -> tuple[UdpHeader, memoryview]:
    """Header and the payload trimmed to the length field; checksum 0 means 'not computed'."""
    if len(view) < HEADER_LEN:
        raise Malformed(Drop.UDP_TRUNCATED)
    src_port, dst_port, length, csum = _HEADER.unpack_from(view)
    if length < HEADER_LEN or length > len(view):
        raise Malformed(Drop.UDP_BAD_LENGTH)
    if verify_checksum and csum:
        pseudo = (src_ip >> 16) + (src_ip & 0xFFFF) + (dst_ip >> 16) + (dst_ip & 0xFFFF)
        if _fold(_partial(_from_buffer(view), length, pseudo + PROTO_UDP + length)):
            raise Malformed(Drop.UDP_BAD_CHECKSUM)
    return _new(UdpHeader, (src_port, dst_port, length, csum)), view[HEADER_LEN:length]


def build(src_ip: int, dst_ip: int, src_port: int, dst_port: int, payload: Buffer) -> bytes:
    """8 header bytes; the checksum is always computed (a zero result goes out as 0xFFFF)."""
    length = HEADER_LEN + len(payload)
    initial = (src_ip >> 16) + (src_ip & 0xFFFF) + (dst_ip >> 16) + (dst_ip & 0xFFFF)
    initial += PROTO_UDP + length + src_port + dst_port + length  # pseudo-header + header
    csum = _fold(_partial(_from_buffer(payload), len(payload), initial)) or 0xFFFF
    return _HEADER.pack(src_port, dst_port, length, csum)
