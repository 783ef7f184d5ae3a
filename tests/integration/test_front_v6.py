"""The front over IPv6 with real programs, in the test's own namespace: curl --socks5 to an
http.server on the kernel side's IPv6 address (2001:db8::1), a SOCKS CONNECT and a UDP ASSOCIATE
to IPv6 destinations, and forwards whose kernel targets are IPv6 ([::1]:PORT) reached from the
link over both families."""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.front_helpers import (
    listening,
    metric,
    recv_exactly,
    socks_request,
    wait_for,
)
from tests.integration.world import HOST_IP, World, can_run_world, have_tools, running_world

pytestmark = pytest.mark.integration

ok, why = can_run_world()
if not ok:
    pytest.skip(why, allow_module_level=True)

HOST6 = "2001:db8::1"  # the kernel side of the TAP (--host-address6's default)
STACK6 = "2001:db8::2"
FILE_SIZE = 8 * 2**20
CONFIG = f"""
shutdown_timeout = 2
address6 = "{STACK6}/64"
ipv6_secret = "00112233445566778899aabbccddeeff"

[socks]
listen = "127.0.0.1:1080"
handshake_timeout = 5.0

[[forward]]
proto = "tcp"
listen = 8090
to = "[::1]:18090"

[[forward]]
proto = "udp"
listen = 8091
to = "[::1]:18091"
"""


@pytest.fixture(scope="module")
def world6(tmp_path_factory) -> Iterator[World]:
    workdir = tmp_path_factory.mktemp("front6")
    config = workdir / "netstack.toml"
    config.write_text(CONFIG)
    with running_world(workdir, "--config", str(config), "--pcap", "none", tag="f6") as world:
        wait_for(lambda: f"address {STACK6}/64 ready" in world.log(), 10, "DAD of 2001:db8::2")
        wait_for(lambda: listening(world, 1080), 10, "the SOCKS listener")
        yield world


