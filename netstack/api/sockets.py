"""A blocking, socket-like facade over the TCP engine, for scripts and tests in other threads.

    bs = BlockingStack.for_stack(stack)          # runs stack.run() in a background thread
    with bs.create_connection(("192.0.2.1", 5001), timeout=5) as sock:
        sock.sendall(b"hello")
        sock.shutdown(socket.SHUT_WR)
        reply = sock.recv(4096)
    bs.close()                                    # stops the loop, joins the thread

    srv = bs.socket(); srv.bind(("", 7000)); srv.listen(16)
    conn, (ip, port) = srv.accept()

Why it is shaped like this (DESIGN.md principle 2): the loop thread owns the engine and never
blocks or takes a lock of ours. Other threads talk to it only through one queue of commands
plus an eventfd registered with `loop.add_reader`; the loop answers each socket through that
socket's own `queue.SimpleQueue` of events (whose put() never blocks). All engine calls happen
in the loop thread, inside commands, so nothing here needs the engine to be thread-safe.

Flow control both ways, bounded:
- sending: `sendall` (and `send`, which takes everything too, like a blocking socket) returns
  once the engine's send buffer has taken all the bytes; while it is full the rest waits in the
  loop thread for resume_writing, and the caller blocks — so memory is the engine's send buffer
  plus the one call's data, and a slow peer slows the writer down.
- receiving: data the application has not yet recv()'d is counted; past `recv_buffer` bytes the
  loop pauses reading (the engine then shrinks the advertised window) until recv() has drained
  enough — the socket's receive buffer, in effect.

Errors surface as the socket module's: ConnectionRefusedError, ConnectionResetError,
TimeoutError (= socket.timeout; also for settimeout() expiries), BrokenPipeError, OSError.
A socket is meant for one thread at a time per direction: one reader and one writer may use it
concurrently (the user-side state has its own lock, which the loop thread never touches).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import queue
import socket as _socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from netstack.api.tcp import Protocol, TcpTransport
from netstack.api.tcp import connect as tcp_connect
from netstack.proto.tcp.connection import MIN_BUFFER
from netstack.wire.inet import from_str as addr_from_str
from netstack.wire.inet import to_str as addr_to_str

log = logging.getLogger("netstack.api.sockets")

SHUT_RD, SHUT_WR, SHUT_RDWR = _socket.SHUT_RD, _socket.SHUT_WR, _socket.SHUT_RDWR
RECV_BUFFER = 256 * 1024  # unread bytes held for the application before reading pauses
Address = tuple[str, int]
Command = Callable[[float], None]

# Events the loop posts to a socket's queue (first item of each tuple).
EV_ESTABLISHED = "established"  # (ev, sockname, peername)
EV_DATA = "data"  # (ev, bytes)
EV_EOF = "eof"  # (ev,)
EV_WRITTEN = "written"  # (ev, total bytes the engine has taken so far)
EV_WRITE_ERROR = "write_error"  # (ev, exc)
EV_LOST = "lost"  # (ev, exc | None)
EV_ACCEPTED = "accepted"  # (ev, _Endpoint, peername, sockname) -- on a listening socket's queue
EV_LISTEN_CLOSED = "listen_closed"  # (ev,)


class StackClosed(OSError):
    def __init__(self) -> None:
        super().__init__(errno.ESHUTDOWN, "the blocking stack is closed")


# ===============================================================================================
# loop side: everything below until BlockingStack runs in the loop thread only
# ===============================================================================================
class _Endpoint(Protocol):
    """One connection's loop-side half: the engine's Protocol, posting events to `events`."""

    def __init__(self, events: queue.SimpleQueue, recv_buffer: int) -> None:
        self.events = events
        self.recv_buffer = recv_buffer
        self.transport: TcpTransport | None = None
        self.pending: deque[memoryview] = deque()  # bytes the send buffer could not take yet
        self.after_pending: list[Callable[[], None]] = []  # shutdown/close waiting for them
        self.written = 0  # bytes the engine has taken (cumulative)
        self.urgent_upto: int | None = None  # MSG_OOB: urgent data ends at this `written`
        self.unread = 0  # bytes posted to the application and not yet credited back
        self.paused = False  # we paused reading (the application's buffer is full)
        self.lost = False
        self.exc: BaseException | None = None

    # -- engine callbacks --------------------------------------------------------------------
    def connection_made(self, transport: TcpTransport) -> None:  # type: ignore[override]
        self.transport = transport
        self.events.put(
            (
                EV_ESTABLISHED,
                transport.get_extra_info("sockname"),
                transport.get_extra_info("peername"),
            )
        )
        self._drain()

    def data_received(self, data: bytes) -> None:
        self.unread += len(data)
        self.events.put((EV_DATA, data))
        if not self.paused and self.unread >= self.recv_buffer and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.events.put((EV_EOF,))
        return True  # half-close: the application decides when to close, as with a socket

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.exc = exc
        if self.pending:
            self.pending.clear()
            self.events.put((EV_WRITE_ERROR, exc or BrokenPipeError(errno.EPIPE, "closed")))
        self.after_pending.clear()
        self.events.put((EV_LOST, exc))

    def resume_writing(self) -> None:
        self._drain()

    # -- commands from the application ---------------------------------------------------------
    def write(self, data: memoryview, urgent: bool = False) -> None:
        if self.lost:
            self.events.put((EV_WRITE_ERROR, self.exc or BrokenPipeError(errno.EPIPE, "closed")))
            return
        self.pending.append(data)
        if urgent:
            self.urgent_upto = self.written + sum(len(d) for d in self.pending)
        self._drain()

    def cancel_writes(self) -> None:
        self.pending.clear()
        self._run_after()

    def credit(self, n: int) -> None:
        self.unread -= n
        if self.paused and self.unread < self.recv_buffer and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    def shutdown_write(self) -> None:
        self._after(lambda t: t.write_eof())

    def close(self) -> None:
        self._after(lambda t: t.close())

    def abort(self) -> None:
        self.pending.clear()
        self.after_pending.clear()
        if self.transport is not None and not self.lost:
            self.transport.abort()

    def _after(self, action: Callable[[TcpTransport], None]) -> None:
        def run() -> None:
            if self.transport is not None and not self.lost:
                action(self.transport)

        self.after_pending.append(run)
        if self.transport is not None and not self.pending:
            self._run_after()

    def _run_after(self) -> None:
        actions, self.after_pending = self.after_pending, []
        for action in actions:
            action()

    def _drain(self) -> None:
        """Move pending bytes into the engine's send buffer as far as it takes them."""
        transport = self.transport
        if transport is None:
            return  # before connection_made (connect in progress): connection_made drains
        pending = self.pending
        taken = 0
        while pending:
            data = pending[0]
            try:
                n = transport.write(data)
            except OSError as err:
                pending.clear()
                self.after_pending.clear()
                self.events.put((EV_WRITE_ERROR, err))
                return
            taken += n
            upto = self.urgent_upto
            if upto is not None and self.written + taken >= upto:
                transport.mark_urgent(self.written + taken - upto)
                self.urgent_upto = None
            if n < len(data):
                pending[0] = data[n:]
                break
            pending.popleft()
        if taken:
            self.written += taken
            self.events.put((EV_WRITTEN, self.written))
        if not pending and self.after_pending:
            self._run_after()


