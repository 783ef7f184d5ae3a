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

    def __init__(
        self, world: World, port: int, hello: bytes = b"", rcvbuf: int | None = None
    ) -> None:
        super().__init__(daemon=True)
        self.sock = world.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        if rcvbuf is not None:  # before connect: a small window the stack fills quickly
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.reading = threading.Event()  # cleared: stop calling recv (see pause())
        self.reading.set()
        self.paused = threading.Event()
        self.sock.connect((STACK_IP, port))
        self.port = port
        self.digest = hashlib.sha256()
        self.received = 0
        self.ending = "running"
        if hello:  # sent, and for echo fully answered, before the signal
            self.sock.sendall(hello)
            if port == ECHO:
                got = b""
                while len(got) < len(hello):
                    got += self.sock.recv(65536)
                assert got == hello
        self.start()

    def run(self) -> None:
        try:
            while True:
                if not self.reading.is_set():
                    self.paused.set()
                    self.reading.wait()
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


    def pause(self) -> None:
        """Stop reading (after the recv in progress, which a flowing stream ends at once)."""
        self.reading.clear()
        assert self.paused.wait(10), "the reader never paused"

    def resume(self) -> None:
        self.reading.set()


def kernel_queue(sock: socket.socket) -> int:
    """Bytes the kernel holds for the socket, not read yet (SIOCINQ)."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[0]


def wait_window_closed(peer: Peer, deadline_s: float = 20.0) -> int:
    """With the reader paused, wait until the stack can send nothing more (the kernel's queue
    for the socket stops growing: the receive window is closed); return that queue. From then
    on the stack's chargen has a full send buffer that only a read can drain."""
    last, same = -1, 0
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        queued = kernel_queue(peer.sock)
        same = same + 1 if queued == last and queued > 0 else 0
        if same >= 10:
            return queued
        last = queued
        time.sleep(0.02)
    raise AssertionError(f"the window of the chargen peer never closed (queue {last})")


def test_sigterm_closes_open_connections_with_fin(tmp_path: Path) -> None:
    need_world()
    with running_world(tmp_path, *FAST_ARGS, tag="tcps") as world:
        peers = [Peer(world, CHARGEN, rcvbuf=32 * 1024) for _ in range(3)]
        peers += [Peer(world, ECHO, b"e" * 100_000) for _ in range(2)]
        peers += [Peer(world, DISCARD, b"d" * 100_000)]
        for peer in peers[:3]:  # chargen streams flowing, then backed up into the stack
            peer.pause()
        # Everything the kernel got so far: the stack still holds the rest of the stream in
        # its send buffer, so data must arrive after this, before the FIN (no timing guess:
        # the readers only resume once the signal is sent).
        in_flight = [p.received + wait_window_closed(p) for p in peers[:3]]
        in_flight += [p.received for p in peers[3:]]
        started = time.monotonic()
        assert world.proc is not None
        world.proc.send_signal(signal.SIGTERM)
        for peer in peers[:3]:
            peer.resume()
        world.proc.wait(15)  # a second SIGTERM (world.stop) would mean "reset what is left"
        stopped_in = time.monotonic() - started
        code = world.stop()
        for peer in peers:
            peer.join(10)
        log = world.log()
    endings = [(p.port, p.ending) for p in peers]
    assert all(ending == "fin" for _, ending in endings), (endings, log[-3000:])
    for peer, before in zip(peers[:3], in_flight[:3], strict=True):
        assert peer.received > before  # the queued data after the signal arrived too
        assert peer.digest.hexdigest() == chargen_sha256(peer.received)  # no gap, no junk
    assert code == 0, log[-3000:]
    assert "still busy" not in log, log[-3000:]  # runtime's warning when closers are reset
    assert stopped_in < 5.0  # graceful, not the shutdown_timeout's reset
