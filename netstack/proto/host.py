"""One IPv4 host on one Ethernet link: the pure core that the loop feeds.

Frames and `now` go in through `receive_batch`; frames to send pile up in `tx` (each a tuple of
buffers for writev); timers run through `poll(now)` / `next_deadline()`. No I/O, no clock.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

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
from netstack.wire import vnet as wvnet
from netstack.wire.errors import Malformed

Buffer = bytes | bytearray | memoryview
Frame = tuple[Buffer, ...]


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

    # -- the loop's entry points ---------------------------------------------------------
    def start(self, now: float) -> None:
        """Announce ourselves (gratuitous ARP) so neighbours update stale caches."""
        self.now = now
        self.arp.announce(now)

    def receive_batch(
        self, frames: list[memoryview], now: float, meta: list[int] | None = None
    ) -> None:
        """Handle a batch of received frames; views are valid only during this call.

        `meta`, from a link with the virtio-net header: per frame, what its header said
        (wire/vnet.py metadata ints; 0 = nothing, as a link without offloads).
        """
        self.now = self.udp.now = self.tcp.now = now
        receive = self.receive
        if meta:
            offloaded = self._receive_offloaded
            for frame, m in zip(frames, meta, strict=True):
                if m:
                    offloaded(frame, m, now)
                else:
                    receive(frame, now)
        else:
            for frame in frames:
                receive(frame, now)
        self.tcp.flush(now)  # TCP's flush point: app events, ACKs and data for the batch

    def _receive_offloaded(self, frame: memoryview, meta: int, now: float) -> None:
        """A frame whose virtio-net header says something: a TCP super-frame is taken whole
        (one segment for TCP); an L4 checksum the header vouches for (partial, or verified
        by the kernel) is not verified again. Both hold for this frame only."""
        gso = wvnet.meta_gso_type(meta)
        ipv4 = self.ipv4
        if gso:
            c = self.counters
            if gso != wvnet.GSO_TCPV4:  # never negotiated: TSO6 and USO are left off
                c.rx_packets += 1
                c.rx_bytes += len(frame)
                c.drop(Drop.LINK_GSO_UNSUPPORTED)
                return
            segs = wvnet.segments(len(frame) - (meta >> 64), wvnet.meta_gso_size(meta))
            c.gso_frames_rx += 1
            c.gso_segments_rx += segs
            # TCP segments and IPv4 packets count what the wire carried, as Linux's InSegs
            # (TCP and IPv4 add the 1 of the super-frame itself)
            c.tcp_segments_rx += segs - 1
            c.ipv4_rx += segs - 1
            ipv4.rx_gso = True
        # A header vouches for one frame, never for a datagram reassembled from fragments.
        trusted = (
            wvnet.meta_trusted(meta) and len(frame) > 21 and not (frame[20] & 0x3F or frame[21])
        )
        tcp, udp = self.tcp, self.udp
        tcp.csum_trusted = udp.csum_trusted = trusted
        self.receive(frame, now)
        tcp.csum_trusted = udp.csum_trusted = ipv4.rx_gso = False

    def receive(self, frame: memoryview, now: float) -> None:
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
        deadlines = [d for e in self._engines if (d := e.next_deadline()) is not None]
        return min(deadlines) if deadlines else None

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
