"""Helpers shared by the front's integration tests (forwards, SOCKS)."""

from __future__ import annotations

import socket
import time

from tests.integration.world import World


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def listening(world: World, port: int) -> bool:
    out = world.run(["ss", "-Htln", f"sport = :{port}"], check=False).stdout
    return bool(out.strip())


def scrape(world: World) -> str:
    """GET /metrics from inside the namespace (its own 127.0.0.1), no tools needed."""
    sock = world.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(10)
    with sock:
        sock.connect(("127.0.0.1", 9464))
        sock.sendall(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200"), head
    return body.decode()


def metric(world: World, name: str, **labels: str) -> float:
    text = scrape(world)
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
