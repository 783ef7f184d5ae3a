"""Loop.add_writer beside add_reader on the same fd (the front's kernel sockets need both)."""

from __future__ import annotations

import socket

import pytest

from netstack.io.loop import Loop


def test_reader_and_writer_on_one_fd() -> None:
    a, b = socket.socketpair()
    a.setblocking(False)
    events: list[str] = []
    with Loop() as loop, a, b:
        fd = a.fileno()
        loop.add_writer(fd, lambda now: events.append("w"))
        loop.run_once(0.5)
        assert events == ["w"]  # an empty send buffer is writable at once
        loop.add_reader(fd, lambda now: (events.append("r"), a.recv(100)))
        with pytest.raises(ValueError):
            loop.add_writer(fd, lambda now: None)
        with pytest.raises(ValueError):
            loop.add_reader(fd, lambda now: None)
        events.clear()
        loop.remove_writer(fd)  # the reader stays
        loop.run_once(0.05)
        assert events == []
        b.send(b"x")
        loop.run_once(0.5)
        assert events == ["r"]
        events.clear()
        loop.remove_reader(fd)
        b.send(b"y")
        loop.run_once(0.05)
        assert events == []
        loop.add_writer(fd, lambda now: events.append("w2"))  # registering again works
        loop.run_once(0.5)
        assert events == ["w2"]
        loop.remove_writer(fd)
        loop.remove_writer(fd)  # idempotent


def test_writer_runs_after_reader_removed_it_is_not_called() -> None:
    """A reader that removes the writer in the same turn: the writer is not called."""
    a, b = socket.socketpair()
    a.setblocking(False)
    calls: list[str] = []
    with Loop() as loop, a, b:
        fd = a.fileno()

        def reader(now: float) -> None:
            calls.append("r")
            a.recv(10)
            loop.remove_writer(fd)

        loop.add_reader(fd, reader)
        loop.add_writer(fd, lambda now: calls.append("w"))
        b.send(b"z")
        loop.run_once(0.5)
        assert calls == ["r"]
        loop.remove_reader(fd)
