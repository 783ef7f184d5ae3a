"""IPv4 header against scapy, both directions, plus every drop reason."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import (
    IP,
    UDP,
    IPOption_MTU_Probe,
    IPOption_NOP,
    IPOption_Router_Alert,
    IPOption_RR,
    IPOption_Traceroute,
)
from scapy.layers.l2 import Ether
from scapy.packet import Padding, Raw

from netstack.drops import Drop
from netstack.wire import ethernet, ipv4, udp
from netstack.wire.errors import Malformed
from tests.wire.reference import _checksum_py, dotted, ip, payloads, u8, u16, u32

SRC = ip("192.0.2.1")
DST = ip("192.0.2.2")

fields = st.fixed_dictionaries(
    {
        "tos": u8,
        "ident": u16,
        "dont_fragment": st.booleans(),
        "more_fragments": st.booleans(),
        "frag_offset": st.integers(0, 0x1FFF).map(lambda units: units * 8),
        "ttl": u8,
    }
)


def scapy_ip(src: int, dst: int, proto: int, f: dict, **extra: object) -> IP:
    flags = (2 if f["dont_fragment"] else 0) | (1 if f["more_fragments"] else 0)
    return IP(
        src=dotted(src),
        dst=dotted(dst),
        proto=proto,
        tos=f["tos"],
        id=f["ident"],
        flags=flags,
        frag=f["frag_offset"] // 8,
        ttl=f["ttl"],
        **extra,
    )


@given(u32, u32, u8, fields, payloads)
def test_parse_scapy_built(src: int, dst: int, proto: int, f: dict, data: bytes) -> None:
    raw = bytes(scapy_ip(src, dst, proto, f) / Raw(data))
    header, payload = ipv4.parse(memoryview(raw))
    expected = ipv4.Ipv4Header(
        header_len=20,
        total_length=20 + len(data),
        protocol=proto,
        src=src,
        dst=dst,
        checksum=IP(raw).chksum,
        **f,
    )
    assert header == expected
    assert isinstance(payload, memoryview) and bytes(payload) == data


@given(u32, u32, u8, fields, payloads)
def test_build_scapy_dissects(src: int, dst: int, proto: int, f: dict, data: bytes) -> None:
    header = ipv4.build(src, dst, proto, len(data), **f)
    assert len(header) == ipv4.MIN_HEADER_LEN
    pkt = IP(header + data)
    assert (pkt.version, pkt.ihl, pkt.len, pkt.proto) == (4, 5, 20 + len(data), proto)
    assert (pkt.src, pkt.dst, pkt.tos, pkt.id, pkt.ttl) == (
        dotted(src),
        dotted(dst),
        f["tos"],
        f["ident"],
        f["ttl"],
    )
    assert f["dont_fragment"] == pkt.flags.DF and f["more_fragments"] == pkt.flags.MF
    assert not pkt.flags.evil
    assert pkt.frag * 8 == f["frag_offset"]
    rebuilt = IP(header)
    rebuilt.chksum = None
    assert IP(bytes(rebuilt)).chksum == pkt.chksum
    assert _checksum_py(header) == 0


@given(u32, u32, u8, fields, st.integers(0, 0xFFFF - 20))
def test_build_parse_round_trip(src: int, dst: int, proto: int, f: dict, size: int) -> None:
    raw = ipv4.build(src, dst, proto, size, **f)
    header, payload = ipv4.parse(memoryview(raw + bytes(size)))
    assert header._replace(checksum=0) == ipv4.Ipv4Header(
        header_len=20, total_length=20 + size, protocol=proto, src=src, dst=dst, checksum=0, **f
    )
    assert header.checksum == int.from_bytes(raw[10:12], "big")
    assert len(payload) == size


OPTIONS = [
    pytest.param([IPOption_RR(routers=["198.51.100.1", "198.51.100.2"])], id="record-route"),
    pytest.param([IPOption_Router_Alert()], id="router-alert"),
    pytest.param([IPOption_NOP()] * 4, id="nops"),
    pytest.param([IPOption_MTU_Probe(), IPOption_Traceroute()], id="mtu-probe+traceroute"),
    pytest.param([IPOption_RR(routers=["198.51.100.9"] * 9)], id="40-bytes"),
]


@pytest.mark.parametrize("options", OPTIONS)
def test_options_are_skipped(options: list) -> None:
    pkt = IP(src="192.0.2.1", dst="192.0.2.2", options=options) / UDP(sport=7, dport=9) / b"hi"
    raw = bytes(pkt)
    scapy_ihl = IP(raw).ihl
    assert scapy_ihl > 5
    header, payload = ipv4.parse(memoryview(raw))
    assert header.header_len == scapy_ihl * 4
    assert header.checksum == IP(raw).chksum
    assert bytes(payload) == bytes(pkt[UDP])
    u, data = udp.parse(payload, header.src, header.dst)
    assert (u.src_port, u.dst_port, bytes(data)) == (7, 9, b"hi")


@pytest.mark.parametrize("data", [b"", b"x", b"0123456789" * 2])
def test_ethernet_padding_trimmed(data: bytes) -> None:
    ether = Ether(dst="02:00:00:00:00:01", src="02:00:00:00:00:02")
    raw = bytes(ether / IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=1000, dport=2000) / data)
    pad = bytes(range(1, 1 + max(0, 60 - len(raw))))  # the pad a NIC adds to short frames
    frame = raw + pad
    assert Ether(frame)[IP].len == 28 + len(data)
    if pad:
        assert bytes(Ether(frame)[Padding]) == pad  # scapy agrees on what is padding
    eth, packet = ethernet.parse(memoryview(frame))
    assert eth.ethertype == ethernet.ETHERTYPE_IPV4
    assert len(packet) == len(frame) - 14
    header, payload = ipv4.parse(packet)
    assert header.total_length == 28 + len(data)
    assert bytes(payload) == raw[34:]  # UDP header + data, pad gone
    _, body = udp.parse(payload, header.src, header.dst)  # checksum would fail with the pad in
    assert bytes(body) == data


def _header(**changes: int) -> bytearray:
    """A valid header + 4 payload bytes, with raw byte fields changed (checksum refreshed)."""
    raw = bytearray(ipv4.build(SRC, DST, ipv4.PROTO_UDP, 4) + b"abcd")
    for offset, value in changes.items():
        raw[int(offset[1:])] = value
    raw[10:12] = b"\x00\x00"
    hlen = min((raw[0] & 0x0F) * 4, len(raw))
    raw[10:12] = _checksum_py(raw[:hlen]).to_bytes(2, "big")
    return raw


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", Drop.IPV4_TRUNCATED),
        (bytes(_header())[:19], Drop.IPV4_TRUNCATED),
        (_header(b0=0x46)[:23], Drop.IPV4_TRUNCATED),  # IHL 6 = 24 bytes > 23 present
        (_header(b0=0x48), Drop.IPV4_TRUNCATED),  # IHL 8 = 32 bytes > 24 present
        (_header(b0=0x65), Drop.IPV4_BAD_VERSION),
        (_header(b0=0x05), Drop.IPV4_BAD_VERSION),
        (_header(b0=0x44), Drop.IPV4_BAD_HEADER_LENGTH),
        (_header(b0=0x40), Drop.IPV4_BAD_HEADER_LENGTH),
        (_header(b2=0, b3=19), Drop.IPV4_BAD_TOTAL_LENGTH),
        (_header(b2=0, b3=25), Drop.IPV4_BAD_TOTAL_LENGTH),
        (_header(b2=0xFF, b3=0xFF), Drop.IPV4_BAD_TOTAL_LENGTH),
    ],
)
def test_drop_reasons(raw: bytes, reason: Drop) -> None:
    with pytest.raises(Malformed) as info:
        ipv4.parse(memoryview(raw))
    assert info.value.reason is reason


def test_header_exactly_fills_packet() -> None:
    header, payload = ipv4.parse(memoryview(_header(b0=0x46)))  # IHL 6, 24 bytes present
    assert header.header_len == 24 and len(payload) == 0


def test_bad_checksum() -> None:
    raw = _header()
    raw[8] ^= 1  # TTL changed, checksum not refreshed
    with pytest.raises(Malformed) as info:
        ipv4.parse(memoryview(raw))
    assert info.value.reason is Drop.IPV4_BAD_CHECKSUM
    header, _ = ipv4.parse(memoryview(raw), verify_checksum=False)
    assert header.ttl == 65


def test_checksum_covers_options() -> None:
    raw = bytearray(bytes(IP(src="192.0.2.1", dst="192.0.2.2", options=[IPOption_Router_Alert()])))
    raw[22] ^= 0x10
    with pytest.raises(Malformed) as info:
        ipv4.parse(memoryview(raw))
    assert info.value.reason is Drop.IPV4_BAD_CHECKSUM


def test_allow_truncated_for_quoted_datagrams() -> None:
    full = ipv4.build(SRC, DST, ipv4.PROTO_UDP, 100) + bytes(100)
    quoted = memoryview(full)[:28]  # what an ICMP error carries: header + 8 bytes
    with pytest.raises(Malformed):
        ipv4.parse(quoted)
    header, payload = ipv4.parse(quoted, allow_truncated=True)
    assert header.total_length == 120 and len(payload) == 8
    with pytest.raises(Malformed) as info:
        ipv4.parse(quoted[:19], allow_truncated=True)
    assert info.value.reason is Drop.IPV4_TRUNCATED


def test_payload_is_a_view() -> None:
    arena = bytearray(ipv4.build(SRC, DST, 17, 4) + b"abcd")
    _, payload = ipv4.parse(memoryview(arena))
    arena[-1] = ord("Z")
    assert bytes(payload) == b"abcZ"


def test_address_strings() -> None:
    assert ipv4.ip_from_str("192.0.2.1") == 0xC0000201
    assert ipv4.ip_to_str(0xC0000201) == "192.0.2.1"
    assert ipv4.ip_to_str(ipv4.BROADCAST_ALL) == "255.255.255.255"
    for bad in [
        "",
        "192.0.2",
        "192.0.2.256",
        "192.0.2.1 junk",
        " 192.0.2.1",
        "127.1",
        "::1",
        "192.0.2.1\x00",
        "0x7f.0.0.1",
    ]:
        with pytest.raises(ValueError):
            ipv4.ip_from_str(bad)


@given(u32)
def test_address_string_round_trip(value: int) -> None:
    assert ipv4.ip_from_str(ipv4.ip_to_str(value)) == value
    assert ipv4.ip_to_str(value) == dotted(value)
