"""Addresses of either family as the stack holds them: IPv4 as an int, IPv6 as 16 bytes (the
type is the family, as in the UDP and TCP engines), and the text forms the socket module uses
("192.0.2.1", "2001:db8::1"; a scope suffix "%eth0" is accepted and ignored: one link)."""

from __future__ import annotations

import ipaddress

from netstack.wire.ipv4 import ip_from_str, ip_to_str

Address = int | bytes


def from_str(text: str | int | bytes) -> Address:
    """Text of either family -> int (IPv4) or 16 bytes (IPv6); values pass through.
    ValueError for anything else, as ip_from_str."""
    if isinstance(text, int):
        return text
    if isinstance(text, bytes | bytearray):
        if len(text) != 16:
            raise ValueError(f"an IPv6 address is 16 bytes, not {len(text)}")
        return bytes(text)
    if ":" not in text:
        return ip_from_str(text)
    try:
        return ipaddress.IPv6Address(text.split("%", 1)[0]).packed
    except ValueError:
        raise ValueError(f"expected an IPv4 or IPv6 address, got {text!r}") from None


def to_str(address: Address) -> str:
    """int -> dotted quad, 16 bytes -> RFC 5952 text."""
    if type(address) is bytes:
        return str(ipaddress.IPv6Address(address))
    return ip_to_str(address)  # type: ignore[arg-type]


def is_v6(address: Address) -> bool:
    return type(address) is bytes


def is_unspecified(text: str) -> bool:
    """ "", "0.0.0.0" or "::": any address (bind)."""
    return text in ("", "0.0.0.0", "::")
