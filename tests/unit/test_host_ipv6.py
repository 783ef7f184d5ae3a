"""The host's IPv6 side, pure: ND, DAD, SLAAC, echo, fragments, errors (scapy builds the peer)."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers import inet6 as s6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from netstack.counters import Counters
from netstack.drops import Drop
from netstack.proto.addr6 import LINK_LOCAL_PREFIX, AddrState, stable_iid
from netstack.proto.host import Host, HostConfig
from netstack.proto.nd import NudState
from netstack.proto.tcp.config import TcpConfig
from netstack.proto.v6 import Ipv6HostConfig
from netstack.wire import ipv4 as wipv4
from netstack.wire import ipv6 as wipv6

OUR_MAC = bytes.fromhex("02aabbccdd01")
PEER_MAC = bytes.fromhex("02aabbccdd02")
OUR_MAC_S = "02:aa:bb:cc:dd:01"
PEER_MAC_S = "02:aa:bb:cc:dd:02"
SECRET = b"test secret"
OUR_LL = LINK_LOCAL_PREFIX[:8] + stable_iid(LINK_LOCAL_PREFIX, "tap0", SECRET)
OUR_LL_S = wipv6.to_str(OUR_LL)
PEER_LL_S = "fe80::2"
STATIC_S = "2001:db8::2"


def make_host(static: bool = True, mtu: int = 1500, tcp: TcpConfig | None = None) -> Host:
    v6 = Ipv6HostConfig(
        interface="tap0",
        secret=SECRET,
        static=((wipv6.from_str(STATIC_S), 64),) if static else (),
    )
    config = HostConfig(
        mac=OUR_MAC, address=wipv4.ip_from_str("192.0.2.2"), prefix_len=24, mtu=mtu, ipv6=v6
    )
    if tcp is not None:
        config.tcp = tcp
    return Host(config, Counters(), random.Random(7))


def frames(host: Host) -> list[Ether]:
    out = [Ether(b"".join(bytes(p) for p in f)) for f in host.tx]
    host.tx.clear()
    return out


def feed(host: Host, pkt, now: float = 0.0) -> list[Ether]:
    host.receive_batch([memoryview(bytes(pkt))], now)
    return frames(host)


def ready_host(static: bool = True, tcp: TcpConfig | None = None) -> Host:
    """Started, DAD done for every address, the peer's MAC learnt from its NS."""
    host = make_host(static, tcp=tcp)
    host.start(0.0)
    host.poll(0.0)
    host.poll(1.5)
    frames(host)
    for entry in host.v6.addresses:
        assert entry.state is AddrState.PREFERRED, entry
    feed(
        host,
        peer(OUR_LL_S, "ff02::1:ff" + OUR_LL_S[-7:], hlim=255)
        / s6.ICMPv6ND_NS(tgt=OUR_LL_S)
        / s6.ICMPv6NDOptSrcLLAddr(lladdr=PEER_MAC_S),
        1.5,
    )
    return host


def peer(dst: str, ip_dst: str | None = None, src: str = PEER_LL_S, hlim: int = 64, eth=None):
    ip_dst = ip_dst or dst
    if eth is None:
        eth = (
            "33:33:" + ":".join(wipv6.from_str(ip_dst)[12:].hex(":").split(":"))
            if (ip_dst.startswith("ff"))
            else OUR_MAC_S
        )
    return Ether(src=PEER_MAC_S, dst=eth) / s6.IPv6(src=src, dst=ip_dst, hlim=hlim)


