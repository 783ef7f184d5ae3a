"""One IPv4 host on one Ethernet link: the pure core that the loop feeds.

Frames and `now` go in through `receive_batch`; frames to send pile up in `tx` (each a tuple of
buffers for writev); timers run through `poll(now)` / `next_deadline()`. No I/O, no clock.
"""

from __future__ import annotations

import dataclasses
import random
import struct
from collections.abc import Callable

from netstack._ffi import ffi, lib
from netstack.counters import Counters
from netstack.drops import Drop
from netstack.proto.arp import ArpConfig, ArpEngine
from netstack.proto.icmp import IcmpConfig, IcmpEngine
from netstack.proto.ipv4 import Ipv4Config, Ipv4Engine
from netstack.proto.tcp.config import TcpConfig
from netstack.proto.tcp.engine import TcpEngine
from netstack.proto.udp import UdpEngine
from netstack.wire import ethernet as weth
from netstack.wire import icmp as wicmp
from netstack.wire import ipv4 as wipv4
from netstack.wire.errors import Malformed

Buffer = bytes | bytearray | memoryview
Frame = tuple[Buffer, ...]
# Fast path (see Host.receive): the checks in C, the source address read once.
_rx_fast = lib.ns_rx_fast
_from_buffer = ffi.from_buffer
_U32 = struct.Struct("!I")

@dataclasses.dataclass(slots=True)
class HostConfig:
    mac: bytes
    address: int
    prefix_len: int
    gateway: int | None = None
    mtu: int = 1500
    arp: ArpConfig = dataclasses.field(default_factory=ArpConfig)
    icmp: IcmpConfig = dataclasses.field(default_factory=IcmpConfig)
    tcp: TcpConfig = dataclasses.field(default_factory=TcpConfig)


class Host:
    """Ethernet demultiplexing plus the ARP, IPv4, ICMP, UDP and TCP engines wired together."""

    def __init__(
        self,
        config: HostConfig,
        counters: Counters | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.counters = counters if counters is not None else Counters()
        self.rng = rng if rng is not None else random.SystemRandom()
        self.tx: list[Frame] = []
        self.now = 0.0
        c = self.counters
        self.arp = ArpEngine(
            config.mac, config.address, c, self.tx.append, self._arp_unreachable, config.arp
        )
        self.ipv4 = Ipv4Engine(
            Ipv4Config(
                address=config.address,
                prefix_len=config.prefix_len,
                gateway=config.gateway,
                mtu=config.mtu,
            ),
            c,
            self.arp.send_ipv4,
            self.rng,
        )
        # Unicast to a resolved neighbour: straight onto the tx queue (arp.ready_header).
        self.ipv4.link_header = self.arp.ready_header
        self.ipv4.link_emit = self.tx.append
        self.icmp = IcmpEngine(self.ipv4, c, config.icmp)
        self.udp = UdpEngine(self.ipv4, c, self.rng)
        self.icmp.error_handlers[wipv4.PROTO_UDP] = self.udp.receive_error
        self.tcp = TcpEngine(self.ipv4, c, self.rng, config.tcp)
        self.icmp.error_handlers[wipv4.PROTO_TCP] = self.tcp.receive_error
        self._ethertypes: dict[int, Callable[[weth.EthernetHeader, memoryview, float], None]] = {
            weth.ETHERTYPE_ARP: self.arp.receive,
            weth.ETHERTYPE_IPV4: self._receive_ipv4,
        }
        self._engines = (self.arp, self.ipv4, self.tcp)
        # Protocols the fast path hands a validated datagram to:
        # (src, dst, payload, packet, now, checksum_verified)
        self._fast: dict[int, Callable[[int, int, memoryview, memoryview, float, bool], None]] = {
            wipv4.PROTO_UDP: self.udp.receive_fast,
            wipv4.PROTO_TCP: self.tcp.receive_fast,
        }

    # -- the loop's entry points ---------------------------------------------------------
    def start(self, now: float) -> None:
        """Announce ourselves (gratuitous ARP) so neighbours update stale caches."""
        self.now = now
        self.arp.announce(now)

    def receive_batch(self, frames: list[memoryview], now: float) -> None:
        """Handle a batch of received frames; views are valid only during this call."""
        self.now = self.udp.now = self.tcp.now = now
        receive = self.receive
        for frame in frames:
            receive(frame, now)
        self.tcp.flush(now)  # TCP's flush point: app events, ACKs and data for the batch

    def receive(self, frame: memoryview, now: float) -> None:
        """One frame. The common case, a unicast IPv4 datagram for our address with a 20-byte
        header, no fragmentation, a sane source, a good header checksum, carrying UDP or TCP
        whose length and checksum verify, is recognised by one C call (ns_rx_fast) and handed
        straight to the protocol; anything else takes the general path, which counts the drop."""
        ipv4 = self.ipv4
        dst = ipv4.config.address
        bcast = ipv4.subnet_broadcast
        mac = self.config.mac
        if type(mac) is not bytes:  # cffi passes only bytes as `const char *`
            mac = bytes(mac)
        r = _rx_fast(_from_buffer(frame), len(frame), mac, dst, 0 if bcast is None else bcast)
        if r:
            c = self.counters
            c.rx_packets += 1
            c.rx_bytes += len(frame)
            c.ipv4_rx += 1
            packet = frame[14 : 14 + (r >> 8)]
            src = _U32.unpack_from(frame, 26)[0]
            self._fast[r & 0xFF](src, dst, packet[20:], packet, now, True)
            return
        self._receive_general(frame, now)

    def _receive_general(self, frame: memoryview, now: float) -> None:
        c = self.counters
        c.rx_packets += 1
        c.rx_bytes += len(frame)
        try:
            eth, payload = weth.parse(frame)
        except Malformed as bad:
            c.drop(bad.reason)
            return
        dst = eth.dst
        if dst != self.config.mac and dst != weth.BROADCAST:
            c.drop(Drop.ETH_NOT_FOR_US)
            return
        if eth.src[0] & 1:
            c.drop(Drop.ETH_BAD_SOURCE)
            return
        handler = self._ethertypes.get(eth.ethertype)
        if handler is None:
            c.drop(Drop.ETH_UNKNOWN_ETHERTYPE)
            return
        handler(eth, payload, now)

    def poll(self, now: float) -> None:
        """Run every protocol timer that is due."""
        self.now = self.udp.now = now
        for engine in self._engines:
            engine.poll(now)

    def next_deadline(self) -> float | None:
        """The nearest engine deadline (asked twice per loop turn: a plain loop, no list)."""
        best = None
        for engine in self._engines:
            d = engine.next_deadline()
            if d is not None and (best is None or d < best):
                best = d
        return best

    # -- internals -------------------------------------------------------------------------
    def _receive_ipv4(self, eth: weth.EthernetHeader, payload: memoryview, now: float) -> None:
        self.ipv4.receive(payload, now)

    def _arp_unreachable(self, ip: int, packets: list[tuple[Buffer, ...]], now: float) -> None:
        """Resolution failed: tell local senders, as an ICMP host unreachable would."""
        for pieces in packets:
            packet = memoryview(b"".join(pieces))
            try:
                header, payload = wipv4.parse(packet, verify_checksum=False)
            except Malformed:
                continue
            handler = self.icmp.error_handlers.get(header.protocol)
            if handler is not None and len(payload) >= 8:
                handler(
                    wicmp.TYPE_DEST_UNREACHABLE, wicmp.CODE_HOST_UNREACHABLE, header, payload, now
                )
