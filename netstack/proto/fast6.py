"""The IPv6 receive fast path and the one-step send that the echo replies use.

Why: the general path (Ethernet parse, `Ipv6Engine.receive`'s parse and extension-header walk,
a Python checksum over a 40-byte pseudo-header built per datagram) cost UDP echo over IPv6 four
times its IPv4 figure, and TCP over IPv6 ran at 0.7x IPv4 without offloads. The common frame,
to our MAC, IPv6 without extension headers, UDP, TCP or ICMPv6 whose length and checksum
verify, is recognised by one C call (`ns_rx_fast6`, the sibling of the IPv4 `ns_rx_fast`), the
addresses by one dict lookup each, and it goes straight to the same handler the general path
would reach, told that its checksum is verified. Anything else, and every drop, is the general
path's: this only ever skips work, never a check.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from netstack._ffi import ffi, lib
from netstack.counters import Counters
from netstack.proto.addr6 import USABLE_STATES
from netstack.wire import ipv6 as wipv6

if TYPE_CHECKING:
    from netstack.proto.ipv6 import Ipv6Engine
    from netstack.proto.v6 import Ipv6Stack

Buffer = bytes | bytearray | memoryview
_rx_fast6 = lib.ns_rx_fast6
_from_buffer = ffi.from_buffer
_FIXED = struct.Struct("!IHBB")  # wire/ipv6.py's fixed header up to the addresses
_ADDRESSES = struct.Struct("16s16s")  # source, destination
_UDP = wipv6.UDP
_TCP = wipv6.TCP
_new = tuple.__new__
_Ipv6Header = wipv6.Ipv6Header
_ETH_LEN = 14
_L4 = _ETH_LEN + wipv6.HEADER_LEN
# (header, upper-layer payload, whole packet, now, checksum verified)
FastHandler = Callable[[wipv6.Ipv6Header, memoryview, memoryview, float, bool], None]
# (source, destination, UDP datagram, whole packet, now, checksum verified)
UdpHandler = Callable[[bytes, bytes, memoryview, memoryview, float, bool], None]


class Fast6:
    """`receive(frame, now)`: True when the frame was taken (and counted) here."""

    def __init__(self, mac: bytes, stack: Ipv6Stack, counters: Counters) -> None:
        self.mac = bytes(mac)  # cffi passes only bytes as `const char *`
        self.counters = counters
        self._by_address = stack.addresses.by_address
        self._icmp: FastHandler = stack.icmp.receive
        # Without a UDP engine, UDP is the general path's closed port.
        self._udp: UdpHandler | None = None if stack.udp6 is None else stack.udp6.receive_fast
        # Without a TCP engine, TCP is the general path's unknown next header.
        self._tcp: FastHandler | None = stack.tcp_receive6

    def receive(self, frame: memoryview, buf: object, now: float) -> bool:
        """`buf`: the frame as cffi sees it (the host made it for the IPv4 check already)."""
        r = _rx_fast6(buf, len(frame), self.mac)
        if not r:
            return False
        nh = r & 0xFF
        udp = self._udp if nh == _UDP else None
        if udp is None and nh == _UDP:
            return False
        if nh == _TCP and self._tcp is None:
            return False
        src, dst = _ADDRESSES.unpack_from(frame, _ETH_LEN + 8)
        by_address = self._by_address
        entry = by_address.get(dst)
        if entry is None or entry.state not in USABLE_STATES:  # not ours, or tentative
            return False
        entry = by_address.get(src)
        if entry is not None and entry.state in USABLE_STATES:  # our own address as the source
            return False
        c = self.counters
        c.rx_packets += 1
        c.rx_bytes += len(frame)
        c.ipv6_rx += 1
        packet = frame[_ETH_LEN : _L4 + (r >> 8)]
        if udp is not None:
            udp(src, dst, packet[40:], packet, now, True)
            return True
        vtf, length, nh, hops = _FIXED.unpack_from(frame, _ETH_LEN)
        header = _new(_Ipv6Header, ((vtf >> 20) & 0xFF, vtf & 0xFFFFF, length, nh, hops, src, dst))
        handler = self._tcp if nh == _TCP else self._icmp
        handler(header, packet[40:], packet, now, True)  # type: ignore[misc]
        return True


def send_one(
    ipv6: Ipv6Engine,
    dst: bytes,
    src: bytes,
    next_header: int,
    head: Buffer,
    data: Buffer,
    traffic_class: int,
    now: float,
) -> bool:
    """`ipv6.send(dst, next_header, (head, data), now, src=src, traffic_class=...)` for a reply
    that fits the path MTU, without its generality (no source selection, no length sum over a
    generator, no fragmentation branch); anything else goes to `ipv6.send` itself. The link
    send is the same (the ND engine's, so neighbour states move as for any packet)."""
    length = len(head) + len(data)
    next_hop = ipv6.route(dst)
    size = wipv6.HEADER_LEN + length
    # Every path takes the IPv6 minimum MTU (RFC 8200 5): a packet within it needs no lookup.
    if next_hop is None or (size > wipv6.MIN_MTU and size > ipv6.path_mtu(dst, now)):
        return ipv6.send(dst, next_header, (head, data), now, src=src, traffic_class=traffic_class)
    ipv6.counters.ipv6_tx += 1
    header = wipv6.build(src, dst, next_header, length, ipv6.config.hop_limit, traffic_class)
    ipv6.link_send(next_hop, (header, head, data), now)
    return True
