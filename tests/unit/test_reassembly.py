"""Reassembler: fragments in, datagrams out, on a fake clock (RFC 791 / 815 / 5722)."""

from __future__ import annotations

import itertools
import random
import struct

import pytest

from netstack.counters import Counters
from netstack.drops import Drop
from netstack.proto.reassembly import Reassembler
from netstack.wire import ipv4 as wipv4

SRC = 0xC0000201  # 192.0.2.1
DST = 0xC0000202  # 192.0.2.2
UDP = 17


def inet_checksum(data: bytes) -> int:
    """RFC 1071, written out here so the tests do not trust the code under test."""
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def fragment(
    data: bytes,
    offset: int,
    more: bool,
    *,
    ident: int = 0x1234,
    protocol: int = UDP,
    src: int = SRC,
    dst: int = DST,
    options: bytes = b"",
    df: bool = False,
) -> bytes:
    ihl = 5 + len(options) // 4
    flags = (0x4000 if df else 0) | (0x2000 if more else 0) | (offset // 8)
    header = (
        struct.pack(
            "!BBHHHBBHII",
            0x40 | ihl,
            0,
            ihl * 4 + len(data),
            ident,
            flags,
            64,
            protocol,
            0,
            src,
            dst,
        )
        + options
    )
    header = header[:10] + struct.pack("!H", inet_checksum(header)) + header[12:]
    return header + data


def split(data: bytes, size: int, **kw) -> list[bytes]:
    """The fragments a sender with `size`-byte fragment payloads would send, in order."""
    return [
        fragment(data[off : off + size], off, off + size < len(data), **kw)
        for off in range(0, len(data), size)
    ]


class Harness:
    def __init__(self, **kw) -> None:
        self.counters = Counters()
        self.r = Reassembler(self.counters, **kw)
        self.done: list[tuple[wipv4.Ipv4Header, bytes]] = []

    def add(self, t: float, frag: bytes):
        """Feed one fragment through a reused buffer, as the receive path does."""
        buf = bytearray(frag)
        header, payload = wipv4.parse(memoryview(buf))
        result = self.r.add(header, memoryview(buf), payload, t)
        buf[:] = b"\xee" * len(buf)  # the receive arena is reused after the call
        if result is not None:
            self.done.append((result[0], bytes(result[1])))
        return result

    def drops(self) -> dict[Drop, int]:
        return dict(self.counters.drops)


DATA = bytes(random.Random(1).randbytes(3000))


def assert_datagram(h: Harness, data: bytes = DATA, options: bytes = b"") -> None:
    assert len(h.done) == 1
    header, packet = h.done[0]
    hlen = 20 + len(options)
    assert packet[hlen:] == data
    assert packet[20:hlen] == options
    assert header.total_length == len(packet) == hlen + len(data)
    assert header.header_len == hlen
    assert not header.more_fragments and header.frag_offset == 0
    assert struct.unpack("!H", packet[2:4])[0] == len(packet)
    assert struct.unpack("!H", packet[6:8])[0] & 0x3FFF == 0  # MF clear, offset 0
    assert inet_checksum(packet[:hlen]) == 0
    assert h.counters.ipv4_reassembled == 1
    assert h.r.held_bytes == 0 and len(h.r) == 0


def test_in_order():
    h = Harness()
    frags = split(DATA, 1000)
    assert h.add(0.0, frags[0]) is None
    assert h.add(0.0, frags[1]) is None
    assert h.r.held_bytes == 2000
    assert h.add(0.0, frags[2]) is not None
    assert_datagram(h)
    assert h.drops() == {}


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
def test_any_order(order):
    h = Harness()
    frags = split(DATA, 800)
    for i in order:
        h.add(0.0, frags[i])
    assert_datagram(h)


def test_last_small_hole_must_be_filled():
    h = Harness()
    data = DATA[:24]
    assert h.add(0.0, fragment(data[:8], 0, True)) is None
    assert h.add(0.0, fragment(data[16:], 16, False)) is None
    assert h.done == [] and h.r.held_bytes == 16
    assert h.add(0.0, fragment(data[8:16], 8, True)) is not None
    assert_datagram(h, data)


def test_options_of_fragment_zero_are_kept_and_df_preserved():
    h = Harness()
    options = b"\x94\x04\x00\x00"  # router alert
    frags = split(DATA, 1480, options=options, df=True)
    for f in reversed(frags):
        h.add(0.0, f)
    assert_datagram(h, options=options)
    assert h.done[0][0].dont_fragment


def test_exact_duplicates_are_ignored_silently():
    h = Harness()
    frags = split(DATA, 1000)
    h.add(0.0, frags[1])
    h.add(0.0, frags[1])
    h.add(0.0, frags[0])
    h.add(0.0, frags[0])
    assert h.r.held_bytes == 2000
    h.add(0.0, frags[2])
    assert_datagram(h)
    assert h.drops() == {}
    assert h.counters.ipv4_reassembly_failures == 0


@pytest.mark.parametrize(
    ("offset", "size", "more"),
    [
        (992, 16, True),  # straddles the start of the held [1000, 2000)
        (1000, 8, True),  # same start, shorter
        (1000, 1008, True),  # same start, longer
        (1008, 8, True),  # inside
        (1992, 8, True),  # inside, at the end
        (0, 2008, True),  # covers it
        (1992, 16, True),  # straddles its end
    ],
)
def test_overlap_drops_whole_datagram_and_later_fragments(offset, size, more):
    h = Harness()
    frags = split(DATA, 1000)
    h.add(0.0, frags[1])  # holds [1000, 2000)
    h.add(0.0, frags[2])  # holds [2000, 3000), last
    assert h.add(1.0, fragment(DATA[offset : offset + size], offset, more)) is None
    assert h.drops() == {Drop.IPV4_FRAGMENT_OVERLAP: 3}
    assert h.counters.ipv4_reassembly_failures == 1
    assert h.r.held_bytes == 0 and len(h.r) == 0
    # the rest of that datagram is refused too, even a fragment that would have fitted
    assert h.add(2.0, frags[0]) is None
    assert h.drops() == {Drop.IPV4_FRAGMENT_OVERLAP: 4}
    assert h.done == []
    # another datagram is unaffected
    for f in split(DATA, 1000, ident=0x9999):
        h.add(2.0, f)
    assert len(h.done) == 1


def test_overlap_key_is_forgotten_after_timeout():
    h = Harness(timeout=30.0)
    frags = split(DATA, 1000)
    h.add(0.0, frags[0])
    h.add(5.0, fragment(DATA[8:16], 8, True))
    assert h.r.next_deadline() == 35.0
    h.r.poll(34.9)
    h.add(34.9, frags[1])
    assert h.drops() == {Drop.IPV4_FRAGMENT_OVERLAP: 3}
    h.r.poll(35.0)
    assert h.r.next_deadline() is None
    for f in frags:
        h.add(36.0, f)
    assert_datagram(h)


@pytest.mark.parametrize(
    "frag",
    [
        fragment(DATA[:1001], 0, True),  # more follow, but not a multiple of 8
        fragment(b"", 8, True),  # empty
        fragment(b"", 1000, False),  # empty last
        fragment(DATA[:1000], 65520 - 1000 + 8, False),  # ends beyond 65535 with its header
    ],
)
def test_bad_fragment_is_dropped_alone(frag):
    h = Harness()
    assert h.add(0.0, frag) is None
    assert h.drops() == {Drop.IPV4_BAD_FRAGMENT: 1}
    assert len(h.r) == 0 and h.r.held_bytes == 0


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (fragment(DATA[:16], 1000, False), fragment(DATA[:16], 2000, False)),  # two last ones
        (fragment(DATA[:16], 1000, False), fragment(DATA[:16], 1016, True)),  # past the end
        (fragment(DATA[:16], 1000, True), fragment(DATA[:16], 24, False)),  # end before data
    ],
)
def test_inconsistent_end_drops_whole_datagram(first, second):
    h = Harness()
    h.add(0.0, first)
    assert h.add(0.0, second) is None
    assert h.drops() == {Drop.IPV4_BAD_FRAGMENT: 2}
    assert h.counters.ipv4_reassembly_failures == 1
    assert len(h.r) == 0 and h.r.held_bytes == 0


