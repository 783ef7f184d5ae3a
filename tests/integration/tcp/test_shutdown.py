"""SIGTERM with TCP transfers open (issue 6): the stack ends every connection with a FIN after
the data it had already queued, the kernel peers see EOF (never a reset), and it exits 0."""

from __future__ import annotations

import hashlib
import socket
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
            while data := self.sock.recv(1 << 16):
                self.digest.update(data)
                self.received += len(data)
            self.ending = "fin"
        except ConnectionResetError:
            self.ending = "reset"
        except TimeoutError:
            self.ending = "timeout"
        finally:
            self.sock.close()


def test_sigterm_closes_open_connections_with_fin(tmp_path: Path) -> None:
    need_world()
    with running_world(tmp_path, *FAST_ARGS, tag="tcps") as world:
        peers = [Peer(world, CHARGEN) for _ in range(3)]
        peers += [Peer(world, ECHO, b"e" * 100_000) for _ in range(2)]
        peers += [Peer(world, DISCARD, b"d" * 100_000)]
        time.sleep(0.5)  # chargen streams are flowing
        in_flight = [p.received for p in peers]
        started = time.monotonic()
        code = world.stop(timeout=15)
        stopped_in = time.monotonic() - started
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
