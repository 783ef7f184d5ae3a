"""A host configured by DHCP, frames in and out: silent until bound, then a normal host."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from netstack.counters import Counters
from netstack.drops import Drop
from netstack.proto.dhcp import DhcpConfig, DhcpState
from netstack.proto.host import Host, HostConfig
from netstack.wire import arp as warp
from netstack.wire import dhcp as wdhcp
from netstack.wire import ethernet as weth
from netstack.wire import icmp as wicmp
from netstack.wire import ipv4 as wipv4
from netstack.wire import udp as wudp
from tests.unit.hosttools import OUR_MAC, PEER_IP, PEER_MAC, drain, echo_request, feed, udp_frame

LEASED = wipv4.ip_from_str("192.0.2.77")


def dhcp_host() -> Host:
    config = HostConfig(mac=OUR_MAC, address=0, prefix_len=0, dhcp=DhcpConfig(init_delay=0))
    return Host(config, Counters(), random.Random(3))


def dhcp_of(frame: bytes) -> tuple[weth.EthernetHeader, wipv4.Ipv4Header, wdhcp.DhcpMessage]:
    eth, rest = weth.parse(memoryview(frame))
    ip, payload = wipv4.parse(rest)
    udp, data = wudp.parse(payload, ip.src, ip.dst)
    assert (udp.src_port, udp.dst_port) == (68, 67)
    return eth, ip, wdhcp.parse(data)


def server_reply(kind: int, xid: int, *, broadcast: bool = False, **fields) -> bytes:
    msg = wdhcp.DhcpMessage(
        op=wdhcp.OP_REPLY, xid=xid, chaddr=OUR_MAC, message_type=kind, yiaddr=LEASED,
        server_id=PEER_IP, lease_time=600, subnet_mask=0xFFFFFF00, routers=(PEER_IP,), **fields,
    )  # fmt: skip
    dst = 0xFFFFFFFF if broadcast else LEASED
    dst_mac = weth.BROADCAST if broadcast else OUR_MAC
    return udp_frame(wdhcp.build(msg), 67, 68, dst=dst, dst_mac=dst_mac)


def run_probe(host: Host, now: float) -> float:
    client = host.dhcp
    assert client is not None
    while client.state is DhcpState.CHECKING:
        now = client.next_deadline()
        host.poll(now)
    return now


def test_acquire_then_answer() -> None:
    host = dhcp_host()
    host.start(0.0)
    assert not drain(host)  # no gratuitous ARP for 0.0.0.0
    host.poll(host.next_deadline())
    (frame,) = drain(host)
    eth, ip, discover = dhcp_of(frame)
    assert eth.dst == weth.BROADCAST and eth.src == OUR_MAC
    assert (ip.src, ip.dst) == (0, 0xFFFFFFFF)
    assert discover.message_type == wdhcp.DISCOVER and discover.chaddr == OUR_MAC

    # Unicast OFFER to the offered address and our MAC (no broadcast flag): taken while unbound
    (frame,) = feed(host, server_reply(wdhcp.OFFER, discover.xid), 0.5)
    _, ip, request = dhcp_of(frame)
    assert (ip.src, ip.dst) == (0, 0xFFFFFFFF) and request.requested_ip == LEASED

    # Not ours yet: ping, ARP and broadcast UDP echo to the offered address get nothing
    assert not feed(host, echo_request(b"x", dst=LEASED), 0.6)
    assert host.counters.drops[Drop.IPV4_NO_ADDRESS] == 1
    assert not feed(host, udp_frame(b"hi", 5000, 7, dst=0xFFFFFFFF, dst_mac=weth.BROADCAST), 0.6)
    arp_request = warp.build(warp.OP_REQUEST, PEER_MAC, PEER_IP, bytes(6), LEASED)
    arp_frame = weth.build(weth.BROADCAST, PEER_MAC, weth.ETHERTYPE_ARP) + arp_request
    assert not feed(host, arp_frame, 0.6)

    # Broadcast ACK, then the RFC 5227 probes (sender 0.0.0.0) before the address is used
    assert not feed(host, server_reply(wdhcp.ACK, request.xid, broadcast=True), 0.7)
    assert host.dhcp is not None and host.dhcp.state is DhcpState.CHECKING
    host.poll(host.next_deadline())
    (probe,) = drain(host)
    pkt = warp.parse(weth.parse(memoryview(probe))[1])
    assert (pkt.op, pkt.sender_ip, pkt.target_ip) == (warp.OP_REQUEST, 0, LEASED)
    now = run_probe(host, 1.0)
    frames = drain(host)
    announce = warp.parse(weth.parse(memoryview(frames[-1]))[1])
    assert announce.sender_ip == announce.target_ip == LEASED  # gratuitous ARP once bound
    assert host.ipv4.config.address == LEASED and host.ipv4.config.gateway == PEER_IP

    # Bound: ARP and ping answered from the leased address
    (reply,) = feed(host, arp_frame, now)
    assert warp.parse(weth.parse(memoryview(reply))[1]).sender_ip == LEASED
    (reply,) = feed(host, echo_request(b"ping", dst=LEASED), now)
    eth, rest = weth.parse(memoryview(reply))
    ip, payload = wipv4.parse(rest)
    assert ip.src == LEASED and ip.dst == PEER_IP and payload[0] == wicmp.TYPE_ECHO_REPLY


def test_conflict_declines_and_never_answers() -> None:
    host = dhcp_host()
    host.start(0.0)
    host.poll(host.next_deadline())
    (_, _, discover) = dhcp_of(drain(host)[0])
    (frame,) = feed(host, server_reply(wdhcp.OFFER, discover.xid), 0.5)
    (_, _, request) = dhcp_of(frame)
    feed(host, server_reply(wdhcp.ACK, request.xid), 0.6)
    # another host answers for the address (an ARP with it as the sender)
    claim = warp.build(warp.OP_REPLY, PEER_MAC, LEASED, OUR_MAC, 0)
    (frame,) = feed(host, weth.build(OUR_MAC, PEER_MAC, weth.ETHERTYPE_ARP) + claim, 0.7)
    (_, ip, decline) = dhcp_of(frame)
    assert decline.message_type == wdhcp.DECLINE and decline.requested_ip == LEASED
    assert ip.src == 0 and host.ipv4.config.address == 0
    assert host.counters.dhcp_declines == 1


def test_lease_loss_removes_the_address() -> None:
    host = dhcp_host()
    leases = []
    host.on_lease = lambda lease, now: leases.append(lease)
    host.start(0.0)
    host.poll(host.next_deadline())
    (_, _, discover) = dhcp_of(drain(host)[0])
    (frame,) = feed(host, server_reply(wdhcp.OFFER, discover.xid), 0.5)
    (_, _, request) = dhcp_of(frame)
    feed(host, server_reply(wdhcp.ACK, request.xid, mtu=1400), 0.6)
    run_probe(host, 0.6)
    assert host.ipv4.config.address == LEASED and host.ipv4.config.mtu == 1400
    assert host.tcp.mss == 1360 and host.tcp.local_ip == LEASED
    lease = leases[-1]
    # nobody answers the renewals: at expiry the address goes
    while host.dhcp.state is not DhcpState.INIT and host.dhcp.state is not DhcpState.SELECTING:
        host.poll(host.next_deadline())
    assert leases[-1] is None and host.ipv4.config.address == 0 and host.arp.ip == 0
    assert host.ipv4.config.mtu == 1500 and host.tcp.mss == 1460
    assert lease is not None
    drain(host)
    assert not feed(host, echo_request(b"x", dst=LEASED), lease.expires + 1)


def test_nothing_but_broadcasts_leaves_while_unbound() -> None:
    host = dhcp_host()
    host.start(0.0)
    sock = host.udp.bind(5000, lambda *args: None)
    assert not sock.sendto(b"x", (PEER_IP, 9))  # no address: no route, not an ARP from 0.0.0.0
    assert host.counters.drops[Drop.IPV4_NO_ROUTE] == 1
    assert sock.sendto(b"x", (0xFFFFFFFF, 9))
    assert not [f for f in drain(host) if weth.parse(memoryview(f))[0].ethertype == 0x0806]


def test_a_datagram_to_0_0_0_0_is_not_taken_while_unbound() -> None:
    """The C receive fast path matches on our address: while it is 0.0.0.0 (DHCP not bound),
    a datagram to 0.0.0.0 must still meet the unbound filter, not the echo service."""
    host = dhcp_host()
    host.start(0.0)
    drain(host)
    host.udp.bind(7, lambda data, src, dst, now: None)  # a listener that would take it
    feed(host, udp_frame(b"ping", 4000, 7, dst=0), 0.1)
    assert host.counters.drops[Drop.IPV4_NO_ADDRESS] == 1
    assert host.counters.udp_rx == 0


def test_renewal_with_the_same_terms_announces_nothing() -> None:
    host = dhcp_host()
    host.start(0.0)
    host.poll(host.next_deadline())
    (_, _, discover) = dhcp_of(drain(host)[0])
    (frame,) = feed(host, server_reply(wdhcp.OFFER, discover.xid), 0.5)
    (_, _, request) = dhcp_of(frame)
    feed(host, server_reply(wdhcp.ACK, request.xid), 0.6)
    run_probe(host, 0.6)
    drain(host)
    host.poll(host.dhcp.next_deadline())  # RFC 5227's second announcement, 2 s after the first
    (frame,) = drain(host)
    announce = warp.parse(weth.parse(memoryview(frame))[1])
    assert announce.sender_ip == announce.target_ip == LEASED
    t1 = host.dhcp.next_deadline()
    host.poll(t1)  # T1: the renewal is unicast, so the server's MAC is resolved first
    (frame,) = drain(host)
    assert warp.parse(weth.parse(memoryview(frame))[1]).target_ip == PEER_IP
    answer = warp.build(warp.OP_REPLY, PEER_MAC, PEER_IP, OUR_MAC, LEASED)
    (frame,) = feed(host, weth.build(OUR_MAC, PEER_MAC, weth.ETHERTYPE_ARP) + answer, t1)
    eth, ip, renew = dhcp_of(frame)
    assert eth.dst == PEER_MAC and (ip.src, ip.dst) == (LEASED, PEER_IP)  # unicast renewal
    assert not feed(host, server_reply(wdhcp.ACK, renew.xid), host.now + 0.1)  # no new ARP
    assert host.counters.dhcp_renewals == 1 and host.dhcp.state is DhcpState.BOUND


# -- fuzz: an unbound host takes any frame without raising, and counts it ------------------------
def _accounted(host: Host) -> int:
    c = host.counters
    return (
        c.total_drops()
        + c.arp_requests_rx
        + c.arp_replies_rx
        + sum(n for (d, _), n in c.dhcp_messages.items() if d == "rx")
    )


_OFFER_XID = 0x01020304
_UNBOUND_FRAMES = [
    server_reply(wdhcp.OFFER, _OFFER_XID),
    server_reply(wdhcp.OFFER, _OFFER_XID, broadcast=True),
    echo_request(b"x", dst=LEASED),
    udp_frame(b"x", 5000, 7, dst=0xFFFFFFFF, dst_mac=weth.BROADCAST),
    weth.build(weth.BROADCAST, PEER_MAC, weth.ETHERTYPE_ARP)
    + warp.build(warp.OP_REQUEST, PEER_MAC, PEER_IP, bytes(6), LEASED),
]


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(_UNBOUND_FRAMES),
    st.lists(st.tuples(st.integers(14, 341), st.integers(0, 255)), max_size=6),
    st.integers(14, 342),
)
def test_unbound_host_mutated_frames(frame: bytes, flips: list, cut: int) -> None:
    host = dhcp_host()
    host.start(0.0)
    host.poll(host.next_deadline())  # SELECTING
    host.dhcp._xid = _OFFER_XID  # as if the DISCOVER had carried it
    drain(host)
    raw = bytearray(frame)
    for position, value in flips:
        if position < len(raw):
            raw[position] = value
    before = _accounted(host)
    host.receive_batch([memoryview(bytes(raw[:cut]))], 1.0)
    assert _accounted(host) > before
    for out in drain(host):  # whatever it sends, it sends as a host without an address
        eth, rest = weth.parse(memoryview(out))
        if eth.ethertype == weth.ETHERTYPE_IPV4:
            assert dhcp_of(out)[1].src == 0
        else:
            assert warp.parse(rest).sender_ip == 0
