"""The UDP echo's reply built in one C call (ns_udp_reflect, UdpEngine._reflect) must be the
frame Ipv4Engine.send builds from its pieces, byte for byte, with the same counters; and every
case the one-call path does not cover (neighbour unresolved, reply above the MTU) must go the
old way."""

from __future__ import annotations

import dataclasses
import struct
import types

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from netstack._ffi import ffi, lib
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from netstack.api.services import start_services
from netstack.proto.host import Host
from netstack.wire import ipv4 as wipv4
from netstack.wire import udp as wudp
from tests.unit.hosttools import OUR_IP, PEER_IP, learn_peer, make_host, udp_frame

GATEWAY = PEER_IP
FAR_PEER = wipv4.ip_from_str("198.51.100.9")
_HEADER = struct.Struct("!HHHH")


def _old_reflect(self, peer: int, datagram: memoryview, length: int, now: float) -> bool:
    """The reply as it was built before ns_udp_reflect: header packed, Ipv4Engine.send."""
    src_port, dst_port, _, csum = _HEADER.unpack_from(datagram)
    header = _HEADER.pack(dst_port, src_port, length, csum)
    return self.ipv4.send(peer, wudp.PROTO_UDP, (header, datagram[8:length]), now)


def _host(old: bool, *, learn: bool = True, ident: int = 0) -> Host:
    host = make_host(gateway=GATEWAY)
    start_services(host.udp, {"udp_echo": 7}, host.tcp)
    if old:
        host.udp._reflect = types.MethodType(_old_reflect, host.udp)  # type: ignore[method-assign]
    if learn:
        learn_peer(host)
    host.ipv4._ident = ident
    return host


def _run(host: Host, frames: list[bytes]) -> tuple[dict, list[bytes], list[int]]:
    for i, frame in enumerate(frames):
        host.receive_batch([memoryview(frame)], 1.0 + i)
    c = host.counters
    fields = {f.name: getattr(c, f.name) for f in dataclasses.fields(c)}
    counters = {k: v for k, v in fields.items() if isinstance(v, int | dict)}
    pieces = [len(frame) for frame in host.tx]
    out = [b"".join(bytes(p) for p in frame) for frame in host.tx]
    host.tx.clear()
    return counters, out, pieces


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.binary(max_size=1472),
    st.integers(1, 0xFFFF),
    st.booleans(),
    st.integers(0xFFF0, 0xFFFF),
)
def test_reflected_reply_is_what_ipv4_send_builds(
    data: bytes, sport: int, far: bool, ident: int
) -> None:
    src = FAR_PEER if far else PEER_IP  # off-link: the reply goes to the gateway's MAC
    frames = [udp_frame(data, sport, 7, src=src, ident=i) for i in range(3)]
    new_counters, new_out, new_pieces = _run(_host(False, ident=ident), frames)
    old_counters, old_out, _ = _run(_host(True, ident=ident), frames)
    assert new_out == old_out
    assert new_counters == old_counters
    assert new_pieces == [1, 1, 1]  # one piece each: the C call built them
    assert new_counters["udp_tx"] == 3


def test_reply_checksums_verify_in_scapy() -> None:
    host = _host(False, ident=0x1234)
    _, out, _ = _run(host, [udp_frame(b"hello, echo" * 7, 40000, 7)])
    (frame,) = out
    pkt = Ether(frame)
    assert pkt[IP].src == "192.0.2.2" and pkt[IP].dst == "192.0.2.1"
    assert (pkt[UDP].sport, pkt[UDP].dport) == (7, 40000)
    assert pkt[IP].id == 0x1234 and pkt[IP].flags == 0 and pkt[IP].ttl == 64
    assert bytes(pkt[UDP].payload) == b"hello, echo" * 7
    ip_sum, udp_sum = pkt[IP].chksum, pkt[UDP].chksum
    del pkt[IP].chksum
    del pkt[UDP].chksum
    again = Ether(bytes(pkt))
    assert (again[IP].chksum, again[UDP].chksum) == (ip_sum, udp_sum)


def test_unresolved_neighbour_goes_through_arp_as_before() -> None:
    frames = [udp_frame(b"x" * 64, 4000, 7)]
    new = _run(_host(False, learn=False), frames)
    old = _run(_host(True, learn=False), frames)
    assert new[:2] == old[:2]
    assert new[0]["udp_tx"] == 1  # queued behind ARP, counted as the old path counts it


def test_reply_above_the_mtu_is_fragmented_as_before() -> None:
    frames = [udp_frame(b"y" * 1000, 4000, 7)]
    hosts = [_host(False), _host(True)]
    for host in hosts:
        host.ipv4.config.mtu = 576  # lowered after the request came in at 1500
    new, old = _run(hosts[0], frames), _run(hosts[1], frames)
    assert new[:2] == old[:2]
    assert new[0]["ipv4_fragments_tx"] == 2


def test_ns_udp_reflect_refuses_what_does_not_fit() -> None:
    udp = ffi.new("uint8_t[]", b"\x00\x01\x00\x07\x00\x0c\x00\x00abcd")
    out = ffi.new("uint8_t[]", 64)
    eth = b"\x02" * 14
    assert lib.ns_udp_reflect(udp, 12, eth, OUR_IP, PEER_IP, 1, 64, out, 64) == 14 + 20 + 12
    assert lib.ns_udp_reflect(udp, 12, eth, OUR_IP, PEER_IP, 1, 64, out, 45) == -1
    assert lib.ns_udp_reflect(udp, 7, eth, OUR_IP, PEER_IP, 1, 64, out, 64) == -1


def test_a_header_other_than_14_bytes_goes_the_old_way() -> None:
    """ns_udp_reflect copies exactly 14 bytes of Ethernet header: a link header of another
    size (a VLAN tag, say) must not reach it."""
    tagged = b"\x02" * 12 + b"\x81\x00\x00\x05\x08\x00"
    frames = [udp_frame(b"z" * 64, 4000, 7)]
    hosts = [_host(False), _host(True)]
    for host in hosts:
        host.ipv4.link_header = lambda next_hop: tagged
    new, old = _run(hosts[0], frames), _run(hosts[1], frames)
    assert new[:2] == old[:2]
    assert new[1][0].startswith(tagged)
    assert new[2] == [4]  # eth, IPv4 header, UDP header, payload: Ipv4Engine.send's pieces
