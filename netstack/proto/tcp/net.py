"""What TCP needs of the network layer, per address family: one small object per family, chosen
once per connection (by the remote address's type), so the connection never asks "v4 or v6?".

Addresses keep their natural types, as UDP does: IPv4 as ints (the C fast path and the
per-segment code stay as they were), IPv6 as 16-byte `bytes`. The type is the family, so
connection keys (remote address, remote port, local port) of the two families never collide.

Checksums. The TCP checksum over either pseudo-header (RFC 9293 3.1, RFC 8200 8.1) is the
one's-complement sum of the addresses' 16-bit words plus protocol and TCP length (a TCP
length below 2^16 sums the same in IPv6's 32-bit field). The wire helpers (wire/tcp.py,
wire/vnet.py) take two address ints and sum their 16-bit halves; for IPv6 `csum_pair` folds
the 32 words of both addresses into one 16-bit int and passes (that, 0), which sums the same.
So the per-segment builders serve IPv6 unchanged.
"""

from __future__ import annotations

import errno
import functools
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from netstack.drops import Drop
from netstack.proto.fast6 import send_one
from netstack.proto.pmtu import PmtuCache
from netstack.wire import icmpv6 as wicmp6
from netstack.wire import ipv4 as wipv4
from netstack.wire import ipv6 as wipv6
from netstack.wire import tcp as wtcp
from netstack.wire import vnet as wvnet

if TYPE_CHECKING:
    from netstack.proto.ipv6 import Ipv6Engine
    from netstack.proto.tcp.engine import TcpEngine

Address = int | bytes
# send(dst, protocol, pieces, now, *, dont_fragment=..., gso_size=..., l4_header_len=...)
Send = Callable[..., bool]

_WORDS = struct.Struct("!8H")


def v6_sum(src: bytes, dst: bytes) -> int:
    """Both IPv6 addresses' 16-bit words, summed and folded to 16 bits (see the module doc)."""
    s = sum(_WORDS.unpack(src)) + sum(_WORDS.unpack(dst))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


class Net4:
    """TCP over IPv4: the host's one address, the IPv4 engine's send, RFC 1191 PMTU cache.

    Reads the engine's `ipv4`, `local_ip` and `mss` when asked (the host changes the last
    two with the address, DHCP; tests swap the first), never per segment."""

    family = 4
    header_len = wipv4.MIN_HEADER_LEN

    def __init__(self, engine: TcpEngine) -> None:
        self.engine = engine
        self.pmtu: PmtuCache = engine.ipv4.pmtu

    @property
    def tso_max(self) -> int:
        return self.engine.config.tso_max

    @property
    def mss(self) -> int:
        return self.engine.mss

    @property
    def link_mtu(self) -> int:
        return self.engine.ipv4.config.mtu

    def routable(self, dst: int) -> bool:
        return self.engine.ipv4.route(dst) is not None

    def source(self, dst: int) -> int | None:
        return self.engine.local_ip or None

    def is_local(self, dst: int) -> bool:
        """May a segment to `dst` be ours (RFC 1122 4.2.3.10: never to a broadcast)?"""
        return dst == self.engine.local_ip

    def is_ours(self, address: int) -> bool:
        """May a connection use `address` as its source (a bound socket's)?"""
        return bool(address) and address == self.engine.local_ip

    @staticmethod
    def csum_pair(local: int, remote: int) -> tuple[int, int]:
        return local, remote

    def sender(self, local: int) -> Send:
        return self.engine.ipv4.send  # the source is the host's one address


