"""Ipv4Engine: packets in, packets out, fake clock. Fragmentation is checked against our own
reassembler and against scapy's `defragment` for the wire format."""

from __future__ import annotations

import dataclasses
import math
import random
import struct

import pytest

from netstack.counters import Counters
from netstack.drops import Drop
from netstack.proto.ipv4 import Ipv4Config, Ipv4Engine

OUR_IP = 0xC0000202  # 192.0.2.2/24
PEER_IP = 0xC0000201  # 192.0.2.1
GATEWAY = 0xC00002FE  # 192.0.2.254
SUBNET_BCAST = 0xC00002FF
BCAST = 0xFFFFFFFF
UDP, EXPERIMENTAL = 17, 253
SEED = 5


def inet_checksum(data: bytes) -> int:
    """RFC 1071, written out here so the tests do not trust the code under test."""
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def packet(
    data: bytes = b"hello",
    *,
    src: int = PEER_IP,
    dst: int = OUR_IP,
    protocol: int = UDP,
    ident: int = 0x4242,
    offset: int = 0,
    more: bool = False,
    version: int = 4,
    ihl: int = 5,
    total_length: int | None = None,
    bad_checksum: bool = False,
    pad: bytes = b"",
    options: bytes = b"",
) -> bytes:
    """An IPv4 packet as a peer would send it; knobs to break each field."""
    flags = (0x2000 if more else 0) | (offset // 8)
    ihl += len(options) // 4
    length = ihl * 4 + len(data) if total_length is None else total_length
    header = (
        struct.pack(
            "!BBHHHBBHII", version << 4 | ihl, 0, length, ident, flags, 64, protocol, 0, src, dst
        )
        + options
    )
    csum = inet_checksum(header) ^ (0x0101 if bad_checksum else 0)
    return header[:10] + struct.pack("!H", csum) + header[12:] + data + pad


def split(data: bytes, size: int, **kw) -> list[bytes]:
    return [
        packet(data[off : off + size], offset=off, more=off + size < len(data), **kw)
        for off in range(0, len(data), size)
    ]


class Harness:
    def __init__(self, address: int = OUR_IP, seed: int = SEED, **config: object) -> None:
        self.counters = Counters()
        self.sent: list[tuple[int, tuple, float]] = []
        base = Ipv4Config(address=address, prefix_len=24, gateway=GATEWAY)
        self.engine = Ipv4Engine(
            dataclasses.replace(base, **config),
            self.counters,
            lambda hop, pieces, now: self.sent.append((hop, pieces, now)),
            random.Random(seed),
        )
        self.delivered: list[tuple] = []
        self.errors: list[tuple[int, int, bytes, float]] = []
        self.engine.register(UDP, self._deliver)
        self.engine.icmp_error = lambda t, c, pkt, now: self.errors.append((t, c, bytes(pkt), now))

    def _deliver(self, header, payload: memoryview, whole: memoryview, now: float) -> None:
        self.delivered.append((header, bytes(payload), bytes(whole), now))

    def send(self, t: float, raw: bytes) -> None:
        """Receive one packet through a buffer that is scribbled over afterwards."""
        buf = bytearray(raw)
        self.engine.receive(memoryview(buf), t)
        buf[:] = b"\xee" * len(buf)

    def take(self) -> list[tuple[int, bytes]]:
        out = [(hop, b"".join(bytes(p) for p in pieces)) for hop, pieces, _ in self.sent]
        self.sent.clear()
        return out

    def drops(self) -> dict[Drop, int]:
        return dict(self.counters.drops)


# -- receive -----------------------------------------------------------------------------------
def test_delivers_payload_and_whole_packet_without_link_padding():
    h = Harness()
    raw = packet(b"payload!")
    h.send(1.5, raw + b"\x00" * 6)
    [(header, payload, whole, now)] = h.delivered
    assert (header.src, header.dst, header.protocol) == (PEER_IP, OUR_IP, UDP)
    assert payload == b"payload!"
    assert whole == raw
    assert now == 1.5
    assert h.counters.ipv4_rx == 1
    assert h.drops() == {}


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (packet()[:19], Drop.IPV4_TRUNCATED),
        (packet(version=6), Drop.IPV4_BAD_VERSION),
        (packet(ihl=4), Drop.IPV4_BAD_HEADER_LENGTH),
        (packet(b"", ihl=6), Drop.IPV4_TRUNCATED),  # 24-byte header claimed, 20 bytes there
        (packet(total_length=19), Drop.IPV4_BAD_TOTAL_LENGTH),
        (packet(b"abc", total_length=24), Drop.IPV4_BAD_TOTAL_LENGTH),
        (packet(bad_checksum=True), Drop.IPV4_BAD_CHECKSUM),
    ],
    ids=["truncated", "version", "ihl", "ihl-past-end", "short-total", "long-total", "checksum"],
)
def test_malformed_packets_are_counted_once(raw, reason):
    h = Harness()
    h.send(0.0, raw)
    assert h.delivered == []
    assert h.errors == []
    assert h.drops() == {reason: 1}


