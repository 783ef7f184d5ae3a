"""ICMP and UDP against scapy, both directions, plus every drop reason."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, UDP, IPerror, UDPerror
from scapy.packet import Raw

from netstack.drops import Drop
from netstack.wire import icmp, ipv4, udp
from netstack.wire.errors import Malformed
from tests.wire.reference import _checksum_py, dotted, ip, payloads, pseudo_header, u8, u16, u32

# scapy gives some types (timestamp, address mask, ...) up to 12 more fixed bytes of fields
scapy_bodies = st.binary(min_size=12, max_size=300)
SRC = ip("192.0.2.1")
DST = ip("192.0.2.2")


def _ip_payload(raw: bytes) -> tuple[ipv4.Ipv4Header, memoryview]:
    return ipv4.parse(memoryview(raw))


# -- ICMP ----------------------------------------------------------------------------------


@given(st.sampled_from([0, 8]), u16, u16, payloads)
def test_icmp_echo_parse_scapy_built(kind: int, ident: int, seq: int, data: bytes) -> None:
    raw = bytes(IP(src="192.0.2.1", dst="192.0.2.2") / ICMP(type=kind, id=ident, seq=seq) / data)
    _, payload = _ip_payload(raw)
    header, body = icmp.parse(payload)
    assert header == icmp.IcmpHeader(kind, 0, IP(raw)[ICMP].chksum, ident << 16 | seq)
    assert isinstance(body, memoryview) and bytes(body) == data


@given(u8, u8, u32, payloads)
def test_icmp_any_type_parse_scapy_built(kind: int, code: int, rest: int, data: bytes) -> None:
    raw = bytes(ICMP(type=kind, code=code) / data)
    raw = raw[:4] + rest.to_bytes(4, "big") + raw[8:]  # scapy's per-type fields -> one word
    pkt = ICMP(raw)
    pkt.chksum = None
    raw = bytes(pkt)[:4] + raw[4:]
    header, body = icmp.parse(memoryview(raw))
    assert header == icmp.IcmpHeader(kind, code, ICMP(raw).chksum, rest)
    assert bytes(body) == raw[8:]


@given(u8, u8, u32, scapy_bodies)
def test_icmp_build_scapy_dissects(kind: int, code: int, rest: int, data: bytes) -> None:
    header = icmp.build(kind, code, rest, data)
    assert len(header) == icmp.HEADER_LEN
    pkt = ICMP(header + data)
    assert (pkt.type, pkt.code) == (kind, code)
    assert bytes(pkt)[4:8] == rest.to_bytes(4, "big")
    if kind in (0, 8):
        assert (pkt.id, pkt.seq) == (rest >> 16, rest & 0xFFFF)
    assert _checksum_py(header, data) == 0
    redo = ICMP(header + data)
    redo.chksum = None
    assert ICMP(bytes(redo)).chksum == pkt.chksum == int.from_bytes(header[2:4], "big")


@given(u8, u8, u32, payloads)
def test_icmp_round_trip(kind: int, code: int, rest: int, data: bytes) -> None:
    header = icmp.build(kind, code, rest, memoryview(data))
    parsed, body = icmp.parse(memoryview(header + data))
    assert parsed._replace(checksum=0) == (kind, code, 0, rest)
    assert bytes(body) == data


def test_icmp_error_quoting_a_truncated_datagram() -> None:
    inner = IPerror(src="192.0.2.2", dst="192.0.2.1") / UDPerror(sport=5000, dport=53) / (b"q" * 40)
    quoted = bytes(inner)[:28]
    raw = bytes(IP(src="192.0.2.1", dst="192.0.2.2") / ICMP(type=3, code=3) / Raw(quoted))
    _, payload = _ip_payload(raw)
    header, body = icmp.parse(payload)
    assert (header.type, header.code) == (icmp.TYPE_DEST_UNREACHABLE, icmp.CODE_PORT_UNREACHABLE)
    inner_header, inner_payload = ipv4.parse(body, verify_checksum=False, allow_truncated=True)
    assert inner_header.total_length == 20 + 8 + 40 and inner_header.protocol == ipv4.PROTO_UDP
    assert bytes(inner_payload[:4]) == (5000).to_bytes(2, "big") + (53).to_bytes(2, "big")


def test_icmp_truncated_and_bad_checksum() -> None:
    for size in (0, 4, 7):
        with pytest.raises(Malformed) as info:
            icmp.parse(memoryview(bytes(ICMP())[:size]))
        assert info.value.reason is Drop.ICMP_TRUNCATED
    raw = bytearray(icmp.build(8, 0, 0x12340001, b"ping") + b"ping")
    raw[-1] ^= 0x20
    with pytest.raises(Malformed) as info:
        icmp.parse(memoryview(raw))
    assert info.value.reason is Drop.ICMP_BAD_CHECKSUM
    header, body = icmp.parse(memoryview(raw), verify_checksum=False)
    assert header.rest == 0x12340001 and bytes(body) == b"pinG"


def test_icmp_type_names() -> None:
    assert icmp.TYPE_NAMES[icmp.TYPE_ECHO_REPLY] == "echo_reply"
    assert icmp.TYPE_NAMES[icmp.TYPE_DEST_UNREACHABLE] == "destination_unreachable"
    assert icmp.TYPE_NAMES[icmp.TYPE_ECHO_REQUEST] == "echo_request"
    assert icmp.TYPE_NAMES[icmp.TYPE_TIME_EXCEEDED] == "time_exceeded"
    assert all(name.isidentifier() and name.islower() for name in icmp.TYPE_NAMES.values())


# -- UDP -----------------------------------------------------------------------------------


@given(u32, u32, u16, u16, payloads)
def test_udp_parse_scapy_built(src: int, dst: int, sport: int, dport: int, data: bytes) -> None:
    raw = bytes(IP(src=dotted(src), dst=dotted(dst)) / UDP(sport=sport, dport=dport) / Raw(data))
    header, payload = _ip_payload(raw)
    u, body = udp.parse(payload, header.src, header.dst)
    assert u == udp.UdpHeader(sport, dport, 8 + len(data), IP(raw)[UDP].chksum)
    assert u.checksum != 0
    assert isinstance(body, memoryview) and bytes(body) == data


@given(u32, u32, u16, u16, payloads)
def test_udp_build_scapy_dissects(src: int, dst: int, sport: int, dport: int, data: bytes) -> None:
    header = udp.build(src, dst, sport, dport, data)
    assert len(header) == udp.HEADER_LEN
    raw = ipv4.build(src, dst, ipv4.PROTO_UDP, 8 + len(data)) + header + data
    pkt = IP(raw)
    assert (pkt[UDP].sport, pkt[UDP].dport, pkt[UDP].len) == (sport, dport, 8 + len(data))
    assert bytes(pkt[UDP].payload) == data
    pkt[UDP].chksum = None
    assert IP(bytes(pkt))[UDP].chksum == int.from_bytes(header[6:8], "big")
    assert _checksum_py(pseudo_header(src, dst, 17, 8 + len(data)), header, data) in (0, 0xFFFF)


@given(u32, u32, u16, u16, payloads)
def test_udp_round_trip(src: int, dst: int, sport: int, dport: int, data: bytes) -> None:
    header = udp.build(src, dst, sport, dport, bytearray(data))
    parsed, body = udp.parse(memoryview(header + data), src, dst)
    assert parsed[:3] == (sport, dport, 8 + len(data))
    assert parsed.checksum == int.from_bytes(header[6:8], "big") != 0
    assert bytes(body) == data


def test_udp_zero_checksum_sent_as_ffff() -> None:
    # Choose the last payload word so that the computed checksum comes out 0.
    base = udp.build(SRC, DST, 1234, 5678, b"\x00\x00")
    fill = int.from_bytes(base[6:8], "big").to_bytes(2, "big")
    header = udp.build(SRC, DST, 1234, 5678, fill)
    assert header[6:8] == b"\xff\xff"
    raw = bytes(IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=1234, dport=5678) / fill)
    assert IP(raw)[UDP].chksum == 0xFFFF  # scapy agrees
    parsed, _ = udp.parse(memoryview(header + fill), SRC, DST)
    assert parsed.checksum == 0xFFFF


def test_udp_checksum_zero_means_not_computed() -> None:
    raw = bytes(IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=1, dport=2, chksum=0) / b"data")
    _, payload = _ip_payload(raw)
    corrupted = bytearray(payload)
    corrupted[-1] ^= 0xFF
    header, body = udp.parse(memoryview(corrupted), SRC, DST)
    assert header.checksum == 0 and bytes(body) == b"dat\x9e"


def test_udp_bad_checksum() -> None:
    raw = bytearray(udp.build(SRC, DST, 1, 2, b"data") + b"data")
    raw[-1] ^= 1
    with pytest.raises(Malformed) as info:
        udp.parse(memoryview(raw), SRC, DST)
    assert info.value.reason is Drop.UDP_BAD_CHECKSUM
    with pytest.raises(Malformed):  # the pseudo-header counts: wrong addresses fail too
        udp.parse(memoryview(udp.build(SRC, DST, 1, 2, b"")), SRC, DST + 1)
    header, _ = udp.parse(memoryview(raw), SRC, DST, verify_checksum=False)
    assert header.length == 12


def test_udp_lengths() -> None:
    good = udp.build(SRC, DST, 1, 2, b"abc") + b"abc"
    for size in (0, 1, 7):
        with pytest.raises(Malformed) as info:
            udp.parse(memoryview(good[:size]), SRC, DST)
        assert info.value.reason is Drop.UDP_TRUNCATED
    for length in (0, 7, 12, 0xFFFF):
        bad = good[:4] + length.to_bytes(2, "big") + good[6:]
        with pytest.raises(Malformed) as info:
            udp.parse(memoryview(bad), SRC, DST, verify_checksum=False)
        assert info.value.reason is Drop.UDP_BAD_LENGTH
    # IP payload longer than the UDP length: the extra bytes are not payload (nor checksummed).
    header, body = udp.parse(memoryview(good + b"trailer"), SRC, DST)
    assert header.length == 11 and bytes(body) == b"abc"
    # exactly the header
    header, body = udp.parse(memoryview(udp.build(SRC, DST, 1, 2, b"")), SRC, DST)
    assert header.length == 8 and len(body) == 0