def test_start_runs_dad_with_mld_then_solicits_a_router() -> None:
    host = make_host()
    host.start(0.0)
    host.poll(0.0)
    out = frames(host)
    ns = [f for f in out if f.haslayer(s6.ICMPv6ND_NS)]
    assert {f[s6.ICMPv6ND_NS].tgt for f in ns} == {OUR_LL_S, STATIC_S}
    for f in ns:  # DAD: from ::, to the solicited-node group, no link-layer option, hop 255
        assert f[s6.IPv6].src == "::" and f[s6.IPv6].hlim == 255
        assert f[s6.IPv6].dst.startswith("ff02::1:ff") and f.dst.startswith("33:33:ff")
        assert not f.haslayer(s6.ICMPv6NDOptSrcLLAddr)
    reports = [f for f in out if f.haslayer(s6.ICMPv6MLReport2)]
    assert reports and all(f[s6.IPv6].hlim == 1 and f[s6.IPv6].dst == "ff02::16" for f in reports)
    assert reports[0].haslayer(s6.IPv6ExtHdrHopByHop)
    assert host.v6.addresses.find(OUR_LL).state is AddrState.TENTATIVE
    groups = sorted(r[s6.ICMPv6MLDMultAddrRec].dst for r in reports)
    host.poll(1.0)  # the reports again within the Unsolicited Report Interval (RFC 3810 6.1)
    assert host.v6.addresses.find(OUR_LL).state is AddrState.PREFERRED
    out = frames(host)
    again = sorted(
        f.getlayer(s6.ICMPv6MLDMultAddrRec, nb=i + 1).dst
        for f in out
        if f.haslayer(s6.ICMPv6MLReport2)
        for i in range(f[s6.ICMPv6MLReport2].records_number)
    )
    assert again == groups and len(groups) == 2
    rs = [f for f in out if f.haslayer(s6.ICMPv6ND_RS)]
    assert len(rs) == 1 and rs[0][s6.IPv6].src == OUR_LL_S and rs[0][s6.IPv6].dst == "ff02::2"
    assert rs[0][s6.ICMPv6NDOptSrcLLAddr].lladdr == OUR_MAC_S


def test_neighbor_solicitation_answered_and_echo() -> None:
    host = make_host()
    host.start(0.0)
    host.poll(0.0)
    host.poll(1.0)
    frames(host)
    out = feed(
        host,
        peer(STATIC_S, "ff02::1:ff00:2", src="2001:db8::1", hlim=255)
        / s6.ICMPv6ND_NS(tgt=STATIC_S)
        / s6.ICMPv6NDOptSrcLLAddr(lladdr=PEER_MAC_S),
        2.0,
    )
    assert len(out) == 1 and out[0].dst == PEER_MAC_S
    na = out[0][s6.ICMPv6ND_NA]
    assert (na.S, na.O, na.R, na.tgt) == (1, 1, 0, STATIC_S)
    assert out[0][s6.ICMPv6NDOptDstLLAddr].lladdr == OUR_MAC_S and out[0][s6.IPv6].hlim == 255
    # learnt STALE from the NS's option, then used for the NA: DELAY (RFC 4861 7.3.3)
    assert host.v6.nd.state(wipv6.from_str("2001:db8::1")) is NudState.DELAY
    out = feed(
        host, peer(STATIC_S, src="2001:db8::1") / s6.ICMPv6EchoRequest(id=7, seq=1, data=b"hi"), 2.0
    )
    assert len(out) == 1
    rep = out[0]
    assert rep[s6.IPv6].src == STATIC_S and rep[s6.IPv6].dst == "2001:db8::1"
    assert (rep[s6.ICMPv6EchoReply].id, rep[s6.ICMPv6EchoReply].seq) == (7, 1)
    assert rep[s6.ICMPv6EchoReply].data == b"hi"
    # scapy agrees with our checksum
    raw = bytes(rep)
    rep.getlayer(s6.ICMPv6EchoReply).cksum = None
    assert bytes(Ether(bytes(rep))) == raw
    assert host.v6.nd.state(wipv6.from_str("2001:db8::1")) is NudState.DELAY
    host.poll(7.1)  # DELAY -> PROBE: a unicast NS to the cached MAC
    probe = [f for f in frames(host) if f.haslayer(s6.ICMPv6ND_NS)]
    assert probe[0].dst == PEER_MAC_S and probe[0][s6.IPv6].dst == "2001:db8::1"


