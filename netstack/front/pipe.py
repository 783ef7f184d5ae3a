"""One stack TCP connection relayed to one kernel socket, both ways, with flow control.

The stack side is a netstack.api.tcp Protocol; the kernel side a nonblocking socket the loop
polls (add_reader / add_writer). Memory stays bounded:
- stack -> kernel: bytes the kernel socket did not take wait in `out` (at most HIGH_WATER plus
  one delivery); past HIGH_WATER the stack connection stops reading, so its receive window
  closes and the stack's peer slows down.
- kernel -> stack: the kernel socket is read only as far as the stack's send buffer has room,
  and not at all while the stack connection says pause_writing; the kernel's own socket buffer
  then fills and its peer slows down.
Half-close travels both ways (a FIN from the stack's peer becomes shutdown(SHUT_WR), the
kernel's EOF becomes write_eof()), and resets too (RST <-> ECONNRESET / SO_LINGER 0 close).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import struct
from collections.abc import Callable

from netstack.api.tcp import Protocol, TcpTransport
from netstack.front.port import StackPort

log = logging.getLogger("netstack.front")

HIGH_WATER = 256 * 1024  # stack->kernel bytes held before the stack connection stops reading
READ_CHUNK = 256 * 1024  # largest kernel read at once
READS_PER_WAKEUP = 4
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


def reset_close(sock: socket.socket) -> None:
    """Close with RST instead of FIN (the abortive close)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    sock.close()


def connect_error_reason(err: int) -> str:
    """A connect/IO errno as a FORWARD_ERRORS / SOCKS_ERRORS reason."""
    if err == errno.ECONNREFUSED:
        return "refused"
    if err in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EADDRNOTAVAIL, errno.ENETDOWN):
        return "unreachable"
    if err == errno.ETIMEDOUT:
        return "connect_timeout"
    if err in (errno.ECONNRESET, errno.EPIPE):
        return "target_reset"
    return "other"


# on_end(pipe, reason): reason None for a clean end, else a FORWARD_ERRORS-style reason.
EndCallback = Callable[["TcpPipe", str | None], None]
# on_bytes(to_target, from_target) deltas for the owner's counters
BytesCallback = Callable[[int, int], None]


