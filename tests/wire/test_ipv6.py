"""IPv6 and ICMPv6/ND wire formats, cross-checked against scapy both ways, and fuzzed."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers import inet6 as s6
from scapy.packet import Raw

from netstack.drops import Drop
from netstack.wire import icmpv6 as wicmp6
from netstack.wire import ipv6 as wipv6
from netstack.wire.errors import Malformed

SRC = wipv6.from_str("fe80::1")
DST = wipv6.from_str("2001:db8::2")


def test_header_parse_matches_scapy() -> None:
    pkt = bytes(s6.IPv6(src="fe80::1", dst="2001:db8::2", hlim=7, tc=3, fl=0x12345) / Raw(b"x" * 9))
    header, payload = wipv6.parse(memoryview(pkt + b"pad"))
    assert header == (3, 0x12345, 9, 59, 7, SRC, DST)
    assert bytes(payload) == b"x" * 9


def test_header_build_parsed_by_scapy() -> None:
    raw = wipv6.build(SRC, DST, wipv6.UDP, 8, hop_limit=9, traffic_class=2, flow_label=5)
    pkt = s6.IPv6(raw + bytes(8))
    assert (pkt.src, pkt.dst, pkt.nh, pkt.hlim, pkt.tc, pkt.fl, pkt.plen) == (
        "fe80::1", "2001:db8::2", 17, 9, 2, 5, 8,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x60" + bytes(30), Drop.IPV6_TRUNCATED),
        (b"\x40" + bytes(39) + b"x", Drop.IPV6_BAD_VERSION),
        (wipv6.build(SRC, DST, 59, 0), Drop.IPV6_BAD_LENGTH),
        (wipv6.build(SRC, DST, 59, 10) + bytes(9), Drop.IPV6_TRUNCATED),
    ],
)
def test_header_drops(data: bytes, reason: Drop) -> None:
    with pytest.raises(Malformed) as info:
        wipv6.parse(memoryview(data))
    assert info.value.reason is reason


def _walk(layers, **kw) -> wipv6.Chain:
    pkt = s6.IPv6(src="fe80::1", dst="2001:db8::2") / layers
    raw = bytes(pkt)
    header, payload = wipv6.parse(memoryview(raw))
    return wipv6.walk(payload, header.next_header, **kw)


def test_walk_chain_to_upper_layer() -> None:
    chain = _walk(
        s6.IPv6ExtHdrHopByHop(options=[s6.RouterAlert()])
        / s6.IPv6ExtHdrDestOpt(options=[s6.PadN(optdata=b"\0" * 4)])
        / s6.IPv6ExtHdrRouting(type=2, segleft=0, addresses=["::1"])  # type 2, no segments
        / s6.ICMPv6EchoRequest()
    )
    assert chain.upper == wipv6.ICMPV6 and chain.fragment is None
    assert chain.offset == 8 + 8 + 24


def test_walk_stops_after_fragment_header() -> None:
    chain = _walk(s6.IPv6ExtHdrFragment(id=0xABCDEF, offset=3, m=1, nh=17) / Raw(b"z" * 8))
    assert chain.upper == 17 and chain.offset == 8
    assert chain.fragment == (0, 17, 24, True, 0xABCDEF)


def test_build_fragment_parsed_by_scapy() -> None:
    raw = wipv6.build_fragment(17, 1448, True, 77)
    frag = s6.IPv6ExtHdrFragment(raw)
    assert (frag.nh, frag.offset * 8, frag.m, frag.id) == (17, 1448, 1, 77)


@pytest.mark.parametrize(
    ("layers", "reason", "code", "pointer"),
    [
        (s6.IPv6ExtHdrRouting(type=0, segleft=1, addresses=["::1"]), Drop.IPV6_ROUTING_TYPE0,
         None, None),
        (s6.IPv6ExtHdrRouting(type=4, segleft=1, addresses=["::1"]),
         Drop.IPV6_ROUTING_UNSUPPORTED, 0, 42),
        (s6.IPv6ExtHdrDestOpt() / s6.IPv6ExtHdrHopByHop(), Drop.IPV6_HOP_BY_HOP_NOT_FIRST, 1, 40),
        (s6.IPv6ExtHdrDestOpt(options=[s6.HBHOptUnknown(otype=0x41, optdata=b"ab")]),
         Drop.IPV6_UNKNOWN_OPTION, None, None),
        (s6.IPv6ExtHdrDestOpt(options=[s6.HBHOptUnknown(otype=0x81, optdata=b"ab")]),
         Drop.IPV6_UNKNOWN_OPTION, 2, 42),
        (s6.IPv6ExtHdrDestOpt(options=[s6.HBHOptUnknown(otype=0xC1, optdata=b"ab")]),
         Drop.IPV6_UNKNOWN_OPTION, 2, 42),
        (s6.IPv6ExtHdrDestOpt(nh=59), Drop.IPV6_NO_NEXT_HEADER, None, None),
    ],
)  # fmt: skip
def test_walk_drops(layers, reason: Drop, code: int | None, pointer: int | None) -> None:
    with pytest.raises(Malformed) as info:
        _walk(layers)
    assert info.value.reason is reason
    if code is None:
        assert not isinstance(info.value, wipv6.ParamProblem)
    else:
        assert isinstance(info.value, wipv6.ParamProblem)
        assert (info.value.code, info.value.pointer) == (code, pointer)


def test_unknown_option_11_silent_for_multicast() -> None:
    opt = s6.IPv6ExtHdrDestOpt(options=[s6.HBHOptUnknown(otype=0xC1, optdata=b"ab")])
    with pytest.raises(Malformed) as info:
        _walk(opt, dst_multicast=True)
    assert not isinstance(info.value, wipv6.ParamProblem)


def test_unknown_option_00_skipped() -> None:
    opt = s6.IPv6ExtHdrDestOpt(options=[s6.HBHOptUnknown(otype=0x01 | 0x1E, optdata=b"ab")])
    assert _walk(opt / s6.UDP()).upper == wipv6.UDP


def test_chain_that_never_ends_is_dropped() -> None:
    # Destination options headers chained on and on: a bounded walk, one reason.
    payload = b"".join(bytes((60, 0)) + bytes(6) for _ in range(50))
    with pytest.raises(Malformed) as info:
        wipv6.walk(memoryview(payload), 60)
    assert info.value.reason is Drop.IPV6_CHAIN_TOO_LONG


# -- ICMPv6 --------------------------------------------------------------------------------
def test_echo_checksum_both_ways() -> None:
    msg = wicmp6.header(SRC, DST, wicmp6.TYPE_ECHO_REQUEST, 0, (5 << 16) | 9, b"hello")
    pkt = s6.IPv6(src="fe80::1", dst="2001:db8::2") / s6.ICMPv6EchoRequest(msg + b"hello")
    ref = s6.IPv6(bytes(s6.IPv6(src="fe80::1", dst="2001:db8::2") / s6.ICMPv6EchoRequest(
        id=5, seq=9, data=b"hello")))  # fmt: skip
    assert bytes(ref)[40:] == msg + b"hello"
    header, body = wicmp6.parse(memoryview(bytes(pkt)[40:]), SRC, DST)
    assert header.type == 128 and wicmp6.word(body) == (5 << 16) | 9


def test_bad_checksum_dropped() -> None:
    raw = bytearray(bytes(s6.ICMPv6EchoRequest(id=1, cksum=0x1234)))
    with pytest.raises(Malformed) as info:
        wicmp6.parse(memoryview(bytes(raw)), SRC, DST)
    assert info.value.reason is Drop.ICMPV6_BAD_CHECKSUM


def _icmp_body(scapy_layer) -> tuple[int, memoryview]:
    raw = bytes(s6.IPv6(src="fe80::1", dst="2001:db8::2") / scapy_layer)[40:]
    header, body = wicmp6.parse(memoryview(raw), SRC, DST)
    return header.type, body


def test_parse_ns_na_from_scapy() -> None:
    t, body = _icmp_body(s6.ICMPv6ND_NS(tgt="2001:db8::9") / s6.ICMPv6NDOptSrcLLAddr(
        lladdr="02:00:00:00:00:07"))  # fmt: skip
    ns = wicmp6.parse_nd(t, body)
    assert ns.target == wipv6.from_str("2001:db8::9")
    assert ns.source_lla == bytes.fromhex("020000000007")
    t, body = _icmp_body(s6.ICMPv6ND_NA(tgt="2001:db8::9", R=0, S=1, O=1) / s6.ICMPv6NDOptDstLLAddr(
        lladdr="02:00:00:00:00:08"))  # fmt: skip
    na = wicmp6.parse_nd(t, body)
    assert (na.router, na.solicited, na.override) == (False, True, True)
    assert na.target_lla == bytes.fromhex("020000000008")


def test_parse_ra_from_scapy() -> None:
    ra = (
        s6.ICMPv6ND_RA(
            chlim=64, M=0, O=1, routerlifetime=1800, reachabletime=30000, retranstimer=1000
        )
        / s6.ICMPv6NDOptSrcLLAddr(lladdr="02:00:00:00:00:01")
        / s6.ICMPv6NDOptMTU(mtu=1400)
        / s6.ICMPv6NDOptPrefixInfo(prefix="2001:db8:1::", prefixlen=64, L=1, A=1,
                                   validlifetime=86400, preferredlifetime=14400)
    )  # fmt: skip
    msg = wicmp6.parse_nd(*_icmp_body(ra))
    assert (msg.cur_hop_limit, msg.router_lifetime, msg.reachable_time, msg.retrans_timer) == (
        64, 1800, 30000, 1000,
    )  # fmt: skip
    assert msg.flags == wicmp6.RA_OTHER and msg.mtu == 1400
    assert msg.source_lla == bytes.fromhex("020000000001")
    assert msg.prefixes == (
        wicmp6.PrefixInfo(wipv6.from_str("2001:db8:1::"), 64, True, True, 86400, 14400),
    )


def test_build_nd_parsed_by_scapy() -> None:
    na = wicmp6.NdMessage(
        type=wicmp6.TYPE_NEIGHBOR_ADVERT, target=DST,
        flags=wicmp6.NA_SOLICITED | wicmp6.NA_OVERRIDE, target_lla=bytes.fromhex("02aabbccdd01"),
    )  # fmt: skip
    raw = wicmp6.build_nd(DST, SRC, na)
    pkt = s6.IPv6(wipv6.build(DST, SRC, 58, len(raw), 255) + raw)
    assert pkt[s6.ICMPv6ND_NA].S == 1 and pkt[s6.ICMPv6ND_NA].O == 1 and pkt[s6.ICMPv6ND_NA].R == 0
    assert pkt[s6.ICMPv6ND_NA].tgt == "2001:db8::2"
    assert pkt[s6.ICMPv6NDOptDstLLAddr].lladdr == "02:aa:bb:cc:dd:01"
    # scapy recomputes the checksum: equal to ours
    assert bytes(pkt.__class__(bytes(pkt)))[40:] == raw
    rs = wicmp6.build_nd(SRC, wipv6.ALL_ROUTERS, wicmp6.NdMessage(
        type=wicmp6.TYPE_ROUTER_SOLICIT, source_lla=bytes.fromhex("02aabbccdd01")))  # fmt: skip
    pkt = s6.IPv6(wipv6.build(SRC, wipv6.ALL_ROUTERS, 58, len(rs), 255) + rs)
    ref = s6.IPv6(src="fe80::1", dst="ff02::2", hlim=255) / s6.ICMPv6ND_RS() / (
        s6.ICMPv6NDOptSrcLLAddr(lladdr="02:aa:bb:cc:dd:01"))  # fmt: skip
    assert bytes(ref)[40:] == rs and pkt.haslayer(s6.ICMPv6ND_RS)


def test_mldv2_report_matches_scapy() -> None:
    group = wipv6.from_str("ff02::1:ff00:2")
    body = wicmp6.mldv2_report_body([group])
    raw = wicmp6.build(SRC, wipv6.ALL_MLDV2_ROUTERS, wicmp6.TYPE_MLDV2_REPORT, 0, body)
    ref = s6.ICMPv6MLReport2(records=[s6.ICMPv6MLDMultAddrRec(rtype=4, dst="ff02::1:ff00:2")])
    ref_raw = bytes(s6.IPv6(src="fe80::1", dst="ff02::16") / ref)[40:]
    assert raw == ref_raw


@pytest.mark.parametrize(
    "body",
    [
        bytes(19),  # NS shorter than its fixed part
        bytes(20) + b"\x01\x00" + bytes(6),  # an option of length 0
        bytes(20) + b"\x01\x02" + bytes(6),  # an option overrunning the message
        bytes(20) + b"\x01\x02" + bytes(14),  # a 16-byte link-layer address option
    ],
)
def test_nd_malformed(body: bytes) -> None:
    with pytest.raises(Malformed):
        wicmp6.parse_nd(wicmp6.TYPE_NEIGHBOR_SOLICIT, memoryview(body))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.sampled_from([0, 43, 44, 60, 59, 58]))
def test_walk_fuzz_only_malformed(data: bytes, nh: int) -> None:
    try:
        chain = wipv6.walk(memoryview(data), nh)
    except Malformed as bad:
        assert isinstance(bad.reason, Drop)
        return
    assert 0 <= chain.offset <= len(data)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(wicmp6.ND_FIXED)), st.binary(max_size=120))
def test_nd_fuzz_only_malformed(icmp_type: int, data: bytes) -> None:
    try:
        wicmp6.parse_nd(icmp_type, memoryview(data))
    except Malformed as bad:
        assert bad.reason.layer == "nd"