def test_largest_datagram_reassembles():
    h = Harness()
    data = bytes(random.Random(2).randbytes(65515))
    for f in split(data, 8 * 1000):
        h.add(0.0, f)
    assert_datagram(h, data)
    assert len(h.done[0][1]) == 65535


def test_header_options_push_datagram_over_65535():
    h = Harness()
    data = bytes(65512)  # fits with a 20-byte header (per fragment), not with 24
    frags = split(data, 8 * 1000)
    first = fragment(data[:8000], 0, True, options=b"\x01\x01\x01\x01")
    for f in [first, *frags[1:]]:
        h.add(0.0, f)
    assert h.done == []
    assert h.drops() == {Drop.IPV4_BAD_FRAGMENT: len(frags)}
    assert len(h.r) == 0 and h.r.held_bytes == 0


def test_timeout_returns_fragment_zero_for_icmp():
    h = Harness(timeout=30.0)
    frags = split(DATA, 1000)
    h.add(0.0, frags[0])
    h.add(10.0, frags[2])
    assert h.r.next_deadline() == 30.0  # from the first fragment, not refreshed
    assert h.r.poll(29.9) == []
    assert h.r.poll(30.0) == [frags[0]]
    assert h.drops() == {Drop.IPV4_REASSEMBLY_TIMEOUT: 2}
    assert h.counters.ipv4_reassembly_failures == 1
    assert len(h.r) == 0 and h.r.held_bytes == 0
    assert h.r.next_deadline() is None


