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
from netstack.proto.deadlines import Announce
from netstack.proto.dhcp import DhcpClient, DhcpConfig, Lease
from netstack.proto.fast6 import Fast6
from netstack.proto.icmp import IcmpConfig, IcmpEngine
from netstack.proto.ipv4 import Ipv4Config, Ipv4Engine
from netstack.proto.tcp.config import TcpConfig
from netstack.proto.tcp.engine import TcpEngine
from netstack.proto.udp import UdpEngine, UdpSocket
from netstack.proto.v6 import Ipv6HostConfig, Ipv6Stack
from netstack.wire import arp as warp
from netstack.wire import dhcp as wdhcp
from netstack.wire import ethernet as weth
from netstack.wire import icmp as wicmp
from netstack.wire import ipv4 as wipv4
from netstack.wire import udp as wudp
from netstack.wire import vnet as wvnet
from netstack.wire.errors import Malformed

Buffer = bytes | bytearray | memoryview
Frame = tuple[Buffer, ...]
# Fast path (see Host.receive): the checks in C, the source address read once.
_rx_fast = lib.ns_rx_fast
_rx_fast_valid = lib.ns_rx_fast_v  # with the L4 checksum vouched for (Host.receive's l4_valid)
_from_buffer = ffi.from_buffer
_U32 = struct.Struct("!I")
_U16 = struct.Struct("!H")
_V6_TRUSTED = frozenset({6, 17})  # next headers whose checksum a vnet header may vouch for
# The UDP echo per receive batch (Host._echo_batch, ns_udp_echo_batch): False turns it off
# (every frame then takes Host.receive, as before; tests/unit/test_echo_batch.py compares both).
ECHO_BATCH = True
_echo_run = lib.ns_udp_echo_batch
_echo_uso = lib.ns_udp_echo_runs  # the same with USO: payloads for the echo runs
_echo_scan = lib.ns_udp_echo_scan  # where the next frame that may be an echo request is
_ECHO_SEGS = 256  # segments (same peer, port and size in a row) of one ns_udp_echo_runs call
ECHO_PEERS = 8  # peers whose headers C may use at once (the most recently learned)
_ECHO_OUT_SIZE = 1 << 18  # replies of one C run; a run stops early when full (and resumes)
_F_DATA_VALID = wvnet.F_DATA_VALID
# A batch's pure ACKs (Host._ack_batch, ns_ack_runs): those that replace their connection's
# held ACK skip the per-frame path. False turns it off (every frame takes Host.receive).
ACK_BATCH = True
ACK_BATCH_MIN = 4
_ack_runs = lib.ns_ack_runs


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
    # Set: the address comes from DHCP (address/prefix_len are then ignored: the host starts
    # with none and answers only once a lease is bound).
    dhcp: DhcpConfig | None = None
    # Set: IPv6 beside IPv4 (netstack/proto/v6.py); None: 0x86DD frames are unknown ethertypes.
    ipv6: Ipv6HostConfig | None = None


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
        self.icmp.pmtu_handlers[wipv4.PROTO_UDP] = self.udp.receive_frag_needed
        self.icmp.pmtu_handlers[wipv4.PROTO_TCP] = self.tcp.receive_frag_needed
        self._ethertypes: dict[int, Callable[[weth.EthernetHeader, memoryview, float], None]] = {
            weth.ETHERTYPE_ARP: self.arp.receive,
            weth.ETHERTYPE_IPV4: self._receive_ipv4,
        }
        self._engines: tuple = (self.arp, self.ipv4, self.tcp)
        # IPv6 frames never match the IPv4 fast path (ns_rx_fast checks the ethertype): the
        # common ones take IPv6's own (proto/fast6.py), the rest the general path to
        # v6.receive. Its multicast MACs pass the Ethernet filter.
        self.v6: Ipv6Stack | None = None
        self._fast6: Callable[[memoryview, object, float], bool] | None = None
        self._accept_macs: set[bytes] | frozenset[bytes] = frozenset()
        if config.ipv6 is not None:
            self.v6 = Ipv6Stack(
                config.mac, config.mtu, config.ipv6, c, self.tx.append, self.rng, self.udp,
                self.tcp,
            )  # fmt: skip
            self._accept_macs = self.v6.nd.accept_macs
            self._ethertypes[Ipv6Stack.ETHERTYPE] = self.v6.receive
            self._engines = (*self._engines, *self.v6.engines)
            self._fast6 = Fast6(config.mac, self.v6, c).receive
        self.dhcp: DhcpClient | None = None
        self.on_lease: Callable[[Lease | None, float], None] | None = None  # runtime's hook
        if config.dhcp is not None:
            self._start_dhcp(config.dhcp)
        # Protocols the fast path hands a validated datagram to:
        # (src, dst, payload, packet, now, checksum_verified)
        self._fast: dict[int, Callable[[int, int, memoryview, memoryview, float, bool], None]] = {
            wipv4.PROTO_UDP: self.udp.receive_fast,
            wipv4.PROTO_TCP: self.tcp.receive_fast,
        }
        # The echo batch's state (see _echo_batch): the socket and the peers C may reply to,
        # made on first use.
        self._echo_sock: UdpSocket | None = None
        self._echo_ips: list[int] = []
        self._echo_c: _EchoC | None = None
        self._ack_marks: tuple | None = None  # _ack_batch's per-frame arrays (grow)

    # -- the loop's entry points ---------------------------------------------------------
    def start(self, now: float, lease: Lease | None = None) -> None:
        """Announce ourselves (gratuitous ARP) so neighbours update stale caches; with DHCP,
        start the client instead (INIT-REBOOT when `lease` is a remembered one)."""
        self.now = self.udp.now = now
        if self.v6 is not None:
            self.v6.start(now)
        if self.dhcp is not None:
            self.dhcp.start(now, lease)
        elif self.ipv4.config.address:
            self.arp.announce(now)

    def set_address(
        self, address: int, prefix_len: int, gateway: int | None, mtu: int | None = None
    ) -> None:
        """Change the host's IPv4 address at run time (0: none); `mtu` lowers the link MTU."""
        self.ipv4.set_address(address, prefix_len, gateway)
        self.arp.ip = address
        self.tcp.local_ip = address
        mtu = self.config.mtu if mtu is None else min(mtu, self.config.mtu)
        self.ipv4.config.mtu = mtu
        self.tcp.mss = mtu - wipv4.MIN_HEADER_LEN - 20  # as TcpEngine does (RFC 9293 3.7.1)
        if address:
            self.arp.announce(self.now)

    def receive_batch(
        self,
        frames: list[memoryview],
        now: float,
        meta: list[int] | None = None,
        arena: tuple | None = None,
    ) -> None:
        """Handle a batch of received frames; views are valid only during this call.

        `meta`, from a link with the virtio-net header: per frame, what its header said
        (wire/vnet.py metadata ints; 0 = nothing, as a link without offloads).
        `arena`, from a link whose frames are exactly its arena's first slots (BatchLink's
        rx_arena): (arena, slot_size, header length, lens, per-frame L4-valid flags or NULL);
        the UDP echo then takes runs of echo requests in one C call each (_echo_batch).
        """
        tcp = self.tcp
        self.now = self.udp.now = tcp.now = now
        receive = self.receive
        tcp.flush_follows = True  # what the batch queues for TCP is flushed at its end
        try:
            if (
                arena is not None
                and len(frames) > 1  # (one frame: a C run would save nothing)
                and self._in_c_runs(frames, now, meta, arena)
            ):
                pass
            elif meta:
                offloaded = self._receive_offloaded
                for frame, m in zip(frames, meta, strict=True):
                    if not m:
                        receive(frame, now)
                    elif m == wvnet.F_DATA_VALID:  # an ordinary frame, its L4 checksum vouched
                        receive(frame, now, True)  # for: the fast path does not sum it again
                    else:
                        offloaded(frame, m, now)
            else:
                for frame in frames:
                    receive(frame, now)
            if self.udp.last_reflect is not None:  # a peer for the echo batch's next turn
                self._echo_learn()
            self.udp.flush(now)  # echo replies of the batch as UDP super-frames (USO links)
        except BaseException:
            tcp.flush_follows = False
            tcp.deadline_moved(now)  # what the batch queued waits for the next poll
            raise
        tcp.flush_follows = False
        tcp.flush(now)  # TCP's flush point: app events, ACKs and data for the batch

    def _in_c_runs(
        self, frames: list[memoryview], now: float, meta: list[int] | None, arena: tuple
    ) -> bool:
        """The batch taken by a C pass: UDP echo requests (_echo_batch), else pure ACKs
        (_ack_batch; from ACK_BATCH_MIN frames: a handshake's or a round trip's turn of two or
        three frames would pay the pass for at most one ACK taken). False when neither took
        it (nothing done)."""
        echo = ECHO_BATCH and self._echo_sock is not None
        if echo and self._echo_batch(frames, now, meta, arena):
            return True
        return (
            ACK_BATCH
            and len(frames) >= ACK_BATCH_MIN
            and bool(self.tcp.conns)
            and self._ack_batch(frames, now, meta, arena)
        )

    def _ack_batch(
        self, frames: list[memoryview], now: float, meta: list[int] | None, arena: tuple
    ) -> bool:
        """The batch with its pure ACKs found in one C pass (ns_ack_runs): each frame in
        order, a pure ACK offered first to TcpEngine.take_ack_run, which takes it when it
        replaces its connection's held ACK (ACK_HOLD), the rest through the per-frame path
        as receive_batch hands them on. A run of pure ACKs of one flow (three or more, the
        ACK rising, nothing between them that could touch the connection) is offered whole
        after its first member: TcpEngine.take_ack_run takes its last member for all of them
        when that one replaces the first (then each would have replaced the one before), and
        the other members are passed over; else they go one by one as above. The same
        frames, in the same order, with the same effects, counters included: only the
        parse, and for a run the per-ACK calls, are saved. False (nothing done) when the
        batch has fewer than two pure ACKs."""
        arena_c, slot_size, hlen, lens, _ = arena
        ipv4 = self.ipv4
        dst = ipv4.config.address
        if not dst:
            return False
        n = len(frames)
        if n >= 32768 or (meta and meta.count(0) + meta.count(_F_DATA_VALID) != n):
            return False  # (a link hands over an arena only with plain frames; be sure)
        marks = self._ack_marks
        if marks is None or len(marks[0]) < n:
            size = max(n, 64)
            marks = self._ack_marks = (
                ffi.new("uint8_t[]", size), ffi.new("int32_t[]", size),
                ffi.new("int32_t[]", size), ffi.new("uint16_t[]", size),
            )  # fmt: skip
        pure, head, member, wnd = marks
        mac = self.config.mac
        if type(mac) is not bytes:
            mac = bytes(mac)
        bcast = ipv4.subnet_broadcast
        if _ack_runs(arena_c, slot_size, hlen, lens, n, mac, dst, bcast or 0, *marks) < 2:
            return False
        c = self.counters
        receive = self.receive
        tcp = self.tcp
        take = tcp.take_ack_run
        taken_runs: set[int] | None = None  # first members whose run was taken whole
        for i, frame in enumerate(frames):
            first = member[i] - 1
            if first >= 0 and taken_runs is not None and first in taken_runs:
                continue  # counted with its run
            # (C checked the address and broadcast as they were at the batch's start: a frame
            # before this one may have changed them, a DHCPACK or NAK; then per frame)
            same = ipv4.config.address == dst and ipv4.subnet_broadcast == bcast
            if pure[i] and same and take(frame, 1, 0, now):
                c.rx_packets += 1
                c.rx_bytes += 66
                c.ipv4_rx += 1
            else:  # (plain metadata only: 0 or DATA_VALID, checked above)
                receive(frame, now, bool(meta) and meta[i] == _F_DATA_VALID)
            run = head[i]
            if run >= 0 and same:
                last, more = run & 0xFFFF, (run >> 16) - 1
                if take(frames[last], more, wnd[i], now):
                    c.rx_packets += more
                    c.rx_bytes += 66 * more
                    c.ipv4_rx += more
                    if taken_runs is None:
                        taken_runs = set()
                    taken_runs.add(i)
        return True

    def _echo_batch(
        self, frames: list[memoryview], now: float, meta: list[int] | None, arena: tuple
    ) -> bool:
        """The batch with its UDP echo requests answered in C, a run at a time: each run of
        frames that the per-frame path would reflect (_echo_replies: with a header we vouch
        for; _echo_runs: into the pending USO echo run) is taken by one C call; the frame a
        run stops at takes the per-frame path, and the next run starts after it. Frames that
        cannot be echo requests to the socket's port (ns_udp_echo_scan: no checksum summed)
        go per frame without a run start each. So frames and replies keep their order, and
        every counter, drop and socket statistic is what the per-frame path gives
        (tests/unit/test_echo_batch.py). False (nothing done) when there is no echo socket."""
        udp = self.udp
        sock = self._echo_sock
        if sock is None or not sock.reflect or udp.lookup(sock.port) is not sock:
            self._echo_sock = None
            return False
        echo = self._echo_c
        if echo is None:
            echo = self._echo_c = _EchoC()
        take = self._echo_runs if udp.gso_max else self._echo_replies
        arena_c, slot_size, hlen, lens, _ = arena
        config = self.ipv4.config
        one, receive = self._receive_one, self.receive
        n = len(frames)
        i = 0
        while i < n:
            sock = self._echo_sock  # (the per-frame path may have learned another)
            addr = config.address
            if sock is None or not sock.reflect or udp.lookup(sock.port) is not sock or not addr:
                for j in range(i, n):
                    one(frames[j], meta[j] if meta else 0, now)
                self._echo_learn()
                break
            e = _echo_scan(arena_c, slot_size, hlen, lens, i, n, addr, sock.port)
            if e > i:  # not echo requests: per frame
                if meta:
                    for j in range(i, e):
                        one(frames[j], meta[j], now)
                else:
                    for j in range(i, e):
                        receive(frames[j], now)
                self._echo_learn()
                i = e
                continue
            stop = take(sock, echo, frames, arena, i, n)
            if stop >= n:
                break
            one(frames[stop], meta[stop] if meta else 0, now)  # what C could not take
            self._echo_learn()
            i = stop + 1
        return True

    def _receive_one(self, frame: memoryview, meta: int, now: float) -> None:
        """One frame of a batch, as receive_batch's per-frame loop hands it on."""
        if not meta:
            self.receive(frame, now)
        elif meta == _F_DATA_VALID:
            self.receive(frame, now, True)
        else:
            self._receive_offloaded(frame, meta, now)

    def _echo_replies(
        self, sock: UdpSocket, echo: _EchoC, frames: list[memoryview], arena: tuple, i: int, n: int
    ) -> int:
        """One ns_udp_echo_batch run from frame i: the replies onto the tx queue, the counters
        the per-frame path adds. The peers' headers are checked first, as UdpEngine._reflect
        checks them (route; neighbour REACHABLE or PROBE, no side effect): only frames
        handled in Python can change them, and none runs inside a C run. Returns where the
        run stopped."""
        ipv4, arp = self.ipv4, self.arp
        config = ipv4.config
        addr = config.address
        if ipv4.link_header is None:
            return i
        peers = echo.peers
        route, peek = ipv4.route, arp.peek_header
        npeers = 0
        hops: list[int] = []
        for ip in self._echo_ips:
            hop = route(ip)
            eth = None if hop is None else peek(hop)
            if eth is None or len(eth) != 14:
                continue
            p = peers[npeers]
            p.ip = ip
            p.eth = eth
            p.used = 0
            hops.append(hop)
            npeers += 1
        if not npeers:
            return i
        arena_c, slot_size, hlen, lens, valid = arena
        mac = self.config.mac
        if type(mac) is not bytes:
            mac = bytes(mac)
        bcast = ipv4.subnet_broadcast
        ident = ipv4._ident
        stop = _echo_run(
            arena_c, slot_size, hlen, lens, valid, i, n, mac, addr,
            0 if bcast is None else bcast, sock.port, peers, npeers, config.mtu,
            ident, config.default_ttl, echo.out, _ECHO_OUT_SIZE, echo.offs, echo.rx_bytes,
        )  # fmt: skip
        k = stop - i
        if k:
            c = self.counters
            c.rx_packets += k
            c.rx_bytes += echo.rx_bytes[0]
            c.ipv4_rx += k
            c.udp_rx += k
            c.ipv4_tx += k
            c.udp_tx += k
            sock.reflected += k
            ipv4._ident = (ident + k) & 0xFFFF
            o = ffi.unpack(echo.offs, k + 1)
            out_buf = echo.out_buf
            self.tx.extend([(out_buf[o[j] : o[j + 1]],) for j in range(k)])
            # the neighbour entries used, in the order of their last use (LRU)
            if npeers == 1:
                arp.touch(hops[0])
            else:
                used = sorted((peers[j].last, j) for j in range(npeers) if peers[j].used)
                for _, j in used:
                    arp.touch(hops[j])
        return stop

    def _echo_runs(
        self, sock: UdpSocket, echo: _EchoC, frames: list[memoryview], arena: tuple, i: int, n: int
    ) -> int:
        """_echo_replies with USO (udp.gso_max): the per-frame path adds each request's
        payload to the pending echo run (UdpEngine.receive_fast), whose super-frame is built
        and sent at its flush; here one ns_udp_echo_runs call takes the requests from frame
        i, copies their payloads out and says where the peer, port or size changes, and the
        pending run grows by one piece per segment (or starts anew, flushing the old one, as
        _start_run does per frame). No neighbour is involved until the flush, which is the
        per-frame path's own. Returns where the run stopped."""
        ipv4, udp = self.ipv4, self.udp
        config = ipv4.config
        arena_c, slot_size, hlen, lens, valid = arena
        mac = self.config.mac
        if type(mac) is not bytes:
            mac = bytes(mac)
        port = sock.port
        bcast = ipv4.subnet_broadcast
        segs, nsegs = echo.segs, echo.nsegs
        stop = _echo_uso(
            arena_c, slot_size, hlen, lens, valid, i, n, mac, config.address,
            0 if bcast is None else bcast, port, config.mtu, echo.out, _ECHO_OUT_SIZE,
            segs, _ECHO_SEGS, nsegs, echo.rx_bytes,
        )  # fmt: skip
        k = stop - i
        if not k:
            return stop
        c = self.counters
        c.rx_packets += k
        c.rx_bytes += echo.rx_bytes[0]
        c.ipv4_rx += k
        c.udp_rx += k
        sock.reflected += k
        words = ffi.unpack(segs, 4 * nsegs[0])
        out_buf = echo.out_buf
        at = 0
        for s in range(0, len(words), 4):
            first, count, src, sp = words[s : s + 4]
            length = sp & 0xFFFF
            key = (src, sp >> 16, port, length)
            size = length - 8
            while count:
                if key != udp._run_key or udp._run_n >= udp._run_limit:
                    csum = _U16.unpack_from(frames[first], 40)[0]
                    started = udp._start_run(key, csum)
                    assert started  # C took only what a run can carry
                take = min(count, udp._run_limit - udp._run_n)
                udp._run.append(out_buf[at : at + take * size])
                udp._run_n += take
                at += take * size
                first += take
                count -= take
        return stop

    def _echo_learn(self) -> None:
        """Take the peer (and socket) of the per-frame path's last echo reply, if any."""
        udp = self.udp
        last = udp.last_reflect
        if last is None:
            return
        udp.last_reflect = None
        sock, ip = last
        if sock is not self._echo_sock:
            self._echo_sock = sock
            self._echo_ips = []
        ips = self._echo_ips
        if ip in ips:
            return
        ips.insert(0, ip)
        del ips[ECHO_PEERS:]

    def _receive_offloaded(self, frame: memoryview, meta: int, now: float) -> None:
        """A frame whose virtio-net header says something: a TCP super-frame is taken whole
        (one segment for TCP); an L4 checksum the header vouches for (partial, or verified
        by the kernel) is not verified again. Both hold for this frame only."""
        gso = wvnet.meta_gso_type(meta)
        ipv4 = self.ipv4
        v6 = len(frame) > 54 and frame[12] == 0x86 and frame[13] == 0xDD
        if gso:
            c = self.counters
            # USO is never negotiated; TSO6 only with IPv6 on (else the frame is not ours)
            if gso != (wvnet.GSO_TCPV6 if v6 and self.v6 is not None else wvnet.GSO_TCPV4):
                c.rx_packets += 1
                c.rx_bytes += len(frame)
                c.drop(Drop.LINK_GSO_UNSUPPORTED)
                return
            segs = wvnet.segments(len(frame) - (meta >> 64), wvnet.meta_gso_size(meta))
            c.gso_frames_rx += 1
            c.gso_segments_rx += segs
            # TCP segments and IP packets count what the wire carried, as Linux's InSegs
            # (TCP and IP add the 1 of the super-frame itself)
            c.tcp_segments_rx += segs - 1
            if v6:
                c.ipv6_rx += segs - 1
            else:
                c.ipv4_rx += segs - 1
                ipv4.rx_gso = True
        # A header vouches for one frame, never for a datagram reassembled from fragments
        # (IPv4: offset and MF clear; IPv6: TCP or UDP right after the fixed header).
        if v6:
            trusted = wvnet.meta_trusted(meta) and frame[20] in _V6_TRUSTED
        else:
            trusted = (
                wvnet.meta_trusted(meta) and len(frame) > 21 and not (frame[20] & 0x3F or frame[21])
            )
        tcp, udp = self.tcp, self.udp
        tcp.csum_trusted = udp.csum_trusted = trusted
        self.receive(frame, now)
        tcp.csum_trusted = udp.csum_trusted = ipv4.rx_gso = False

    def receive(self, frame: memoryview, now: float, l4_valid: bool = False) -> None:
        """One frame. The common case, a unicast IPv4 datagram for our address with a 20-byte
        header, no fragmentation, a sane source, a good header checksum, carrying UDP or TCP
        whose length and checksum verify, is recognised by one C call (ns_rx_fast) and handed
        straight to the protocol; IPv6's common case likewise (proto/fast6.py); anything else
        takes the general path, which counts the drop.
        `l4_valid`: the link vouches for the L4 checksum (DATA_VALID: a true checksum, the
        kernel's verified or one the link completed), so the IPv4 fast path does not sum it
        again; a frame the fast path leaves to the general path is verified there as any other."""
        ipv4 = self.ipv4
        dst = ipv4.config.address
        bcast = ipv4.subnet_broadcast
        buf = _from_buffer(frame)
        if not dst:  # no address yet (DHCP): only the general path's unbound filter delivers
            fast6 = self._fast6
            if fast6 is None or not fast6(frame, buf, now):
                self._receive_general(frame, now)
            return
        mac = self.config.mac
        if type(mac) is not bytes:  # cffi passes only bytes as `const char *`
            mac = bytes(mac)
        bcast = 0 if bcast is None else bcast
        if l4_valid:
            r = _rx_fast_valid(buf, len(frame), mac, dst, bcast, 1)
        else:
            r = _rx_fast(buf, len(frame), mac, dst, bcast)
        if r:
            c = self.counters
            c.rx_packets += 1
            c.rx_bytes += len(frame)
            c.ipv4_rx += 1
            packet = frame[14 : 14 + (r >> 8)]
            src = _U32.unpack_from(frame, 26)[0]
            self._fast[r & 0xFF](src, dst, packet[20:], packet, now, True)
            return
        fast6 = self._fast6
        if fast6 is None or not fast6(frame, buf, now):
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
        if dst != self.config.mac and dst != weth.BROADCAST and dst not in self._accept_macs:
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

    def announce_deadlines(self, moved: Announce) -> bool:
        """Connect every engine's deadline announcements to `moved` (the loop's
        deadline_moved; proto/deadlines.py). True when every engine announces, so the loop
        need not ask the host again after each receive batch."""
        every = True
        for engine in self._engines:
            hook = getattr(engine, "announce_deadlines", None)
            if hook is None:
                every = False
            else:
                hook(moved)
        return every

    def next_deadline(self) -> float | None:
        """The nearest engine deadline (a plain loop, no list). The loop asks it when its cached
        deadline comes or after a poll; the engines announce anything earlier."""
        best = None
        for engine in self._engines:
            d = engine.next_deadline()
            if d is not None and (best is None or d < best):
                best = d
        return best

    # -- internals -------------------------------------------------------------------------
    def _start_dhcp(self, config: DhcpConfig) -> None:
        self.set_address(0, 0, None)
        self._leased: tuple[int, int, int | None, int | None] | None = None
        self.dhcp = client = DhcpClient(self.config.mac, self, self.counters, self.rng, config)
        self._dhcp_socket = self.udp.bind(
            wdhcp.CLIENT_PORT, lambda data, src, dst, now: client.receive(data, src[0], now)
        )
        self.ipv4.unbound_filter = _is_dhcp_reply
        self.arp.watch = self._arp_seen
        self._engines = (*self._engines, client)

    def _arp_seen(self, pkt: warp.ArpPacket, now: float) -> None:
        assert self.dhcp is not None
        self.dhcp.arp_seen(pkt.op, pkt.sender_mac, pkt.sender_ip, pkt.target_ip, now)

    # DhcpHost: what the DHCP client asks of us
    def dhcp_send(self, dst: int, payload: bytes, now: float) -> None:
        self.udp.now = now
        self._dhcp_socket.sendto(payload, (dst, wdhcp.SERVER_PORT))

    def dhcp_probe(self, address: int, now: float) -> None:
        self.arp.probe(address)

    def dhcp_announce(self, address: int, now: float) -> None:
        if address == self.arp.ip:
            self.arp.announce(now)

    def dhcp_configure(self, lease: Lease | None, now: float) -> None:
        self.now = now
        key = None if lease is None else (lease.address, lease.prefix_len, lease.gateway, lease.mtu)
        if key != self._leased:  # a renewal with the same terms changes nothing, announces nothing
            self._leased = key
            if lease is None:
                self.set_address(0, 0, None)
            else:
                self.set_address(lease.address, lease.prefix_len, lease.gateway, lease.mtu)
        if self.on_lease is not None:
            self.on_lease(lease, now)

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


def _is_dhcp_reply(header: wipv4.Ipv4Header, payload: memoryview) -> bool:
    """Unfragmented UDP to port 68: what the host takes before it has an address."""
    return (
        header.protocol == wipv4.PROTO_UDP
        and not header.more_fragments
        and not header.frag_offset
        and len(payload) >= wudp.HEADER_LEN
        and int.from_bytes(payload[2:4], "big") == wdhcp.CLIENT_PORT
    )


class _EchoC:
    """The C side of Host._echo_batch: its peer table, reply buffer and outputs."""

    __slots__ = ("nsegs", "offs", "out", "out_buf", "peers", "rx_bytes", "segs")

    def __init__(self) -> None:
        self.peers = ffi.new("struct ns_echo_peer[]", ECHO_PEERS)
        self.out = ffi.new("uint8_t[]", _ECHO_OUT_SIZE)
        self.out_buf = ffi.buffer(self.out)
        self.offs = ffi.new("uint32_t[]", _ECHO_OUT_SIZE // 42 + 2)
        self.rx_bytes = ffi.new("uint64_t[1]")
        self.segs = ffi.new("uint32_t[]", 4 * _ECHO_SEGS)
        self.nsegs = ffi.new("int[1]")
