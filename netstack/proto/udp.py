"""UDP engine: a port table, checksums, and a datagram API for applications.

Applications bind a port (or 0 for a random ephemeral one, RFC 6056 style) with a receive
callback; the callback gets a memoryview that is only valid during the call (copy to keep).
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable

from netstack._ffi import ffi, lib
from netstack.counters import Counters
from netstack.drops import Drop
from netstack.proto.ipv4 import Ipv4Engine
from netstack.wire import icmp as wicmp
from netstack.wire import ipv4 as wipv4
from netstack.wire import udp as wudp
from netstack.wire import vnet as wvnet
from netstack.wire.checksum import _fold, _from_buffer, _partial

EPHEMERAL_FIRST = 49152
EPHEMERAL_LAST = 65535
MAX_PAYLOAD = 65535 - wipv4.MIN_HEADER_LEN - wudp.HEADER_LEN  # 65507
_UDP_HEADER = struct.Struct("!HHHH")
_L4_START = 14 + wipv4.MIN_HEADER_LEN  # Ethernet + IPv4 header: where the UDP header starts
_USO_HEADERS = _L4_START + wudp.HEADER_LEN  # the virtio-net hdr_len of a UDP super-frame
# The echo reply's frame is built here by ns_udp_reflect, then copied out as bytes (the frame
# waits on the link's queue; the next reply reuses the scratch).
_reflect = lib.ns_udp_reflect
_REFLECT_SIZE = 14 + 0xFFFF
_REFLECT_OUT = ffi.new("uint8_t[]", _REFLECT_SIZE)
_REFLECT_BUF = ffi.buffer(_REFLECT_OUT)

# (payload, (src_ip, src_port), dst_ip, now): payload valid only during the call.
DatagramHandler = Callable[[memoryview, tuple[int, int], int, float], None]
# (icmp_type, icmp_code, (dst_ip, dst_port) of the datagram that failed, now)
ErrorHandler = Callable[[int, int, tuple[int, int], float], None]


class PortInUse(OSError):
    """bind() on a port that is already bound."""


class UdpSocket:
    """One bound port. Send with `sendto`; datagrams arrive through the bound callback."""

    __slots__ = ("_engine", "closed", "on_datagram", "on_error", "port", "reflect", "reflected")

    def __init__(
        self,
        engine: UdpEngine,
        port: int,
        on_datagram: DatagramHandler,
        on_error: ErrorHandler | None,
    ) -> None:
        self._engine = engine
        self.port = port
        self.on_datagram = on_datagram
        self.on_error = on_error
        self.closed = False
        # An echo (RFC 862) socket: the engine sends each datagram back itself, in one step,
        # instead of calling on_datagram (see UdpEngine.receive_fast); `reflected` counts them.
        self.reflect = False
        self.reflected = 0

    def sendto(
        self,
        data: bytes | bytearray | memoryview,
        address: tuple[int, int],
        src: int | bytes | None = None,
    ) -> bool:
        """Queue one datagram; False when it could not be sent (no route, too big, closed).
        `src` (IPv6; like IPV6_PKTINFO): the local address to send from, e.g. the `dst` a
        datagram arrived at, so a reply leaves from the address the peer wrote to when we have
        several (link-local, SLAAC, static); None: the RFC 6724 choice. IPv4 has one address."""
        if self.closed:
            raise OSError("socket is closed")
        if type(address[0]) is bytes:  # a 16-byte IPv6 address: proto/udp6.py sends it
            send6 = self._engine.sendto6
            if send6 is None:
                raise OSError("IPv6 is off")
            if src is not None:
                return send6(self.port, data, address, src)
            return send6(self.port, data, address)
        return self._engine.sendto(self.port, data, address)

    def path_mtu(self, dst: int) -> int:
        """RFC 1191 / RFC 8085 3.2: the largest IPv4 datagram believed to reach `dst` without
        fragmentation (the link MTU unless a "fragmentation needed" lowered it; estimates age
        out after 10 minutes). A UDP payload up to path_mtu(dst) - 28 goes unfragmented."""
        engine = self._engine
        return engine.ipv4.path_mtu(dst, engine.now)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._engine.unbind(self.port)


class UdpEngine:
    """Demultiplexes datagrams to bound ports and answers closed ports with ICMP."""

    def __init__(
        self,
        ipv4: Ipv4Engine,
        counters: Counters,
        rng: random.Random,
    ) -> None:
        self.ipv4 = ipv4
        self.csum_trusted = False  # set by the host like TcpEngine.csum_trusted
        self.counters = counters
        self._rng = rng
        self._ports: dict[int, UdpSocket] = {}
        self.now = 0.0  # the time of the frame or timer being handled; set by the host
        # Echo replies per UDP super-frame (virtio-net GSO_UDP_L4, USO: the link's kernel cuts
        # it into datagrams, one write for up to this many); 0 = off. Set by the runtime when
        # the link speaks the virtio-net header and its kernel has USO. Replies of one peer
        # and size within a receive batch form a run, sent at the batch's end (flush).
        self.gso_max = 0
        # Payloads of the pending echo run: one piece each (per frame), or one piece for
        # several in a row (the host's echo batch copies them out of C); _run_n counts them.
        self._run: list[memoryview | bytes] = []
        self._run_n = 0
        self._run_key: tuple[int, int, int, int] | None = None  # peer ip, peer port, port, len
        self._run_limit = 0
        self._run_csum = 0  # the first reply's checksum: a run of one goes out plain
        # IPv6: one port table for both families (a bound port takes v6 datagrams too, as a
        # Linux socket on "::" without IPV6_V6ONLY); proto/udp6.py sets the v6 sender.
        self.sendto6: Callable[[int, bytes | bytearray | memoryview, tuple], bool] | None = None
        self.flush6: Callable[[float], None] | None = None  # proto/udp6.py's echo runs
        # (socket, peer) of the last echo reply sent by the per-frame path (proto/host.py's
        # echo batch takes that peer's next requests in C); the host clears it.
        self.last_reflect: tuple[UdpSocket, int] | None = None
        ipv4.register(wipv4.PROTO_UDP, self.receive)

    # -- port table ------------------------------------------------------------------------
    def bind(
        self,
        port: int,
        on_datagram: DatagramHandler,
        on_error: ErrorHandler | None = None,
    ) -> UdpSocket:
        if port == 0:
            port = self._ephemeral_port()
        elif not 0 < port <= 0xFFFF:
            raise ValueError(f"UDP port out of range: {port}")
        elif port in self._ports:
            raise PortInUse(f"UDP port {port} is already bound")
        sock = UdpSocket(self, port, on_datagram, on_error)
        self._ports[port] = sock
        return sock

    def lookup(self, port: int) -> UdpSocket | None:
        """The socket bound to `port` (for the IPv6 side, which shares the table)."""
        return self._ports.get(port)

    def unbind(self, port: int) -> None:
        self._ports.pop(port, None)

    def bound_ports(self) -> list[int]:
        return sorted(self._ports)

    def _ephemeral_port(self) -> int:
        """RFC 6056 algorithm 1: a random start, then the next free port."""
        span = EPHEMERAL_LAST - EPHEMERAL_FIRST + 1
        start = self._rng.randrange(span)
        for i in range(span):
            port = EPHEMERAL_FIRST + (start + i) % span
            if port not in self._ports:
                return port
        raise PortInUse("no free ephemeral UDP port")

    # -- receive ---------------------------------------------------------------------------
    def receive(
        self, header: wipv4.Ipv4Header, payload: memoryview, packet: memoryview, now: float
    ) -> None:
        self.receive_fast(header.src, header.dst, payload, packet, now, self.csum_trusted)

    def receive_fast(
        self,
        src: int,
        dst: int,
        payload: memoryview,
        packet: memoryview,
        now: float,
        checked: bool = False,
    ) -> None:
        """One datagram (the checks of wire/udp.parse, inline: this is the per-datagram path).
        `checked`: the host's fast path has verified the length and checksum already."""
        c = self.counters
        size = len(payload)
        if size < wudp.HEADER_LEN:
            c.drop(Drop.UDP_TRUNCATED)
            return
        src_port, dst_port, length, csum = _UDP_HEADER.unpack_from(payload)
        if length < wudp.HEADER_LEN or length > size:
            c.drop(Drop.UDP_BAD_LENGTH)
            return
        if csum and not checked:
            pseudo = (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF)
            if _fold(_partial(_from_buffer(payload), length, pseudo + wudp.PROTO_UDP + length)):
                c.drop(Drop.UDP_BAD_CHECKSUM)
                return
        c.udp_rx += 1
        sock = self._ports.get(dst_port)
        if sock is None:
            c.drop(Drop.UDP_NO_PORT)
            if dst == self.ipv4.config.address and self.ipv4.icmp_error is not None:
                self.ipv4.icmp_error(
                    wicmp.TYPE_DEST_UNREACHABLE, wicmp.CODE_PORT_UNREACHABLE, packet, now
                )
            return
        self.now = now
        ipv4 = self.ipv4
        if sock.reflect and csum and dst == ipv4.config.address:
            # The echo's reply, in one step: addresses and ports swapped leave the pseudo-header
            # and header sums unchanged, and the payload is the same, so the checksum verified
            # on the way in (here, by the fast path or by the link's vouching) is the reply's.
            sock.reflected += 1
            if self.gso_max:
                key = (src, src_port, dst_port, length)
                if key == self._run_key and self._run_n < self._run_limit:
                    self._run.append(payload[wudp.HEADER_LEN : length])
                    self._run_n += 1
                    return
                if self._start_run(key, csum):
                    self._run.append(payload[wudp.HEADER_LEN : length])
                    self._run_n = 1
                    self.last_reflect = (sock, src)  # the host's echo batch learns the socket
                    return
            if self._reflect(src, payload, length, now):
                c.udp_tx += 1
                self.last_reflect = (sock, src)  # the host's echo batch learns the peer
            return
        sock.on_datagram(payload[wudp.HEADER_LEN : length], (src, src_port), dst, now)

    def _reflect(self, peer: int, datagram: memoryview, length: int, now: float) -> bool:
        """Send the echo's reply to `peer`: `datagram` (the request's UDP header and payload,
        `length` bytes) back with its ports swapped. When the reply needs nothing but a header
        (an on-link or gateway next hop whose MAC is known, within the MTU), one C call builds
        the whole frame, the same bytes Ipv4Engine.send would (tests/unit/test_udp_reflect.py);
        anything else (ARP to resolve, fragmentation, no route) goes through Ipv4Engine.send."""
        ipv4 = self.ipv4
        link_header = ipv4.link_header
        if link_header is not None and wipv4.MIN_HEADER_LEN + length <= ipv4.config.mtu:
            next_hop = ipv4.route(peer)
            eth = None if next_hop is None else link_header(next_hop)
            if eth is not None and len(eth) == 14:  # ns_udp_reflect copies 14 bytes
                ident = ipv4._ident
                ipv4._ident = (ident + 1) & 0xFFFF
                n = _reflect(
                    _from_buffer(datagram), length, eth, ipv4.config.address, peer,
                    ident, ipv4.config.default_ttl, _REFLECT_OUT, _REFLECT_SIZE,
                )  # fmt: skip
                if n > 0:
                    self.counters.ipv4_tx += 1
                    ipv4.link_emit((_REFLECT_BUF[:n],))  # type: ignore[misc]
                    return True
                ipv4._ident = ident
        src_port, dst_port, _, csum = _UDP_HEADER.unpack_from(datagram)
        header = _UDP_HEADER.pack(dst_port, src_port, length, csum)
        return ipv4.send(peer, wudp.PROTO_UDP, (header, datagram[wudp.HEADER_LEN : length]), now)

    # -- echo runs (USO) ---------------------------------------------------------------------
    def _start_run(self, key: tuple[int, int, int, int], csum: int) -> bool:
        """Send the pending run and start one for `key`; False when replies of this size
        cannot be cut by the kernel (empty, or a segment above the MTU: they go alone)."""
        if self._run_n:
            self.flush(self.now)
        size = key[3] - wudp.HEADER_LEN
        if size <= 0 or wipv4.MIN_HEADER_LEN + key[3] > self.ipv4.config.mtu:
            return False
        self._run_key = key
        self._run_csum = csum
        self._run_limit = min(self.gso_max, (0xFFFF - wipv4.MIN_HEADER_LEN - 8) // size)
        return True

    def flush(self, now: float) -> None:
        """Send the pending echo run (the host calls this at the end of a receive batch): one
        reply as an ordinary datagram, several as one UDP super-frame whose checksum the
        kernel completes per datagram (NEEDS_CSUM with the pseudo-header sum in place)."""
        if self.flush6 is not None:
            self.flush6(now)
        run = self._run
        n = self._run_n
        if not n:
            return
        assert self._run_key is not None
        peer, peer_port, port, length = self._run_key
        self._run = []
        self._run_n = 0
        self._run_key = None
        c = self.counters
        ipv4 = self.ipv4
        if n == 1:
            header = _UDP_HEADER.pack(port, peer_port, length, self._run_csum)
            if ipv4.send(peer, wudp.PROTO_UDP, (header, run[0]), now):
                c.udp_tx += 1
            return
        next_hop = ipv4.route(peer)
        if next_hop is None:
            c.drop(Drop.IPV4_NO_ROUTE, n)
            return
        size = length - wudp.HEADER_LEN
        total = wudp.HEADER_LEN + n * size
        me = ipv4.config.address
        s = (me >> 16) + (me & 0xFFFF) + (peer >> 16) + (peer & 0xFFFF) + wudp.PROTO_UDP + total
        s = (s & 0xFFFF) + (s >> 16)
        s = (s & 0xFFFF) + (s >> 16)
        udp_header = _UDP_HEADER.pack(port, peer_port, total, s)  # partial: the kernel completes
        # The kernel numbers the datagrams ident, ident + 1, ... (as Ipv4Engine._send_gso)
        ident = ipv4._ident
        ipv4._ident = (ident + n) & 0xFFFF
        ip_header = wipv4.build(
            me, peer, wudp.PROTO_UDP, total, ident=ident, ttl=ipv4.config.default_ttl
        )
        mark = wvnet.mark(
            wvnet.VnetHeader(wvnet.F_NEEDS_CSUM, wvnet.GSO_UDP_L4, _USO_HEADERS, size, _L4_START, 6)
        )
        c.ipv4_tx += n
        c.udp_tx += n
        c.gso_frames_tx += 1
        c.gso_segments_tx += n
        ipv4.link_send(next_hop, (mark, ip_header, udp_header, *run), now)

    def receive_error(
        self,
        icmp_type: int,
        code: int,
        inner: wipv4.Ipv4Header,
        inner_payload: memoryview,
        now: float,
    ) -> None:
        """An ICMP error quoting one of our datagrams: tell the socket that sent it."""
        src_port = int.from_bytes(inner_payload[0:2], "big")
        dst_port = int.from_bytes(inner_payload[2:4], "big")
        sock = self._ports.get(src_port)
        if sock is not None and sock.on_error is not None:
            sock.on_error(icmp_type, code, (inner.dst, dst_port), now)

    def receive_frag_needed(
        self, inner: wipv4.Ipv4Header, inner_payload: memoryview, mtu: int, now: float
    ) -> None:
        """ "Fragmentation needed" quoting one of our datagrams: believed when a bound socket
        sent it (UDP has no sequence numbers to check, RFC 5927 5.1; Linux's udp_err does
        the same), the destination's estimate goes down, and the socket hears of it as an
        error (Linux: EMSGSIZE on the socket's error queue with IP_RECVERR)."""
        src_port = int.from_bytes(inner_payload[0:2], "big")
        dst_port = int.from_bytes(inner_payload[2:4], "big")
        sock = self._ports.get(src_port)
        if sock is None:
            self.counters.drop(Drop.UDP_ICMP_NO_SOCKET)
            return
        self.ipv4.pmtu.report(inner.dst, mtu, self.ipv4.config.mtu, now)
        if sock.on_error is not None:
            sock.on_error(
                wicmp.TYPE_DEST_UNREACHABLE, wicmp.CODE_FRAG_NEEDED, (inner.dst, dst_port), now
            )

    # -- send ------------------------------------------------------------------------------
    def sendto(
        self, src_port: int, data: bytes | bytearray | memoryview, address: tuple[int, int]
    ) -> bool:
        dst_ip, dst_port = address
        if len(data) > MAX_PAYLOAD:
            raise ValueError(f"UDP payload of {len(data)} bytes exceeds {MAX_PAYLOAD}")
        if not 0 < dst_port <= 0xFFFF:
            raise ValueError(f"UDP port out of range: {dst_port}")
        # wudp.build, inline (the per-datagram path)
        src_ip = self.ipv4.config.address
        size = len(data)
        length = wudp.HEADER_LEN + size
        s = (src_ip >> 16) + (src_ip & 0xFFFF) + (dst_ip >> 16) + (dst_ip & 0xFFFF)
        s += wudp.PROTO_UDP + length + src_port + dst_port + length  # pseudo-header + header
        csum = _fold(_partial(_from_buffer(data), size, s)) or 0xFFFF
        header = _UDP_HEADER.pack(src_port, dst_port, length, csum)
        if self.ipv4.send(dst_ip, wipv4.PROTO_UDP, (header, data), self.now):
            self.counters.udp_tx += 1
            return True
        return False
