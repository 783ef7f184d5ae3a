"""ICMP engine: echo replies, error generation (rate-limited) and error delivery to transports.

Pure: IPv4 hands it packets and `now`; it answers through `Ipv4Engine.send`.
Errors follow RFC 1122 3.2.2 / RFC 1812 4.3.2.7 on when *not* to send one, and quote as much of
the offending datagram as fits in 576 bytes (RFC 1812 4.3.2.3), like Linux.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from netstack.counters import Counters
from netstack.drops import Drop
from netstack.proto.ipv4 import Ipv4Engine
from netstack.proto.pmtu import next_hop_mtu
from netstack.proto.ratelimit import TokenBucket
from netstack.wire import icmp as wicmp
from netstack.wire import ipv4 as wipv4
from netstack.wire.errors import Malformed

# Largest ICMP error datagram we emit, IP header included (RFC 1812 4.3.2.3).
MAX_ERROR_DATAGRAM = 576
ERROR_TYPES = frozenset(
    {wicmp.TYPE_DEST_UNREACHABLE, wicmp.TYPE_TIME_EXCEEDED, 4, 5, 12}
)  # unreachable, time exceeded, source quench, redirect, parameter problem

# (icmp_type, code, inner ip header, first bytes of the inner transport header, now)
ErrorHandler = Callable[[int, int, wipv4.Ipv4Header, memoryview, float], None]
# "fragmentation needed" (RFC 1191): (inner ip header, first bytes of the inner transport
# header, next-hop MTU (0 in the message: RFC 1191 5's plateau estimate), now)
PmtuHandler = Callable[[wipv4.Ipv4Header, memoryview, int, float], None]


@dataclasses.dataclass(slots=True)
class IcmpConfig:
    """Tunables, mirroring Linux's icmp_ratelimit / icmp_echo_ignore_broadcasts."""

    error_rate: float = 100.0  # errors per second on average
    error_burst: int = 50
    echo_reply: bool = True
    ignore_broadcast_echo: bool = True


def _type_name(icmp_type: int) -> str:
    return wicmp.TYPE_NAMES.get(icmp_type, "other")


