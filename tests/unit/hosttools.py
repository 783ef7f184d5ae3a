"""Helpers for pure host tests: build frames like a peer would, feed them, read what comes out."""

from __future__ import annotations

import random

from netstack.counters import Counters
from netstack.proto.host import Host, HostConfig
from netstack.wire import arp as warp
from netstack.wire import ethernet as weth
from netstack.wire import icmp as wicmp
from netstack.wire import ipv4 as wipv4
from netstack.wire import udp as wudp

OUR_MAC = bytes.fromhex("02aabbccdd01")
PEER_MAC = bytes.fromhex("02aabbccdd02")
OUR_IP = wipv4.ip_from_str("192.0.2.2")
PEER_IP = wipv4.ip_from_str("192.0.2.1")


def make_host(**overrides) -> Host:
    config = HostConfig(mac=OUR_MAC, address=OUR_IP, prefix_len=24, **overrides)
    return Host(config, Counters(), random.Random(7))


def learn_peer(host: Host, now: float = 0.0) -> None:
    """The peer ARPs for us, so we know its MAC without asking."""
    request = warp.build(warp.OP_REQUEST, PEER_MAC, PEER_IP, b"\0" * 6, OUR_IP)
    feed(host, weth.build(weth.BROADCAST, PEER_MAC, weth.ETHERTYPE_ARP) + request, now)
    host.tx.clear()


def feed(host: Host, frame: bytes, now: float = 0.0) -> list[bytes]:
    """Hand one frame to the host; return every frame it emitted, joined."""
    host.receive_batch([memoryview(frame)], now)
    return drain(host)


def drain(host: Host) -> list[bytes]:
    out = [b"".join(bytes(piece) for piece in frame) for frame in host.tx]
    host.tx.clear()
    return out


def ip_frame(
    payload: bytes,
    protocol: int,
    *,
    src: int = PEER_IP,
    dst: int = OUR_IP,
    dst_mac: bytes = OUR_MAC,
    ident: int = 1,
) -> bytes:
    header = wipv4.build(src, dst, protocol, len(payload), ident=ident)
    return weth.build(dst_mac, PEER_MAC, weth.ETHERTYPE_IPV4) + header + payload


def echo_request(data: bytes, ident: int = 0x1234, seq: int = 1, **kw) -> bytes:
    icmp = wicmp.build(wicmp.TYPE_ECHO_REQUEST, 0, ident << 16 | seq, data)
    return ip_frame(icmp + data, wipv4.PROTO_ICMP, **kw)


def udp_frame(data: bytes, sport: int, dport: int, **kw) -> bytes:
    src = kw.get("src", PEER_IP)
    dst = kw.get("dst", OUR_IP)
    return ip_frame(wudp.build(src, dst, sport, dport, data) + data, wipv4.PROTO_UDP, **kw)


def parse_ip(frame: bytes) -> tuple[weth.EthernetHeader, wipv4.Ipv4Header, memoryview]:
    eth, rest = weth.parse(memoryview(frame))
    ip, payload = wipv4.parse(rest)
    return eth, ip, payload
