"""SIGTERM with TCP transfers open (issue 6): the stack ends every connection with a FIN after
the data it had already queued, the kernel peers see EOF (never a reset), and it exits 0."""

from __future__ import annotations

import fcntl
import hashlib
import signal
import socket
import struct
import termios
import threading
import time
from pathlib import Path

import pytest

from tests.integration.tcp.conftest import FAST_ARGS, need_world
from tests.integration.tcp.kit import CHARGEN, DISCARD, ECHO, STACK_IP, chargen_sha256
from tests.integration.world import World, running_world

pytestmark = pytest.mark.integration


class Peer(threading.Thread):
    """A kernel socket that reads until EOF and records how the connection ended."""

    def __init__(self, world: World, port: int, hello: bytes = b"") -> None:
        super().__init__(daemon=True)
        self.sock = world.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect((STACK_IP, port))
        self.port = port
        self.digest = hashlib.sha256()
        self.received = 0
        self.ending = "running"
        # Reading can be paused: `go` cleared, the reader parks (sets `parked`) before its
        # next recv, so the stack's data piles up in the kernel's receive queue meanwhile.
        self.go = threading.Event()
        self.go.set()
        self.parked = threading.Event()
        if hello:  # sent, and for echo fully answered, before the signal
            self.sock.sendall(hello)
            if port == ECHO:
                got = b""
                while len(got) < len(hello):
                    got += self.sock.recv(65536)
                assert got == hello
        self.start()

    def queued(self) -> int:
        """Bytes the kernel holds for this socket, not yet read (SIOCINQ)."""
        return struct.unpack("i", fcntl.ioctl(self.sock.fileno(), termios.FIONREAD, b"\0" * 4))[0]

    def pause(self, timeout: float = 10.0) -> None:
        self.go.clear()
        assert self.parked.wait(timeout), "the reader did not park"

    def run(self) -> None:
        try:
            while True:
                if not self.go.is_set():
                    self.parked.set()
                    self.go.wait()
                    self.parked.clear()
                data = self.sock.recv(1 << 16)
                if not data:
                    break
                self.digest.update(data)
                self.received += len(data)
            self.ending = "fin"
        except ConnectionResetError:
            self.ending = "reset"
        except TimeoutError:
            self.ending = "timeout"
        finally:
            self.sock.close()


def wait_for(condition, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for: {what}"
        time.sleep(0.01)


def test_sigterm_closes_open_connections_with_fin(tmp_path: Path) -> None:
    need_world()
    with running_world(tmp_path, *FAST_ARGS, tag="tcps") as world:
        peers = [Peer(world, CHARGEN) for _ in range(3)]
        peers += [Peer(world, ECHO, b"e" * 100_000) for _ in range(2)]
        peers += [Peer(world, DISCARD, b"d" * 100_000)]
        chargen = peers[:3]
        # By state, not by timing: each chargen stream has delivered data, then its reader
        # pauses until the kernel holds unread data for it (and the stack, its window
        # closing, keeps the rest queued). Whatever was sent before the signal is read after
        # it, so every peer must end with more than it had read when the signal came.
        wait_for(lambda: all(p.received >= 1 << 20 for p in chargen), "chargen flowing")
        for peer in chargen:
            peer.pause()
        wait_for(lambda: all(p.queued() >= 64 * 1024 for p in chargen), "data queued")
        in_flight = [p.received for p in chargen]
        queued = [p.queued() for p in chargen]
        started = time.monotonic()
        assert world.proc is not None
        world.proc.send_signal(signal.SIGTERM)  # the readers resume only after the signal
        for peer in chargen:
            peer.go.set()
        code = world.proc.wait(15)  # (not world.stop: a second SIGTERM resets what is left)
        stopped_in = time.monotonic() - started
        for peer in peers:
            peer.join(10)
        log = world.log()
    endings = [(p.port, p.ending) for p in peers]
    assert all(ending == "fin" for _, ending in endings), (endings, log[-3000:])
    for peer, before, unread in zip(peers[:3], in_flight, queued, strict=True):
        assert peer.received >= before + unread > before  # queued before the signal: read
        assert peer.digest.hexdigest() == chargen_sha256(peer.received)  # no gap, no junk
    assert code == 0, log[-3000:]
    assert "still busy" not in log, log[-3000:]  # runtime's warning when closers are reset
    assert stopped_in < 5.0  # graceful, not the shutdown_timeout's reset