class _Acceptor:
    """A listening socket's loop-side half: hands connections out only when asked (`want`),
    so the engine's bounded accept queue stays the only backlog."""

    def __init__(self, tcp: Any, events: queue.SimpleQueue, recv_buffer: int) -> None:
        self.tcp = tcp
        self.events = events
        self.recv_buffer = recv_buffer
        self.wants = 0
        self.listener: Any = None

    def on_ready(self, listener: Any) -> None:
        while self.wants > 0:
            conn = listener.accept()
            if conn is None:
                return
            self.wants -= 1
            endpoint = _Endpoint(queue.SimpleQueue(), self.recv_buffer)
            TcpTransport(conn, endpoint)
            # The connection may have waited in the accept queue without a handler, and the
            # engine dispatches only connections touched since the last flush: without this,
            # connection_made and data already received would wait for the peer's next segment
            # (reported to the engine's owner; harmless once Listener.accept() touches itself).
            self.tcp.touch(conn)
            peer = (addr_to_str(conn.remote_ip), conn.remote_port)
            self.events.put(
                (EV_ACCEPTED, endpoint, peer, (addr_to_str(conn.local_ip), conn.local_port))
            )

    def want(self) -> None:
        self.wants += 1
        if self.listener is not None:
            self.on_ready(self.listener)

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        self.events.put((EV_LISTEN_CLOSED,))


