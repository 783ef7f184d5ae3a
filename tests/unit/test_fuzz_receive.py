"""Fuzz the whole receive path: no frame raises, and every frame is accounted for.

"Accounted for" means each frame either bumps a drop counter (with its reason) or a counter of
something handled (an ARP packet, an ICMP message, a UDP datagram, a TCP segment, a fragment
held).
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netstack.api.services import start_services
from netstack.counters import Counters
from netstack.wire import arp as warp
from netstack.wire import ethernet as weth
from netstack.wire import ipv4 as wipv4
from netstack.wire import tcp as wtcp
from tests.unit.hosttools import (
    OUR_IP,
    OUR_MAC,
    PEER_IP,
    PEER_MAC,
    echo_request,
    ip_frame,
    make_host,
    udp_frame,
)


def tcp_frame(flags: int, sport: int, dport: int, data: bytes = b"", **kw) -> bytes:
    segment = wtcp.build(PEER_IP, OUR_IP, sport, dport, 1000, 0, flags, 8192, data, **kw)
    return ip_frame(segment + data, wipv4.PROTO_TCP)


def handled(c: Counters) -> int:
    return (
        c.total_drops()
        + c.arp_requests_rx
        + c.arp_replies_rx
        + sum(n for (direction, _), n in c.icmp.items() if direction == "rx")
        + c.udp_rx
        + c.tcp_segments_rx
        + c.ipv4_fragments_rx
    )


VALID_FRAMES = [
    echo_request(b"hello world"),
    udp_frame(b"datagram", 4000, 7),
    udp_frame(b"datagram", 4000, 9),
    udp_frame(b"datagram", 4000, 999),
    ip_frame(b"\0" * 20, wipv4.PROTO_TCP),
    tcp_frame(wtcp.SYN, 4000, 7),
    tcp_frame(wtcp.SYN, 4000, 19, options=wtcp.TcpOptions(1460, 7, True, (), (1, 0))),
    tcp_frame(wtcp.ACK | wtcp.PSH, 4000, 9, b"payload"),
    tcp_frame(wtcp.RST, 4000, 999),
    ip_frame(b"frag" * 4, wipv4.PROTO_UDP, ident=3),
    weth.build(weth.BROADCAST, PEER_MAC, weth.ETHERTYPE_ARP)
    + warp.build(warp.OP_REQUEST, PEER_MAC, PEER_IP, b"\0" * 6, OUR_IP),
    weth.build(OUR_MAC, PEER_MAC, weth.ETHERTYPE_ARP)
    + warp.build(warp.OP_REPLY, PEER_MAC, PEER_IP, OUR_MAC, OUR_IP),
]


def _host():
    host = make_host()
    start_services(
        host.udp,
        {"udp_echo": 7, "udp_discard": 9, "tcp_echo": 7, "tcp_discard": 9, "tcp_chargen": 19},
        host.tcp,
    )
    return host


def _check(host, frame: bytes, now: float) -> None:
    before = handled(host.counters)
    host.receive_batch([memoryview(frame)], now)
    host.poll(now + 100.0)
    assert handled(host.counters) > before, frame.hex()
    host.tx.clear()


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=1600))
def test_random_bytes_never_raise(frame: bytes) -> None:
    _check(_host(), frame, 0.0)


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(VALID_FRAMES),
    st.lists(st.tuples(st.integers(0, 1599), st.integers(0, 255)), max_size=6),
    st.integers(0, 1600),
)
def test_mutated_valid_frames_never_raise(frame: bytes, flips: list, cut: int) -> None:
    mutated = bytearray(frame)
    for position, value in flips:
        if position < len(mutated):
            mutated[position] = value
    # Keep the original destination MAC so that mutations reach the upper layers.
    mutated[0:6] = frame[0:6]
    _check(_host(), bytes(mutated[: max(cut, 14)]), 1.0)


def test_valid_frames_are_all_accounted_for() -> None:
    host = _host()
    for frame in VALID_FRAMES:
        _check(host, frame, 0.0)
