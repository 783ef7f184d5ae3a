"""Talking to the service manager (sd_notify) without libsystemd, and the heartbeat that uses it.

The protocol is one datagram of newline-separated `KEY=value` assignments to the AF_UNIX socket
named by `$NOTIFY_SOCKET` (a path, or an abstract name written with a leading '@'). When the
variable is unset, every call is a cheap no-op, so the stack runs the same under a terminal,
tests and systemd.

The heartbeat sends `WATCHDOG=1` from a timer of the packet loop itself (never from a thread):
a loop that is stuck stops feeding the watchdog and systemd restarts the service.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Mapping
from typing import Protocol

from netstack.io.timers import TimerHandle

log = logging.getLogger("netstack.notify")

STATUS_INTERVAL = 2.0  # seconds between STATUS= refreshes


def socket_address(value: str) -> str | None:
    """The sendto() address for a NOTIFY_SOCKET value, None when unset or unusable."""
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]  # Linux abstract namespace
    if value.startswith("/"):
        return value
    if value:
        log.warning("NOTIFY_SOCKET=%r is not a path or an @abstract name; ignored", value)
    return None


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between WATCHDOG=1 pings: half of WATCHDOG_USEC, if the watchdog is for us.

    systemd sets WATCHDOG_PID when the variables might reach other processes; a watchdog
    meant for another PID is not ours to feed.
    """
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    watchdog_pid = environ.get("WATCHDOG_PID")
    if watchdog_pid:
        try:
            if int(watchdog_pid) != pid:
                return None
        except ValueError:
            return None
    return usec / 2 / 1_000_000


class Notifier:
    """Sends sd_notify messages; a no-op when not started by a service manager."""

    def __init__(self, environ: Mapping[str, str] | None = None, *, pid: int | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = socket_address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_interval = (
            watchdog_interval(env, os.getpid() if pid is None else pid) if self.address else None
        )
        self.sent = 0
        self.failed = 0
        self._sock: socket.socket | None = None
        if self.address is not None:
            # Non-blocking: a full notify socket must never stall the packet loop.
            self._sock = socket.socket(
                socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
            )

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *assignments: str) -> bool:
        """Send `KEY=value` lines as one datagram; False when disabled or it failed."""
        if self._sock is None or not assignments:
            return False
        try:
            self._sock.sendto("\n".join(assignments).encode(), self.address)
        except OSError as err:
            self.failed += 1
            log.debug("sd_notify to %r failed: %s", self.address, err)
            return False
        self.sent += 1
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *_status(status))

    def status(self, text: str) -> bool:
        return self.send(*_status(text))

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def reloading(self, monotonic_usec: int) -> bool:
        """Tell systemd a reload started; follow with ready() when it is done."""
        return self.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}")

    def stopping(self, status: str | None = None) -> bool:
        return self.send("STOPPING=1", *_status(status))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _status(text: str | None) -> tuple[str, ...]:
    """STATUS= must be one line."""
    if text is None:
        return ()
    return ("STATUS=" + " ".join(text.split()),)


class TimerLoop(Protocol):
    """What the heartbeat needs from netstack.io.loop.Loop."""

    def call_at(self, when: float, callback: Callable[[float], None]) -> TimerHandle: ...


class Heartbeat:
    """WATCHDOG=1 every `notifier.watchdog_interval` and STATUS= every `status_interval`,
    both from timers of `loop`, so they stop when the loop stops turning."""

    def __init__(
        self,
        notifier: Notifier,
        loop: TimerLoop,
        status: Callable[[float], str],
        status_interval: float = STATUS_INTERVAL,
    ) -> None:
        self.notifier = notifier
        self.loop = loop
        self.status_text = status
        self.status_interval = status_interval
        self._handles: dict[str, TimerHandle] = {}

    def start(self, now: float) -> None:
        """Begin the pings (call once READY=1 went out); no timers when there is no manager."""
        if not self.notifier.enabled:
            return
        if self.notifier.watchdog_interval:
            self._watchdog(now)
        self._schedule("status", now + self.status_interval, self._status)

    def stop(self) -> None:
        for handle in self._handles.values():
            handle.cancel()
        self._handles.clear()

    def _watchdog(self, now: float) -> None:
        self.notifier.watchdog()
        interval = self.notifier.watchdog_interval
        assert interval is not None
        self._schedule("watchdog", now + interval, self._watchdog)

    def _status(self, now: float) -> None:
        self.notifier.status(self.status_text(now))
        self._schedule("status", now + self.status_interval, self._status)

    def _schedule(self, name: str, when: float, callback: Callable[[float], None]) -> None:
        self._handles[name] = self.loop.call_at(when, callback)