def test_nd_validation_drops() -> None:
    host = ready_host()
    c = host.counters
    feed(host, peer(STATIC_S, hlim=254) / s6.ICMPv6ND_NS(tgt=STATIC_S))
    assert c.drops[Drop.ND_BAD_HOP_LIMIT] == 1
    feed(host, peer(STATIC_S, hlim=255) / s6.ICMPv6ND_NS(tgt="2001:db8::99"))
    assert c.drops[Drop.ND_NOT_FOR_US] == 1
    feed(host, peer(STATIC_S, hlim=255) / s6.ICMPv6ND_NS(tgt=STATIC_S, code=1))
    assert c.drops[Drop.ND_BAD_CODE] == 1
    bad_opt = peer(STATIC_S, hlim=255) / s6.ICMPv6ND_NS(tgt=STATIC_S) / Raw(b"\x01\x00" + bytes(6))
    assert feed(host, bad_opt) == [] and c.drops[Drop.ND_BAD_OPTION] == 1
    feed(host, peer(STATIC_S, hlim=255) / s6.ICMPv6ND_Redirect(tgt="fe80::9", dst="2001:db8::9"))
    assert c.drops[Drop.ND_REDIRECT_IGNORED] == 1
    feed(host, peer(STATIC_S, hlim=255) / s6.ICMPv6ND_RS())
    assert c.drops[Drop.ND_NOT_ROUTER] == 1
    ra = peer("ff02::1", src="2001:db8::1", hlim=255) / s6.ICMPv6ND_RA(routerlifetime=1800)
    feed(host, ra)
    assert c.drops[Drop.ND_BAD_SOURCE] == 1 and host.v6.nd.routers == []


def test_dad_conflict_marks_duplicate_and_retries_with_next_counter() -> None:
    host = make_host(static=False)
    host.start(0.0)
    host.poll(0.0)
    frames(host)
    group = "ff02::1:ff" + OUR_LL_S[-7:]
    feed(host, peer(OUR_LL_S, group, src="::", hlim=255) / s6.ICMPv6ND_NS(tgt=OUR_LL_S), 0.5)
    assert host.counters.nd_dad_conflicts == 1
    assert host.v6.addresses.find(OUR_LL).state is AddrState.DUPLICATE
    retry = [e for e in host.v6.addresses if e.state is AddrState.TENTATIVE]
    assert len(retry) == 1 and retry[0].dad_counter == 1
    assert retry[0].address == LINK_LOCAL_PREFIX[:8] + stable_iid(
        LINK_LOCAL_PREFIX, "tap0", SECRET, 1
    )


def test_router_advertisement_slaac_and_withdrawal() -> None:
    host = ready_host(static=False)
    ra = (
        peer("ff02::1", hlim=255)
        / s6.ICMPv6ND_RA(chlim=42, routerlifetime=1800, reachabletime=20000, retranstimer=500)
        / s6.ICMPv6NDOptSrcLLAddr(lladdr=PEER_MAC_S)
        / s6.ICMPv6NDOptMTU(mtu=1400)
        / s6.ICMPv6NDOptPrefixInfo(
            prefix="2001:db8:1::",
            prefixlen=64,
            L=1,
            A=1,
            validlifetime=86400,
            preferredlifetime=14400,
        )
    )
    feed(host, ra, 2.0)
    v6 = host.v6
    assert v6.ipv6.config.hop_limit == 42 and v6.ipv6.config.mtu == 1400
    assert v6.nd.reachable_time == 20.0 and v6.nd.retrans_timer == 0.5
    assert v6.nd.default_router() == wipv6.from_str(PEER_LL_S)
    slaac = [e for e in v6.addresses if e.address[:8] == wipv6.from_str("2001:db8:1::")[:8]]
    assert len(slaac) == 1 and slaac[0].state is AddrState.TENTATIVE
    assert slaac[0].address[8:] == stable_iid(wipv6.from_str("2001:db8:1::"), "tap0", SECRET)
    host.poll(2.0)
    host.poll(2.6)
    assert slaac[0].state is AddrState.PREFERRED
    frames(host)
    # the kernel side pings the new address from off-link: the reply goes via the router
    out = feed(
        host,
        peer(str(wipv6.to_str(slaac[0].address)), src="2001:db8:5::1")
        / s6.ICMPv6EchoRequest(id=1, seq=1),
        3.0,
    )
    assert out[0].dst == PEER_MAC_S and out[0][s6.IPv6].dst == "2001:db8:5::1"
    # withdraw: preferred lifetime 0 deprecates it
    ra[s6.ICMPv6NDOptPrefixInfo].preferredlifetime = 0
    feed(host, ra, 4.0)
    assert slaac[0].state is AddrState.DEPRECATED


def test_ra_flood_is_bounded() -> None:
    host = ready_host(static=False)
    for i in range(40):
        ra = (
            peer("ff02::1", src=f"fe80::{i + 10:x}", hlim=255)
            / s6.ICMPv6ND_RA(routerlifetime=1800)
            / s6.ICMPv6NDOptPrefixInfo(prefix=f"2001:db8:{i + 100:x}::", prefixlen=64, L=1, A=1)
        )
        feed(host, ra, 2.0)
    nd = host.v6.nd
    assert len(nd.routers) == nd.config.max_routers
    assert len(nd.prefixes) == nd.config.max_prefixes
    assert len(host.v6.addresses) <= 16
    assert host.counters.drops[Drop.ND_ROUTER_LIST_FULL] > 0


