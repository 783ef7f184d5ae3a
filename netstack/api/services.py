"""Built-in services that soak tests and users poke with nc: echo (RFC 862), discard (RFC 863).

Each service is a small object bound to a port; the table `UDP_SERVICES` maps config names to
their classes so that adding one is a line, not a branch.
"""

from __future__ import annotations

from netstack.proto.udp import UdpEngine, UdpSocket


class UdpEcho:
    """Sends every datagram back to where it came from (RFC 862)."""

    def __init__(self, udp: UdpEngine, port: int = 7) -> None:
        self.datagrams = 0
        self.socket: UdpSocket = udp.bind(port, self._on_datagram)

    def _on_datagram(self, data: memoryview, peer: tuple[int, int], dst: int, now: float) -> None:
        self.datagrams += 1
        # The view stays valid until the tx queue is flushed, so echo it without a copy.
        self.socket.sendto(data, peer)


class UdpDiscard:
    """Throws every datagram away (RFC 863), counting what it threw."""

    def __init__(self, udp: UdpEngine, port: int = 9) -> None:
        self.datagrams = 0
        self.bytes = 0
        self.socket: UdpSocket = udp.bind(port, self._on_datagram)

    def _on_datagram(self, data: memoryview, peer: tuple[int, int], dst: int, now: float) -> None:
        self.datagrams += 1
        self.bytes += len(data)


UDP_SERVICES = {"udp_echo": UdpEcho, "udp_discard": UdpDiscard}
DEFAULT_PORTS = {"udp_echo": 7, "udp_discard": 9}


def start_services(udp: UdpEngine, ports: dict[str, int | None]) -> dict[str, object]:
    """Bind each enabled service (port not None) and return them by name."""
    return {name: UDP_SERVICES[name](udp, port) for name, port in ports.items() if port is not None}
