"""The application API for TCP: callbacks in the loop, shaped like asyncio's Protocol/Transport.

Servers and clients are written as with asyncio, minus the coroutines:

    class Echo(Protocol):
        def connection_made(self, transport):
            self.transport = transport
        def data_received(self, data):
            self.transport.write(data)

    server = listen(host.tcp, 7, Echo, backlog=128)      # TcpServer; server.close()
    transport = connect(host.tcp, ("192.0.2.1", 80), Client)

Protocol callbacks (all optional; they run in the loop thread, from the engine's flush point
at the end of a receive batch or timer run — never in the middle of processing a segment):

    connection_made(transport)   the handshake completed (active and passive alike)
    data_received(data: bytes)   in-order bytes; the object is the application's to keep
    eof_received() -> bool|None  the peer sent FIN. Return a true value to keep writing
                                 (half-close); otherwise the transport closes itself, as
                                 asyncio's does
    connection_lost(exc)         the end: None after a clean close, else ConnectionResetError,
                                 ConnectionRefusedError or TimeoutError (OSError subclasses
                                 carrying errno). A failed connect() gets connection_lost(exc)
                                 without connection_made — the callback-style "connect failed"
    pause_writing()              the send buffer reached its high-water mark
    resume_writing()             it drained to the low-water mark: write more

Differences from asyncio, on purpose: buffers are bounded, so `write()` returns how many bytes
it took (all of them unless the send buffer is full; a full buffer also triggers
pause_writing). A caller that respects pause_writing/resume_writing never sees a short write.
Writing after write_eof()/close() or on a dead connection raises (BrokenPipeError or the error
that ended it).

Everything here must be called from the loop thread. Calls made outside the engine's own
callbacks take effect at the next loop turn (the engine asks the loop to poll at once).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from netstack.proto.tcp.connection import Connection
from netstack.proto.tcp.engine import Listener, TcpEngine
from netstack.wire.inet import from_str as addr_from_str
from netstack.wire.inet import to_str as addr_to_str

Buffer = bytes | bytearray | memoryview


class Protocol:
    """Base class with do-nothing callbacks (asyncio.Protocol's, same names and meaning)."""

    def connection_made(self, transport: TcpTransport) -> None:
        pass

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        pass

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass


ProtocolFactory = Callable[[], Protocol]


class TcpTransport:
    """One connection as the application sees it. It is also the engine's event handler for
    the connection (the on_* methods), which it translates into Protocol calls."""

    def __init__(self, conn: Connection, protocol: Protocol) -> None:
        self._conn = conn
        self._protocol = protocol
        self._closed = False  # connection_lost delivered
        conn.handler = self
        conn.user = self
        conn.engine.touch(conn)  # events that waited for a handler go out at the next flush

    # -- engine events -> protocol ---------------------------------------------------------------
    def on_established(self) -> None:
        self._protocol.connection_made(self)

    def on_data(self, data: bytes) -> None:
        self._protocol.data_received(data)

    def on_eof(self) -> None:
        if not self._protocol.eof_received():
            self.close()

    def on_closed(self, exc: Exception | None) -> None:
        self._closed = True
        self._protocol.connection_lost(exc)

    def on_pause_writing(self) -> None:
        self._protocol.pause_writing()

    def on_resume_writing(self) -> None:
        self._protocol.resume_writing()

    def on_urgent(self, mark: int) -> None:
        """The peer's urgent pointer advanced (RFC 9293 3.8.5): `urgent_received(mark)` on
        protocols that define it; the bytes themselves arrive inline through data_received
        (SO_OOBINLINE semantics, RFC 6093): mark is the stream offset just past them."""
        callback = getattr(self._protocol, "urgent_received", None)
        if callback is not None:
            callback(mark)

    # -- writing -----------------------------------------------------------------------------------
    def write(self, data: Buffer) -> int:
        """Queue bytes for sending; returns how many the send buffer took."""
        if not data:
            return 0
        return self._conn.send(data)

    def write_urgent(self, data: Buffer) -> int:
        """Queue bytes as urgent data (send(MSG_OOB)): the urgent pointer ends after them."""
        if not data:
            return 0
        return self._conn.send_urgent(data)

    def mark_urgent(self, back: int = 0) -> None:
        """Urgent data ends `back` bytes before the end of what was written (send(MSG_OOB)
        of data written in pieces: the blocking facade)."""
        self._conn.mark_urgent(back)

    def writelines(self, chunks: Iterable[Buffer]) -> int:
        total = 0
        for chunk in chunks:
            n = self.write(chunk)
            total += n
            if n < len(chunk):
                break
        return total

    def write_eof(self) -> None:
        """Half-close: FIN after the queued data; reading goes on."""
        self._conn.shutdown_write()

    def can_write_eof(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        """Bytes not yet acknowledged by the peer (sent or not)."""
        self._conn.release_ack()  # an ACK held to the flush point (ACK_HOLD) counts
        return len(self._conn.sndbuf)

    def get_write_buffer_free(self) -> int:
        self._conn.release_ack()
        return self._conn.sndbuf.free()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._conn.write_low, self._conn.write_high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._conn.set_write_buffer_limits(high, low)

    def set_nodelay(self, on: bool = True) -> None:
        """TCP_NODELAY: turn Nagle's algorithm off (on by default)."""
        self._conn.set_nodelay(on)

    def set_buffer_sizes(self, send: int | None = None, receive: int | None = None) -> None:
        """SO_SNDBUF / SO_RCVBUF for this connection (see Connection.set_buffer_sizes)."""
        self._conn.set_buffer_sizes(send, receive)

    def get_buffer_sizes(self) -> tuple[int, int]:
        """(send buffer, receive buffer) sizes in bytes."""
        return self._conn.sndbuf.capacity, self._conn.rcv_buf_size

    def set_keepalive(
        self,
        on: bool = True,
        idle: float | None = None,
        interval: float | None = None,
        count: int | None = None,
    ) -> None:
        """SO_KEEPALIVE, with TCP_KEEPIDLE/KEEPINTVL/KEEPCNT (None: the configured ones)."""
        self._conn.set_keepalive(on, idle, interval, count)

    # -- closing -----------------------------------------------------------------------------------
    def close(self) -> None:
        """Graceful: queued data, then FIN; connection_lost(None) once the peer has it all.
        Unread received data turns this into abort() (RFC 1122 4.2.2.13)."""
        self._conn.close()

    def abort(self) -> None:
        """RST at once; connection_lost(None) follows."""
        self._conn.abort()

    def is_closing(self) -> bool:
        conn = self._conn
        return self._closed or conn.app_closed or conn.fin_queued or conn.state.value == "closed"

    # -- reading -----------------------------------------------------------------------------------
    def pause_reading(self) -> None:
        """Stop data_received; unread bytes shrink the advertised window (flow control)."""
        self._conn.pause_reading()

    def resume_reading(self) -> None:
        self._conn.resume_reading()

    def is_reading(self) -> bool:
        return not self._conn.reading_paused

    # -- information -------------------------------------------------------------------------------
    @property
    def connection(self) -> Connection:
        return self._conn

    def get_protocol(self) -> Protocol:
        return self._protocol

    def get_extra_info(self, name: str, default: object = None) -> object:
        """'peername' / 'sockname' ((ip str, port)), 'state', 'tcp_info' (a dict: rtt,
        cwnd, windows, ...), 'connection' (the engine's Connection)."""
        conn = self._conn
        if name == "peername":
            return addr_to_str(conn.remote_ip), conn.remote_port
        if name == "sockname":
            return addr_to_str(conn.local_ip), conn.local_port
        if name == "state":
            return conn.state.value
        if name == "tcp_info":
            return conn.info()
        if name == "connection":
            return conn
        return default

    def __repr__(self) -> str:
        peer = self.get_extra_info("peername")
        return f"<TcpTransport {peer[0]}:{peer[1]} {self._conn.state.value}>"  # type: ignore[index]


class TcpServer:
    """A listening port whose connections each get a new protocol from the factory."""

    def __init__(
        self, tcp: TcpEngine, port: int, protocol_factory: ProtocolFactory, backlog: int | None
    ) -> None:
        self.protocol_factory = protocol_factory
        self.listener: Listener = tcp.listen(port, backlog, self._accept)
        self.port = self.listener.port  # the one chosen when asked for 0

    def _accept(self, listener: Listener) -> None:
        while (conn := listener.accept()) is not None:
            TcpTransport(conn, self.protocol_factory())

    def close(self) -> None:
        """Stop listening; connections not yet accepted are reset, accepted ones live on."""
        self.listener.close()

    def is_serving(self) -> bool:
        return not self.listener.closed


def _ip(value: str | int | bytes) -> int | bytes:
    """An address string of either family (as the socket module takes) or an engine value."""
    return addr_from_str(value)


def listen(
    tcp: TcpEngine,
    port: int,
    protocol_factory: ProtocolFactory,
    backlog: int | None = None,
) -> TcpServer:
    """Accept connections on `port`; each gets protocol_factory()."""
    return TcpServer(tcp, port, protocol_factory, backlog)


def connect(
    tcp: TcpEngine,
    address: tuple[str | int | bytes, int],
    protocol_factory: ProtocolFactory,
    local_port: int = 0,
    local_ip: str | int | bytes | None = None,
) -> TcpTransport:
    """Open a connection; the protocol hears connection_made(transport) once it is up (or
    connection_lost(exc) if it cannot be). Writes before then are queued. `local_ip`: leave
    from this address of ours (e.g. one of several IPv6 ones); None: the stack chooses."""
    ip, port = address
    source = None if local_ip is None else _ip(local_ip)
    conn = tcp.connect((_ip(ip), port), local_port, source)
    return TcpTransport(conn, protocol_factory())
