"""BOOTP/DHCP messages (RFC 951, RFC 2131 §2, RFC 2132 options): a parsed value and its builder.

Unlike the per-packet headers, DHCP is rare and small, so the value is a frozen dataclass
built field by field; `parse` validates everything a client relies on and raises `Malformed`
with a `dhcp` drop reason otherwise. Options the client does not use are skipped by their
length; repeated options are concatenated first (RFC 3396). Option overload (52) is not
honoured: sname/file are kept opaque, as nothing the client needs is put there by servers
that follow RFC 2131's advice to use them only when options do not fit.
"""

from __future__ import annotations

import dataclasses
import struct

from netstack.drops import Drop
from netstack.wire.errors import Malformed

OP_REQUEST = 1  # BOOTREQUEST: client -> server
OP_REPLY = 2  # BOOTREPLY: server -> client
HTYPE_ETHERNET = 1
FLAG_BROADCAST = 0x8000
MAGIC_COOKIE = 0x63825363
SERVER_PORT = 67
CLIENT_PORT = 68
FIXED_LEN = 236  # op .. file
OPTIONS_OFFSET = FIXED_LEN + 4  # after the magic cookie
MIN_MESSAGE_LEN = 300  # RFC 1542 §2.1: BOOTP relays may drop anything shorter; we pad to it

# Message types (option 53, RFC 2132 §9.6).
DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = range(1, 9)
TYPE_NAMES = {
    DISCOVER: "discover",
    OFFER: "offer",
    REQUEST: "request",
    DECLINE: "decline",
    ACK: "ack",
    NAK: "nak",
    RELEASE: "release",
    INFORM: "inform",
}

# Option codes (RFC 2132).
OPT_PAD = 0
OPT_SUBNET_MASK = 1
OPT_ROUTER = 3
OPT_INTERFACE_MTU = 26
OPT_REQUESTED_IP = 50
OPT_LEASE_TIME = 51
OPT_MESSAGE_TYPE = 53
OPT_SERVER_ID = 54
OPT_PARAMETER_REQUEST_LIST = 55
OPT_MESSAGE = 56
OPT_RENEWAL_TIME = 58  # T1
OPT_REBINDING_TIME = 59  # T2
OPT_CLIENT_ID = 61
OPT_END = 255
INFINITE_LEASE = 0xFFFFFFFF

# op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr, sname, file
_FIXED = struct.Struct("!BBBBIHHIIII16s64s128sI")
assert _FIXED.size == OPTIONS_OFFSET


@dataclasses.dataclass(frozen=True, slots=True)
class DhcpMessage:
    """One BOOTP/DHCP message; None/() means the option is absent."""

    op: int
    xid: int
    chaddr: bytes  # the client hardware address, hlen bytes (6 for Ethernet)
    message_type: int | None = None
    htype: int = HTYPE_ETHERNET
    hops: int = 0
    secs: int = 0
    flags: int = 0
    ciaddr: int = 0
    yiaddr: int = 0
    siaddr: int = 0
    giaddr: int = 0
    server_id: int | None = None
    requested_ip: int | None = None
    lease_time: int | None = None
    renewal_time: int | None = None  # T1
    rebinding_time: int | None = None  # T2
    subnet_mask: int | None = None
    routers: tuple[int, ...] = ()
    mtu: int | None = None
    parameter_request_list: tuple[int, ...] = ()
    client_id: bytes | None = None
    message: bytes | None = None  # option 56: a server's human-readable reason (NAK)

    @property
    def broadcast(self) -> bool:
        return bool(self.flags & FLAG_BROADCAST)


def _u32(data: bytes) -> int:
    if len(data) != 4:
        raise Malformed(Drop.DHCP_BAD_OPTION)
    return int.from_bytes(data, "big")


def _addresses(data: bytes) -> tuple[int, ...]:
    if not data or len(data) % 4:
        raise Malformed(Drop.DHCP_BAD_OPTION)
    return tuple(int.from_bytes(data[i : i + 4], "big") for i in range(0, len(data), 4))


def _message_type(data: bytes) -> int:
    if len(data) != 1:
        raise Malformed(Drop.DHCP_BAD_OPTION)
    return data[0]


def _mtu(data: bytes) -> int:
    if len(data) != 2:
        raise Malformed(Drop.DHCP_BAD_OPTION)
    mtu = int.from_bytes(data, "big")
    if mtu < 68:  # RFC 2132 §5.1: the minimum legal value is 68
        raise Malformed(Drop.DHCP_BAD_OPTION)
    return mtu


def _nonempty(data: bytes) -> bytes:
    if not data:
        raise Malformed(Drop.DHCP_BAD_OPTION)
    return data


