"""IPv6 fragment reassembly (RFC 8200 §4.5): the shared engine of reassembly.py, IPv6 hooks.

Keyed by (src, dst, identification) (§4.5: the Fragment header's next header is not part of
the key). Overlaps drop the whole datagram (RFC 5722); the default timeout is §4.5's 60 s.
The unfragmentable part (IPv6 header and the extension headers before the Fragment header) is
taken from fragment zero; the result is a whole packet with no Fragment header. Atomic
fragments (RFC 6946) and the RFC 7112 chain check never get here: the IPv6 engine handles them
before reassembly.
"""

from __future__ import annotations

from netstack.drops import Drop
from netstack.proto.reassembly import MAX_DATAGRAM, Datagram, Family, Reassembly

MAX_PAYLOAD = MAX_DATAGRAM  # the Payload Length field
QUOTE_LEN = 1232  # what an ICMPv6 error may quote: 1280 - 40 - 8
Key = tuple[bytes, bytes, int]
Ipv6Whole = tuple[bytes, int]  # (whole packet, offset of its upper-layer part)


def _rebuild6(dg: Datagram) -> Ipv6Whole | None:
    """The unfragmentable part with its last Next Header naming what the Fragment header
    did, and the Payload Length of the whole; None if that is over 65535 (fragment zero's
    headers are longer than those of the fragment that set the end)."""
    assert dg.head is not None and dg.total is not None
    unfrag = bytearray(dg.head)
    payload_length = len(unfrag) - 40 + dg.total
    if payload_length > MAX_PAYLOAD:
        return None
    next_header, _quote = dg.meta
    unfrag[_last_next_header_field(unfrag)] = next_header
    unfrag[4:6] = payload_length.to_bytes(2, "big")
    base = len(unfrag)
    out = bytearray(base + dg.total)
    out[:base] = unfrag
    dg.join(out, base)
    return bytes(out), base


def _quote6(dg: Datagram) -> bytes:
    return dg.meta[1]


IPV6: Family[Ipv6Whole] = Family(
    bad=Drop.IPV6_BAD_FRAGMENT,
    overlap=Drop.IPV6_FRAGMENT_OVERLAP,
    overflow=Drop.IPV6_REASSEMBLY_OVERFLOW,
    timeout=Drop.IPV6_REASSEMBLY_TIMEOUT,
    reassembled="ipv6_reassembled",
    failures="ipv6_reassembly_failures",
    rebuild=_rebuild6,
    quote=_quote6,
)


class Reassembler6(Reassembly[Ipv6Whole]):
    """IPv6: datagrams keyed by (src, dst, identification); 60 s (§4.5)."""

    family = IPV6
    default_timeout = 60.0

    def add(
        self,
        key: Key,
        offset: int,
        more: bool,
        data: memoryview,
        unfragmentable: memoryview,
        next_header: int,
        packet: memoryview,
        now: float,
    ) -> Ipv6Whole | None:
        """File one fragment's data; returns (whole packet, offset of its upper-layer part
        = len(unfragmentable)) when complete. Nothing passed in is kept: copies are taken."""
        zero = None
        if offset == 0:
            zero = (bytes(unfragmentable), (next_header, bytes(packet[:QUOTE_LEN])))
        head_len = len(unfragmentable) - 40  # what counts in Payload Length besides the data
        return self.file(key, offset, more, data, head_len, zero, now)


def _last_next_header_field(unfrag: bytearray) -> int:
    """Offset of the Next Header field naming the Fragment header (validated already by the
    walk that found it: every header here is a whole hop-by-hop/destination/routing one)."""
    at = 6
    i = 40
    while i < len(unfrag):
        at = i
        i += (unfrag[i + 1] + 1) * 8
    return at
