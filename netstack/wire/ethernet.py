"""Ethernet II header: parse a received frame into header + payload view, build a header."""

from __future__ import annotations

import re
import struct
from typing import NamedTuple

from netstack.drops import Drop
from netstack.wire.errors import Malformed

HEADER_LEN = 14
DST_OFFSET = 0
SRC_OFFSET = 6
ETHERTYPE_OFFSET = 12

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_ARP = 0x0806
BROADCAST = b"\xff" * 6

_HEADER = struct.Struct("!6s6sH")  # dst, src, ethertype
assert _HEADER.size == HEADER_LEN and ETHERTYPE_OFFSET == 2 * 6

_MAC_RE = re.compile(r"[0-9A-Fa-f]{1,2}(?:([:-])[0-9A-Fa-f]{1,2})(?:\1[0-9A-Fa-f]{1,2}){4}")


# NamedTuple's generated __new__ is a Python-level call; tuple.__new__ builds the same
# object for a fraction of the cost on the per-packet path (field count fixed by the code).
_new = tuple.__new__


class EthernetHeader(NamedTuple):
    dst: bytes
    src: bytes
    ethertype: int


def parse(frame: memoryview) -> tuple[EthernetHeader, memoryview]:
    """Split a frame into its header and a view of the payload (any trailing padding kept:
    the IPv4 parser trims it by total_length)."""
    if len(frame) < HEADER_LEN:
        raise Malformed(Drop.ETH_TRUNCATED)
    return _new(EthernetHeader, _HEADER.unpack_from(frame)), frame[HEADER_LEN:]


def build(dst: bytes, src: bytes, ethertype: int) -> bytes:
    """14 header bytes, to sit in front of the payload in the frame's iovec list."""
    return _HEADER.pack(dst, src, ethertype)


def is_multicast(mac: bytes) -> bool:
    """Group bit set (multicast or broadcast): never a valid source address."""
    return bool(mac[0] & 1)


def mac_to_str(mac: bytes) -> str:
    return mac.hex(":")


def mac_from_str(text: str) -> bytes:
    """'02:00:00:00:00:01' (or '-' separated) -> 6 bytes; ValueError for anything else."""
    if not isinstance(text, str) or not _MAC_RE.fullmatch(text):
        raise ValueError(f"expected a MAC address like 02:00:00:00:00:01, got {text!r}")
    return bytes(int(part, 16) for part in re.split(r"[:-]", text))