@pytest.mark.parametrize(
    "src",
    [
        BCAST,
        SUBNET_BCAST,
        0xE0000001,  # multicast
        0xF0000001,  # class E
        0x7F000001,  # loopback
        0x00000001,  # 0/8
        0,  # unspecified, to a unicast destination
        OUR_IP,  # our own address coming back from the wire
    ],
)
def test_martian_source_is_dropped(src):
    h = Harness()
    h.send(0.0, packet(src=src))
    assert h.delivered == []
    assert h.drops() == {Drop.IPV4_BAD_SOURCE: 1}


def test_unspecified_source_to_limited_broadcast_is_accepted():
    """DHCP/BOOTP clients send from 0.0.0.0 to 255.255.255.255."""
    h = Harness()
    h.send(0.0, packet(src=0, dst=BCAST))
    assert len(h.delivered) == 1


@pytest.mark.parametrize("dst", [OUR_IP, BCAST, SUBNET_BCAST])
def test_accepted_destinations(dst):
    h = Harness()
    h.send(0.0, packet(dst=dst))
    assert [d[0].dst for d in h.delivered] == [dst]


@pytest.mark.parametrize("dst", [0xC0000203, 0xC0000200, 0xE0000001, 0x0A000001])
def test_other_destinations_are_not_for_us(dst):
    h = Harness()
    h.send(0.0, packet(dst=dst))
    assert h.delivered == []
    assert h.drops() == {Drop.IPV4_NOT_FOR_US: 1}


def test_point_to_point_subnet_has_no_broadcast():
    h = Harness(prefix_len=31)
    assert not h.engine.is_broadcast(0xC0000203)
    h.send(0.0, packet(dst=0xC0000203))
    assert h.drops() == {Drop.IPV4_NOT_FOR_US: 1}
    assert h.engine.route(0xC0000203) == 0xC0000203


def test_unknown_protocol_reports_protocol_unreachable():
    h = Harness()
    raw = packet(protocol=EXPERIMENTAL)
    h.send(2.0, raw + b"\x00\x00")
    assert h.errors == [(3, 2, raw, 2.0)]
    assert h.drops() == {Drop.IPV4_UNKNOWN_PROTOCOL: 1}


def test_unknown_protocol_to_broadcast_is_dropped_silently():
    h = Harness()
    h.send(0.0, packet(protocol=EXPERIMENTAL, dst=BCAST))
    assert h.errors == []
    assert h.drops() == {Drop.IPV4_UNKNOWN_PROTOCOL: 1}


# -- reassembly through the engine -------------------------------------------------------------
DATA = bytes(random.Random(3).randbytes(4000))


def test_fragments_are_reassembled_out_of_order():
    h = Harness()
    frags = split(DATA, 1480)
    for f in (frags[2], frags[0], frags[1]):
        h.send(0.0, f)
    [(header, payload, whole, _)] = h.delivered
    assert payload == DATA
    assert header.total_length == len(whole) == 20 + len(DATA)
    assert not header.more_fragments and header.frag_offset == 0
    assert inet_checksum(whole[:20]) == 0
    assert (h.counters.ipv4_rx, h.counters.ipv4_fragments_rx) == (3, 3)
    assert h.counters.ipv4_reassembled == 1
    assert h.engine.next_deadline() is None


def test_reassembled_datagram_keeps_options_of_fragment_zero():
    h = Harness()
    options = b"\x94\x04\x00\x00"  # router alert
    frags = [packet(DATA[:1480], more=True, options=options), packet(DATA[1480:], offset=1480)]
    for f in reversed(frags):
        h.send(0.0, f)
    [(header, payload, whole, _)] = h.delivered
    assert payload == DATA
    assert header.header_len == 24 and whole[20:24] == options
    assert inet_checksum(whole[:24]) == 0


def test_options_are_skipped():
    h = Harness()
    h.send(0.0, packet(b"data", options=b"\x01\x01\x01\x00"))
    [(header, payload, whole, _)] = h.delivered
    assert (header.header_len, payload, len(whole)) == (24, b"data", 28)


def test_fragment_with_bad_address_never_reaches_reassembly():
    h = Harness()
    h.send(0.0, split(DATA, 1480, dst=0xC0000203)[0])
    assert h.counters.ipv4_fragments_rx == 0
    assert h.engine.next_deadline() is None


