"""asyncio streams over the stack: the standard library's StreamReader/StreamWriter, for real.

    stack = Stack(config, open_link(config))
    aio = netstack.aio.start(stack)            # the stack's loop runs in a background thread

    async def handle(reader, writer):          # an ordinary asyncio stream handler
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await netstack.aio.start_server(handle, port=7007)
    reader, writer = await netstack.aio.open_connection("192.0.2.1", 8000)
    transport, proto = await netstack.aio.create_datagram_endpoint(MyProto, local_addr=("", 5353))

`open_connection` and `start_server` build asyncio.StreamReaderProtocol over a Transport
bridged to the stack, so readexactly, drain (backpressure) and wait_closed behave as usual.

How the two loops coexist (the choice the issue asked for): the stack keeps its own epoll loop
in its own thread, and the asyncio loop talks to it through api/sockets.BlockingStack's command
queue + eventfd; the stack answers with call_soon_threadsafe, one wakeup per batch of events.
Driving the stack from the asyncio loop instead (add_reader on the TAP fd, call_at for timers)
would put asyncio's per-callback overhead on every received batch and tie the stack's timing
to whatever else the application's loop runs; the thread keeps the packet path as fast as the
callback API and lets one stack serve several asyncio loops or threads.

Backpressure, bounded both ways:
- writing: bytes handed to write() but not yet taken by the stack's send buffer count as the
  transport's write buffer; past its high-water mark the protocol hears pause_writing, so
  `await writer.drain()` blocks until the stack (and its peer) catch up.
- reading: StreamReader pauses the transport past 2 x limit; that pauses the stack connection,
  whose receive window then closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
from collections import deque
from collections.abc import Callable
from typing import Any

from netstack.api.sockets import BlockingStack
from netstack.api.tcp import Protocol, TcpTransport
from netstack.api.tcp import connect as tcp_connect
from netstack.api.tcp import listen as tcp_listen
from netstack.wire.inet import from_str as addr_from_str
from netstack.wire.inet import to_str as addr_to_str

DEFAULT_LIMIT = 2**16
WRITE_HIGH = 256 * 1024
WRITE_LOW = 64 * 1024


class AioStack:
    """A stack whose loop runs in a background thread, usable from asyncio code."""

    def __init__(self, bridge: BlockingStack, udp: Any, push_tx: Callable[[], None]) -> None:
        self.bridge = bridge
        self.udp = udp
        self.push_tx = push_tx

    @property
    def address(self) -> str:
        return self.bridge.address

    def submit(self, command: Callable[[float], None]) -> None:
        self.bridge.submit(command)

    def close(self) -> None:
        self.bridge.close()


_default: AioStack | None = None


def start(stack: Any) -> AioStack:
    """Run a runtime.Stack in a background thread and make it the default for this module."""
    global _default
    aio = AioStack(BlockingStack.for_stack(stack), stack.host.udp, stack.push_tx)
    _default = aio
    return aio


def _stack(stack: AioStack | None) -> AioStack:
    if stack is not None:
        return stack
    if _default is None:
        raise RuntimeError("no stack: call netstack.aio.start(stack) first, or pass stack=")
    return _default


# ==============================================================================================
# the loop thread's half of a connection
# ==============================================================================================
class _LoopSide(Protocol):
    """The engine's protocol for one connection; posts events to the asyncio side in batches."""

    def __init__(self, aloop: asyncio.AbstractEventLoop, target: Any) -> None:
        self.aloop = aloop
        self.target = target  # _StreamTransport or a pending-accept/connect holder
        self.t: TcpTransport | None = None
        self.pending: deque[memoryview] = deque()
        self.after_writes: list[Callable[[], None]] = []
        self._events: deque[tuple[Callable[..., None], tuple]] = deque()
        self._scheduled = False

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        self._events.append((fn, args))
        if not self._scheduled:
            self._scheduled = True
            with contextlib.suppress(RuntimeError):  # the asyncio loop is closed: nobody listens
                self.aloop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:  # asyncio thread
        self._scheduled = False
        events = self._events
        while events:
            fn, args = events.popleft()
            fn(*args)

    # engine callbacks (loop thread)
    def connection_made(self, transport: TcpTransport) -> None:  # type: ignore[override]
        self.t = transport
        self._post(
            self.target._made,
            transport.get_extra_info("sockname"),
            transport.get_extra_info("peername"),
        )

    def data_received(self, data: bytes) -> None:
        self._post(self.target._data, data)

    def eof_received(self) -> bool:
        self._post(self.target._eof)
        return True  # the asyncio protocol decides (its eof_received), as asyncio does

    def connection_lost(self, exc: Exception | None) -> None:
        self.pending.clear()
        self._post(self.target._lost, exc)

    def resume_writing(self) -> None:
        self._push()

    # commands from the asyncio side (loop thread)
    def write(self, data: bytes) -> None:
        self.pending.append(memoryview(data))
        self._push()

    def _push(self) -> None:
        t = self.t
        if t is None:
            return
        taken = 0
        try:
            while self.pending:
                chunk = self.pending[0]
                n = t.write(chunk)
                taken += n
                if n < len(chunk):
                    self.pending[0] = chunk[n:]
                    break
                self.pending.popleft()
        except OSError as err:
            self.pending.clear()
            self._post(self.target._write_error, err)
        if taken:
            self._post(self.target._written, taken)
        if not self.pending:
            actions, self.after_writes = self.after_writes, []
            for action in actions:
                action()

    def later(self, action: Callable[[], None]) -> None:
        """Run after every queued write has gone into the send buffer."""
        if self.pending or self.t is None:
            self.after_writes.append(action)
        else:
            action()