# option code -> (DhcpMessage field, decoder); everything else is skipped.
_DECODERS = {
    OPT_MESSAGE_TYPE: ("message_type", _message_type),
    OPT_SERVER_ID: ("server_id", _u32),
    OPT_REQUESTED_IP: ("requested_ip", _u32),
    OPT_LEASE_TIME: ("lease_time", _u32),
    OPT_RENEWAL_TIME: ("renewal_time", _u32),
    OPT_REBINDING_TIME: ("rebinding_time", _u32),
    OPT_SUBNET_MASK: ("subnet_mask", _u32),
    OPT_ROUTER: ("routers", _addresses),
    OPT_INTERFACE_MTU: ("mtu", _mtu),
    OPT_PARAMETER_REQUEST_LIST: ("parameter_request_list", lambda d: tuple(_nonempty(d))),
    OPT_CLIENT_ID: ("client_id", lambda d: bytes(_nonempty(d))),
    OPT_MESSAGE: ("message", lambda d: bytes(_nonempty(d))),
}


def _options(view: memoryview, start: int) -> dict[int, bytes]:
    """code -> value, repeated codes concatenated (RFC 3396); stops at END or the buffer end."""
    found: dict[int, bytes] = {}
    end = len(view)
    i = start
    while i < end:
        code = view[i]
        if code == OPT_END:
            break
        if code == OPT_PAD:
            i += 1
            continue
        if i + 1 >= end:
            raise Malformed(Drop.DHCP_BAD_OPTION)
        length = view[i + 1]
        if i + 2 + length > end:
            raise Malformed(Drop.DHCP_BAD_OPTION)
        value = bytes(view[i + 2 : i + 2 + length])
        found[code] = found[code] + value if code in found else value
        i += 2 + length
    return found


def parse(view: memoryview | bytes) -> DhcpMessage:
    """Validate and decode a UDP payload; Malformed(dhcp/...) for anything a client cannot use."""
    view = memoryview(view)
    if len(view) < OPTIONS_OFFSET:
        raise Malformed(Drop.DHCP_TRUNCATED)
    (op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr,
     _sname, _file, cookie) = _FIXED.unpack_from(view)  # fmt: skip
    if cookie != MAGIC_COOKIE:
        raise Malformed(Drop.DHCP_BAD_COOKIE)
    if op not in (OP_REQUEST, OP_REPLY) or hlen > 16:
        raise Malformed(Drop.DHCP_BAD_HEADER)
    fields: dict[str, object] = {}
    for code, value in _options(view, OPTIONS_OFFSET).items():
        decoder = _DECODERS.get(code)
        if decoder is not None:
            name, decode = decoder
            fields[name] = decode(value)
    return DhcpMessage(
        op=op, xid=xid, chaddr=chaddr[:hlen], htype=htype, hops=hops, secs=secs, flags=flags,
        ciaddr=ciaddr, yiaddr=yiaddr, siaddr=siaddr, giaddr=giaddr, **fields,  # type: ignore[arg-type]
    )  # fmt: skip


def _option(code: int, value: bytes) -> bytes:
    """One option; values over 255 bytes are split into repeats (RFC 3396)."""
    out = b""
    for i in range(0, max(len(value), 1), 255):
        chunk = value[i : i + 255]
        out += bytes((code, len(chunk))) + chunk
    return out


def build(msg: DhcpMessage) -> bytes:
    """The UDP payload: fixed fields, cookie, options in RFC 2132 order of importance, END,
    zero-padded to 300 bytes (RFC 1542)."""
    head = _FIXED.pack(
        msg.op, msg.htype, len(msg.chaddr), msg.hops, msg.xid, msg.secs, msg.flags,
        msg.ciaddr, msg.yiaddr, msg.siaddr, msg.giaddr, msg.chaddr, b"", b"", MAGIC_COOKIE,
    )  # fmt: skip
    opts = b""
    if msg.message_type is not None:
        opts += _option(OPT_MESSAGE_TYPE, bytes((msg.message_type,)))
    if msg.client_id is not None:
        opts += _option(OPT_CLIENT_ID, msg.client_id)
    for code, value in (
        (OPT_SERVER_ID, msg.server_id),
        (OPT_REQUESTED_IP, msg.requested_ip),
        (OPT_LEASE_TIME, msg.lease_time),
        (OPT_RENEWAL_TIME, msg.renewal_time),
        (OPT_REBINDING_TIME, msg.rebinding_time),
        (OPT_SUBNET_MASK, msg.subnet_mask),
    ):
        if value is not None:
            opts += _option(code, value.to_bytes(4, "big"))
    if msg.routers:
        opts += _option(OPT_ROUTER, b"".join(r.to_bytes(4, "big") for r in msg.routers))
    if msg.mtu is not None:
        opts += _option(OPT_INTERFACE_MTU, msg.mtu.to_bytes(2, "big"))
    if msg.parameter_request_list:
        opts += _option(OPT_PARAMETER_REQUEST_LIST, bytes(msg.parameter_request_list))
    if msg.message is not None:
        opts += _option(OPT_MESSAGE, msg.message)
    out = head + opts + bytes((OPT_END,))
    return out + bytes(max(0, MIN_MESSAGE_LEN - len(out)))
