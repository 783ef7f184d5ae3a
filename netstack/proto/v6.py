"""The IPv6 side of a host: addresses, IPv6, ICMPv6 and ND engines wired together, so that
`Host` adds IPv6 in one place (one ethertype, its engines, its multicast MACs).

Upper layers over IPv6: ICMPv6, UDP (proto/udp6.py, sharing the UDP engine's ports; without a
UDP engine every datagram gets Port Unreachable) and TCP (the host's TcpEngine, attached with
`attach_ipv6`: one connection table and one set of listeners for both families; without a TCP
engine a segment is an unknown next header, Parameter Problem, as for any protocol the host
lacks).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

from netstack.counters import Counters
from netstack.drops import Drop
from netstack.proto.addr6 import AddressTable
from netstack.proto.icmpv6 import Icmpv6Config, Icmpv6Engine
from netstack.proto.ipv6 import Ipv6Config, Ipv6Engine
from netstack.proto.nd import NdConfig, NdEngine
from netstack.proto.tcp.engine import TcpEngine
from netstack.proto.udp import UdpEngine
from netstack.proto.udp6 import Udp6
from netstack.wire import ethernet as weth
from netstack.wire import icmpv6 as wicmp6
from netstack.wire import ipv6 as wipv6
from netstack.wire.checksum import checksum

Buffer = bytes | bytearray | memoryview
Frame = tuple[Buffer, ...]


@dataclasses.dataclass(slots=True)
class Ipv6HostConfig:
    interface: str  # RFC 7217 Net_Iface
    secret: bytes  # RFC 7217 secret_key (from config or the state directory, never the MAC)
    static: tuple[tuple[bytes, int], ...] = ()  # (address, prefix length)
    slaac: bool = True
    nd: NdConfig = dataclasses.field(default_factory=NdConfig)
    icmp: Icmpv6Config = dataclasses.field(default_factory=Icmpv6Config)


class Ipv6Stack:
    ETHERTYPE = wipv6.ETHERTYPE_IPV6

    def __init__(
        self,
        mac: bytes,
        mtu: int,
        config: Ipv6HostConfig,
        counters: Counters,
        emit: Callable[[Frame], None],
        rng: random.Random,
        udp: UdpEngine | None = None,
        tcp: TcpEngine | None = None,
    ) -> None:
        self.config = config
        self.counters = counters
        self.addresses = AddressTable()
        self.ipv6 = Ipv6Engine(
            Ipv6Config(mtu=max(mtu, wipv6.MIN_MTU)), self.addresses, counters, _unset, rng
        )
        self.icmp = Icmpv6Engine(self.ipv6, counters, config.icmp)
        nd_config = dataclasses.replace(config.nd, slaac=config.slaac)
        self.nd = NdEngine(mac, config.interface, config.secret, self.ipv6, counters, emit,
                           nd_config, rng)  # fmt: skip
        self.nd.link_mtu = mtu
        self.icmp.nd_handler = self.nd.receive
        if udp is not None:
            self.udp6: Udp6 | None = Udp6(udp, self.ipv6, self.icmp, counters)
            self.udp6.nd_state = self.nd.state  # echo runs: a super-frame only when resolved
        else:
            self.udp6 = None
            self.ipv6.register(wipv6.UDP, self._closed_port)
        # TCP's receive for the fast path (proto/fast6.py), None without a TCP engine
        self.tcp_receive6 = None if tcp is None else tcp.receive6
        if tcp is not None:
            tcp.attach_ipv6(self.ipv6, self.icmp)
        self.engines = (self.ipv6, self.nd)

    def start(self, now: float) -> None:
        self.nd.start(now, list(self.config.static))

    def receive(self, eth: weth.EthernetHeader, payload: memoryview, now: float) -> None:
        self.ipv6.receive(payload, now)

    def _closed_port(
        self, header: wipv6.Ipv6Header, payload: memoryview, packet: memoryview, now: float
    ) -> None:
        """No IPv6 UDP socket exists: a valid datagram gets Port Unreachable (RFC 4443 §3.1)."""
        c = self.counters
        if len(payload) < 8:
            c.drop(Drop.UDP_TRUNCATED)
            return
        length = int.from_bytes(payload[4:6], "big")
        if length < 8 or length > len(payload):
            c.drop(Drop.UDP_BAD_LENGTH)
            return
        # RFC 8200 §8.1: a zero UDP checksum is invalid over IPv6.
        pseudo = wipv6.pseudo_header(header.src, header.dst, wipv6.UDP, length)
        if payload[6:8] == b"\0\0" or checksum(pseudo, payload[:length]):
            c.drop(Drop.UDP_BAD_CHECKSUM)
            return
        c.udp_rx += 1
        c.drop(Drop.UDP_NO_PORT)
        if header.dst[0] != 0xFF:
            self.icmp.send_error(
                wicmp6.TYPE_DEST_UNREACHABLE, wicmp6.CODE_PORT_UNREACHABLE, 0, packet, now
            )


def _unset(next_hop: bytes, packet: tuple[Buffer, ...], now: float) -> None:
    raise AssertionError("the ND engine replaces the IPv6 engine's link_send")