# ==============================================================================================
# the asyncio half
# ==============================================================================================
class _StreamTransport(asyncio.Transport):
    """An asyncio Transport whose I/O happens in the stack's loop thread."""

    def __init__(self, aio: AioStack, aloop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._aio = aio
        self._aloop = aloop
        self._side = _LoopSide(aloop, self)
        self._protocol: asyncio.BaseProtocol | None = None
        self._extra: dict[str, Any] = {}
        self._buffered = 0
        self._high, self._low = WRITE_HIGH, WRITE_LOW
        self._write_paused = False
        self._reading = True
        self._closing = False
        self._lost_flag = False
        self.on_made: Callable[[_StreamTransport], None] | None = None
        self.on_lost_early: Callable[[BaseException], None] | None = None
        self._connected = False

    # -- events from the loop thread (already in the asyncio thread here) ----------------------
    def _made(self, sockname: tuple[str, int], peername: tuple[str, int]) -> None:
        self._connected = True
        self._extra = {"sockname": sockname, "peername": peername, "socket": None}
        if self.on_made is not None:
            self.on_made(self)

    def _data(self, data: bytes) -> None:
        if self._protocol is not None and not self._lost_flag:
            self._protocol.data_received(data)  # type: ignore[attr-defined]

    def _eof(self) -> None:
        if self._protocol is None or self._lost_flag:
            return
        keep_open = self._protocol.eof_received()  # type: ignore[attr-defined]
        if not keep_open:
            self.close()

    def _written(self, n: int) -> None:
        self._buffered -= n
        if self._write_paused and self._buffered <= self._low:
            self._write_paused = False
            if self._protocol is not None:
                self._protocol.resume_writing()

    def _write_error(self, err: OSError) -> None:
        self._buffered = 0

    def _lost(self, exc: BaseException | None) -> None:
        """connection_lost, once; before connection_made it fails the pending connect."""
        if self._lost_flag:
            return
        self._lost_flag = True
        self._closing = True
        if not self._connected:
            if self.on_lost_early is not None:
                self.on_lost_early(exc or ConnectionResetError(errno.ECONNRESET, "closed"))
            return
        if self._protocol is not None:
            self._protocol.connection_lost(exc)

    # -- asyncio.Transport -----------------------------------------------------------------------
    def _submit(self, action: Callable[[], None]) -> None:
        """Run action() in the stack's loop thread (after the commands submitted before)."""
        try:
            self._aio.submit(lambda now: action())
        except OSError:  # the stack is closed: nothing will be sent
            self._side.pending.clear()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if self._closing or self._lost_flag:
            return  # as asyncio does after close (it logs a warning)
        data = bytes(data)
        self._buffered += len(data)
        side = self._side
        self._submit(lambda: side.write(data))
        if not self._write_paused and self._buffered > self._high:
            self._write_paused = True
            if self._protocol is not None:
                self._protocol.pause_writing()

    def writelines(self, list_of_data) -> None:  # type: ignore[override]
        self.write(b"".join(list_of_data))

    def write_eof(self) -> None:
        side = self._side
        self._submit(lambda: side.later(lambda: side.t.write_eof() if side.t else None))

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        side = self._side
        self._submit(lambda: side.later(lambda: side.t.close() if side.t else None))

    def abort(self) -> None:
        self._closing = True
        side = self._side

        def do_abort() -> None:
            side.pending.clear()
            if side.t is not None:
                side.t.abort()

        self._submit(do_abort)

    def is_closing(self) -> bool:
        return self._closing or self._lost_flag

    def pause_reading(self) -> None:
        if self._reading:
            self._reading = False
            side = self._side
            self._submit(lambda: side.t.pause_reading() if side.t else None)

    def resume_reading(self) -> None:
        if not self._reading:
            self._reading = True
            side = self._side
            self._submit(lambda: side.t.resume_reading() if side.t else None)

    def is_reading(self) -> bool:
        return self._reading

    def get_write_buffer_size(self) -> int:
        return self._buffered

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = WRITE_HIGH if low is None else 4 * low
        if low is None:
            low = high // 4
        self._high, self._low = high, low

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol  # type: ignore[return-value]

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)


