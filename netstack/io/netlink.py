"""Interface configuration over netlink (pyroute2): addresses, MTU, link state.

The TAP device itself is created by TUNSETIFF when the stack opens it (a non-persistent device
goes away with the stack); everything else about it is set here, never by running `ip`.
"""

from __future__ import annotations

import ipaddress
import socket

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError


class NetlinkConfigError(RuntimeError):
    """Configuring the interface failed; str() is a one-line explanation."""


def _index(ipr: IPRoute, name: str) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise NetlinkConfigError(f"interface {name} does not exist")
    return found[0]


def interface_exists(name: str) -> bool:
    with IPRoute() as ipr:
        return bool(ipr.link_lookup(ifname=name))


def configure_interface(
    name: str,
    *,
    address: ipaddress.IPv4Interface | None,
    mtu: int | None,
) -> None:
    """Give the kernel side of `name` an address (if asked), set its MTU, and bring it up."""
    try:
        with IPRoute() as ipr:
            index = _index(ipr, name)
            if mtu is not None:
                ipr.link("set", index=index, mtu=mtu)
            if address is not None and not _has_address(ipr, index, address):
                ipr.addr(
                    "add",
                    index=index,
                    address=str(address.ip),
                    prefixlen=address.network.prefixlen,
                    broadcast=str(address.network.broadcast_address),
                )
            ipr.link("set", index=index, state="up")
    except NetlinkError as err:
        raise NetlinkConfigError(
            f"configuring {name} over netlink failed: {err.args[-1] if err.args else err}"
        ) from None


def interface_mtu(name: str) -> int:
    with IPRoute() as ipr:
        link = ipr.get_links(_index(ipr, name))[0]
        return int(link.get_attr("IFLA_MTU"))


def _has_address(ipr: IPRoute, index: int, address: ipaddress.IPv4Interface) -> bool:
    for msg in ipr.get_addr(family=socket.AF_INET, index=index):
        if (
            msg.get_attr("IFA_ADDRESS") == str(address.ip)
            and msg["prefixlen"] == address.network.prefixlen
        ):
            return True
    return False


IFA_F_NODAD = 0x02  # linux/if_addr.h: the kernel side skips DAD (it is the TAP's only host)


def add_address6(name: str, address: ipaddress.IPv6Interface) -> None:
    """Give the kernel side of `name` an IPv6 address (without DAD, so it is usable at once)."""
    try:
        with IPRoute() as ipr:
            index = _index(ipr, name)
            for msg in ipr.get_addr(family=socket.AF_INET6, index=index):
                if msg.get_attr("IFA_ADDRESS") == str(address.ip):
                    return
            ipr.addr(
                "add",
                index=index,
                family=socket.AF_INET6,
                address=str(address.ip),
                prefixlen=address.network.prefixlen,
                flags=IFA_F_NODAD,
            )
    except NetlinkError as err:
        raise NetlinkConfigError(
            f"adding {address} to {name} over netlink failed: {err.args[-1] if err.args else err}"
        ) from None
