"""ARP for IPv4 over Ethernet (RFC 826): the only hardware/protocol pair the stack speaks."""

from __future__ import annotations

import struct
from typing import NamedTuple

from netstack.drops import Drop
from netstack.wire.errors import Malformed

HEADER_LEN = 28
OP_REQUEST = 1
OP_REPLY = 2

HTYPE_ETHERNET = 1
PTYPE_IPV4 = 0x0800
# htype, ptype, hlen, plen, oper, sha, spa, tha, tpa
FIXED_OFFSET = 0  # htype..plen, compared as one 6-byte string
OP_OFFSET = 6
SENDER_MAC_OFFSET = 8
SENDER_IP_OFFSET = 14
TARGET_MAC_OFFSET = 18
TARGET_IP_OFFSET = 24

_PACKET = struct.Struct("!6sH6sI6sI")
_FIXED = struct.pack("!HHBB", HTYPE_ETHERNET, PTYPE_IPV4, 6, 4)
assert _PACKET.size == HEADER_LEN


# NamedTuple's generated __new__ is a Python-level call; tuple.__new__ builds the same
# object for a fraction of the cost on the per-packet path (field count fixed by the code).
_new = tuple.__new__


class ArpPacket(NamedTuple):
    op: int
    sender_mac: bytes
    sender_ip: int
    target_mac: bytes
    target_ip: int


def parse(view: memoryview) -> ArpPacket:
    """Decode an Ethernet/IPv4 ARP packet; the opcode is left for the engine to judge."""
    if len(view) < HEADER_LEN:
        raise Malformed(Drop.ARP_TRUNCATED)
    fixed, op, sender_mac, sender_ip, target_mac, target_ip = _PACKET.unpack_from(view)
    if fixed != _FIXED:
        raise Malformed(Drop.ARP_UNSUPPORTED)
    return _new(ArpPacket, (op, sender_mac, sender_ip, target_mac, target_ip))


def build(op: int, sender_mac: bytes, sender_ip: int, target_mac: bytes, target_ip: int) -> bytes:
    """28 bytes; the caller pads the frame to the Ethernet minimum if its link needs it."""
    return _PACKET.pack(_FIXED, op, sender_mac, sender_ip, target_mac, target_ip)