@pytest.mark.skipif(not have_tools("curl"), reason="no curl")
def test_curl_socks5_to_an_ipv6_server(world6: World, tmp_path: Path) -> None:
    root = tmp_path / "www"
    root.mkdir()
    (root / "file.bin").write_bytes(os.urandom(FILE_SIZE))
    server = world6.popen(
        [sys.executable, "-m", "http.server", "8000", "--bind", HOST6, "-d", str(root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: listening(world6, 8000), 15, "http.server on 2001:db8::1")
        out = tmp_path / "got.bin"
        result = world6.run(
            ["curl", "-sS", "--max-time", "60", "--socks5", "127.0.0.1:1080", "-o", str(out),
             f"http://[{HOST6}]:8000/file.bin"],
            timeout=90, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr + world6.log()[-3000:]
        want = hashlib.sha256((root / "file.bin").read_bytes()).hexdigest()
        assert hashlib.sha256(out.read_bytes()).hexdigest() == want
    finally:
        server.terminate()
        server.wait(10)
    assert metric(world6, "netstack_socks_bytes_total", direction="from_target") >= FILE_SIZE


def test_connect_to_ipv6_leaves_from_the_stacks_ipv6_address(world6: World) -> None:
    listener = world6.socket(socket.AF_INET6, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((HOST6, 8001))
    listener.listen(1)
    listener.settimeout(10)
    with listener:
        sock, reply = socks_request(world6, 1, HOST6, 8001)
        with sock:
            assert reply[:4] == b"\x05\x00\x00\x04", reply
            assert str(ipaddress.IPv6Address(reply[4:20])) == STACK6  # BND.ADDR
            conn, peer = listener.accept()
            with conn:
                assert peer[0] == STACK6 and peer[1] == struct.unpack("!H", reply[20:22])[0]
                out = world6.run(["ss", "-Htn", "state", "established", "sport = :8001"]).stdout
                assert f"[{STACK6}]:" in out, out
                sock.sendall(b"ping6")
                assert recv_exactly(conn, 5) == b"ping6"
                conn.sendall(b"pong6")
                assert recv_exactly(sock, 5) == b"pong6"


def test_ipv6_destinations_outside_the_allow_list_and_refused(world6: World) -> None:
    before = metric(world6, "netstack_socks_errors_total", reason="not_allowed")
    sock, reply = socks_request(world6, 1, "2001:db8:77::1", 80)  # beyond the on-link /64
    with sock:
        assert reply[:2] == b"\x05\x02"
    assert metric(world6, "netstack_socks_errors_total", reason="not_allowed") == before + 1
    sock, reply = socks_request(world6, 1, HOST6, 8009)  # nobody listens: the kernel's RST
    with sock:
        assert reply[:2] == b"\x05\x05"


def test_udp_associate_to_an_ipv6_echo(world6: World) -> None:
    echo = world6.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    echo.bind((HOST6, 9999))
    echo.settimeout(10)
    peers: list[str] = []

    def serve() -> None:
        with contextlib.suppress(OSError):
            for _ in range(3):
                data, addr = echo.recvfrom(65535)
                peers.append(addr[0])
                echo.sendto(data, addr)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    # UDP ASSOCIATE; the client's UDP address is not known yet (0.0.0.0:0)
    sock, reply = socks_request(world6, 3, "0.0.0.0", 0)
    udp = world6.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.settimeout(10)
    try:
        assert reply[:2] == b"\x05\x00", reply
        relay = (socket.inet_ntoa(reply[4:8]), struct.unpack("!H", reply[8:10])[0])
        header = b"\x00\x00\x00\x04" + ipaddress.IPv6Address(HOST6).packed + struct.pack("!H", 9999)
        for size in (1, 1400, 8000):  # 8000: fragments both ways over IPv6
            payload = os.urandom(size)
            udp.sendto(header + payload, relay)
            data, _ = udp.recvfrom(65535)
            assert data[: len(header)] == header  # the echo's IPv6 address and port
            assert data[len(header) :] == payload
        assert set(peers) == {STACK6}
    finally:
        udp.close()
        sock.close()
        echo.close()


@pytest.mark.parametrize("stack_ip", [STACK6, "192.0.2.2"])
def test_tcp_forward_to_an_ipv6_kernel_target(world6: World, stack_ip: str) -> None:
    """`to = "[::1]:18090"`: a client on the link, over either family, reaches a kernel server
    on ::1 through the stack; the data comes back exact and half-close passes."""
    target = world6.socket(socket.AF_INET6, socket.SOCK_STREAM)
    target.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    target.bind(("::1", 18090))
    target.listen(1)
    target.settimeout(10)
    family = socket.AF_INET6 if ":" in stack_ip else socket.AF_INET
    client = world6.socket(family, socket.SOCK_STREAM)
    client.settimeout(10)
    with target, client:
        client.connect((stack_ip, 8090))
        conn, _ = target.accept()
        with conn:
            data = os.urandom(256 * 1024)
            client.sendall(data)
            client.shutdown(socket.SHUT_WR)
            assert recv_exactly(conn, len(data)) == data
            assert conn.recv(1) == b""  # the FIN came through
            conn.sendall(data[::-1])
            conn.shutdown(socket.SHUT_WR)
            assert recv_exactly(client, len(data)) == data[::-1]
            assert client.recv(1) == b""


def test_udp_forward_to_an_ipv6_kernel_target(world6: World) -> None:
    target = world6.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    target.bind(("::1", 18091))
    target.settimeout(10)
    client = world6.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    client.settimeout(10)
    with target, client:
        client.connect((STACK6, 8091))  # a connected socket takes replies from 2001:db8::2 only
        client.send(b"hello over six")
        data, addr = target.recvfrom(100)
        assert data == b"hello over six" and addr[0] == "::1"
        target.sendto(b"back over six", addr)
        assert client.recv(100) == b"back over six"


def test_forward_and_socks_destinations_over_ipv4_still_work(world6: World) -> None:
    """The same front keeps IPv4: a SOCKS CONNECT to 192.0.2.1 gets an IPv4 BND.ADDR."""
    listener = world6.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((HOST_IP, 8002))
    listener.listen(1)
    listener.settimeout(10)
    with listener:
        sock, reply = socks_request(world6, 1, HOST_IP, 8002)
        sock.close()
        assert reply[:4] == b"\x05\x00\x00\x01" and socket.inet_ntoa(reply[4:8]) == "192.0.2.2"
        conn, _ = listener.accept()
        conn.close()
