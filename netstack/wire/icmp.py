"""ICMP header (RFC 792): type, code, checksum and the 32-bit rest-of-header word."""

from __future__ import annotations

import struct
from typing import NamedTuple

from netstack.drops import Drop
from netstack.wire.checksum import Buffer, _fold, _from_buffer, _partial
from netstack.wire.errors import Malformed

HEADER_LEN = 8
TYPE_OFFSET = 0
CODE_OFFSET = 1
CHECKSUM_OFFSET = 2
REST_OFFSET = 4

TYPE_ECHO_REPLY = 0
TYPE_DEST_UNREACHABLE = 3
TYPE_SOURCE_QUENCH = 4
TYPE_REDIRECT = 5
TYPE_ECHO_REQUEST = 8
TYPE_TIME_EXCEEDED = 11
TYPE_PARAMETER_PROBLEM = 12

CODE_NET_UNREACHABLE = 0
CODE_HOST_UNREACHABLE = 1
CODE_PROTOCOL_UNREACHABLE = 2
CODE_PORT_UNREACHABLE = 3
CODE_FRAG_NEEDED = 4

# Bounded metric label values: anything not listed is reported by the engine as "other".
TYPE_NAMES: dict[int, str] = {
    0: "echo_reply",
    3: "destination_unreachable",
    4: "source_quench",
    5: "redirect",
    8: "echo_request",
    9: "router_advertisement",
    10: "router_solicitation",
    11: "time_exceeded",
    12: "parameter_problem",
    13: "timestamp_request",
    14: "timestamp_reply",
    17: "address_mask_request",
    18: "address_mask_reply",
}

_HEADER = struct.Struct("!BBHI")
assert _HEADER.size == HEADER_LEN


# NamedTuple's generated __new__ is a Python-level call; tuple.__new__ builds the same
# object for a fraction of the cost on the per-packet path (field count fixed by the code).
_new = tuple.__new__


class IcmpHeader(NamedTuple):
    type: int
    code: int
    checksum: int
    rest: int  # id << 16 | seq for echo; unused / next-hop MTU for errors


def parse(view: memoryview, verify_checksum: bool = True) -> tuple[IcmpHeader, memoryview]:
    """Header and the data after it; the checksum covers the whole message."""
    size = len(view)
    if size < HEADER_LEN:
        raise Malformed(Drop.ICMP_TRUNCATED)
    if verify_checksum and _fold(_partial(_from_buffer(view), size, 0)):
        raise Malformed(Drop.ICMP_BAD_CHECKSUM)
    return _new(IcmpHeader, _HEADER.unpack_from(view)), view[HEADER_LEN:]


def build(type: int, code: int, rest: int, payload: Buffer) -> bytes:
    """8 header bytes whose checksum covers them and `payload` (sent after them, unjoined)."""
    initial = ((type << 8) | code) + (rest >> 16) + (rest & 0xFFFF)
    csum = _fold(_partial(_from_buffer(payload), len(payload), initial))
    return _HEADER.pack(type, code, csum, rest)