class IcmpEngine:
    """Answers echo requests, sends errors on behalf of other layers, delivers received errors."""

    def __init__(
        self, ipv4: Ipv4Engine, counters: Counters, config: IcmpConfig | None = None
    ) -> None:
        self.ipv4 = ipv4
        self.counters = counters
        self.config = config or IcmpConfig()
        self._bucket = TokenBucket(self.config.error_rate, self.config.error_burst)
        self.error_handlers: dict[int, ErrorHandler] = {}
        # Per protocol: who validates a "fragmentation needed" and updates the PMTU cache.
        # A protocol without one gets it as an ordinary (soft) error.
        self.pmtu_handlers: dict[int, PmtuHandler] = {}
        # Echo replies are handed to whoever asked (e.g. a ping API): (src, id, seq, data, now).
        self.on_echo_reply: Callable[[int, int, int, memoryview, float], None] | None = None
        ipv4.register(wipv4.PROTO_ICMP, self.receive)
        ipv4.icmp_error = self.send_error

    # -- receive ---------------------------------------------------------------------------
    def receive(
        self, header: wipv4.Ipv4Header, payload: memoryview, packet: memoryview, now: float
    ) -> None:
        try:
            icmp, data = wicmp.parse(payload)
        except Malformed as bad:
            self.counters.drop(bad.reason)
            return
        self.counters.icmp[("rx", _type_name(icmp.type))] += 1
        if icmp.type == wicmp.TYPE_ECHO_REQUEST:
            self._answer_echo(header, icmp, data, now)
        elif icmp.type == wicmp.TYPE_ECHO_REPLY:
            if self.on_echo_reply is not None:
                self.on_echo_reply(header.src, icmp.rest >> 16, icmp.rest & 0xFFFF, data, now)
        elif icmp.type in (wicmp.TYPE_DEST_UNREACHABLE, wicmp.TYPE_TIME_EXCEEDED):
            self._deliver_error(icmp, data, now)
        else:
            self.counters.drop(Drop.ICMP_UNSUPPORTED_TYPE)

    def _answer_echo(
        self, header: wipv4.Ipv4Header, icmp: wicmp.IcmpHeader, data: memoryview, now: float
    ) -> None:
        if not self.config.echo_reply:
            self.counters.drop(Drop.ICMP_UNSUPPORTED_TYPE)
            return
        if header.dst != self.ipv4.config.address and self.config.ignore_broadcast_echo:
            self.counters.drop(Drop.ICMP_BROADCAST_ECHO)
            return
        reply = wicmp.build(wicmp.TYPE_ECHO_REPLY, 0, icmp.rest, data)
        if self.ipv4.send(header.src, wipv4.PROTO_ICMP, (reply, data), now, tos=header.tos):
            self.counters.icmp[("tx", "echo_reply")] += 1

    def _deliver_error(self, icmp: wicmp.IcmpHeader, data: memoryview, now: float) -> None:
        """Hand an error to the transport that sent the quoted datagram."""
        try:
            inner, inner_payload = wipv4.parse(data, verify_checksum=False, allow_truncated=True)
        except Malformed:
            self.counters.drop(Drop.ICMP_TRUNCATED)
            return
        if inner.src != self.ipv4.config.address or len(inner_payload) < 8:
            self.counters.drop(Drop.ICMP_TRUNCATED)
            return
        if icmp.type == wicmp.TYPE_DEST_UNREACHABLE and icmp.code == wicmp.CODE_FRAG_NEEDED:
            pmtu_handler = self.pmtu_handlers.get(inner.protocol)
            if pmtu_handler is not None:
                # RFC 1191 4: the next-hop MTU is the low 16 bits of the "unused" word.
                mtu = next_hop_mtu(icmp.rest & 0xFFFF, inner.total_length)
                pmtu_handler(inner, inner_payload, mtu, now)
                return
        handler = self.error_handlers.get(inner.protocol)
        if handler is not None:
            handler(icmp.type, icmp.code, inner, inner_payload, now)

    # -- send errors -----------------------------------------------------------------------
    def send_error(
        self, icmp_type: int, code: int, original: bytes | memoryview, now: float
    ) -> bool:
        """Report a problem with `original` (a whole IPv4 packet) to its sender.

        Returns whether an error was sent. RFC 1122 3.2.2: no error about an ICMP error, a
        broadcast or multicast datagram, a non-initial fragment, or a non-unicast source.
        """
        view = memoryview(original)
        try:
            header, payload = wipv4.parse(view, verify_checksum=False, allow_truncated=True)
        except Malformed:
            return False
        if (
            header.frag_offset != 0
            or not self._is_unicast(header.src)
            or self._is_broadcast(header.dst)
        ):
            return False
        if header.protocol == wipv4.PROTO_ICMP and (len(payload) < 1 or payload[0] in ERROR_TYPES):
            return False
        if not self._bucket.allow(now):
            self.counters.drop(Drop.ICMP_RATE_LIMITED)
            return False
        quote_len = MAX_ERROR_DATAGRAM - wipv4.MIN_HEADER_LEN - wicmp.HEADER_LEN
        quoted = view[: min(len(view), header.total_length, quote_len)]
        message = wicmp.build(icmp_type, code, 0, quoted)
        sent = self.ipv4.send(header.src, wipv4.PROTO_ICMP, (message, bytes(quoted)), now)
        if sent:
            self.counters.icmp[("tx", _type_name(icmp_type))] += 1
        return sent

    def _is_unicast(self, ip: int) -> bool:
        return ip != 0 and ip < 0xE0000000 and not self.ipv4.is_broadcast(ip)

    def _is_broadcast(self, ip: int) -> bool:
        return ip >= 0xE0000000 or self.ipv4.is_broadcast(ip)
