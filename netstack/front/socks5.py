"""SOCKS5 messages (RFC 1928) and username/password auth (RFC 1929), parsed and built without
I/O.

Each `parse_*` takes the bytes received so far and returns (message, bytes consumed), or None
while the message is still incomplete; a message that can never be valid raises SocksError
with the reason (a SOCKS_ERRORS name) and the reply code to send, if any.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import struct

VERSION = 5
AUTH_VERSION = 1

METHOD_NO_AUTH = 0x00
METHOD_USERPASS = 0x02
METHOD_NONE_ACCEPTABLE = 0xFF

CMD_CONNECT = 0x01
CMD_BIND = 0x02
CMD_UDP_ASSOCIATE = 0x03

ATYP_IPV4 = 0x01
ATYP_DOMAIN = 0x03
ATYP_IPV6 = 0x04

# Reply codes (RFC 1928 section 6)
REP_SUCCEEDED = 0x00
REP_GENERAL_FAILURE = 0x01
REP_NOT_ALLOWED = 0x02
REP_NETWORK_UNREACHABLE = 0x03
REP_HOST_UNREACHABLE = 0x04
REP_CONNECTION_REFUSED = 0x05
REP_TTL_EXPIRED = 0x06
REP_COMMAND_NOT_SUPPORTED = 0x07
REP_ADDRESS_TYPE_NOT_SUPPORTED = 0x08

_PORT = struct.Struct("!H")


class SocksError(ValueError):
    """A request that cannot be served: `reason` for the metric, `reply` to send (None: the
    connection is just closed, e.g. when the version is wrong and no reply could be read)."""

    def __init__(self, reason: str, reply: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.reply = reply


@dataclasses.dataclass(frozen=True, slots=True)
class Greeting:
    methods: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class UserPass:
    username: bytes
    password: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class Address:
    """A destination: `host` is a dotted IPv4, an IPv6 text or a domain name, by `atyp`."""

    atyp: int
    host: str
    port: int


@dataclasses.dataclass(frozen=True, slots=True)
class Request:
    command: int
    address: Address


@dataclasses.dataclass(frozen=True, slots=True)
class UdpHeader:
    frag: int
    address: Address
    header_len: int


def parse_greeting(buf: bytes | bytearray) -> tuple[Greeting, int] | None:
    """VER NMETHODS METHODS..."""
    if len(buf) < 1:
        return None
    if buf[0] != VERSION:
        raise SocksError("bad_version")
    if len(buf) < 2:
        return None
    n = buf[1]
    if n == 0:
        raise SocksError("no_acceptable_method")
    if len(buf) < 2 + n:
        return None
    return Greeting(bytes(buf[2 : 2 + n])), 2 + n


def choose_method(greeting: Greeting, need_auth: bool) -> int:
    wanted = METHOD_USERPASS if need_auth else METHOD_NO_AUTH
    return wanted if wanted in greeting.methods else METHOD_NONE_ACCEPTABLE


def encode_method(method: int) -> bytes:
    return bytes((VERSION, method))


def parse_userpass(buf: bytes | bytearray) -> tuple[UserPass, int] | None:
    """RFC 1929: VER(1) ULEN UNAME PLEN PASSWD."""
    if len(buf) < 1:
        return None
    if buf[0] != AUTH_VERSION:
        raise SocksError("bad_version")
    if len(buf) < 2:
        return None
    ulen = buf[1]
    if len(buf) < 3 + ulen:
        return None
    plen = buf[2 + ulen]
    end = 3 + ulen + plen
    if len(buf) < end:
        return None
    if ulen == 0 or plen == 0:
        raise SocksError("auth_failed")
    return UserPass(bytes(buf[2 : 2 + ulen]), bytes(buf[3 + ulen : end])), end


def encode_auth_status(ok: bool) -> bytes:
    return bytes((AUTH_VERSION, 0 if ok else 1))


def _parse_address(buf: bytes | bytearray, off: int) -> tuple[Address, int] | None:
    """ATYP DST.ADDR DST.PORT starting at `off`; returns (address, offset after it)."""
    if len(buf) < off + 1:
        return None
    atyp = buf[off]
    if atyp == ATYP_IPV4:
        end = off + 1 + 4
        if len(buf) < end + 2:
            return None
        host = str(ipaddress.IPv4Address(bytes(buf[off + 1 : end])))
    elif atyp == ATYP_IPV6:
        end = off + 1 + 16
        if len(buf) < end + 2:
            return None
        host = str(ipaddress.IPv6Address(bytes(buf[off + 1 : end])))
    elif atyp == ATYP_DOMAIN:
        if len(buf) < off + 2:
            return None
        n = buf[off + 1]
        end = off + 2 + n
        if len(buf) < end + 2:
            return None
        if n == 0:
            raise SocksError("bad_address_type", REP_ADDRESS_TYPE_NOT_SUPPORTED)
        host = bytes(buf[off + 2 : end]).decode("ascii", "replace")
    else:
        raise SocksError("bad_address_type", REP_ADDRESS_TYPE_NOT_SUPPORTED)
    (port,) = _PORT.unpack_from(buf, end)
    return Address(atyp, host, port), end + 2


def parse_request(buf: bytes | bytearray) -> tuple[Request, int] | None:
    """VER CMD RSV ATYP DST.ADDR DST.PORT."""
    if len(buf) < 1:
        return None
    if buf[0] != VERSION:
        raise SocksError("bad_version", REP_GENERAL_FAILURE)
    if len(buf) < 4:
        return None
    command = buf[1]
    parsed = _parse_address(buf, 3)
    if parsed is None:
        return None
    address, end = parsed
    if command not in (CMD_CONNECT, CMD_BIND, CMD_UDP_ASSOCIATE):
        raise SocksError("bad_command", REP_COMMAND_NOT_SUPPORTED)
    return Request(command, address), end


def encode_address(host: str, port: int) -> bytes:
    ip = ipaddress.ip_address(host)
    atyp = ATYP_IPV4 if ip.version == 4 else ATYP_IPV6
    return bytes((atyp,)) + ip.packed + _PORT.pack(port)


def encode_reply(code: int, bound: tuple[str, int] = ("0.0.0.0", 0)) -> bytes:
    """VER REP RSV ATYP BND.ADDR BND.PORT."""
    return bytes((VERSION, code, 0)) + encode_address(*bound)


def parse_udp(datagram: bytes | bytearray | memoryview) -> tuple[UdpHeader, memoryview]:
    """RSV(2) FRAG ATYP DST.ADDR DST.PORT DATA; raises SocksError for a bad header."""
    view = memoryview(datagram)
    if len(view) < 4:
        raise SocksError("truncated")
    parsed = _parse_address(view, 3)
    if parsed is None:
        raise SocksError("truncated")
    address, end = parsed
    return UdpHeader(view[2], address, end), view[end:]


def encode_udp(source: tuple[str, int], payload: bytes | memoryview) -> bytes:
    return b"\x00\x00\x00" + encode_address(*source) + bytes(payload)