def _new_transport(aio: AioStack, aloop: asyncio.AbstractEventLoop) -> _StreamTransport:
    return _StreamTransport(aio, aloop)


# ==============================================================================================
# the public API
# ==============================================================================================
async def create_connection(
    protocol_factory: Callable[[], asyncio.Protocol],
    host: str,
    port: int,
    *,
    stack: AioStack | None = None,
) -> tuple[asyncio.Transport, asyncio.Protocol]:
    """loop.create_connection's shape, over the stack."""
    aio = _stack(stack)
    aloop = asyncio.get_running_loop()
    transport = _new_transport(aio, aloop)
    made: asyncio.Future[None] = aloop.create_future()

    def on_made(t: _StreamTransport) -> None:
        protocol = protocol_factory()
        t.set_protocol(protocol)
        protocol.connection_made(t)
        if not made.done():
            made.set_result(None)

    def on_lost_early(exc: BaseException) -> None:
        if not made.done():
            made.set_exception(exc)

    transport.on_made = on_made
    transport.on_lost_early = on_lost_early
    side = transport._side
    address = (addr_from_str(host), port)

    def dial(now: float) -> None:  # loop thread
        try:
            tcp_connect(aio.bridge.tcp, address, lambda: side)
        except Exception as err:  # no route, no free port, ...: fail the await, not the loop
            aloop.call_soon_threadsafe(on_lost_early, err)

    aio.submit(dial)
    await made
    return transport, transport.get_protocol()  # type: ignore[return-value]


async def open_connection(
    host: str, port: int, *, limit: int = DEFAULT_LIMIT, stack: AioStack | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """asyncio.open_connection over the stack: the standard StreamReader/StreamWriter."""
    aloop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit, loop=aloop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=aloop)
    transport, _ = await create_connection(lambda: protocol, host, port, stack=stack)
    writer = asyncio.StreamWriter(transport, protocol, reader, aloop)
    return reader, writer


class Server:
    """What start_server returns: close(), wait_closed(), serve_forever(), async with."""

    def __init__(self, aio: AioStack, port: int) -> None:
        self._aio = aio
        self.port = port
        self._server: Any = None
        self._closed = asyncio.get_running_loop().create_future()

    def close(self) -> None:
        if self._closed.done():
            return
        self._closed.set_result(None)
        server = self._server
        with contextlib.suppress(OSError):
            self._aio.submit(lambda now: server.close() if server is not None else None)

    def is_serving(self) -> bool:
        return not self._closed.done()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    async def serve_forever(self) -> None:
        await asyncio.shield(self._closed)

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()


