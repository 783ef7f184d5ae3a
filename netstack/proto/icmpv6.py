"""ICMPv6 engine (RFC 4443): echo, errors with the §2.4 rules and a rate limit, Packet Too Big
into the PMTU cache (RFC 8201), and the hand-off of ND/MLD messages to the ND engine.

Pure: the IPv6 engine hands it messages and `now`; it answers through `Ipv6Engine.send`.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable

from netstack.counters import Counters
from netstack.drops import Drop
from netstack.proto.fast6 import send_one
from netstack.proto.ipv6 import Ipv6Engine
from netstack.proto.ratelimit import TokenBucket
from netstack.wire import icmpv6 as wicmp6
from netstack.wire import ipv6 as wipv6
from netstack.wire.errors import Malformed

_new = tuple.__new__
_TYPE_CODE_SUM = struct.Struct("!BBH")  # the 4-byte header (wire/icmpv6.py's Icmpv6Header)
_WORD = struct.Struct("!BBHI")  # type, code, checksum, the 32-bit word (echo id/seq)
# RFC 4443 §2.4 (c): an error carries as much of the offending packet as fits in the minimum MTU.
MAX_ERROR_PACKET = wipv6.MIN_MTU
ND_TYPES = frozenset(
    {
        wicmp6.TYPE_ROUTER_SOLICIT,
        wicmp6.TYPE_ROUTER_ADVERT,
        wicmp6.TYPE_NEIGHBOR_SOLICIT,
        wicmp6.TYPE_NEIGHBOR_ADVERT,
        wicmp6.TYPE_REDIRECT,
        wicmp6.TYPE_MLD_QUERY,
        wicmp6.TYPE_MLD_REPORT,
        wicmp6.TYPE_MLD_DONE,
        wicmp6.TYPE_MLDV2_REPORT,
    }
)
# (type, code, the 32-bit word, inner IPv6 header, inner upper-layer bytes, now)
ErrorHandler = Callable[[int, int, int, wipv6.Ipv6Header, memoryview, float], None]
# (header, icmp type, icmp code, body, now)
NdHandler = Callable[[wipv6.Ipv6Header, int, int, memoryview, float], None]


@dataclasses.dataclass(slots=True)
class Icmpv6Config:
    error_rate: float = 100.0  # errors per second on average (Linux: icmpv6 ratelimit 1/ms)
    error_burst: int = 50
    echo_reply: bool = True


def type_name(icmp_type: int) -> str:
    return wicmp6.TYPE_NAMES.get(icmp_type, "other")


class Icmpv6Engine:
    def __init__(
        self, ipv6: Ipv6Engine, counters: Counters, config: Icmpv6Config | None = None
    ) -> None:
        self.ipv6 = ipv6
        self.counters = counters
        self.config = config or Icmpv6Config()
        self._bucket = TokenBucket(self.config.error_rate, self.config.error_burst)
        self.error_handlers: dict[int, ErrorHandler] = {}
        # Upper layers whose handler checks a Packet Too Big and reports the MTU (TCP).
        self.validates_ptb: set[int] = set()
        self.nd_handler: NdHandler | None = None
        self.on_echo_reply: Callable[[bytes, int, int, memoryview, float], None] | None = None
        ipv6.register(wipv6.ICMPV6, self.receive)
        ipv6.icmp_error = self.send_error

    # -- receive ---------------------------------------------------------------------------
    def receive(
        self,
        header: wipv6.Ipv6Header,
        payload: memoryview,
        packet: memoryview,
        now: float,
        checked: bool = False,
    ) -> None:
        """One message. `checked`: the host's fast path (proto/fast6.py) has verified the
        length and checksum already."""
        c = self.counters
        if checked:
            icmp, body = _new(wicmp6.Icmpv6Header, _TYPE_CODE_SUM.unpack_from(payload)), payload[4:]
        else:
            try:
                icmp, body = wicmp6.parse(payload, header.src, header.dst)
            except Malformed as bad:
                c.drop(bad.reason)
                return
        c.icmp6[("rx", type_name(icmp.type))] += 1
        t = icmp.type
        if t == wicmp6.TYPE_ECHO_REQUEST:
            self._answer_echo(header, body, now, icmp)
        elif t == wicmp6.TYPE_ECHO_REPLY:
            if len(body) < 4:
                c.drop(Drop.ICMPV6_TRUNCATED)
            elif self.on_echo_reply is not None:
                w = wicmp6.word(body)
                self.on_echo_reply(header.src, w >> 16, w & 0xFFFF, body[4:], now)
        elif t in ND_TYPES:
            if self.nd_handler is None:
                c.drop(Drop.ICMPV6_UNSUPPORTED_TYPE)
            else:
                self.nd_handler(header, t, icmp.code, body, now)
        elif t in wicmp6.ERROR_TYPES:
            self._deliver_error(icmp, body, now)
        else:
            # §2.4 (a)/(b): unknown errors go to the upper layer (none takes them), unknown
            # informational messages are discarded.
            c.drop(Drop.ICMPV6_UNSUPPORTED_TYPE)

    def _answer_echo(
        self,
        header: wipv6.Ipv6Header,
        body: memoryview,
        now: float,
        request: wicmp6.Icmpv6Header | None = None,
    ) -> None:
        c = self.counters
        if len(body) < 4:
            c.drop(Drop.ICMPV6_TRUNCATED)
            return
        if not self.config.echo_reply:
            c.drop(Drop.ICMPV6_UNSUPPORTED_TYPE)
            return
        # §4.2: to a group, the reply comes from one of our unicast addresses.
        src = None if header.dst[0] == 0xFF else header.dst
        if src is None:
            src = self.ipv6.addresses.select_source(header.src)
            if src is None:
                c.drop(Drop.IPV6_NO_SOURCE)
                return
        data = body[4:]
        if request is not None and header.dst[0] != 0xFF:
            # Reply from the address asked: the pseudo-header sums the same, so the verified
            # request's checksum becomes the reply's by RFC 1624 eqn. 3, for the one word that
            # changes (type/code), instead of a pass over the data.
            s = (~request.checksum & 0xFFFF) + (~((request.type << 8) | request.code) & 0xFFFF)
            s += wicmp6.TYPE_ECHO_REPLY << 8
            s = (s & 0xFFFF) + (s >> 16)
            s = (s & 0xFFFF) + (s >> 16)
            head = _WORD.pack(wicmp6.TYPE_ECHO_REPLY, 0, ~s & 0xFFFF, wicmp6.word(body))
        else:
            head = wicmp6.header(src, header.src, wicmp6.TYPE_ECHO_REPLY, 0, wicmp6.word(body),
                                 data)  # fmt: skip
        if send_one(self.ipv6, header.src, src, wipv6.ICMPV6, head, data,
                    header.traffic_class, now):  # fmt: skip
            c.icmp6[("tx", "echo_reply")] += 1

    def _deliver_error(self, icmp: wicmp6.Icmpv6Header, body: memoryview, now: float) -> None:
        """Quote: an IPv6 packet we sent. PTB lowers the PMTU; then the transport hears."""
        c = self.counters
        if len(body) < 4 + wipv6.HEADER_LEN:
            c.drop(Drop.ICMPV6_TRUNCATED)
            return
        quoted = body[4:]
        inner = wipv6.Ipv6Header(*_unpack_inner(quoted))
        if not self.ipv6.addresses.is_ours(inner.src):
            c.drop(Drop.ICMPV6_BAD_ERROR)
            return
        w = wicmp6.word(body)
        ptb = icmp.type == wicmp6.TYPE_PACKET_TOO_BIG
        if ptb and w < wipv6.MIN_MTU:  # RFC 8201 §4: below the minimum is ignored
            c.drop(Drop.ICMPV6_BAD_ERROR)
            return
        rest = quoted[wipv6.HEADER_LEN :]
        try:
            chain = wipv6.walk(rest, inner.next_header)
        except Malformed:
            chain = None
        if chain is not None and chain.fragment is not None and chain.fragment.offset:
            chain = None
        handler = None if chain is None else self.error_handlers.get(chain.upper)
        # RFC 5927 4.1: TCP believes a PTB only for a segment in flight, so it lowers the
        # estimate itself (as Linux's tcp_v6_err); for anything else it is lowered here.
        if ptb and not (handler is not None and chain.upper in self.validates_ptb):
            self.ipv6.pmtu.report(inner.dst, w, self.ipv6.config.mtu, now)
        if handler is not None:
            handler(icmp.type, icmp.code, w, inner, rest[chain.offset :], now)

    # -- send errors -----------------------------------------------------------------------
    def send_error(
        self,
        icmp_type: int,
        code: int,
        word: int,
        original: bytes | bytearray | memoryview,
        now: float,
        even_multicast: bool = False,
    ) -> bool:
        """Report a problem with `original` (a whole IPv6 packet) to its sender.

        RFC 4443 §2.4 (e): never about an ICMPv6 error or a redirect, a packet to a group
        (save PTB and Parameter Problem code 2, which the caller marks `even_multicast`),
        or a packet whose source is not a unicast address; (f) rate-limited.
        """
        view = memoryview(original)
        if len(view) < wipv6.HEADER_LEN:
            return False
        src, dst = bytes(view[8:24]), bytes(view[24:40])
        if src == wipv6.UNSPECIFIED or src[0] == 0xFF:
            return False
        if dst[0] == 0xFF and not even_multicast:
            return False
        if _is_error_or_redirect(view):
            return False
        if not self._bucket.allow(now):
            self.counters.drop(Drop.ICMPV6_RATE_LIMITED)
            return False
        our = dst if dst[0] != 0xFF and self.ipv6.addresses.is_ours(dst) else None
        if our is None:
            our = self.ipv6.addresses.select_source(src)
            if our is None:
                return False
        quoted = view[: MAX_ERROR_PACKET - wipv6.HEADER_LEN - 8]
        head = wicmp6.header(our, src, icmp_type, code, word, quoted)
        sent = self.ipv6.send(src, wipv6.ICMPV6, (head, bytes(quoted)), now, src=our)
        if sent:
            self.counters.icmp6[("tx", type_name(icmp_type))] += 1
        return sent


def _unpack_inner(quoted: memoryview) -> tuple:
    """The quoted header's fields (a truncated quote is fine: only the header is read)."""
    vtf = int.from_bytes(quoted[0:4], "big")
    return (
        (vtf >> 20) & 0xFF,
        vtf & 0xFFFFF,
        int.from_bytes(quoted[4:6], "big"),
        quoted[6],
        quoted[7],
        bytes(quoted[8:24]),
        bytes(quoted[24:40]),
    )


def _is_error_or_redirect(packet: memoryview) -> bool:
    """RFC 4443 §2.4 (e.1/e.2): is `packet` an ICMPv6 error or redirect, behind whatever
    extension headers? (The chain we report on may be the faulty one: then only a message
    right behind the fixed header can be told.)"""
    try:
        chain = wipv6.walk(packet[wipv6.HEADER_LEN :], packet[6])
    except Malformed:
        chain = wipv6.Chain(packet[6], 0, None, 6)
    if chain.upper != wipv6.ICMPV6 or (chain.fragment is not None and chain.fragment.offset):
        return False
    at = wipv6.HEADER_LEN + chain.offset
    if len(packet) <= at:
        return True
    return packet[at] < 128 or packet[at] == wicmp6.TYPE_REDIRECT
