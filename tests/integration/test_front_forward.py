"""Inbound port forwarding with real programs on both ends, inside the test's own namespace.

The stack forwards its ports to kernel sockets on 127.0.0.1 in the same namespace; clients on
the kernel side of the TAP (192.0.2.1) reach them through 192.0.2.2: curl to python's
http.server, iperf3 both ways and over UDP, nc for half-close, and a dead target for RST.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
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

from tests.integration.front_helpers import listening, metric, scrape, wait_for
from tests.integration.world import World, can_run_world, have_tools, running_world

pytestmark = pytest.mark.integration

ok, why = can_run_world()
if not ok:
    pytest.skip(why, allow_module_level=True)

FILE_SIZE = 24 * 2**20
FORWARDS = (
    "tcp:80=127.0.0.1:8080",  # http.server
    "tcp:5201=127.0.0.1:5201",  # iperf3 control + TCP data
    "udp:5201=127.0.0.1:5201",  # iperf3 UDP data
    "tcp:81=127.0.0.1:8081",  # nobody listens: RST
    "tcp:82=127.0.0.1:8082",  # half-close target (in-process)
    "tcp:83=127.0.0.1:8083",  # flooding target (in-process)
    "tcp:85=127.0.0.1:8085",  # target that resets (in-process)
)


@pytest.fixture(scope="module")
def fworld(tmp_path_factory) -> Iterator[World]:
    workdir = tmp_path_factory.mktemp("front")
    args = [a for spec in FORWARDS for a in ("--forward", spec)]
    with running_world(workdir, *args, "--pcap", "none", tag="fw") as world:
        yield world


@pytest.fixture(scope="module")
def http_dir(fworld: World, tmp_path_factory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("www")
    (root / "file.bin").write_bytes(os.urandom(FILE_SIZE))
    proc = fworld.popen(
        [sys.executable, "-m", "http.server", "8080", "--bind", "127.0.0.1", "-d", str(root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: listening(fworld, 8080), 15, "http.server")
        yield root
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.skipif(not have_tools("curl"), reason="no curl")
def test_curl_through_forward(fworld: World, http_dir: Path, tmp_path: Path) -> None:
    """curl http://192.0.2.2/file.bin reaches http.server on 127.0.0.1:8080: same bytes."""
    out = tmp_path / "got.bin"
    result = fworld.run(
        ["curl", "-sS", "--max-time", "90", "-o", str(out), f"http://{fworld.stack_ip}/file.bin"],
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    want = hashlib.sha256((http_dir / "file.bin").read_bytes()).hexdigest()
    assert hashlib.sha256(out.read_bytes()).hexdigest() == want
    assert (
        metric(fworld, "netstack_forward_bytes_total", forward="tcp:80", direction="from_target")
        >= FILE_SIZE
    )
    assert metric(fworld, "netstack_forward_connections_total", forward="tcp:80") >= 1


def test_target_down_resets_at_once(fworld: World) -> None:
    """No listener behind the forward: the stack-side connection is reset promptly."""
    before = metric(fworld, "netstack_forward_errors_total", forward="tcp:81", reason="refused")
    sock = fworld.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(5)
    start = time.monotonic()
    with sock, pytest.raises((ConnectionResetError, ConnectionRefusedError)):
        sock.connect((fworld.stack_ip, 81))
        sock.recv(10)
    assert time.monotonic() - start < 2.0
    after = metric(fworld, "netstack_forward_errors_total", forward="tcp:81", reason="refused")
    assert after == before + 1


class HalfCloseTarget(threading.Thread):
    """Kernel target on 127.0.0.1:8082: reads to EOF, then answers how much it got and
    closes -- unless the client's first byte is 'B', then it sends a banner, half-closes its
    side first and still reads (and reports into `received`) what comes after."""

    def __init__(self, world: World) -> None:
        super().__init__(daemon=True)
        self.sock = world.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 8082))
        self.sock.listen(4)
        self.sock.settimeout(20)
        self.received: list[bytes] = []

    def run(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                with conn:
                    conn.settimeout(10)
                    first = conn.recv(1)
                    if first == b"B":
                        conn.sendall(b"banner\n")
                        conn.shutdown(socket.SHUT_WR)
                    data = first + _read_all(conn)
                    self.received.append(data)
                    if first != b"B":
                        conn.sendall(f"got {len(data)}\n".encode())


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture(scope="module")
def half_target(fworld: World) -> Iterator[HalfCloseTarget]:
    target = HalfCloseTarget(fworld)
    target.start()
    yield target
    target.sock.close()


@pytest.mark.skipif(not have_tools("nc"), reason="no nc")
def test_half_close_client_first(fworld: World, half_target: HalfCloseTarget) -> None:
    """nc -N sends FIN after stdin: the target sees EOF (shutdown(SHUT_WR) relayed), answers
    on the still-open direction, and its close reaches nc as FIN."""
    payload = b"hello through the stack\n" * 1000
    result = fworld.run(["nc", "-N", "-w", "10", fworld.stack_ip, "82"], input=payload.decode())
    assert result.stdout == f"got {len(payload)}\n"


def test_half_close_target_first(fworld: World, half_target: HalfCloseTarget) -> None:
    """The target half-closes first: the client reads EOF, then still sends, and the target
    gets every byte sent after its own FIN."""
    sock = fworld.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(10)
    with sock:
        sock.connect((fworld.stack_ip, 82))
        sock.sendall(b"B")
        assert _read_all(sock) == b"banner\n"  # EOF after the banner: FIN relayed
        tail = os.urandom(300_000)
        sock.sendall(tail)
        sock.shutdown(socket.SHUT_WR)
        wait_for(
            lambda: len(half_target.received) >= 1 and half_target.received[-1][:1] == b"B",
            10,
            "target to read to EOF",
        )
    assert half_target.received[-1] == b"B" + tail


def _iperf(world: World, *client_args: str) -> dict:
    server = world.popen(
        ["iperf3", "-s", "-1", "-B", "127.0.0.1", "-p", "5201"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: listening(world, 5201), 10, "iperf3 -s")
        result = world.run(
            ["iperf3", "-c", world.stack_ip, "-p", "5201", "-t", "2", "-J", *client_args],
            timeout=30,
            check=False,
        )
        report = json.loads(result.stdout)
        assert "error" not in report, report["error"]
        return report
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(10)
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            server.wait(5)


@pytest.mark.skipif(not have_tools("iperf3"), reason="no iperf3")
@pytest.mark.parametrize("direction", [(), ("-R",)], ids=["forward", "reverse"])
def test_iperf3_tcp(fworld: World, direction: tuple[str, ...]) -> None:
    report = _iperf(fworld, *direction)
    received = report["end"]["sum_received"]["bytes"]
    assert received > 1_000_000, report["end"]


@pytest.mark.skipif(not have_tools("iperf3"), reason="no iperf3")
def test_iperf3_udp(fworld: World) -> None:
    report = _iperf(fworld, "-u", "-b", "20M")
    end = report["end"]["sum"]
    assert end["packets"] > 1000, end
    assert end["lost_percent"] < 10, end
    assert metric(fworld, "netstack_forward_connections_total", forward="udp:5201") >= 1


def test_log_is_clean(fworld: World) -> None:
    assert not re.search(r"Traceback|callback failed", fworld.log()), fworld.log()[-3000:]


@pytest.mark.skipif(not have_tools("promtool"), reason="no promtool")
def test_front_metrics_pass_promtool(fworld: World) -> None:
    text = scrape(fworld)
    assert 'netstack_forward_errors_total{forward="tcp:81",proto="tcp",reason="refused"}' in text
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_flooding_target_is_bounded(fworld: World) -> None:
    """A target that writes as fast as it can to a client that does not read: the stack reads
    the target only as far as its send buffer has room, so its memory stays put; the client's
    reset then reaches the target as ECONNRESET."""
    target = fworld.socket(socket.AF_INET, socket.SOCK_STREAM)
    target.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    target.bind(("127.0.0.1", 8083))
    target.listen(1)
    target.settimeout(10)
    sent = [0]
    outcome: list[BaseException] = []
    stalled = threading.Event()

    def flood() -> None:
        conn, _ = target.accept()
        conn.settimeout(1.0)
        block = os.urandom(65536)
        try:
            while True:
                sent[0] += conn.send(block)
        except TimeoutError:
            stalled.set()  # everything on the way is full
        conn.settimeout(10)
        try:
            while True:
                conn.send(block)
                time.sleep(0.05)
        except OSError as err:
            outcome.append(err)
        conn.close()

    thread = threading.Thread(target=flood, daemon=True)
    thread.start()
    rss_before = metric(fworld, "process_resident_memory_bytes")
    errors_before = metric(
        fworld, "netstack_forward_errors_total", forward="tcp:83", reason="client_reset"
    )
    client = fworld.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    client.connect((fworld.stack_ip, 83))
    try:
        assert stalled.wait(30), "the flood never stalled: something buffers without bound"
        held = sent[0]
        rss_after = metric(fworld, "process_resident_memory_bytes")
        # kernel socket buffers + the stack's 512 KiB send buffer + the client's window
        assert held < 16 * 2**20, held
        assert rss_after - rss_before < 32 * 2**20, (rss_before, rss_after)
    finally:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()  # RST
    thread.join(15)
    target.close()
    assert outcome and isinstance(outcome[0], ConnectionResetError | BrokenPipeError), outcome
    wait_for(
        lambda: (
            metric(fworld, "netstack_forward_errors_total", forward="tcp:83", reason="client_reset")
            == errors_before + 1
        ),
        5,
        "client_reset counted",
    )


def test_target_reset_resets_the_client(fworld: World) -> None:
    """The target closes with SO_LINGER 0 (RST): the stack's peer gets a reset too."""
    target = fworld.socket(socket.AF_INET, socket.SOCK_STREAM)
    target.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    target.bind(("127.0.0.1", 8085))
    target.listen(1)
    target.settimeout(10)
    before = metric(
        fworld, "netstack_forward_errors_total", forward="tcp:85", reason="target_reset"
    )
    client = fworld.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.settimeout(10)
    with client, target:
        client.connect((fworld.stack_ip, 85))
        conn, _ = target.accept()
        client.sendall(b"x")
        assert conn.recv(1) == b"x"
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
        with pytest.raises(ConnectionResetError):
            while client.recv(100):
                pass
    wait_for(
        lambda: (
            metric(fworld, "netstack_forward_errors_total", forward="tcp:85", reason="target_reset")
            == before + 1
        ),
        5,
        "target_reset counted",
    )
