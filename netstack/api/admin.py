"""A side door into the loop for the metrics server's admin endpoints (e.g. /connections).

The metrics HTTP server runs in its own thread; the TCP engine's dicts and scoreboards belong
to the loop thread, which may resize or mutate them at any moment. So the HTTP thread never
walks them: it hands a function to the loop (a queue plus an eventfd the loop polls, like the
blocking facade) and waits, with a timeout, for the loop to run it and hand back plain data.
The snapshot is then consistent (taken between two loop steps), and costs the loop only when
someone asks. A stopped or stalled loop costs the caller a TimeoutError, never a wrong answer.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
from collections.abc import Callable
from typing import Any

log = logging.getLogger("netstack.admin")


class LoopDoor:
    """Run fn(now) in the loop thread from another thread. Attach before the loop runs."""

    def __init__(self, loop: Any) -> None:
        self.loop = loop
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        loop.add_reader(self._efd, self._on_wakeup)
        self._closed = False

    def call(self, fn: Callable[[float], Any], timeout: float = 2.0) -> Any:
        """fn(now)'s result, computed in the loop thread; TimeoutError if it does not answer."""
        if self._closed:
            raise TimeoutError("the loop is closed")
        reply: queue.SimpleQueue = queue.SimpleQueue()
        self._requests.put((fn, reply))
        os.eventfd_write(self._efd, 1)
        try:
            ok, value = reply.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError("the loop did not answer") from None
        if not ok:
            raise value
        return value

    def _on_wakeup(self, now: float) -> None:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self._efd)
        while True:
            try:
                fn, reply = self._requests.get_nowait()
            except queue.Empty:
                return
            try:
                reply.put((True, fn(now)))
            except Exception as err:  # the caller sees it; the loop goes on
                log.exception("admin request failed")
                reply.put((False, err))

    def close(self) -> None:
        """Detach (the loop must not be running: remove_reader is not thread-safe)."""
        if not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):
                self.loop.remove_reader(self._efd)
            os.close(self._efd)