def test_reassembly_timeout_sends_time_exceeded_with_fragment_zero():
    h = Harness(reassembly_timeout=30.0)
    frags = split(DATA, 1480)
    h.send(0.0, frags[0])
    h.send(1.0, frags[2])
    assert h.engine.next_deadline() == 30.0
    h.engine.poll(29.0)
    assert h.errors == []
    h.engine.poll(30.0)
    assert h.errors == [(11, 1, frags[0], 30.0)]
    assert h.drops() == {Drop.IPV4_REASSEMBLY_TIMEOUT: 2}
    assert h.counters.ipv4_reassembly_failures == 1
    assert h.delivered == []


def test_reassembly_timeout_without_fragment_zero_sends_nothing():
    h = Harness(reassembly_timeout=30.0)
    h.send(0.0, split(DATA, 1480)[1])
    h.engine.poll(30.0)
    assert h.errors == []
    assert h.drops() == {Drop.IPV4_REASSEMBLY_TIMEOUT: 1}


def test_reassembly_timeout_of_broadcast_datagram_sends_nothing():
    h = Harness(reassembly_timeout=30.0)
    h.send(0.0, split(DATA, 1480, dst=BCAST)[0])
    h.engine.poll(30.0)
    assert h.errors == []
    assert h.drops() == {Drop.IPV4_REASSEMBLY_TIMEOUT: 1}


def test_engine_passes_reassembly_limits():
    h = Harness(reassembly_max_datagrams=1, reassembly_max_bytes=5000)
    h.send(0.0, split(DATA, 1480, ident=1)[0])
    h.send(0.0, split(DATA, 1480, ident=2)[0])
    assert h.drops() == {Drop.IPV4_REASSEMBLY_OVERFLOW: 1}
    h.send(0.0, split(bytes(6000), 1480, ident=2)[1])
    h.send(0.0, split(bytes(6000), 1480, ident=2)[2])
    h.send(0.0, split(bytes(6000), 1480, ident=2)[3])
    assert h.drops() == {Drop.IPV4_REASSEMBLY_OVERFLOW: 5}


# -- send --------------------------------------------------------------------------------------
def first_ident(seed: int = SEED) -> int:
    return random.Random(seed).getrandbits(16)


def test_send_unfragmented_exact_header():
    h = Harness()
    assert h.engine.send(
        PEER_IP, UDP, (b"abc", bytearray(b"def")), 1.0, tos=0x10, dont_fragment=True
    )
    [(hop, raw)] = h.take()
    assert hop == PEER_IP
    header = struct.pack(
        "!BBHHHBBHII", 0x45, 0x10, 26, first_ident(), 0x4000, 64, UDP, 0, OUR_IP, PEER_IP
    )
    header = header[:10] + struct.pack("!H", inet_checksum(header)) + header[12:]
    assert raw == header + b"abcdef"
    assert h.counters.ipv4_tx == 1 and h.counters.ipv4_fragments_tx == 0


def test_send_ttl_override():
    h = Harness(default_ttl=40)
    h.engine.send(PEER_IP, UDP, (b"x",), 0.0)
    h.engine.send(PEER_IP, UDP, (b"x",), 0.0, ttl=1)
    assert [raw[8] for _, raw in h.take()] == [40, 1]


def test_ident_starts_random_and_increments_with_wrap():
    a, b = Harness(seed=1), Harness(seed=2)
    a.engine._ident = 0xFFFE
    for _ in range(3):
        a.engine.send(PEER_IP, UDP, (b"x",), 0.0)
    assert [struct.unpack("!H", raw[4:6])[0] for _, raw in a.take()] == [0xFFFE, 0xFFFF, 0]
    b.engine.send(PEER_IP, UDP, (b"x",), 0.0)
    b.engine.send(PEER_IP, UDP, (b"x",), 0.0)
    idents = [struct.unpack("!H", raw[4:6])[0] for _, raw in b.take()]
    assert idents == [first_ident(2), (first_ident(2) + 1) & 0xFFFF]
    assert first_ident(1) != first_ident(2)


@pytest.mark.parametrize(
    ("dst", "next_hop"),
    [
        (PEER_IP, PEER_IP),
        (0xC0000277, 0xC0000277),  # on-link
        (0x0A010203, GATEWAY),  # off-link
        (0x08080808, GATEWAY),
        (BCAST, BCAST),
        (SUBNET_BCAST, BCAST),
        (0xE00000FB, 0xE00000FB),  # multicast stays link-local
    ],
)
def test_routing(dst, next_hop):
    h = Harness()
    assert h.engine.route(dst) == next_hop
    assert h.engine.send(dst, UDP, (b"x",), 0.0)
    [(hop, raw)] = h.take()
    assert hop == next_hop
    assert struct.unpack("!I", raw[16:20])[0] == dst  # the header keeps the real destination