async def create_server(
    protocol_factory: Callable[[], asyncio.Protocol],
    host: str | None = None,
    port: int = 0,
    *,
    backlog: int = 128,
    stack: AioStack | None = None,
) -> Server:
    """loop.create_server's shape: each connection gets protocol_factory() in this loop.
    `host` is accepted for signature compatibility (the stack has one address)."""
    aio = _stack(stack)
    aloop = asyncio.get_running_loop()
    server = Server(aio, port)

    def on_made(t: _StreamTransport) -> None:
        protocol = protocol_factory()
        t.set_protocol(protocol)
        protocol.connection_made(t)

    def new_side() -> _LoopSide:  # loop thread, per accepted connection
        transport = _new_transport(aio, aloop)
        transport.on_made = on_made
        return transport._side

    def do_listen() -> Any:
        server._server = tcp_listen(aio.bridge.tcp, port, new_side, backlog)
        return server._server

    await aloop.run_in_executor(None, lambda: aio.bridge.call(do_listen))
    return server


async def start_server(
    client_connected_cb: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any],
    host: str | None = None,
    port: int = 0,
    *,
    limit: int = DEFAULT_LIMIT,
    backlog: int = 128,
    stack: AioStack | None = None,
) -> Server:
    """asyncio.start_server over the stack: client_connected_cb(reader, writer) per client."""
    aloop = asyncio.get_running_loop()

    def factory() -> asyncio.StreamReaderProtocol:
        reader = asyncio.StreamReader(limit=limit, loop=aloop)
        return asyncio.StreamReaderProtocol(reader, client_connected_cb, loop=aloop)

    return await create_server(factory, host, port, backlog=backlog, stack=stack)


# ==============================================================================================
# UDP
# ==============================================================================================
class DatagramTransport(asyncio.DatagramTransport):
    """A bound stack UDP port, as loop.create_datagram_endpoint's transport."""

    def __init__(
        self,
        aio: AioStack,
        aloop: asyncio.AbstractEventLoop,
        protocol: asyncio.DatagramProtocol,
        remote: tuple[str, int] | None,
    ) -> None:
        super().__init__()
        self._aio = aio
        self._aloop = aloop
        self._protocol = protocol
        self._remote = remote
        self._sock: Any = None
        self._closing = False
        self._extra: dict[str, Any] = {}

    def _on_datagram(self, data: memoryview, peer: tuple[int, int], dst: int, now: float) -> None:
        # loop thread: copy (the view dies with the call), hand to asyncio
        payload, addr = bytes(data), (addr_to_str(peer[0]), peer[1])
        with contextlib.suppress(RuntimeError):
            self._aloop.call_soon_threadsafe(self._deliver, payload, addr)

    def _deliver(self, payload: bytes, addr: tuple[str, int]) -> None:
        if not self._closing:
            self._protocol.datagram_received(payload, addr)

    def sendto(self, data: bytes | bytearray | memoryview, addr: Any = None) -> None:
        if self._closing:
            return
        target = addr if addr is not None else self._remote
        if target is None:
            raise ValueError("no address: pass addr or connect with remote_addr")
        payload = bytes(data)
        dst = (addr_from_str(target[0]), int(target[1]))
        aio, sock = self._aio, self._sock

        def send(now: float) -> None:
            if aio.udp.now < now:
                aio.udp.now = now
            if not sock.closed:
                sock.sendto(payload, dst)
                aio.push_tx()

        aio.submit(send)

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        sock = self._sock
        with contextlib.suppress(OSError):
            self._aio.submit(lambda now: sock.close())
        self._aloop.call_soon(self._protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def is_closing(self) -> bool:
        return self._closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol


async def create_datagram_endpoint(
    protocol_factory: Callable[[], asyncio.DatagramProtocol],
    local_addr: tuple[str, int] | None = None,
    remote_addr: tuple[str, int] | None = None,
    *,
    stack: AioStack | None = None,
) -> tuple[DatagramTransport, asyncio.DatagramProtocol]:
    """loop.create_datagram_endpoint's shape: a stack UDP port (0 or no local_addr: ephemeral)."""
    aio = _stack(stack)
    aloop = asyncio.get_running_loop()
    protocol = protocol_factory()
    transport = DatagramTransport(aio, aloop, protocol, remote_addr)
    port = local_addr[1] if local_addr else 0
    sock = await aloop.run_in_executor(
        None, lambda: aio.bridge.call(aio.udp.bind, port, transport._on_datagram)
    )
    transport._sock = sock
    transport._extra = {"sockname": (aio.address, sock.port), "peername": remote_addr}
    protocol.connection_made(transport)
    return transport, protocol
