"""Independent pure-Python references and shared strategies for the wire tests."""

from __future__ import annotations

import socket

from hypothesis import strategies as st

from netstack.wire.errors import Malformed

Buffer = bytes | bytearray | memoryview


def _checksum_py(*bufs: Buffer, initial: int = 0) -> int:
    """RFC 1071 the slow, obvious way: over the concatenation of bufs."""
    data = b"".join(bytes(buf) for buf in bufs)
    if len(data) % 2:
        data += b"\x00"
    total = initial + sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def pseudo_header(src: int, dst: int, protocol: int, length: int) -> bytes:
    """The 12-byte IPv4 pseudo-header, spelled out as bytes."""
    return (
        src.to_bytes(4, "big")
        + dst.to_bytes(4, "big")
        + bytes((0, protocol))
        + (length.to_bytes(2, "big"))
    )


def ip(text: str) -> int:
    return int.from_bytes(socket.inet_aton(text), "big")


def dotted(value: int) -> str:
    return socket.inet_ntoa(value.to_bytes(4, "big"))


def parse_or_malformed(parse, *args, **kwargs):
    """Run a parser; only Malformed may escape it. Returns the result or the exception."""
    try:
        return parse(*args, **kwargs)
    except Malformed as bad:
        return bad


u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
macs = st.binary(min_size=6, max_size=6)
payloads = st.binary(max_size=300)