@pytest.mark.parametrize("dst", [0x0A010203, 0, 0x7F000001])
def test_no_route(dst):
    h = Harness(gateway=None)
    assert h.engine.route(dst) is None
    assert not h.engine.send(dst, UDP, (b"x",), 0.0)
    assert h.take() == []
    assert h.drops() == {Drop.IPV4_NO_ROUTE: 1}
    assert h.counters.ipv4_tx == 0


@pytest.mark.parametrize("dst", [0, 0x7F000001])
def test_no_route_even_through_the_gateway(dst):
    h = Harness()
    assert h.engine.route(dst) is None
    assert not h.engine.send(dst, UDP, (b"x",), 0.0)
    assert h.drops() == {Drop.IPV4_NO_ROUTE: 1}


def test_dont_fragment_too_big_is_refused():
    h = Harness(mtu=1500)
    assert h.engine.send(PEER_IP, UDP, (bytes(1480),), 0.0, dont_fragment=True)
    assert not h.engine.send(PEER_IP, UDP, (bytes(1481),), 0.0, dont_fragment=True)
    assert len(h.take()) == 1
    assert h.drops() == {Drop.IPV4_FRAGMENTATION_NEEDED: 1}


def test_payload_beyond_one_datagram_is_refused():
    h = Harness()
    assert not h.engine.send(PEER_IP, UDP, (bytes(65000), bytes(516)), 0.0)
    assert h.take() == []
    assert h.drops() == {Drop.IPV4_TOO_BIG: 1}


def pieces_of(data: bytes) -> tuple:
    """The payload as a sender hands it over: a few buffers of different kinds and sizes."""
    a, b = min(7, len(data)), len(data) * 2 // 3
    return (data[:a], bytearray(data[a:b]), memoryview(data)[b:])


@pytest.mark.parametrize(
    ("size", "mtu"),
    [
        (1473, 1500),
        (1480, 1500),  # the largest that fits
        (1481, 1500),  # the smallest that does not
        (1488, 1500),
        (2960, 1500),
        (2961, 1500),
        (9000, 1500),
        (65507, 1500),
        (65515, 1500),  # the largest datagram
        (1473, 576),
        (65507, 576),
        (3000, 68),
        (8000, 1006),  # MTU - 20 not a multiple of 8
    ],
)
def test_fragmentation_round_trips(size, mtu):
    from scapy.layers.inet import IP, defragment

    data = bytes(random.Random(size).randbytes(size))
    pieces = pieces_of(data)
    tx = Harness(mtu=mtu)
    assert tx.engine.send(PEER_IP, EXPERIMENTAL, pieces, 0.0)
    step = (mtu - 20) // 8 * 8
    expected = 1 if size + 20 <= mtu else math.ceil(size / step)
    assert len(tx.sent) == expected
    assert tx.counters.ipv4_tx == expected
    assert tx.counters.ipv4_fragments_tx == (expected if expected > 1 else 0)
    if expected > 1:
        originals = {id(p.obj if isinstance(p, memoryview) else p) for p in pieces}
        for _, frag_pieces, _ in tx.sent:
            assert len(frag_pieces[0]) == 20
            for piece in frag_pieces[1:]:  # slices of the caller's buffers, never a join
                assert isinstance(piece, memoryview)
                assert id(piece.obj) in originals
    wire = [raw for _, raw in tx.take()]
    ident = first_ident()
    for i, raw in enumerate(wire):
        assert len(raw) <= mtu
        assert inet_checksum(raw[:20]) == 0
        flags = struct.unpack("!H", raw[6:8])[0]
        assert struct.unpack("!H", raw[4:6])[0] == ident
        assert bool(flags & 0x2000) == (i < len(wire) - 1)  # MF on all but the last
        assert (flags & 0x1FFF) * 8 == i * step  # offsets in 8-byte units

    rx = Harness(address=PEER_IP)
    rx.engine.register(EXPERIMENTAL, rx._deliver)
    for raw in reversed(wire):
        rx.send(0.0, raw)
    [(_, payload, _, _)] = rx.delivered
    assert payload == data
    assert rx.drops() == {}

    if expected > 1:
        [whole] = defragment([IP(raw) for raw in wire])  # more than one: scapy saw holes
        rebuilt = IP(bytes(whole[IP]))
        assert (rebuilt.len, rebuilt.frag, rebuilt.flags.MF) == (20 + size, 0, 0)
        assert bytes(rebuilt.payload) == data


@pytest.mark.parametrize(("field", "value"), [("mtu", 67), ("mtu", 65536), ("prefix_len", 33)])
def test_bad_configuration_is_refused(field, value):
    with pytest.raises(ValueError):
        Harness(**{field: value})
