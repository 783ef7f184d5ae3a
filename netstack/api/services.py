"""Built-in services that soak tests and users poke with nc: echo (RFC 862), discard (RFC 863)
over UDP and TCP, and chargen (RFC 864) over TCP.

Each service is a small object bound to a port; the tables `UDP_SERVICES` and `TCP_SERVICES`
map config names to their classes so that adding one is a line, not a branch. The TCP ones
are asyncio-style protocols (netstack/api/tcp.py) that respect flow control both ways: echo
stops reading while its send buffer is full (so a fast writer meets a closed window, not an
unbounded queue), chargen writes only when the send buffer has drained.
"""

from __future__ import annotations

from netstack.api.tcp import Protocol, TcpServer, TcpTransport, listen
from netstack.proto.tcp.engine import TcpEngine
from netstack.proto.udp import UdpEngine, UdpSocket


class UdpEcho:
    """Sends every datagram back to where it came from (RFC 862).

    The engine answers most datagrams itself (UdpSocket.reflect: the reply built in one step,
    its checksum the request's); one without a checksum or to a broadcast address comes
    through _on_datagram and the ordinary sendto."""

    def __init__(self, udp: UdpEngine, port: int = 7) -> None:
        self._called = 0
        self.socket: UdpSocket = udp.bind(port, self._on_datagram)
        self.socket.reflect = True

    @property
    def datagrams(self) -> int:
        return self._called + self.socket.reflected

    def _on_datagram(self, data: memoryview, peer: tuple[int, int], dst: int, now: float) -> None:
        self._called += 1
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


# -- TCP ---------------------------------------------------------------------------------------
class TcpEcho(Protocol):
    """Sends back every byte (RFC 862), closing after the peer does.

    When the send buffer cannot take a chunk, the rest waits and reading pauses, so the
    peer's window closes instead of memory growing; resume_writing picks it up again.
    """

    def __init__(self) -> None:
        self.transport: TcpTransport | None = None
        self.pending: memoryview | None = None
        self.eof = False
        self.bytes = 0

    def connection_made(self, transport: TcpTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.bytes += len(data)
        self._write(memoryview(data))

    def _write(self, data: memoryview) -> None:
        assert self.transport is not None
        n = self.transport.write(data)
        if n < len(data):
            self.pending = data[n:]
            self.transport.pause_reading()
        else:
            self.pending = None
            if self.eof:
                self.transport.close()

    def resume_writing(self) -> None:
        if self.pending is not None and self.transport is not None:
            self._write(self.pending)
            if self.pending is None:
                self.transport.resume_reading()

    def eof_received(self) -> bool:
        self.eof = True
        if self.pending is None and self.transport is not None:
            self.transport.close()
        return True  # closed above once everything is echoed

    def connection_lost(self, exc: Exception | None) -> None:
        # The transport holds this protocol: letting go of it ends the cycle, so that the
        # connection is freed by reference counting (Connection._detach), not by the GC.
        self.transport = None
        self.pending = None


class TcpDiscard(Protocol):
    """Reads and forgets (RFC 863), counting; closes after the peer does."""

    def __init__(self) -> None:
        self.bytes = 0

    def data_received(self, data: bytes) -> None:
        self.bytes += len(data)


LINE = 72
PRINTABLE = bytes(range(0x20, 0x7F))  # the 95 printable ASCII characters


def chargen_pattern() -> bytes:
    """RFC 864's pattern: line i is 72 characters starting at PRINTABLE[i % 95], then CRLF.

    After 95 lines it repeats, so byte n of the stream is pattern[n % len(pattern)] and a
    reader can check every byte it gets.
    """
    doubled = PRINTABLE * 2
    return b"".join(doubled[i : i + LINE] + b"\r\n" for i in range(len(PRINTABLE)))


class TcpChargen(Protocol):
    """Sends the RFC 864 pattern for as long as the connection lasts; input is discarded.

    It writes only while the send buffer takes bytes, then waits for resume_writing, so its
    memory use is the send buffer and nothing more.
    """

    PATTERN = chargen_pattern()
    CHUNK = 32 * 1024
    # The pattern repeated past CHUNK, so any chunk is one slice of it.
    _BLOCK = PATTERN * (CHUNK // len(PATTERN) + 2)

    def __init__(self) -> None:
        self.transport: TcpTransport | None = None
        self.sent = 0

    def connection_made(self, transport: TcpTransport) -> None:
        self.transport = transport
        self._fill()

    def resume_writing(self) -> None:
        self._fill()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None  # the cycle with the transport ends (see TcpEcho)

    def _fill(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        period = len(self.PATTERN)
        block = memoryview(self._BLOCK)
        while True:
            start = self.sent % period
            n = transport.write(block[start : start + self.CHUNK])
            self.sent += n
            if n < self.CHUNK:
                return


TCP_SERVICES: dict[str, type[Protocol]] = {
    "tcp_echo": TcpEcho,
    "tcp_discard": TcpDiscard,
    "tcp_chargen": TcpChargen,
}
UDP_SERVICES = {"udp_echo": UdpEcho, "udp_discard": UdpDiscard}
DEFAULT_PORTS = {
    "udp_echo": 7,
    "udp_discard": 9,
    "tcp_echo": 7,
    "tcp_discard": 9,
    "tcp_chargen": 19,
}


def start_services(
    udp: UdpEngine, ports: dict[str, int | None], tcp: TcpEngine | None = None
) -> dict[str, object]:
    """Bind each enabled service (port not None) and return them by name.

    UDP services bind on `udp`; TCP ones (tcp_*) listen on `tcp`, and are skipped without it.
    A TCP service is a TcpServer whose connections each get a fresh protocol.
    """
    started: dict[str, object] = {}
    for name, port in ports.items():
        if port is None:
            continue
        if name in UDP_SERVICES:
            started[name] = UDP_SERVICES[name](udp, port)
        elif name in TCP_SERVICES:
            if tcp is not None:
                started[name] = listen(tcp, port, TCP_SERVICES[name])
        else:
            raise KeyError(f"unknown service {name!r}")
    return started


__all__ = ["TCP_SERVICES", "UDP_SERVICES", "TcpServer", "start_services"]