class TcpPipe(Protocol):
    """The relay. The owner creates it as the stack connection's protocol, then calls
    attach(sock) once the kernel socket is connected; until then the stack side does not read.
    """

    def __init__(
        self,
        port: StackPort,
        idle_timeout: float,
        on_end: EndCallback,
        on_bytes: BytesCallback,
    ) -> None:
        self.port = port
        self.idle_timeout = idle_timeout
        self.on_end = on_end
        self.on_bytes = on_bytes
        self.transport: TcpTransport | None = None
        self.sock: socket.socket | None = None
        self.fd = -1
        self.out = bytearray()  # stack -> kernel, not yet taken by the kernel socket
        self.stack_eof = False  # the stack's peer sent FIN
        self.kernel_eof = False  # the kernel socket read EOF
        self.kernel_shut = False  # shutdown(SHUT_WR) done
        self.stack_lost = False  # connection_lost delivered
        self.write_paused = False  # the stack's send buffer is full
        self.reading = False  # kernel reader registered
        self.writing = False  # kernel writer registered
        self.ended = False
        self._flush_soon = False  # a _flush_turn is scheduled
        self.last_active = port.loop.now()
        self._idle_timer = None
        self._arm_idle(self.last_active)

    # -- the owner's side ----------------------------------------------------------------------
    def attach(self, sock: socket.socket) -> None:
        """The kernel socket is connected: start relaying."""
        self.sock = sock
        self.fd = sock.fileno()
        self._set_reading(True)
        if self.out:
            self._flush_out()
        if self.stack_eof and not self.out:
            self._shut_kernel()
        if self.transport is not None and not self.stack_lost and len(self.out) < HIGH_WATER:
            self.transport.resume_reading()
        self._maybe_finish()

    def abort(self, reason: str | None) -> None:
        """End both sides abortively (RST both ways)."""
        if self.transport is not None and not self.stack_lost:
            self.transport.abort()
        self._close_kernel(reset=True)
        self._end(reason)

    # -- stack side (engine callbacks, loop thread) --------------------------------------------
    def connection_made(self, transport: TcpTransport) -> None:  # type: ignore[override]
        self.transport = transport
        if self.sock is None:
            transport.pause_reading()  # nothing to send it to yet: let the window close

    def data_received(self, data: bytes) -> None:
        # Gathered and written once per loop turn: a receive batch brings many segments, and
        # one send() per segment would cost more than the copy.
        self.on_bytes(len(data), 0)
        self.out += data
        if not self._flush_soon and self.sock is not None and not self.writing:
            self._flush_soon = True
            self.port.loop.call_at(0.0, self._flush_turn)  # due at once: this turn's end
        if len(self.out) >= HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()

    def _flush_turn(self, now: float) -> None:
        self._flush_soon = False
        if self.ended:
            return
        self.last_active = now
        self.port.enter(now)
        self._flush_out()
        self._maybe_finish()

    def eof_received(self) -> bool:
        self.stack_eof = True
        if self.sock is not None and not self.out:
            self._shut_kernel()
        self._maybe_finish()
        return True  # half-close: the kernel side may go on sending

    def pause_writing(self) -> None:
        self.write_paused = True
        self._set_reading(False)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.sock is not None and not self.kernel_eof and not self.ended:
            self._set_reading(True)

    def connection_lost(self, exc: Exception | None) -> None:
        self.stack_lost = True
        if self.ended:
            return
        if exc is not None:  # the stack's peer reset (or timed out): reset the kernel side
            self._close_kernel(reset=True)
            self._end("client_reset" if isinstance(exc, ConnectionResetError) else "other")
            return
        # A clean end: what the kernel still has to take goes first, then FIN.
        self._set_reading(False)
        if self.sock is None or not self.out:
            self._close_kernel(reset=False)
            self._end(None)
        else:
            self.stack_eof = True

    # -- kernel side (loop callbacks) ----------------------------------------------------------
    def _on_readable(self, now: float) -> None:
        self.port.enter(now)
        transport, sock = self.transport, self.sock
        if transport is None or sock is None or self.stack_lost:
            self._set_reading(False)
            return
        for _ in range(READS_PER_WAKEUP):
            if self.write_paused:
                self._set_reading(False)
                return
            room = transport.get_write_buffer_free()
            if room <= 0:
                self._set_reading(False)
                self.write_paused = True  # resume_writing re-arms the reader
                return
            try:
                data = sock.recv(min(room, READ_CHUNK))
            except BlockingIOError:
                return
            except OSError as err:
                self._kernel_failed(err)
                return
            if not data:
                self.kernel_eof = True
                self._set_reading(False)
                transport.write_eof()
                self._maybe_finish()
                return
            self.last_active = now
            self.on_bytes(0, len(data))
            try:
                transport.write(data)
            except OSError:  # the stack side closed for sending (SIGTERM's close, ...)
                self._set_reading(False)  # its connection_lost ends the pipe
                return

    def _on_writable(self, now: float) -> None:
        self.last_active = now
        self.port.enter(now)
        self._flush_out()
        self._maybe_finish()

    def _flush_out(self) -> None:
        sock = self.sock
        if sock is None:
            return
        while self.out:
            try:
                n = sock.send(self.out)
            except BlockingIOError:
                break
            except OSError as err:
                self._kernel_failed(err)
                return
            del self.out[:n]
        if self.out:
            self._set_writing(True)
            return
        self._set_writing(False)
        transport = self.transport
        if self.stack_eof:
            self._shut_kernel()
        elif transport is not None and not self.stack_lost and not transport.is_reading():
            transport.resume_reading()

    def _kernel_failed(self, err: OSError) -> None:
        """The kernel socket failed (its peer reset, ...): reset the stack side."""
        self._close_kernel(reset=True)
        if self.transport is not None and not self.stack_lost:
            self.transport.abort()
        self._end(connect_error_reason(err.errno or 0))

    def _shut_kernel(self) -> None:
        if self.kernel_shut or self.sock is None:
            return
        self.kernel_shut = True
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as err:
            self._kernel_failed(err)

    # -- the end -------------------------------------------------------------------------------
    def _maybe_finish(self) -> None:
        """Both directions done (FIN each way, nothing left to deliver): close both sides."""
        if self.ended or self.sock is None:
            return
        if self.stack_eof and self.kernel_eof and not self.out and self.kernel_shut:
            if self.transport is not None and not self.stack_lost:
                self.transport.close()
            self._close_kernel(reset=False)
            self._end(None)
        elif self.stack_lost and not self.out:
            self._close_kernel(reset=False)
            self._end(None)

    def _set_reading(self, on: bool) -> None:
        if on == self.reading or (on and (self.sock is None or self.ended)):
            return
        self.reading = on
        if on:
            self.port.loop.add_reader(self.fd, self._on_readable)
        else:
            self.port.loop.remove_reader(self.fd)

    def _set_writing(self, on: bool) -> None:
        if on == self.writing or (on and (self.sock is None or self.ended)):
            return
        self.writing = on
        if on:
            self.port.loop.add_writer(self.fd, self._on_writable)
        else:
            self.port.loop.remove_writer(self.fd)

    def _close_kernel(self, reset: bool) -> None:
        sock = self.sock
        if sock is None or self.fd < 0:
            return
        self._set_reading(False)
        self._set_writing(False)
        self.fd = -1
        if reset:
            reset_close(sock)
        else:
            sock.close()

    def _end(self, reason: str | None) -> None:
        if self.ended:
            return
        self.ended = True
        self.out = bytearray()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        self.on_end(self, reason)

    def _arm_idle(self, now: float) -> None:
        if self.idle_timeout > 0:
            self._idle_timer = self.port.loop.call_at(
                self.last_active + self.idle_timeout, self._idle_check
            )

    def _idle_check(self, now: float) -> None:
        self._idle_timer = None
        if self.ended:
            return
        if now - self.last_active >= self.idle_timeout:
            self.port.enter(now)
            self.abort("idle_timeout")
        else:
            self._arm_idle(now)
