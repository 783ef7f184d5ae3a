"""The shared reassembly engine and fragmenter: what both families get from them.

The per-family behaviour is pinned by test_reassembly.py (IPv4), test_ipv4.py and
test_host_ipv6.py (IPv6), unchanged by the merge of the two copies; this file covers what the
merge added: the per-fragment charge against max_bytes, the IPv6 Payload Length check at the
rebuild (a crash before), and the fragmenter on its own.
"""

from __future__ import annotations

import random
import tracemalloc

import pytest
from scapy.layers import inet6 as s6
from scapy.layers.l2 import Ether

from netstack.counters import Counters
from netstack.drops import Drop
from netstack.proto.fragment import fragments
from netstack.proto.reassembly import FRAGMENT_OVERHEAD, Reassembler
from netstack.proto.reassembly6 import Reassembler6
from netstack.wire import ipv4 as wipv4
from tests.unit import test_host_ipv6 as h6
from tests.unit.test_reassembly import fragment

SRC6, DST6 = b"\x20\x01\x0d\xb8" + bytes(11) + b"\x01", b"\x20\x01\x0d\xb8" + bytes(11) + b"\x02"
NO_EXT = memoryview(bytes(40))  # an IPv6 header with nothing before the Fragment header


def add4(r: Reassembler, frag: bytes, now: float = 0.0):
    header, payload = wipv4.parse(memoryview(frag))
    return r.add(header, memoryview(frag), payload, now)


def test_fragment_overhead_counts_against_max_bytes():
    r = Reassembler(Counters(), max_bytes=10 * (8 + FRAGMENT_OVERHEAD), max_datagrams=4)
    # ten 8-byte fragments with holes between them fill the limit exactly
    for i in range(10):
        add4(r, fragment(bytes(8), 16 * i, True))
    assert r.held_bytes == 80 and r.charged_bytes == 10 * (8 + FRAGMENT_OVERHEAD)
    assert r.counters.drops == {}
    add4(r, fragment(bytes(8), 160, True))  # the eleventh does not fit: the datagram goes
    assert r.counters.drops == {Drop.IPV4_REASSEMBLY_OVERFLOW: 11}
    assert r.held_bytes == 0 and r.charged_bytes == 0 and len(r) == 0


def test_memory_held_by_tiny_fragments_stays_near_max_bytes():
    """The round-1 finding: charged by data alone, 8-byte fragments held ~15x max_bytes."""
    max_bytes = 256 * 1024
    r = Reassembler6(Counters(), max_bytes=max_bytes, max_datagrams=64)
    frags = [
        (ident, offset)
        for ident in range(64)
        for offset in range(8, 65000, 16)  # never fragment zero, never adjacent
    ][: 4 * max_bytes // 8]
    data = memoryview(bytes(8))
    packet = memoryview(bytes(48))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for ident, offset in frags:
            r.add((SRC6, DST6, ident), offset, True, data, NO_EXT, 17, packet, 0.0)
        held = tracemalloc.get_traced_memory()[1] - before  # the peak
    finally:
        tracemalloc.stop()
    assert r.charged_bytes <= max_bytes
    assert r.counters.drops[Drop.IPV6_REASSEMBLY_OVERFLOW] > 0  # the limit was reached
    assert held <= 1.5 * max_bytes, f"{held} bytes held for a {max_bytes} limit"


def test_v6_header_part_of_fragment_zero_over_65535_is_a_drop_not_a_crash():
    """Payload Length = fragment zero's extension headers + data: the fragments that set the
    end had none, fragment zero brings 8 bytes of them: 65543 > 65535. The copy this engine
    replaced raised OverflowError here."""
    c = Counters()
    r = Reassembler6(c)
    key = (SRC6, DST6, 1)
    packet = memoryview(bytes(64))
    assert r.add(key, 65528, False, memoryview(bytes(7)), NO_EXT, 58, packet, 0.0) is None
    assert r.add(key, 8, True, memoryview(bytes(65520)), NO_EXT, 58, packet, 0.0) is None
    hop_by_hop = bytearray(48)  # IPv6 header naming hop-by-hop, then an empty one
    assert (
        r.add(key, 0, True, memoryview(bytes(8)), memoryview(hop_by_hop), 58, packet, 0.0) is None
    )
    assert c.drops == {Drop.IPV6_BAD_FRAGMENT: 3}
    assert c.ipv6_reassembly_failures == 1 and c.ipv6_reassembled == 0
    assert len(r) == 0 and r.held_bytes == 0 and r.charged_bytes == 0


def test_v6_oversized_datagram_through_the_host_is_counted():
    host = h6.ready_host()
    pkt = s6.IPv6(src=h6.PEER_LL_S, dst=h6.OUR_LL_S)
    body = s6.ICMPv6EchoRequest(id=1, seq=1, data=bytes(65535 - 8))
    whole = bytes(body)
    assert len(whole) == 65535
    sent = []
    # the rest first, without extension headers: 8 .. 65535, ending the datagram
    for off in range(8, len(whole), 1232):
        chunk = whole[off : off + 1232]
        more = off + len(chunk) < len(whole)
        sent.append(pkt / s6.IPv6ExtHdrFragment(id=77, offset=off // 8, m=int(more), nh=58) / chunk)
    # then fragment zero behind a hop-by-hop header: 8 + 65535 would need a Payload Length
    # of 65543
    sent.append(
        pkt
        / s6.IPv6ExtHdrHopByHop()
        / s6.IPv6ExtHdrFragment(id=77, offset=0, m=1, nh=58)
        / whole[:8]
    )
    for p in sent:
        assert h6.feed(host, Ether(src=h6.PEER_MAC_S, dst=h6.OUR_MAC_S) / p, 2.0) == []
    c = host.counters
    assert c.drops[Drop.IPV6_BAD_FRAGMENT] == len(sent), dict(c.drops)
    assert c.ipv6_reassembly_failures == 1 and c.ipv6_reassembled == 0


@pytest.mark.parametrize("sizes", [(100,), (3000,), (1, 7, 2000, 13), (1480, 1480, 40)])
@pytest.mark.parametrize("room", [8, 15, 1480, 1232])
def test_fragmenter_slices_in_8_byte_steps_without_joining(sizes, room):
    rng = random.Random(sum(sizes) + room)
    bufs = tuple(rng.randbytes(n) for n in sizes)
    length = sum(sizes)
    heads = []

    def header(offset: int, size: int, more: bool) -> tuple[bytes]:
        heads.append((offset, size, more))
        return (b"H",)

    out = list(fragments((bufs[0], *map(memoryview, bufs[1:])), length, room, header))
    step = room & ~7
    assert [s for _, s, _ in heads] == [min(step, length - o) for o in range(0, length, step)]
    assert all(o % 8 == 0 for o, _, _ in heads)
    assert [m for _, _, m in heads] == [True] * (len(heads) - 1) + [False]
    joined = b"".join(bytes(p) for frag in out for p in frag[1:])
    assert joined == b"".join(bufs)
    for frag in out:
        assert frag[0] == b"H"
        assert all(isinstance(p, memoryview) for p in frag[1:])  # slices, never a copy


def test_fragmenter_refuses_no_room():
    with pytest.raises(ValueError):
        list(fragments((b"x" * 20,), 20, 7, lambda o, s, m: ()))
