"""The SOCKS5 front with real programs: curl --socks5 out through the stack to an http.server
on the kernel side of the TAP, UDP ASSOCIATE through a kernel UDP echo, and bad clients."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.front_helpers import (
    SOCKS,
    listening,
    metric,
    recv_exactly,
    socks_client,
    socks_request,
    wait_for,
)
from tests.integration.world import (
    HOST_IP,
    World,
    can_run_world,
    have_tools,
    netns_add,
    running_world,
)

pytestmark = pytest.mark.integration

ok, why = can_run_world()
if not ok:
    pytest.skip(why, allow_module_level=True)

FILE_SIZE = 24 * 2**20
CONFIG = """
shutdown_timeout = 2

[socks]
listen = "127.0.0.1:1080"
handshake_timeout = 2.0
max_sessions = 64
bind_timeout = 8.0
"""


@pytest.fixture(scope="module")
def sworld(tmp_path_factory) -> Iterator[World]:
    workdir = tmp_path_factory.mktemp("socks")
    config = workdir / "netstack.toml"
    config.write_text(CONFIG)
    with running_world(workdir, "--config", str(config), "--pcap", "none", tag="sk") as world:
        wait_for(lambda: listening(world, 1080), 10, "the SOCKS listener")
        world.config_path = config  # type: ignore[attr-defined]
        yield world


def socks_metric(world: World, reason: str) -> float:
    return metric(world, "netstack_socks_errors_total", reason=reason)


@pytest.mark.skipif(not have_tools("curl"), reason="no curl")
def test_curl_socks5_download(sworld: World, tmp_path: Path) -> None:
    """curl --socks5 to http.server on 192.0.2.1 (the kernel side): same bytes."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "file.bin").write_bytes(os.urandom(FILE_SIZE))
    server = sworld.popen(
        [sys.executable, "-m", "http.server", "8000", "--bind", HOST_IP, "-d", str(root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: listening(sworld, 8000), 15, "http.server")
        out = tmp_path / "got.bin"
        result = sworld.run(
            [
                "curl",
                "-sS",
                "--max-time",
                "90",
                "--socks5",
                "127.0.0.1:1080",
                "-o",
                str(out),
                f"http://{HOST_IP}:8000/file.bin",
            ],
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        want = hashlib.sha256((root / "file.bin").read_bytes()).hexdigest()
        assert hashlib.sha256(out.read_bytes()).hexdigest() == want
    finally:
        server.terminate()
        server.wait(10)
    assert metric(sworld, "netstack_socks_bytes_total", direction="from_target") >= FILE_SIZE
    assert metric(sworld, "netstack_socks_requests_total", command="connect") >= 1


def test_connect_leaves_from_the_stack_address(sworld: World) -> None:
    """While a CONNECT is open, `ss` on the kernel side shows its peer as 192.0.2.2."""
    listener = sworld.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((HOST_IP, 8001))
    listener.listen(1)
    listener.settimeout(10)
    with listener:
        sock, reply = socks_request(sworld, 1, HOST_IP, 8001)
        with sock:
            assert reply[:2] == b"\x05\x00", reply
            assert socket.inet_ntoa(reply[4:8]) == sworld.stack_ip
            conn, peer = listener.accept()
            with conn:
                assert peer[0] == sworld.stack_ip
                out = sworld.run(["ss", "-Htn", "state", "established", "sport = :8001"]).stdout
                assert f"{sworld.stack_ip}:" in out, out
                sock.sendall(b"ping")
                assert recv_exactly(conn, 4) == b"ping"
                conn.sendall(b"pong")
                assert recv_exactly(sock, 4) == b"pong"
                conn.shutdown(socket.SHUT_WR)  # half-close comes through as EOF
                assert sock.recv(10) == b""
                sock.sendall(b"after")
                sock.shutdown(socket.SHUT_WR)
                assert recv_exactly(conn, 5) == b"after"


def test_destination_outside_allow_list(sworld: World) -> None:
    """198.51.100.1 is beyond the on-link network: reply 2, counted."""
    before = socks_metric(sworld, "not_allowed")
    sock, reply = socks_request(sworld, 1, "198.51.100.1", 80)
    with sock:
        assert reply[:2] == b"\x05\x02"
        assert sock.recv(10) == b""  # then closed
    assert socks_metric(sworld, "not_allowed") == before + 1


def test_refused_destination(sworld: World) -> None:
    """Nobody listens at 192.0.2.1:8009: the kernel's RST becomes reply 5."""
    before = socks_metric(sworld, "refused")
    sock, reply = socks_request(sworld, 1, HOST_IP, 8009)
    with sock:
        assert reply[:2] == b"\x05\x05"
    assert socks_metric(sworld, "refused") == before + 1


def test_udp_associate_echo(sworld: World) -> None:
    """UDP ASSOCIATE: datagrams go out from the stack to a kernel UDP echo and come back
    with the echo's address in the SOCKS header."""
    echo = sworld.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo.bind((HOST_IP, 9999))
    echo.settimeout(10)
    peers: list[tuple[str, int]] = []

    def serve() -> None:
        with contextlib.suppress(OSError):
            for _ in range(3):
                data, addr = echo.recvfrom(65535)
                peers.append(addr)
                echo.sendto(data, addr)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ctrl, reply = socks_request(sworld, 3, "0.0.0.0", 0)
    udp = sworld.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.settimeout(10)
    try:
        assert reply[:2] == b"\x05\x00", reply
        relay = (socket.inet_ntoa(reply[4:8]), struct.unpack("!H", reply[8:10])[0])
        header = b"\x00\x00\x00\x01" + socket.inet_aton(HOST_IP) + struct.pack("!H", 9999)
        for size in (1, 1400, 8000):
            payload = os.urandom(size)
            udp.sendto(header + payload, relay)
            data, _ = udp.recvfrom(65535)
            assert data[:10] == header
            assert data[10:] == payload
        assert {p[0] for p in peers} == {sworld.stack_ip}
    finally:
        udp.close()
        ctrl.close()
        echo.close()


def _bind_reply(sock: socket.socket) -> tuple[bytes, str, int]:
    """One BIND reply with an IPv4 BND.ADDR: (VER REP, address, port)."""
    reply = recv_exactly(sock, 10)
    assert len(reply) == 10, reply
    return reply[:2], socket.inet_ntoa(reply[4:8]), struct.unpack("!H", reply[8:10])[0]


def test_bind_relays_the_named_hosts_connection(sworld: World) -> None:
    """BIND (FTP's active mode): the stack listens on a free port and names it; a connection
    from another host is reset and counted, the named host's is announced (its address and
    port, RFC 1928 6) and relayed both ways with half-close."""
    other = "192.0.2.3"
    before = metric(sworld, "netstack_socks_requests_total", command="bind")
    unexpected = socks_metric(sworld, "unexpected_peer")
    # Everything slow (the address, the metric scrapes) stays outside the BIND's wait, which
    # bind_timeout bounds: only the two connects happen inside it.
    sworld.run(["ip", "addr", "add", f"{other}/24", "dev", sworld.interface])
    try:
        ctrl, reply = socks_request(sworld, 2, HOST_IP, 21)
        with ctrl:
            assert reply[:2] == b"\x05\x00", reply
            bound = (socket.inet_ntoa(reply[4:8]), struct.unpack("!H", reply[8:10])[0])
            assert bound[0] == sworld.stack_ip and bound[1] > 0
            stranger = sworld.socket(socket.AF_INET, socket.SOCK_STREAM)
            with stranger:
                stranger.settimeout(10)
                stranger.bind((other, 0))
                # the handshake completes, then the stack resets it: connect() may see the
                # reset already (a timed connect reads SO_ERROR), or the first recv() does
                with pytest.raises(ConnectionResetError):
                    stranger.connect(bound)
                    while stranger.recv(10):
                        pass
            ctrl.sendall(b"RETR")  # early: waits in the kernel until the relay starts
            peer = sworld.socket(socket.AF_INET, socket.SOCK_STREAM)
            with peer:
                peer.settimeout(10)
                peer.bind((HOST_IP, 0))
                peer.connect(bound)
                assert _bind_reply(ctrl) == (b"\x05\x00", HOST_IP, peer.getsockname()[1])
                assert recv_exactly(peer, 4) == b"RETR"
                data = os.urandom(300_000)
                peer.sendall(data)
                peer.shutdown(socket.SHUT_WR)  # the data connection's end comes through
                got = b""
                while chunk := ctrl.recv(65536):
                    got += chunk
                assert got == data
                ctrl.sendall(b"bye")
                ctrl.shutdown(socket.SHUT_WR)
                assert recv_exactly(peer, 3) == b"bye"
                assert peer.recv(10) == b""
        wait_for(
            lambda: socks_metric(sworld, "unexpected_peer") == unexpected + 1,
            5,
            "the stranger counted",
        )
    finally:
        sworld.run(["ip", "addr", "del", f"{other}/24", "dev", sworld.interface])
    assert metric(sworld, "netstack_socks_requests_total", command="bind") == before + 1


def test_bind_without_a_connection_gets_reply_6(sworld: World) -> None:
    """No connection within bind_timeout (8 s here): reply 6, counted, the port closed."""
    before = socks_metric(sworld, "bind_timeout")
    ctrl, reply = socks_request(sworld, 2, "0.0.0.0", 0)  # any allowed host may connect
    with ctrl:
        ctrl.settimeout(30)
        assert reply[:2] == b"\x05\x00", reply
        port = struct.unpack("!H", reply[8:10])[0]
        assert _bind_reply(ctrl)[0] == b"\x05\x06"
        assert ctrl.recv(10) == b""
    assert socks_metric(sworld, "bind_timeout") == before + 1
    late = sworld.socket(socket.AF_INET, socket.SOCK_STREAM)
    with late:
        late.settimeout(10)
        with pytest.raises(ConnectionRefusedError):
            late.connect((sworld.stack_ip, port))


@pytest.mark.parametrize(
    ("data", "reason", "expect"),
    [
        (b"\x04\x01\x00\x50\xc0\x00\x02\x01\x00", "bad_version", b""),  # SOCKS4
        (
            b"\x05\x01\x00" + b"\x05\x01\x00\x07\x01\x02\x03\x04\x00\x50",
            "bad_address_type",
            b"\x05\x00\x05\x08",
        ),
        (
            b"\x05\x01\x00" + b"\x05\x01\x00\x03\x0bexample.com\x00\x50",
            "hostname_refused",
            b"\x05\x00\x05\x08",
        ),
        (
            b"\x05\x01\x00" + b"\x05\x09\x00\x01\xc0\x00\x02\x01\x00\x50",
            "bad_command",
            b"\x05\x00\x05\x07",
        ),
        (b"\x05\x01\x02", "no_acceptable_method", b"\x05\xff"),
        (b"\x05\x01\x00" + b"\x05\x01\x00\x03\xff" + b"A" * 4000, "oversized", b""),
    ],
    ids=["wrong-version", "bad-atyp", "hostname", "unknown-command", "needs-auth", "oversized"],
)
def test_malformed_requests(sworld: World, data: bytes, reason: str, expect: bytes) -> None:
    """Each gets its reply (if the protocol has one), then the connection is closed."""
    before = socks_metric(sworld, reason)
    sock = socks_client(sworld)
    with sock:
        sock.sendall(data)
        got = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(4096):
                got += chunk
    assert got[: len(expect)] == expect, got
    if reason == "oversized":
        assert got == b"", got
    wait_for(lambda: socks_metric(sworld, reason) == before + 1, 5, f"{reason} counted")


def test_truncated_and_stalled_handshakes(sworld: World) -> None:
    """A client that closes mid-handshake is counted as truncated; clients that never finish
    are closed after handshake_timeout (2 s here), all of them, and counted; past
    max_sessions a new client is reset at once."""
    before = socks_metric(sworld, "truncated")
    sock = socks_client(sworld)
    sock.sendall(b"\x05\x02\x00")  # promises two methods, sends one, gives up
    sock.close()
    wait_for(lambda: socks_metric(sworld, "truncated") == before + 1, 5, "truncated counted")

    wait_for(lambda: metric(sworld, "netstack_socks_active_sessions") == 0, 5, "a quiet front")
    before = socks_metric(sworld, "handshake_timeout")
    before_limit = socks_metric(sworld, "limit")
    stalled = [sworld.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(65)]
    extra = stalled.pop()
    start = time.monotonic()  # connected together, well inside handshake_timeout (2 s)
    for i, sock in enumerate(stalled):  # max_sessions = 64
        sock.settimeout(10)
        sock.connect(SOCKS)
        sock.sendall(b"\x05\x01\x00"[: i % 3])
    wait_for(lambda: metric(sworld, "netstack_socks_active_sessions") == 64, 5, "64 sessions")
    with extra, contextlib.suppress(ConnectionResetError):  # one too many: reset at once
        extra.settimeout(10)
        extra.connect(SOCKS)
        assert extra.recv(10) == b""
    assert time.monotonic() - start < 2, "too slow to test the limit before the timeouts"
    assert socks_metric(sworld, "limit") == before_limit + 1
    for sock in stalled:
        with sock:
            sock.settimeout(10)
            data = b""
            with contextlib.suppress(ConnectionResetError):
                while chunk := sock.recv(100):
                    data += chunk
            assert data in (b"", b"\x05\x00")
    assert time.monotonic() - start < 8
    wait_for(lambda: socks_metric(sworld, "handshake_timeout") == before + 64, 5, "timeouts")
    wait_for(lambda: metric(sworld, "netstack_socks_active_sessions") == 0, 5, "sessions gone")


def _kernel_listener(world: World, port: int, host: str = "127.0.0.1") -> socket.socket:
    sock = world.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(8)
    sock.settimeout(10)
    return sock


def _reload(world: World, extra: str) -> None:
    mark = world.log().count("reload")
    world.config_path.write_text(CONFIG + extra)  # type: ignore[attr-defined]
    assert world.proc is not None
    world.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: world.log().count("reload") > mark, 10, "the reload")


def _stack_conn(world: World, port: int) -> socket.socket:
    sock = world.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect((world.stack_ip, port))
    return sock


def test_reload_adds_and_removes_forwards(sworld: World) -> None:
    """SIGHUP adds a forward (with max_connections = 2); removing it stops new connections at
    once while the open one keeps working until shutdown_timeout (2 s) has passed."""
    target = _kernel_listener(sworld, 8084)
    _reload(
        sworld,
        '\n[[forward]]\nproto = "tcp"\nlisten = 84\nto = "127.0.0.1:8084"\nmax_connections = 2\n',
    )
    wait_for(lambda: "forward tcp:84" in sworld.log(), 5, "the new forward")
    held = [_stack_conn(sworld, 84) for _ in range(2)]
    conns = [target.accept()[0] for _ in range(2)]
    over = sworld.socket(socket.AF_INET, socket.SOCK_STREAM)  # the third: over the limit
    over.settimeout(10)
    with over, pytest.raises((ConnectionResetError, ConnectionRefusedError)):
        over.connect((sworld.stack_ip, 84))  # the RST may beat connect() back to the caller
        over.recv(1)
    assert metric(sworld, "netstack_forward_errors_total", forward="tcp:84", reason="limit") == 1

    _reload(sworld, "")  # the forward is gone
    wait_for(lambda: "forward tcp:84 removed" in sworld.log(), 5, "the removal")
    late = sworld.socket(socket.AF_INET, socket.SOCK_STREAM)
    late.settimeout(5)
    with late, pytest.raises(ConnectionRefusedError):
        late.connect((sworld.stack_ip, 84))
    held[0].sendall(b"still here")  # the open ones go on
    assert recv_exactly(conns[0], 10) == b"still here"
    conns[1].sendall(b"and back")
    assert recv_exactly(held[1], 8) == b"and back"
    start = time.monotonic()
    with pytest.raises(ConnectionResetError):  # reset once shutdown_timeout is over
        while held[0].recv(100):
            pass
    assert time.monotonic() - start < 5
    for sock in [*held, *conns, target]:
        sock.close()
    assert "SOCKS5 on" in sworld.log()  # the SOCKS front was not touched by the reloads
    sock, reply = socks_request(sworld, 1, HOST_IP, 8009)
    with sock:
        assert reply[:2] == b"\x05\x05"


IDLE_FORWARDS = """
[[forward]]
proto = "tcp"
listen = 86
to = "127.0.0.1:8086"
idle_timeout = 1

[[forward]]
proto = "udp"
listen = 87
to = "127.0.0.1:8087"
idle_timeout = 1
"""


def test_forward_idle_timeouts(sworld: World) -> None:
    """idle_timeout ends a silent TCP session with RST both ways and a silent UDP flow."""
    target = _kernel_listener(sworld, 8086)
    echo = sworld.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo.bind(("127.0.0.1", 8087))
    echo.settimeout(10)
    _reload(sworld, IDLE_FORWARDS)
    wait_for(lambda: "forward udp:87" in sworld.log(), 5, "the new forwards")
    try:
        udp = sworld.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.settimeout(10)
        with udp:
            udp.sendto(b"ping", (sworld.stack_ip, 87))
            data, addr = echo.recvfrom(100)
            echo.sendto(data, addr)
            assert udp.recvfrom(100) == (b"ping", (sworld.stack_ip, 87))
        assert metric(sworld, "netstack_forward_active_connections", forward="udp:87") == 1
        wait_for(
            lambda: metric(sworld, "netstack_forward_active_connections", forward="udp:87") == 0,
            5,
            "the idle UDP flow to end",
        )
        assert (
            metric(sworld, "netstack_forward_errors_total", forward="udp:87", reason="idle_timeout")
            == 1
        )

        client = _stack_conn(sworld, 86)
        conn, _ = target.accept()
        start = time.monotonic()
        with client, conn, pytest.raises(ConnectionResetError):
            while client.recv(100):
                pass
        assert 0.9 < time.monotonic() - start < 4
        assert (
            metric(sworld, "netstack_forward_errors_total", forward="tcp:86", reason="idle_timeout")
            == 1
        )
    finally:
        target.close()
        echo.close()
        _reload(sworld, "")


AUTH_CONFIG = """
[socks]
listen = "0.0.0.0:1081"
username = "alice"
password = "s3cret"
"""


def test_username_password_auth(tmp_path: Path) -> None:
    """RFC 1929 when configured (required off loopback): no creds -> 0xFF, wrong password ->
    status 1 and close, right ones -> a working CONNECT."""
    config = tmp_path / "auth.toml"
    config.write_text(AUTH_CONFIG)
    with running_world(tmp_path, "--config", str(config), "--pcap", "none", tag="sa") as world:
        wait_for(lambda: listening(world, 1081), 10, "the SOCKS listener")

        def greet(methods: bytes) -> tuple[socket.socket, bytes]:
            sock = world.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.settimeout(10)
            sock.connect(("127.0.0.1", 1081))
            sock.sendall(b"\x05" + bytes([len(methods)]) + methods)
            return sock, recv_exactly(sock, 2)

        sock, answer = greet(b"\x00")
        with sock:
            assert answer == b"\x05\xff"
        sock, answer = greet(b"\x00\x02")
        with sock:
            assert answer == b"\x05\x02"
            sock.sendall(b"\x01\x05alice\x05wrong")
            assert recv_exactly(sock, 2) == b"\x01\x01"
            assert sock.recv(10) == b""
        assert metric(world, "netstack_socks_errors_total", reason="auth_failed") == 1
        target = _kernel_listener(world, 8085, HOST_IP)
        sock, answer = greet(b"\x02")
        with sock, target:
            sock.sendall(b"\x01\x05alice\x06s3cret")
            assert recv_exactly(sock, 2) == b"\x01\x00"
            sock.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(HOST_IP) + struct.pack("!H", 8085))
            assert recv_exactly(sock, 10)[:2] == b"\x05\x00"
            conn, peer = target.accept()
            with conn:
                assert peer[0] == world.stack_ip
                sock.sendall(b"hi")
                assert recv_exactly(conn, 2) == b"hi"


def test_busy_socks_port_is_a_clean_startup_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SOCKS port is taken: one line naming it, exit 1, no traceback."""
    world = World(tmp_path, ("--socks", "127.0.0.1:1083"), tag="sb")
    netns_add(world.ns)  # made here so the port can be taken inside it first
    monkeypatch.setattr("tests.integration.world.netns_add", lambda name: None)
    try:
        busy = world.socket(socket.AF_INET, socket.SOCK_STREAM)
        busy.bind(("127.0.0.1", 1083))
        busy.listen(1)
        with busy, pytest.raises(RuntimeError, match=r"exited early \(1\)"):
            world.start(timeout=20)
        log = world.log()
        assert "cannot start the SOCKS front on 127.0.0.1:1083: Address already in use" in log
        assert "Traceback" not in log
    finally:
        world.close()


def test_log_is_clean(sworld: World) -> None:
    assert "Traceback" not in sworld.log() and "callback failed" not in sworld.log()