# ===============================================================================================
# the bridge
# ===============================================================================================
class BlockingStack:
    """The loop's side door for other threads: a command queue plus an eventfd.

    Attach it to a Loop and a TcpEngine before the loop runs (add_reader is not thread-safe
    against a running loop), then either run the loop yourself or let `start()` run it in a
    background thread. `for_stack(stack)` does both for a runtime.Stack.
    """

    def __init__(self, loop: Any, tcp: Any, *, recv_buffer: int = RECV_BUFFER) -> None:
        self.loop = loop
        self.tcp = tcp
        self.recv_buffer = recv_buffer
        self._commands: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        loop.add_reader(self._efd, self._on_wakeup)
        self._thread: threading.Thread | None = None
        self._closed = False
        # Held across submit's "closed?" check and its eventfd write, and across close's
        # marking: without it a submit racing close wrote to a closed (EBADF) or, worse, reused fd.
        self._gate = threading.Lock()
        self.loop_error: BaseException | None = None

    @classmethod
    def for_stack(cls, stack: Any, **kwargs: Any) -> BlockingStack:
        """Attach to a runtime.Stack (its host's TCP engine) and run it in a background thread."""
        tcp = getattr(stack.host, "tcp", None)
        if tcp is None:
            raise RuntimeError("this stack has no TCP engine (host.tcp)")
        return cls(stack.loop, tcp, **kwargs).start(stack.run)

    def start(self, run: Callable[[], None] | None = None) -> BlockingStack:
        """Run `run` (default: loop.run) in a daemon thread; returns once the loop answers."""
        target = run if run is not None else self.loop.run

        def main() -> None:
            try:
                target()
            except BaseException as err:  # shown to callers waiting on the loop
                self.loop_error = err
                raise

        self._thread = threading.Thread(target=main, name="netstack-loop", daemon=True)
        self._thread.start()
        self.call(lambda: None, timeout=10.0)
        return self

    def close(self, timeout: float = 10.0) -> None:
        """Stop the loop (if we run it) and release the eventfd. Sockets still open are left
        to the engine (the loop no longer runs, so nothing more is sent)."""
        if self._thread is None:  # attached to a loop someone else runs: detach from inside it
            efd = self._efd
            loop = self.loop

            def detach(now: float) -> None:
                loop.remove_reader(efd)
                # Under the gate: a wakeup already pending can run this command between
                # close()'s put and its eventfd_write, which must not find the fd closed.
                with self._gate:
                    os.close(efd)

            with self._gate:
                if self._closed:
                    return
                self._commands.put(detach)
                os.eventfd_write(efd, 1)
                self._closed = True
            return
        with self._gate:
            if self._closed:
                return
            self._closed = True
        self.loop.stop()
        self._thread.join(timeout)
        self.loop.remove_reader(self._efd)
        os.close(self._efd)

    def __enter__(self) -> BlockingStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- talking to the loop ---------------------------------------------------------------------
    def submit(self, command: Command) -> None:
        """Run command(now) in the loop thread, soon (order of submission is kept)."""
        with self._gate:
            if self._closed:
                raise StackClosed()
            self._commands.put(command)
            os.eventfd_write(self._efd, 1)

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float | None = 30.0) -> Any:
        """Run fn(*args) in the loop thread and return its result (or raise its exception)."""
        reply: queue.SimpleQueue = queue.SimpleQueue()

        def command(now: float) -> None:
            try:
                reply.put((True, fn(*args)))
            except BaseException as err:
                reply.put((False, err))

        self.submit(command)
        try:
            ok, value = reply.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(errno.ETIMEDOUT, "the loop did not answer") from self.loop_error
        if not ok:
            raise value
        return value

    def _on_wakeup(self, now: float) -> None:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self._efd)
        # Engine calls made from here take the engine's `now` for timers; it is otherwise the
        # time of the last segment or timer, which may be long ago on an idle stack.
        if self.tcp.now < now:
            self.tcp.now = now
        commands = self._commands
        while True:
            try:
                command = commands.get_nowait()
            except queue.Empty:
                return
            try:
                command(now)
            except Exception:  # a command must never take the loop down
                log.exception("blocking-facade command failed; the loop goes on")

    # -- sockets -----------------------------------------------------------------------------
    def socket(self) -> TcpSocket:
        return TcpSocket(self)

    def create_connection(
        self, address: Address, timeout: float | None = None, source_port: int = 0
    ) -> TcpSocket:
        """Like socket.create_connection: a connected TcpSocket (timeout also set on it)."""
        sock = TcpSocket(self)
        sock.settimeout(timeout)
        if source_port:
            sock.bind(("", source_port))
        try:
            sock.connect(address)
        except BaseException:
            sock.close()
            raise
        return sock

    @property
    def address(self) -> str:
        return addr_to_str(self.tcp.local_ip)