def test_fragmented_echo_both_ways_and_overlap() -> None:
    host = ready_host()
    data = bytes(range(256)) * 16  # 4096 bytes
    pkt = (
        s6.IPv6(src=PEER_LL_S, dst=OUR_LL_S)
        / s6.IPv6ExtHdrFragment()
        / s6.ICMPv6EchoRequest(id=3, seq=4, data=data)
    )
    out = []
    for frag in s6.fragment6(pkt, 1280):
        out += feed(host, Ether(src=PEER_MAC_S, dst=OUR_MAC_S) / frag, 2.0)
    assert host.counters.ipv6_reassembled == 1
    assert len(out) == 3 and all(len(bytes(f)) <= 1514 for f in out)
    whole = s6.IPv6(bytes(s6.defragment6([f[s6.IPv6] for f in out])))
    assert whole[s6.ICMPv6EchoReply].data == data
    # Overlap (RFC 5722): the whole datagram is dropped.
    frags = s6.fragment6(pkt, 1280)
    second = frags[1].copy()
    second[s6.IPv6ExtHdrFragment].offset -= 1
    for f in (frags[0], second, frags[1], frags[2]):
        assert feed(host, Ether(src=PEER_MAC_S, dst=OUR_MAC_S) / f, 3.0) == []
    assert host.counters.drops[Drop.IPV6_FRAGMENT_OVERLAP] >= 2


def test_atomic_fragment_and_incomplete_chain() -> None:
    host = ready_host()
    atomic = peer(OUR_LL_S) / s6.IPv6ExtHdrFragment(id=5, m=0, offset=0) / s6.ICMPv6EchoRequest()
    out = feed(host, atomic, 2.0)
    assert out and out[0].haslayer(s6.ICMPv6EchoReply)  # RFC 6946: no reassembly
    # RFC 7112: a first fragment that stops inside the header chain
    head = (
        peer(OUR_LL_S)
        / s6.IPv6ExtHdrFragment(id=6, m=1, offset=0, nh=60)
        / Raw(bytes((58, 1)) + bytes(6))
    )
    out = feed(host, head, 2.0)
    assert host.counters.drops[Drop.IPV6_FRAGMENT_CHAIN_INCOMPLETE] == 1
    assert out and out[0][s6.ICMPv6ParamProblem].code == 3


def test_packet_too_big_lowers_the_path_mtu() -> None:
    host = ready_host()
    echo = peer(OUR_LL_S) / s6.ICMPv6EchoRequest(data=b"x" * 1400)
    out = feed(host, echo, 2.0)
    assert len(out) == 1 and len(bytes(out[0])) == 14 + 40 + 8 + 1400
    ptb = peer(OUR_LL_S) / s6.ICMPv6PacketTooBig(mtu=1280) / bytes(out[0][s6.IPv6])[:1180]
    feed(host, ptb, 2.0)
    out = feed(host, echo, 2.0)
    assert len(out) == 2 and out[0].haslayer(s6.IPv6ExtHdrFragment)
    assert max(len(bytes(f)) for f in out) <= 14 + 1280
    feed(host, peer(OUR_LL_S) / s6.ICMPv6PacketTooBig(mtu=600) / bytes(out[0][s6.IPv6])[:200])
    assert host.counters.drops[Drop.ICMPV6_BAD_ERROR] == 1


def test_errors_port_unreachable_and_none_for_multicast() -> None:
    host = ready_host()
    out = feed(host, peer(STATIC_S, src="fe80::2") / s6.UDP(sport=5000, dport=9999) / b"q", 2.0)
    assert out[0][s6.ICMPv6DestUnreach].code == 4
    assert host.counters.drops[Drop.UDP_NO_PORT] == 1
    out = feed(host, peer("ff02::1") / s6.UDP(sport=5000, dport=9999) / b"q", 2.0)
    assert out == []
    # unknown option, action 10: Parameter Problem code 2 even to a group
    opt = s6.IPv6ExtHdrDestOpt(options=[s6.HBHOptUnknown(otype=0x81, optdata=b"ab")])
    out = feed(host, peer("ff02::1") / opt / s6.ICMPv6EchoRequest(), 2.0)
    assert out[0][s6.ICMPv6ParamProblem].code == 2 and out[0][s6.ICMPv6ParamProblem].ptr == 42
    # an error is never answered with an error
    assert feed(host, peer(STATIC_S) / s6.ICMPv6DestUnreach() / bytes(48), 2.0) == []


