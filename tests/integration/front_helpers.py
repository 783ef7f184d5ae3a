"""Helpers shared by the front's integration tests (forwards, SOCKS)."""

from __future__ import annotations

import ipaddress
import socket
import struct
import time

from tests.integration.world import World, ns_socket


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
    return scrape_in(world.ns)


def scrape_in(ns: str) -> str:
    """GET /metrics from the stack's default address inside namespace `ns`."""
    sock = ns_socket(ns, socket.AF_INET, socket.SOCK_STREAM)
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


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    """n bytes, or fewer if the peer closed first."""
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


SOCKS = ("127.0.0.1", 1080)  # the front's SOCKS listener in these tests' configs


def socks_client(world: World, timeout: float = 10) -> socket.socket:
    """A TCP connection to the SOCKS listener, from the test's namespace."""
    sock = world.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(SOCKS)
    return sock


def socks_request(world: World, cmd: int, ip: str, port: int) -> tuple[socket.socket, bytes]:
    """No-auth greeting, then CMD to ip:port (ATYP 1 for IPv4, 4 for IPv6); returns the
    socket and the whole reply, whose BND.ADDR has the family the stack chose (RFC 1928 6)."""
    sock = socks_client(world)
    sock.sendall(b"\x05\x01\x00")
    assert recv_exactly(sock, 2) == b"\x05\x00"
    address = ipaddress.ip_address(ip)
    atyp = b"\x01" if address.version == 4 else b"\x04"
    sock.sendall(b"\x05" + bytes([cmd]) + b"\x00" + atyp + address.packed + struct.pack("!H", port))
    head = recv_exactly(sock, 4)
    rest = recv_exactly(sock, {1: 6, 4: 18}.get(head[3], 0) if len(head) == 4 else 0)
    return sock, head + rest