def test_timeout_without_fragment_zero_returns_nothing():
    h = Harness(timeout=30.0)
    frags = split(DATA, 1000)
    h.add(0.0, frags[1])
    assert h.r.poll(30.0) == []
    assert h.drops() == {Drop.IPV4_REASSEMBLY_TIMEOUT: 1}


def test_byte_limit_evicts_oldest_datagram():
    h = Harness(max_bytes=3500)
    a = split(DATA, 1000, ident=1)
    b = split(DATA, 1000, ident=2)
    h.add(0.0, a[0])
    h.add(0.0, a[1])
    h.add(1.0, b[0])
    assert h.drops() == {} and h.r.held_bytes == 3000
    h.add(1.0, b[1])  # 4000 > 3500: A, the oldest (2 fragments), goes
    assert h.drops() == {Drop.IPV4_REASSEMBLY_OVERFLOW: 2}
    assert h.r.held_bytes == 2000 and len(h.r) == 1
    h.add(1.0, b[2])
    assert len(h.done) == 1
    assert h.counters.ipv4_reassembly_failures == 1


def test_datagram_larger_than_byte_limit_is_dropped():
    h = Harness(max_bytes=2500)
    frags = split(DATA, 1000)
    h.add(0.0, frags[0])
    h.add(0.0, frags[1])
    h.add(0.0, frags[2])
    assert h.done == []
    assert h.drops() == {Drop.IPV4_REASSEMBLY_OVERFLOW: 3}
    assert len(h.r) == 0 and h.r.held_bytes == 0


def test_datagram_count_limit_evicts_oldest():
    h = Harness(max_datagrams=2)
    for ident in (1, 2, 3):
        h.add(float(ident), split(DATA, 1000, ident=ident)[0])
    assert len(h.r) == 2
    assert h.drops() == {Drop.IPV4_REASSEMBLY_OVERFLOW: 1}
    assert h.r.next_deadline() == 32.0  # datagram 1 is gone
    for f in split(DATA, 1000, ident=1)[1:]:
        h.add(4.0, f)
    assert h.done == []  # its fragment zero was thrown away


def test_key_includes_source_protocol_and_ident():
    h = Harness()
    frags = split(DATA, 1000)
    h.add(0.0, frags[0])
    h.add(0.0, split(DATA, 1000, src=0xC0000203)[1])
    h.add(0.0, split(DATA, 1000, protocol=6)[1])
    h.add(0.0, split(DATA, 1000, ident=7)[1])
    assert len(h.r) == 4 and h.done == []
    h.add(0.0, frags[1])
    h.add(0.0, frags[2])
    assert len(h.done) == 1


def test_remembered_overlap_keys_are_bounded():
    h = Harness(max_datagrams=1)
    for ident in (1, 2):
        h.add(0.0, split(DATA, 1000, ident=ident)[0])
        h.add(0.0, fragment(DATA[8:16], 8, True, ident=ident))
    # ident 1 was forgotten to make room for ident 2: its datagram can be received again
    for f in split(DATA, 1000, ident=1):
        h.add(1.0, f)
    assert len(h.done) == 1
    h.add(1.0, split(DATA, 1000, ident=2)[0])
    assert h.drops()[Drop.IPV4_FRAGMENT_OVERLAP] == 2 + 2 + 1