def test_ethernet_filter_takes_our_groups_only() -> None:
    host = ready_host()
    c = host.counters
    feed(host, Ether(src=PEER_MAC_S, dst="33:33:00:00:00:02") / s6.IPv6(dst="ff02::2"))
    assert c.drops[Drop.ETH_NOT_FOR_US] == 1
    out = feed(host, peer("ff02::1") / s6.ICMPv6EchoRequest(), 2.0)
    assert out and out[0][s6.IPv6].src == OUR_LL_S


@pytest.mark.parametrize("hops", [0, 1, 7, 9, 30])
def test_long_extension_chains(hops: int) -> None:
    host = ready_host()
    pkt = s6.IPv6(src=PEER_LL_S, dst=OUR_LL_S)
    for _ in range(hops):
        pkt = pkt / s6.IPv6ExtHdrDestOpt()
    out = feed(host, Ether(src=PEER_MAC_S, dst=OUR_MAC_S) / pkt / s6.ICMPv6EchoRequest(), 2.0)
    if hops <= 8:
        assert out and out[0].haslayer(s6.ICMPv6EchoReply)
    else:
        assert out == [] and host.counters.drops[Drop.IPV6_CHAIN_TOO_LONG] == 1


def _handled(c: Counters) -> int:
    return (
        c.total_drops() + sum(n for (d, _), n in c.icmp6.items() if d == "rx") + c.ipv6_fragments_rx
    )


SEEDS = [
    bytes(peer(OUR_LL_S) / s6.ICMPv6EchoRequest(data=b"abc")),
    bytes(
        peer(OUR_LL_S, hlim=255)
        / s6.ICMPv6ND_NS(tgt=OUR_LL_S)
        / s6.ICMPv6NDOptSrcLLAddr(lladdr=PEER_MAC_S)
    ),
    bytes(peer("ff02::1", hlim=255) / s6.ICMPv6ND_RA() / s6.ICMPv6NDOptPrefixInfo()),
    bytes(peer(OUR_LL_S) / s6.IPv6ExtHdrFragment(m=1) / Raw(bytes(16))),
    bytes(peer(OUR_LL_S) / s6.IPv6ExtHdrHopByHop() / s6.IPv6ExtHdrRouting() / s6.UDP()),
]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(SEEDS),
    st.lists(st.tuples(st.integers(14, 200), st.integers(0, 255)), max_size=6),
    st.integers(0, 40),
)
def test_fuzz_every_v6_frame_is_accounted_for(seed: bytes, flips, cut: int) -> None:
    host = ready_host()
    c = host.counters
    before = _handled(c)
    frame = bytearray(seed)
    for pos, value in flips:
        if pos < len(frame):
            frame[pos] = value
    frame = frame[: max(14, len(frame) - cut)]
    frame[12:14] = b"\x86\xdd"
    host.receive_batch([memoryview(bytes(frame))], 2.0)
    host.poll(100.0)
    assert _handled(c) > before


def test_udp_echo_over_ipv6_shares_the_port_table() -> None:
    from netstack.api.services import start_services

    host = ready_host()
    start_services(host.udp, {"udp_echo": 7})
    out = feed(host, peer(STATIC_S, src="fe80::2") / s6.UDP(sport=5000, dport=7) / b"ping6", 2.0)
    assert len(out) == 1
    reply = out[0]
    # the echo's one-step reply leaves from the address asked (as IPv4's, RFC 1122 4.1.3.5):
    # a client's connected socket takes only that one
    assert reply[s6.IPv6].src == STATIC_S and reply[s6.IPv6].dst == "fe80::2"
    assert (reply[s6.UDP].sport, reply[s6.UDP].dport) == (7, 5000)
    assert bytes(reply[s6.UDP].payload) == b"ping6"
    raw = bytes(reply)
    reply[s6.UDP].chksum = None  # scapy recomputes: the same checksum
    assert bytes(Ether(bytes(reply))) == raw
    # sendto picks the source by RFC 6724 (rule 2: link-local for a link-local peer)
    host.udp.bind(9000, lambda *a: None).sendto(b"hi", (wipv6.from_str("fe80::2"), 5000))
    sent = frames(host)
    assert len(sent) == 1 and sent[0][s6.IPv6].src == OUR_LL_S
    # a zero checksum is invalid over IPv6 (RFC 8200 8.1)
    zero = peer(STATIC_S) / s6.UDP(sport=5000, dport=7, chksum=0) / b"x"
    assert feed(host, zero, 2.0) == []
    assert host.counters.drops[Drop.UDP_BAD_CHECKSUM] == 1


