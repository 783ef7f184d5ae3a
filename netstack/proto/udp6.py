"""UDP over IPv6 (RFC 768 with RFC 8200 §8.1 checksums), sharing the IPv4 UDP engine's ports.

A port bound on the UDP engine takes datagrams of both families: the socket's callback gets
(16-byte address, port) as the peer for IPv6, and `sendto` to such a peer comes back here.
The checksum is mandatory over IPv6: a zero one is a bad checksum (§8.1).
"""

from __future__ import annotations

import struct

from netstack.counters import Counters
from netstack.drops import Drop
from netstack.proto.fast6 import send_one
from netstack.proto.icmpv6 import Icmpv6Engine
from netstack.proto.ipv6 import Ipv6Engine
from netstack.proto.udp import UdpEngine
from netstack.wire import icmpv6 as wicmp6
from netstack.wire import ipv6 as wipv6
from netstack.wire.checksum import checksum

HEADER_LEN = 8
MAX_PAYLOAD = 65535 - HEADER_LEN
_HEADER = struct.Struct("!HHHH")


class Udp6:
    def __init__(
        self, udp: UdpEngine, ipv6: Ipv6Engine, icmp: Icmpv6Engine, counters: Counters
    ) -> None:
        self.udp = udp
        self.ipv6 = ipv6
        self.icmp = icmp
        self.counters = counters
        ipv6.register(wipv6.UDP, self.receive)
        icmp.error_handlers[wipv6.UDP] = self.receive_error
        udp.sendto6 = self.sendto

    def receive(
        self,
        header: wipv6.Ipv6Header,
        payload: memoryview,
        packet: memoryview,
        now: float,
        checked: bool = False,
    ) -> None:
        """One datagram. `checked`: the host's fast path (proto/fast6.py) has verified the
        length and checksum already."""
        c = self.counters
        if len(payload) < HEADER_LEN:
            c.drop(Drop.UDP_TRUNCATED)
            return
        src_port, dst_port, length, csum = _HEADER.unpack_from(payload)
        if length < HEADER_LEN or length > len(payload):
            c.drop(Drop.UDP_BAD_LENGTH)
            return
        if not checked:
            pseudo = wipv6.pseudo_header(header.src, header.dst, wipv6.UDP, length)
            if csum == 0 or checksum(pseudo, payload[:length]):
                c.drop(Drop.UDP_BAD_CHECKSUM)
                return
        c.udp_rx += 1
        sock = self.udp.lookup(dst_port)
        if sock is None:
            c.drop(Drop.UDP_NO_PORT)
            if header.dst[0] != 0xFF:  # RFC 4443 §3.1 port unreachable; never about a group
                self.icmp.send_error(
                    wicmp6.TYPE_DEST_UNREACHABLE, wicmp6.CODE_PORT_UNREACHABLE, 0, packet, now
                )
            return
        self.udp.now = now
        dst = header.dst
        if sock.reflect and dst[0] != 0xFF:
            # The echo's reply in one step, as UdpEngine.receive_fast's for IPv4: addresses
            # and ports swapped leave the pseudo-header and header sums unchanged, so the
            # request's verified checksum is the reply's; it leaves from the address the
            # request was sent to.
            sock.reflected += 1
            head = _HEADER.pack(dst_port, src_port, length, csum)
            if send_one(self.ipv6, header.src, dst, wipv6.UDP, head, payload[HEADER_LEN:length],
                        0, now):  # fmt: skip
                c.udp_tx += 1
            return
        sock.on_datagram(payload[HEADER_LEN:length], (header.src, src_port), header.dst, now)

    def receive_error(
        self,
        icmp_type: int,
        code: int,
        word: int,
        inner: wipv6.Ipv6Header,
        inner_payload: memoryview,
        now: float,
    ) -> None:
        if len(inner_payload) < 4:
            return
        sock = self.udp.lookup(int.from_bytes(inner_payload[0:2], "big"))
        if sock is not None and sock.on_error is not None:
            sock.on_error(icmp_type, code, (inner.dst, int.from_bytes(inner_payload[2:4], "big")),
                          now)  # fmt: skip

    def sendto(self, src_port: int, data: bytes | bytearray | memoryview, address: tuple) -> bool:
        dst, dst_port = address
        if len(data) > MAX_PAYLOAD:
            raise ValueError(f"UDP payload of {len(data)} bytes exceeds {MAX_PAYLOAD}")
        if not 0 < dst_port <= 0xFFFF:
            raise ValueError(f"UDP port out of range: {dst_port}")
        now = self.udp.now
        src = self.ipv6.addresses.select_source(dst)
        if src is None:
            self.counters.drop(Drop.IPV6_NO_SOURCE)
            return False
        length = HEADER_LEN + len(data)
        head = _HEADER.pack(src_port, dst_port, length, 0)
        csum = checksum(wipv6.pseudo_header(src, dst, wipv6.UDP, length), head, data) or 0xFFFF
        head = _HEADER.pack(src_port, dst_port, length, csum)
        if self.ipv6.send(dst, wipv6.UDP, (head, data), now, src=src):
            self.counters.udp_tx += 1
            return True
        return False
