"""asyncio streams over the stack (netstack.aio): an echo server on the stack with 200
concurrent kernel clients, and open_connection out to a kernel echo server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.integration.world import (
    HOST_IP,
    STACK_IP,
    can_run_world,
    netns_add,
    netns_del,
    new_netns_name,
    ns_socket,
)

pytestmark = pytest.mark.integration

ok, why = can_run_world()
if not ok:
    pytest.skip(why, allow_module_level=True)

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "examples" / "aio_echo.py"


def _start_app(ns: str, log: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, str(APP), *args],
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
        env=env,
    )


def _wait_log(proc: subprocess.Popen, log: Path, word: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if word in text:
            return text
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"no {word!r} from the app:\n{log.read_text(errors='replace')}")


def _wait_kernel_side(ns: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["ip", "-n", ns, "-4", "-o", "addr", "show", "dev", "tap0"],
            capture_output=True,
            text=True,
        ).stdout
        if HOST_IP in out:
            return
        time.sleep(0.05)
    raise AssertionError("tap0 never got its kernel-side address")


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _check_backpressure(ns: str, pid: int) -> None:
    """A client that writes but does not read: the echo handler's drain() blocks, so it stops
    reading, the stack's window closes and the client's send stalls -- with the app's memory
    bounded. Then the client reads everything back, exact."""
    sock = ns_socket(ns, socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.connect((STACK_IP, 7007))
    rss_before = _rss(pid)
    block = os.urandom(65536)
    sent = bytearray()
    sock.settimeout(2.0)
    with sock:
        try:
            while len(sent) < 256 << 20:
                n = sock.send(block)
                sent += block[:n]
        except TimeoutError:
            pass  # stalled: everything on the way is full
        assert len(sent) < 32 << 20, f"{len(sent)} bytes went in before the flow stopped"
        assert _rss(pid) - rss_before < 48 << 20
        sock.settimeout(30)
        sock.shutdown(socket.SHUT_WR)
        got = bytearray()
        while chunk := sock.recv(1 << 20):
            got += chunk
    assert got == sent


def test_asyncio_echo_server_200_clients(tmp_path: Path) -> None:
    ns = new_netns_name("aio")
    netns_add(ns)
    proc = None
    try:
        proc = _start_app(ns, tmp_path / "app.log", "--port", "7007")
        _wait_log(proc, tmp_path / "app.log", "READY", 20)
        _wait_kernel_side(ns)

        def client(i: int) -> bool:
            payload = os.urandom(2000 + 97 * i)
            sock = ns_socket(ns, socket.AF_INET, socket.SOCK_STREAM)
            sock.settimeout(60)
            with sock:
                sock.connect((STACK_IP, 7007))
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
                got = bytearray()
                while chunk := sock.recv(65536):
                    got += chunk
            return bytes(got) == payload

        with ThreadPoolExecutor(max_workers=200) as pool:
            results = list(pool.map(client, range(200)))
        assert all(results), f"{results.count(False)} of 200 clients got wrong bytes"
        # a real program too: nc
        out = subprocess.run(
            ["ip", "netns", "exec", ns, "nc", "-N", "-w", "10", STACK_IP, "7007"],
            input=b"hello asyncio\n",
            capture_output=True,
            timeout=30,
        )
        assert out.stdout == b"hello asyncio\n"
        # the datagram endpoint: a UDP echo on the same port
        udp = ns_socket(ns, socket.AF_INET, socket.SOCK_DGRAM)
        udp.settimeout(5)
        with udp:
            for size in (1, 1400, 9000):
                payload = os.urandom(size)
                udp.sendto(payload, (STACK_IP, 7007))
                assert udp.recvfrom(65535) == (payload, (STACK_IP, 7007))
        _check_backpressure(ns, proc.pid)
        assert b"Traceback" not in (tmp_path / "app.log").read_bytes()
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        netns_del(ns)


def test_open_connection_to_kernel_server(tmp_path: Path) -> None:
    """open_connection from the stack to a kernel echo server on 192.0.2.1: 4 MB exact."""
    ns = new_netns_name("aio")
    netns_add(ns)
    proc = None
    stop = threading.Event()
    try:
        server = ns_socket(ns, socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("0.0.0.0", 9007))  # listening before tap0 (and 192.0.2.1) exists
        server.listen(4)
        server.settimeout(30)

        def echo() -> None:
            with server:
                conn, _ = server.accept()
                with conn:
                    conn.settimeout(30)
                    while not stop.is_set() and (data := conn.recv(65536)):
                        conn.sendall(data)

        thread = threading.Thread(target=echo, daemon=True)
        thread.start()
        proc = _start_app(
            ns, tmp_path / "app.log", "--fetch", f"{HOST_IP}:9007", "--size", str(4 << 20)
        )
        text = _wait_log(proc, tmp_path / "app.log", "SHA", 60)
        line = next(x for x in text.splitlines() if x.startswith("SHA"))
        _, got, want = line.split()
        assert got == want
    finally:
        stop.set()
        if proc is not None:
            proc.kill()
            proc.wait()
        netns_del(ns)