def test_reassembly_timeout_sends_time_exceeded_and_bounds_hold() -> None:
    host = ready_host()
    pkt = (
        s6.IPv6(src=PEER_LL_S, dst=OUR_LL_S)
        / s6.IPv6ExtHdrFragment(id=9)
        / (s6.ICMPv6EchoRequest(data=b"y" * 3000))
    )
    first = s6.fragment6(pkt, 1280)[0]
    feed(host, Ether(src=PEER_MAC_S, dst=OUR_MAC_S) / first, 2.0)
    reassembler = host.v6.ipv6.reassembler
    assert len(reassembler) == 1
    host.poll(61.9)
    assert len(reassembler) == 1
    host.poll(62.1)
    out = frames(host)
    assert len(reassembler) == 0 and host.counters.drops[Drop.IPV6_REASSEMBLY_TIMEOUT] == 1
    exceeded = [f for f in out if f.haslayer(s6.ICMPv6TimeExceeded)]
    assert exceeded and exceeded[0][s6.ICMPv6TimeExceeded].code == 1
    # a flood of first fragments with fresh identifications: at most 64 datagrams held
    for ident in range(200):
        first[s6.IPv6ExtHdrFragment].id = 1000 + ident
        feed(host, Ether(src=PEER_MAC_S, dst=OUR_MAC_S) / first, 63.0)
    assert len(reassembler) == 64
    assert host.counters.drops[Drop.IPV6_REASSEMBLY_OVERFLOW] == 200 - 64


def test_resolution_failure_is_counted_and_queue_bounded() -> None:
    host = ready_host()
    for _ in range(20):  # to an on-link neighbour that never answers
        host.v6.ipv6.send(wipv6.from_str("2001:db8::77"), wipv6.NO_NEXT, (bytes(8),), 2.0)
    assert host.counters.drops[Drop.ND_QUEUE_FULL] == 4  # 16 queued per destination
    ns = [f for f in frames(host) if f.haslayer(s6.ICMPv6ND_NS)]
    assert len(ns) == 1 and ns[0][s6.IPv6].dst == "ff02::1:ff00:77"
    assert ns[0][s6.IPv6].src == STATIC_S  # the source of the packet waiting (7.2.2)
    for t in (3.0, 4.0, 5.0):
        host.poll(t)
    assert len([f for f in frames(host) if f.haslayer(s6.ICMPv6ND_NS)]) == 2
    host.poll(6.0)
    assert host.counters.nd_resolution_failures == 1
    assert host.counters.drops[Drop.ND_RESOLUTION_FAILED] == 16
    assert host.v6.nd.state(wipv6.from_str("2001:db8::77")) is None


def test_solicited_advertisement_resolves_for_a_randomized_reachable_time() -> None:
    host = ready_host()
    target = wipv6.from_str("2001:db8::5")
    host.v6.ipv6.send(target, wipv6.NO_NEXT, (bytes(8),), 2.0)
    frames(host)
    na = (
        peer(STATIC_S, src="2001:db8::5", hlim=255)
        / s6.ICMPv6ND_NA(tgt="2001:db8::5", S=1, O=1)
        / s6.ICMPv6NDOptDstLLAddr(lladdr=PEER_MAC_S)
    )
    out = feed(host, na, 2.5)
    assert len(out) == 1 and out[0].dst == PEER_MAC_S  # the queued packet went out
    nd = host.v6.nd
    assert nd.state(target) is NudState.REACHABLE and nd.lookup(target) == PEER_MAC
    host.poll(2.5 + 0.5 * nd.reachable_time - 0.01)
    assert nd.state(target) is NudState.REACHABLE
    host.poll(2.5 + 1.5 * nd.reachable_time + 0.01)
    assert nd.state(target) is NudState.STALE
