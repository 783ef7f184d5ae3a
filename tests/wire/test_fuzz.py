"""Parsers raise nothing but Malformed, for random bytes and for damaged valid frames."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from netstack.wire import arp, ethernet, icmp, ipv4, tcp, udp
from netstack.wire.errors import Malformed
from netstack.wire.tcp import TcpOptions
from tests.wire.reference import macs, parse_or_malformed, payloads, u8, u16, u32

# NETSTACK_FUZZ_EXAMPLES raises the count for a longer run (e.g. 20000 before a release).
many = settings(max_examples=int(os.environ.get("NETSTACK_FUZZ_EXAMPLES", "600")), deadline=None)
junk = st.binary(max_size=120)


@many
@given(junk, u32, u32, st.booleans())
def test_random_bytes(data: bytes, src: int, dst: int, verify: bool) -> None:
    view = memoryview(data)
    for result in (
        parse_or_malformed(ethernet.parse, view),
        parse_or_malformed(arp.parse, view),
        parse_or_malformed(ipv4.parse, view, verify),
        parse_or_malformed(ipv4.parse, view, verify, allow_truncated=True),
        parse_or_malformed(icmp.parse, view, verify),
        parse_or_malformed(udp.parse, view, src, dst, verify),
        parse_or_malformed(tcp.parse, view, src, dst, verify),
    ):
        assert isinstance(result, (tuple, Malformed))


@many
@given(st.binary(max_size=40))
def test_random_tcp_options(data: bytes) -> None:
    result = parse_or_malformed(tcp.parse_options, memoryview(data), 0, len(data))
    assert isinstance(result, (TcpOptions, Malformed))
    # the same bytes behind a header, with the checksum skipped, reach the same verdict
    data += bytes(-len(data) % 4)
    raw = bytearray(tcp.build(1, 2, 3, 4, 5, 6, tcp.ACK, 7)) + data
    raw[12] = (20 + len(data)) << 2
    full = parse_or_malformed(tcp.parse, memoryview(raw), 1, 2, False)
    if isinstance(full, Malformed):
        assert isinstance(
            parse_or_malformed(tcp.parse_options, memoryview(data), 0, len(data)), Malformed
        )
    else:
        assert full[0].options == tcp.parse_options(memoryview(data), 0, len(data))


@st.composite
def valid_frames(draw: st.DrawFn) -> bytes:
    """A well-formed Ethernet frame: ARP, or IPv4 carrying ICMP, UDP or TCP (with options)."""
    src_mac, dst_mac = draw(macs), draw(macs)
    src, dst = draw(u32), draw(u32)
    kind = draw(st.sampled_from(["arp", "icmp", "udp", "tcp"]))
    if kind == "arp":
        return ethernet.build(dst_mac, src_mac, ethernet.ETHERTYPE_ARP) + arp.build(
            draw(u16), src_mac, src, dst_mac, dst
        )
    data = draw(payloads)
    if kind == "icmp":
        body, proto = icmp.build(draw(u8), draw(u8), draw(u32), data) + data, ipv4.PROTO_ICMP
    elif kind == "udp":
        body, proto = udp.build(src, dst, draw(u16), draw(u16), data) + data, ipv4.PROTO_UDP
    else:
        options = draw(
            st.none()
            | st.builds(
                TcpOptions,
                mss=st.none() | u16,
                window_scale=st.none() | u8,
                sack_permitted=st.booleans(),
                sack_blocks=st.lists(st.tuples(u32, u32), max_size=4).map(tuple),
                timestamp=st.none() | st.tuples(u32, u32),
            )
        )
        header = tcp.build(
            src,
            dst,
            draw(u16),
            draw(u16),
            draw(u32),
            draw(u32),
            draw(u8),
            draw(u16),
            data,
            options=options,
        )
        body, proto = header + data, ipv4.PROTO_TCP
    ip_header = ipv4.build(src, dst, proto, len(body), ident=draw(u16), ttl=draw(u8))
    frame = ethernet.build(dst_mac, src_mac, ethernet.ETHERTYPE_IPV4) + ip_header + body
    return frame + bytes(max(0, 60 - len(frame)))


def dissect(frame: memoryview, verify: bool) -> list[object]:
    """The receive path's parse chain, as deep as the frame allows."""
    eth, rest = ethernet.parse(frame)
    if eth.ethertype == ethernet.ETHERTYPE_ARP:
        return [eth, arp.parse(rest)]
    ip_header, payload = ipv4.parse(rest, verify)
    assert len(payload) == ip_header.total_length - ip_header.header_len <= len(rest)
    if ip_header.protocol == ipv4.PROTO_ICMP:
        inner = icmp.parse(payload, verify)
    elif ip_header.protocol == ipv4.PROTO_UDP:
        inner = udp.parse(payload, ip_header.src, ip_header.dst, verify)
        assert len(inner[1]) == inner[0].length - udp.HEADER_LEN
    elif ip_header.protocol == ipv4.PROTO_TCP:
        inner = tcp.parse(payload, ip_header.src, ip_header.dst, verify)
        assert len(inner[1]) == len(payload) - inner[0].header_len
    else:
        return [eth, ip_header]
    return [eth, ip_header, *inner]


@many
@given(valid_frames())
def test_valid_frames_parse(frame: bytes) -> None:
    assert len(dissect(memoryview(frame), True)) in (2, 4)


mutations = st.lists(
    st.tuples(st.sampled_from(["flip", "set", "cut"]), st.integers(0, 200), u8),
    min_size=1,
    max_size=4,
)


@many
@given(valid_frames(), mutations)
def test_damaged_frames(frame: bytes, changes: list[tuple[str, int, int]]) -> None:
    raw = bytearray(frame)
    for op, pos, value in changes:
        if not raw:
            break
        pos %= len(raw)
        if op == "flip":
            raw[pos] ^= 1 << (value & 7)
        elif op == "set":
            raw[pos] = value
        else:
            del raw[pos:]
    for verify in (True, False):
        result = parse_or_malformed(dissect, memoryview(raw), verify)
        assert isinstance(result, (list, Malformed))