class Net6:
    """TCP over IPv6: the source chosen per destination (RFC 6724, addr6.py) when the
    connection opens and then fixed; no DF bit (routers never fragment IPv6) and the MSS
    from the RFC 8201 cache with its 1280 floor (MSS >= 1220)."""

    family = 6
    header_len = wipv6.HEADER_LEN

    def __init__(self, ipv6: Ipv6Engine, engine: TcpEngine) -> None:
        self.ipv6 = ipv6
        self.engine = engine
        self.pmtu: PmtuCache = ipv6.pmtu

    @property
    def tso_max(self) -> int:
        return self.engine.config.tso6_max  # TSO6 negotiated (runtime, io/offload.py)

    @property
    def link_mtu(self) -> int:
        return self.ipv6.config.mtu

    @property
    def mss(self) -> int:
        return self.ipv6.config.mtu - wipv6.HEADER_LEN - wtcp.HEADER_LEN  # RFC 8200 -> -60

    def routable(self, dst: bytes) -> bool:
        return dst[0] != 0xFF and self.ipv6.route(dst) is not None

    def source(self, dst: bytes) -> bytes | None:
        return self.ipv6.addresses.select_source(dst)

    def is_local(self, dst: bytes) -> bool:
        return dst[0] != 0xFF  # the IPv6 engine delivers only our addresses and groups

    def is_ours(self, address: bytes) -> bool:
        """A usable address of ours (not tentative, not duplicate): a possible source."""
        return self.ipv6.addresses.is_ours(address)

    @staticmethod
    def csum_pair(local: bytes, remote: bytes) -> tuple[int, int]:
        return v6_sum(local, remote), 0

    def sender(self, local: bytes) -> Send:
        return functools.partial(_send6, self.ipv6, local)


def _send6(
    ipv6: Ipv6Engine,
    src: bytes,
    dst: bytes,
    protocol: int,
    pieces: tuple,
    now: float,
    *,
    dont_fragment: bool = False,
    gso_size: int = 0,
    l4_header_len: int = 0,
) -> bool:
    """The IPv4 engine's send signature over the IPv6 engine, from a fixed source.

    gso_size (TSO6): one super-frame the link's kernel cuts into gso_size payloads after
    l4_header_len bytes of TCP header (gso_type TCPV6); never fragmented. Every other segment
    fits the path MTU (the connection sized it), so ipv6.send does not fragment it either."""
    if not gso_size:
        if len(pieces) > 2:
            return ipv6.send(dst, protocol, pieces, now, src=src)
        # A segment (header, payload?) sized to the path MTU: the echo replies' lean send
        # (route, one header, the ND engine's link send), ipv6.send only past the path MTU.
        data = pieces[1] if len(pieces) == 2 else b""
        return send_one(ipv6, dst, src, protocol, pieces[0], data, 0, now)
    c = ipv6.counters
    next_hop = ipv6.route(dst)
    if next_hop is None:
        c.drop(Drop.IPV6_NO_ROUTE)
        return False
    length = 0
    for piece in pieces:
        length += piece.nbytes if type(piece) is memoryview else len(piece)
    header = wipv6.build(src, dst, protocol, length, ipv6.config.hop_limit)
    mark = wvnet.tcp6_gso_mark(wvnet.ETH_LEN + wipv6.HEADER_LEN, l4_header_len, gso_size)
    segments = wvnet.segments(length - l4_header_len, gso_size)
    c.ipv6_tx += segments
    c.gso_frames_tx += 1
    c.gso_segments_tx += segments
    ipv6.link_send(next_hop, (mark, header, *pieces), now)
    return True


# ICMPv6 errors for TCP (RFC 4443 3.1/3.3/3.4, as Linux's icmpv6_err_convert): errno and
# whether the error ends a connection attempt (hard) or is kept as a soft error.
V6_ERRORS: dict[tuple[int, int], tuple[int, bool]] = {
    (wicmp6.TYPE_DEST_UNREACHABLE, 0): (errno.ENETUNREACH, False),  # no route
    (wicmp6.TYPE_DEST_UNREACHABLE, 1): (errno.EACCES, True),  # administratively prohibited
    (wicmp6.TYPE_DEST_UNREACHABLE, 2): (errno.EHOSTUNREACH, False),  # beyond source scope
    (wicmp6.TYPE_DEST_UNREACHABLE, 3): (errno.EHOSTUNREACH, False),  # address unreachable
    (wicmp6.TYPE_DEST_UNREACHABLE, 4): (errno.ECONNREFUSED, True),  # port unreachable
    (wicmp6.TYPE_TIME_EXCEEDED, 0): (errno.EHOSTUNREACH, False),
    (wicmp6.TYPE_TIME_EXCEEDED, 1): (errno.EHOSTUNREACH, False),
}
PARAM_PROBLEM = (errno.EPROTO, True)
