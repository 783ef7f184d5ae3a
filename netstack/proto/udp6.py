"""UDP over IPv6 (RFC 768 with RFC 8200 §8.1 checksums), sharing the IPv4 UDP engine's ports.

A port bound on the UDP engine takes datagrams of both families: the socket's callback gets
(16-byte address, port) as the peer for IPv6, and `sendto` to such a peer comes back here.
The checksum is mandatory over IPv6: a zero one is a bad checksum (§8.1).
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from netstack.counters import Counters
from netstack.drops import Drop
from netstack.proto.fast6 import send_one
from netstack.proto.icmpv6 import Icmpv6Engine
from netstack.proto.ipv6 import Ipv6Engine
from netstack.proto.nd import NudState
from netstack.proto.udp import UdpEngine
from netstack.wire import icmpv6 as wicmp6
from netstack.wire import ipv6 as wipv6
from netstack.wire import vnet as wvnet
from netstack.wire.checksum import checksum

HEADER_LEN = 8
MAX_PAYLOAD = 65535 - HEADER_LEN
_HEADER = struct.Struct("!HHHH")
_WORDS = struct.Struct("!16H")  # two IPv6 addresses as 16-bit words (the pseudo-header sum)
_L4_START = 14 + wipv6.HEADER_LEN  # Ethernet + IPv6 header: where the UDP header starts
# The virtio-net header of an echo run's UDP super-frame, per datagram payload size.
_USO_HEADERS = _L4_START + HEADER_LEN


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
        # Echo runs over USO, as UdpEngine's for IPv4 (on when its gso_max is): the replies of
        # one receive batch to one peer, from one address and port, of one size, leave as one
        # UDP super-frame at the batch's end (UdpEngine.flush calls ours).
        self._run: list[memoryview] = []
        self._run_key: tuple[bytes, bytes, int, int, int] | None = None  # peer, ours, ports, len
        self._run_limit = 0
        self._run_csum = 0
        self._ports = udp._ports  # the shared port table (UdpEngine.lookup, without the call)
        udp.flush6 = self.flush
        self.nd_state: Callable[[bytes], NudState | None] = lambda ip: None  # set by v6.py

    def receive(
        self, header: wipv6.Ipv6Header, payload: memoryview, packet: memoryview, now: float
    ) -> None:
        self.receive_fast(header.src, header.dst, payload, packet, now)

    def receive_fast(
        self,
        src: bytes,
        dst: bytes,
        payload: memoryview,
        packet: memoryview,
        now: float,
        checked: bool = False,
    ) -> None:
        """One datagram from `src` to `dst` (ours or a group we joined). `checked`: the host's
        fast path (proto/fast6.py) has verified the length and checksum already."""
        c = self.counters
        if len(payload) < HEADER_LEN:
            c.drop(Drop.UDP_TRUNCATED)
            return
        src_port, dst_port, length, csum = _HEADER.unpack_from(payload)
        if length < HEADER_LEN or length > len(payload):
            c.drop(Drop.UDP_BAD_LENGTH)
            return
        if not checked:
            pseudo = wipv6.pseudo_header(src, dst, wipv6.UDP, length)
            if csum == 0 or checksum(pseudo, payload[:length]):
                c.drop(Drop.UDP_BAD_CHECKSUM)
                return
        c.udp_rx += 1
        sock = self._ports.get(dst_port)
        if sock is None:
            c.drop(Drop.UDP_NO_PORT)
            if dst[0] != 0xFF:  # RFC 4443 §3.1 port unreachable; never about a group
                self.icmp.send_error(
                    wicmp6.TYPE_DEST_UNREACHABLE, wicmp6.CODE_PORT_UNREACHABLE, 0, packet, now
                )
            return
        udp = self.udp
        udp.now = now
        if sock.reflect and dst[0] != 0xFF:
            # The echo's reply in one step, as UdpEngine.receive_fast's for IPv4: addresses
            # and ports swapped leave the pseudo-header and header sums unchanged, so the
            # request's verified checksum is the reply's; it leaves from the address the
            # request was sent to.
            sock.reflected += 1
            data = payload[HEADER_LEN:length]
            if udp.gso_max:
                key = (src, dst, src_port, dst_port, length)
                if key == self._run_key and len(self._run) < self._run_limit:
                    self._run.append(data)
                    return
                if self._start_run(key, csum, now):
                    self._run.append(data)
                    return
            head = _HEADER.pack(dst_port, src_port, length, csum)
            if send_one(self.ipv6, src, dst, wipv6.UDP, head, data, 0, now):
                c.udp_tx += 1
            return
        sock.on_datagram(payload[HEADER_LEN:length], (src, src_port), dst, now)

    # -- echo runs (USO) ---------------------------------------------------------------------
    def _start_run(self, key: tuple[bytes, bytes, int, int, int], csum: int, now: float) -> bool:
        """Send the pending run and start one for `key`; False when replies of this size
        cannot be cut by the kernel (empty, or a datagram above the path MTU: they go alone)."""
        if self._run:
            self.flush(now)
        size = key[4] - HEADER_LEN
        if size <= 0 or wipv6.HEADER_LEN + key[4] > self.ipv6.path_mtu(key[0], now):
            return False
        self._run_key = key
        self._run_csum = csum
        # the super-frame's IPv6 packet within 64 KiB, as IPv4's (and the TAP's gso_max_size)
        self._run_limit = min(self.udp.gso_max, (0xFFFF - wipv6.HEADER_LEN - HEADER_LEN) // size)
        return True

    def flush(self, now: float) -> None:
        """Send the pending echo run: one reply as an ordinary datagram, several as one UDP
        super-frame (GSO_UDP_L4, NEEDS_CSUM with the pseudo-header sum in place: the kernel
        cuts it and completes each datagram's checksum, as for IPv4's runs)."""
        run = self._run
        if not run:
            return
        assert self._run_key is not None
        peer, me, peer_port, port, length = self._run_key
        self._run = []
        self._run_key = None
        c = self.counters
        ipv6 = self.ipv6
        n = len(run)
        next_hop = ipv6.route(peer) if n > 1 else None
        # One reply goes plain. A super-frame never waits in the ND queue (it keeps pieces as
        # plain bytes, which would lose the VnetMark): to a neighbour not resolved yet (or no
        # route: each reply is then a counted drop), the replies go one by one.
        if next_hop is None or self._unresolved(next_hop):
            head = _HEADER.pack(port, peer_port, length, self._run_csum)
            for data in run:
                if send_one(ipv6, peer, me, wipv6.UDP, head, data, 0, now):
                    c.udp_tx += 1
            return
        size = length - HEADER_LEN
        total = HEADER_LEN + n * size
        s = sum(_WORDS.unpack(me + peer)) + wipv6.UDP + total
        s = (s & 0xFFFF) + (s >> 16)
        s = (s & 0xFFFF) + (s >> 16)
        udp_header = _HEADER.pack(port, peer_port, total, s)  # partial: the kernel completes
        ip_header = wipv6.build(me, peer, wipv6.UDP, total, ipv6.config.hop_limit)
        mark = wvnet.mark(
            wvnet.VnetHeader(wvnet.F_NEEDS_CSUM, wvnet.GSO_UDP_L4, _USO_HEADERS, size, _L4_START, 6)
        )
        c.ipv6_tx += n
        c.udp_tx += n
        c.gso_frames_tx += 1
        c.gso_segments_tx += n
        ipv6.link_send(next_hop, (mark, ip_header, udp_header, *run), now)

    def _unresolved(self, next_hop: bytes) -> bool:
        state = self.nd_state(next_hop)
        return state is None or state is NudState.INCOMPLETE

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

    def sendto(
        self,
        src_port: int,
        data: bytes | bytearray | memoryview,
        address: tuple,
        src: bytes | None = None,
    ) -> bool:
        """`src`: send from this address of ours (a reply from where the request came to);
        None, or an address no longer usable, takes RFC 6724's choice for the destination."""
        dst, dst_port = address
        if len(data) > MAX_PAYLOAD:
            raise ValueError(f"UDP payload of {len(data)} bytes exceeds {MAX_PAYLOAD}")
        if not 0 < dst_port <= 0xFFFF:
            raise ValueError(f"UDP port out of range: {dst_port}")
        now = self.udp.now
        addresses = self.ipv6.addresses
        if src is None or src[0] == 0xFF or not addresses.is_ours(src):
            src = addresses.select_source(dst)
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
