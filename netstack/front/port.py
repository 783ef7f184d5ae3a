"""What the front needs from a running stack, in one small object.

The loop polls the front's kernel sockets; the TCP and UDP engines are used through
netstack.api (TCP) and UDP's bind/sendto. Two details of running outside the engine's own
callbacks live here, like api/sockets.py's BlockingStack does them: the engines' notion of
`now` is brought up to the loop's before a call (their timers start from it), and datagrams
sent from a kernel-socket callback are pushed to the link at once (TCP asks the loop to poll
by itself; UDP has no flush point of its own).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass(eq=False)
class StackPort:
    loop: Any  # netstack.io.loop.Loop
    tcp: Any  # the TCP engine, for netstack.api.tcp.listen/connect
    udp: Any  # the UDP engine: bind(port, on_datagram) / UdpSocket.sendto
    current_address: Callable[[], ipaddress.IPv4Interface]  # may change at run time (DHCP)
    push_tx: Callable[[], None]  # move frames the front queued to the link's tx queue
    # Our usable IPv6 addresses with their prefixes now (SLAAC adds and deprecates them at run
    # time); none when IPv6 is off.
    current_addresses6: Callable[[], tuple[ipaddress.IPv6Interface, ...]] = lambda: ()

    @property
    def address(self) -> ipaddress.IPv4Interface:
        """The stack's address and on-link network now (0.0.0.0/32 while DHCP has none)."""
        return self.current_address()

    @property
    def addresses6(self) -> tuple[ipaddress.IPv6Interface, ...]:
        return self.current_addresses6()

    def networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """The on-link networks now: IPv4's (none while DHCP has no address), then the
        prefixes of our IPv6 addresses (fe80::/64 for the link-local one)."""
        nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        v4 = self.address
        if int(v4.ip):
            nets.append(v4.network)
        for iface in self.addresses6:
            if iface.network not in nets:
                nets.append(iface.network)
        return tuple(nets)

    def is_ours(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        if ip.version == 4:
            return ip == self.address.ip
        return any(ip == iface.ip for iface in self.addresses6)

    def enter(self, now: float) -> None:
        """Call before using the engines from a kernel-socket callback or timer."""
        if self.tcp.now < now:
            self.tcp.now = now
        if self.udp.now < now:
            self.udp.now = now

    @property
    def ip(self) -> str:
        return str(self.address.ip)