# ===============================================================================================
# user side: runs in the application's threads
# ===============================================================================================
class TcpSocket:
    """A blocking TCP socket over the engine (a subset of socket.socket's API)."""

    _ids = itertools.count(1)

    def __init__(
        self,
        stack: BlockingStack,
        endpoint: _Endpoint | None = None,
        peer: Address | None = None,
    ) -> None:
        self.stack = stack
        self._timeout: float | None = None
        self._lock = threading.Condition(threading.Lock())
        self._pumping = False
        self._local_port = 0
        self._local_ip: int | bytes | None = None  # bind() to one of our addresses: the source
        self._endpoint = endpoint
        self._events: queue.SimpleQueue = (
            endpoint.events if endpoint is not None else queue.SimpleQueue()
        )
        self._acceptor: _Acceptor | None = None
        self._accepted: deque[tuple[_Endpoint, Address, Address]] = deque()
        self._want_outstanding = 0
        self._listen_closed = False
        # state fed by events
        self._connected = endpoint is not None
        self._sockname: Address | None = None
        self._peername: Address | None = peer
        self._chunks: deque[bytes] = deque()
        self._offset = 0  # into _chunks[0]
        self._buffered = 0
        self._uncredited = 0
        self._eof = False
        self._lost = False
        self._error: BaseException | None = None  # ended the connection (reset, timeout, ...)
        self._write_error: BaseException | None = None
        self._written = 0  # bytes the engine has taken
        self._submitted = 0  # bytes handed to the loop
        self._shut_rd = self._shut_wr = False
        self._closed = False
        # SO_SNDBUF / SO_RCVBUF set before connect() or listen() (None: the stack's).
        self._sndbuf: int | None = None
        self._rcvbuf: int | None = None
        self.id = next(self._ids)

    # -- options ---------------------------------------------------------------------------
    def settimeout(self, timeout: float | None) -> None:
        if timeout is not None and timeout < 0:
            raise ValueError("Timeout value out of range")
        self._timeout = timeout

    def gettimeout(self) -> float | None:
        return self._timeout

    def setblocking(self, flag: bool) -> None:
        self._timeout = None if flag else 0.0

    def getsockname(self) -> Address:
        if self._sockname is not None:
            return self._sockname
        return (self.stack.address, self._local_port)

    def getpeername(self) -> Address:
        if self._peername is None:
            raise OSError(errno.ENOTCONN, "not connected")
        return self._peername

    def setsockopt(self, level: int, optname: int, value: int) -> None:
        """SO_SNDBUF, SO_RCVBUF (bytes; at least 4608, not doubled as Linux does), SO_KEEPALIVE,
        TCP_NODELAY. Buffer sizes set before connect()/listen() apply from the SYN (the window
        scale is chosen from the receive size); a listener's go to the connections it accepts.
        A blocking sendall() blocks while the send buffer (sent, unacknowledged and queued
        bytes) is full."""
        self._check_open()
        key = (level, optname)
        if key == (_socket.SOL_SOCKET, _socket.SO_SNDBUF):
            self._sndbuf = int(value)
            self._apply_option(lambda t: t.set_buffer_sizes(send=int(value)))
        elif key == (_socket.SOL_SOCKET, _socket.SO_RCVBUF):
            self._rcvbuf = int(value)
            endpoint = self._endpoint
            if endpoint is not None:
                self.stack.submit(lambda now: setattr(endpoint, "recv_buffer", int(value)))
            self._apply_option(lambda t: t.set_buffer_sizes(receive=int(value)))
        elif key == (_socket.SOL_SOCKET, _socket.SO_KEEPALIVE):
            self._apply_option(lambda t: t.set_keepalive(bool(value)), need_connection=True)
        elif key == (_socket.IPPROTO_TCP, _socket.TCP_NODELAY):
            self._apply_option(lambda t: t.set_nodelay(bool(value)), need_connection=True)
        else:
            raise OSError(errno.ENOPROTOOPT, "option not supported by this stack")

    def getsockopt(self, level: int, optname: int) -> int:
        """SO_SNDBUF / SO_RCVBUF: the connection's sizes (or what was set, or the stack's)."""
        key = (level, optname)
        if key not in (
            (_socket.SOL_SOCKET, _socket.SO_SNDBUF),
            (_socket.SOL_SOCKET, _socket.SO_RCVBUF),
        ):
            raise OSError(errno.ENOPROTOOPT, "option not supported by this stack")
        send = key[1] == _socket.SO_SNDBUF
        endpoint = self._endpoint
        if endpoint is not None and endpoint.transport is not None:
            transport = endpoint.transport
            sizes = self.stack.call(transport.get_buffer_sizes)
            return sizes[0] if send else sizes[1]
        mine = self._sndbuf if send else self._rcvbuf
        if mine is not None:
            return max(mine, MIN_BUFFER)
        cfg = self.stack.tcp.config
        return cfg.send_buffer if send else cfg.receive_buffer

    def _apply_option(
        self, action: Callable[[TcpTransport], None], need_connection: bool = False
    ) -> None:
        """Run `action` on the connection's transport in the loop thread, if there is one
        (else the option waits for connect()/listen(), or is refused if it needs one)."""
        endpoint = self._endpoint
        if endpoint is None:
            if need_connection:
                raise OSError(errno.ENOTCONN, "not connected")
            return

        def command(now: float) -> None:
            if endpoint.transport is not None and not endpoint.lost:
                action(endpoint.transport)

        self.stack.call(lambda: command(0.0))

    def tcp_info(self) -> dict[str, object]:
        """The engine's view of the connection (transport.get_extra_info('tcp_info'))."""
        endpoint = self._endpoint
        if endpoint is None:
            raise OSError(errno.ENOTCONN, "not connected")

        def info() -> dict[str, object]:
            t = endpoint.transport
            return dict(t.get_extra_info("tcp_info")) if t is not None else {}

        return self.stack.call(info)

    # -- events ------------------------------------------------------------------------------
    def _deadline(self) -> float | None:
        return None if self._timeout is None else time.monotonic() + self._timeout

    def _apply(self, event: tuple) -> None:
        kind = event[0]
        if kind == EV_DATA:
            data = event[1]
            if self._shut_rd:  # reading was shut down: the bytes are dropped, yet credited
                self._uncredited += len(data)
                self._credit(force=True)
            else:
                self._chunks.append(data)
                self._buffered += len(data)
        elif kind == EV_WRITTEN:
            self._written = event[1]
        elif kind == EV_EOF:
            self._eof = True
        elif kind == EV_ESTABLISHED:
            self._connected = True
            self._sockname, self._peername = event[1], event[2]
        elif kind == EV_LOST:
            self._lost = True
            self._eof = True
            if event[1] is not None:
                self._error = event[1]
        elif kind == EV_WRITE_ERROR:
            self._write_error = event[1]
        elif kind == EV_ACCEPTED:
            self._want_outstanding -= 1
            self._accepted.append((event[1], event[2], event[3]))
        elif kind == EV_LISTEN_CLOSED:
            self._listen_closed = True

    def _wait(self, ready: Callable[[], bool], deadline: float | None) -> None:
        """Apply events until ready() holds; TimeoutError at the deadline. One thread pulls
        from the queue at a time; others wait for it to apply what it got."""
        lock = self._lock
        with lock:
            try:
                while not ready():
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise TimeoutError(errno.ETIMEDOUT, "timed out")
                    if self.stack.loop_error is not None:
                        raise StackClosed() from self.stack.loop_error
                    if self._pumping:
                        lock.wait(remaining)
                        continue
                    self._pumping = True
                    lock.release()
                    try:
                        # wake now and then to notice a dead loop thread
                        wait = 1.0 if remaining is None else min(remaining, 1.0)
                        event = self._events.get(timeout=wait)
                    except queue.Empty:
                        event = None
                    finally:
                        lock.acquire()
                        self._pumping = False
                    if event is not None:
                        self._apply(event)
                        with contextlib.suppress(queue.Empty):
                            while True:  # apply whatever else is already there
                                self._apply(self._events.get_nowait())
                    lock.notify_all()
            finally:
                lock.notify_all()  # a waiter may have to take over the pumping

    def _poll_events(self) -> None:
        with self._lock:
            if self._pumping:
                return
            with contextlib.suppress(queue.Empty):
                while True:
                    self._apply(self._events.get_nowait())

    def _credit(self, force: bool = False) -> None:
        n = self._uncredited
        if n and (force or n >= self.stack.recv_buffer // 4) and self._endpoint is not None:
            self._uncredited = 0
            endpoint = self._endpoint
            with contextlib.suppress(StackClosed):
                self.stack.submit(lambda now: endpoint.credit(n))

    def _check_open(self) -> None:
        if self._closed:
            raise OSError(errno.EBADF, "Bad file descriptor")

    # -- connecting --------------------------------------------------------------------------
    def bind(self, address: Address) -> None:
        self._check_open()
        ip, port = address
        if ip not in ("", "0.0.0.0", "::"):
            local = addr_from_str(ip)
            if not _ours(self.stack.tcp, local):
                raise OSError(errno.EADDRNOTAVAIL, f"cannot bind to {ip}: not the stack's address")
            self._local_ip = local  # connect() leaves from it (listeners stay wildcard)
        self._local_port = port

    def connect(self, address: Address) -> None:
        """Active open; ConnectionRefusedError, TimeoutError (SYN retries or settimeout)..."""
        self._check_open()
        if self._endpoint is not None:
            raise OSError(errno.EISCONN, "already connected")
        endpoint = _Endpoint(self._events, self._rcvbuf or self.stack.recv_buffer)
        self._endpoint = endpoint
        local_port, local_ip = self._local_port, self._local_ip
        ip, port = address
        remote_ip = addr_from_str(ip) if isinstance(ip, str) else ip
        sndbuf, rcvbuf = self._sndbuf, self._rcvbuf

        def command(now: float) -> None:
            try:
                transport = tcp_connect(
                    self.stack.tcp, (remote_ip, port), lambda: endpoint, local_port, local_ip
                )
                transport.set_buffer_sizes(sndbuf, rcvbuf)  # before the SYN goes out
            except Exception as err:
                endpoint.lost = True
                endpoint.events.put((EV_LOST, err))

        deadline = self._deadline()
        self.stack.submit(command)
        try:
            self._wait(lambda: self._connected or self._lost, deadline)
        except TimeoutError:
            self.stack.submit(lambda now: endpoint.abort())
            self._lost = True
            self._error = TimeoutError(errno.ETIMEDOUT, "connect timed out")
            raise self._error from None
        if not self._connected:
            raise self._connect_error()

    def _connect_error(self) -> BaseException:
        err = self._error
        if err is None:
            return ConnectionAbortedError(errno.ECONNABORTED, "connection closed during connect")
        return err

    def connect_ex(self, address: Address) -> int:
        try:
            self.connect(address)
        except OSError as err:
            return err.errno or errno.EIO
        return 0

    # -- listening ---------------------------------------------------------------------------
    def listen(self, backlog: int = 128) -> None:
        self._check_open()
        if not self._local_port:
            raise OSError(errno.EINVAL, "bind() to a port first (ephemeral listen unsupported)")
        acceptor = _Acceptor(self.stack.tcp, self._events, self._rcvbuf or self.stack.recv_buffer)
        sndbuf, rcvbuf = self._sndbuf, self._rcvbuf

        def start() -> None:
            acceptor.listener = self.stack.tcp.listen(self._local_port, backlog, acceptor.on_ready)
            acceptor.listener.set_buffer_sizes(sndbuf, rcvbuf)  # inherited by accepted ones

        self.stack.call(start)
        self._acceptor = acceptor

    def accept(self) -> tuple[TcpSocket, Address]:
        """The next established connection (blocks; TimeoutError with settimeout)."""
        self._check_open()
        acceptor = self._acceptor
        if acceptor is None:
            raise OSError(errno.EINVAL, "not listening")
        self._poll_events()
        with self._lock:
            ask = not self._accepted and self._want_outstanding == 0
            if ask:
                self._want_outstanding += 1
        if ask:
            self.stack.submit(lambda now: acceptor.want())
        self._wait(lambda: bool(self._accepted) or self._listen_closed, self._deadline())
        with self._lock:
            if not self._accepted:
                raise OSError(errno.EBADF, "the listening socket was closed")
            endpoint, peer, sockname = self._accepted.popleft()
        sock = TcpSocket(self.stack, endpoint, peer)
        sock._sockname = sockname
        return sock, peer

    # -- sending -----------------------------------------------------------------------------
    def sendall(self, data: bytes | bytearray | memoryview, flags: int = 0) -> None:
        """Block until the engine's send buffer has taken every byte. flags: 0 or MSG_OOB
        (urgent data, RFC 9293 3.8.5: the peer's urgent pointer ends after these bytes, which
        it reads inline)."""
        if flags & ~_socket.MSG_OOB:
            raise OSError(errno.EOPNOTSUPP, "only MSG_OOB is supported")
        urgent = bool(flags & _socket.MSG_OOB)
        self._check_open()
        self._check_send()
        view = memoryview(data).cast("B")
        if not len(view):
            return
        if isinstance(data, bytearray | memoryview) and not view.readonly:
            view = memoryview(bytes(view))  # the caller may reuse its buffer once we return
        endpoint = self._endpoint
        assert endpoint is not None
        target = self._submitted + len(view)
        self._submitted = target
        self.stack.submit(lambda now: endpoint.write(view, urgent))
        try:
            self._wait(
                lambda: self._written >= target or self._write_error is not None,
                self._deadline(),
            )
        except TimeoutError:
            self.stack.submit(lambda now: endpoint.cancel_writes())
            raise
        if self._written < target:
            self._raise_write_error()

    def send(self, data: bytes | bytearray | memoryview, flags: int = 0) -> int:
        """Like a blocking socket's send: returns once all of `data` is taken (len(data))."""
        self.sendall(data, flags)
        return len(data)

    def _check_send(self) -> None:
        if self._shut_wr:
            raise BrokenPipeError(errno.EPIPE, "the socket was shut down for writing")
        if self._endpoint is None or not self._connected:
            raise OSError(errno.ENOTCONN, "not connected")
        self._poll_events()
        if self._write_error is not None or self._lost:
            self._raise_write_error()

    def _raise_write_error(self) -> None:
        err = self._write_error or self._error
        if err is None or isinstance(err, BrokenPipeError):
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")
        raise err

    # -- receiving ---------------------------------------------------------------------------
    def recv(self, bufsize: int) -> bytes:
        """Up to bufsize bytes; b'' at end of stream. Raises the error that ended the
        connection (e.g. ConnectionResetError) once the bytes before it are read."""
        self._check_open()
        if bufsize < 0:
            raise ValueError("negative buffersize in recv")
        if self._endpoint is None or not self._connected:
            raise OSError(errno.ENOTCONN, "not connected")
        if bufsize == 0:
            return b""
        self._wait(lambda: self._buffered > 0 or self._eof or self._shut_rd, self._deadline())
        with self._lock:
            if self._buffered == 0:
                if self._error is not None and not isinstance(self._error, BrokenPipeError):
                    raise self._error
                return b""
            out = self._take(bufsize)
            self._uncredited += len(out)
            self._credit()
        return out

    def recv_into(self, buffer: bytearray | memoryview, nbytes: int = 0) -> int:
        view = memoryview(buffer).cast("B")
        data = self.recv(nbytes or len(view))
        view[: len(data)] = data
        return len(data)

    def _take(self, n: int) -> bytes:
        chunks = self._chunks
        first = chunks[0]
        if self._offset == 0 and len(first) <= n:
            chunks.popleft()
            out = first
        else:
            parts = []
            need = n
            while chunks and need:
                chunk = chunks[0]
                piece = chunk[self._offset : self._offset + need]
                parts.append(piece)
                need -= len(piece)
                if self._offset + len(piece) == len(chunk):
                    chunks.popleft()
                    self._offset = 0
                else:
                    self._offset += len(piece)
            out = b"".join(parts)
        self._buffered -= len(out)
        return out

    # -- closing -----------------------------------------------------------------------------
    def shutdown(self, how: int) -> None:
        self._check_open()
        endpoint = self._endpoint
        if endpoint is None or not self._connected:
            raise OSError(errno.ENOTCONN, "not connected")
        if how in (SHUT_RD, SHUT_RDWR):
            with self._lock:
                self._shut_rd = True
                self._uncredited += self._buffered
                self._chunks.clear()
                self._buffered = self._offset = 0
            self._credit(force=True)
        if how in (SHUT_WR, SHUT_RDWR) and not self._shut_wr:
            self._shut_wr = True
            self.stack.submit(lambda now: endpoint.shutdown_write())

    def close(self) -> None:
        """Graceful close in the background (queued data, then FIN), like socket.close()."""
        if self._closed:
            return
        self._closed = True
        endpoint, acceptor = self._endpoint, self._acceptor
        with contextlib.suppress(StackClosed):
            if endpoint is not None and not self._lost:
                self.stack.submit(lambda now: endpoint.close())
            if acceptor is not None:
                self.stack.submit(lambda now: acceptor.close())
                self._poll_events()
                for ep, _, _ in self._accepted:  # accepted by the loop, never by the caller
                    self.stack.submit(lambda now, ep=ep: ep.abort())
                self._accepted.clear()

    def abort(self) -> None:
        """Reset the connection (RST) at once: what SO_LINGER 0 + close() does."""
        endpoint = self._endpoint
        if endpoint is not None and not self._closed:
            with contextlib.suppress(StackClosed):
                self.stack.submit(lambda now: endpoint.abort())
        self._closed = True

    def wait_closed(self, timeout: float | None = None) -> BaseException | None:
        """Block until the engine reports the connection gone; returns its error (None after a
        clean close). For scripts that must not exit before their FIN is acknowledged."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._wait(lambda: self._lost, deadline)
        return self._error

    def __enter__(self) -> TcpSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "connected" if self._connected else "new"
        return f"<TcpSocket #{self.id} {state} {self.getsockname()} -> {self._peername}>"


__all__ = ["BlockingStack", "StackClosed", "TcpSocket"]


def _ours(tcp: Any, address: int | bytes) -> bool:
    """Is `address` one of the stack's (its IPv4 one, or an IPv6 one when IPv6 is on)?
    A bound port takes both families either way, as the listener does (engine.py)."""
    if type(address) is bytes:
        net6 = tcp.net6
        return net6 is not None and net6.ipv6.addresses.is_ours(address)
    return address == tcp.local_ip
