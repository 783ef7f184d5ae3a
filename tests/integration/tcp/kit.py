"""Helpers shared by the TCP kernel-peer tests: reference streams, hashing, kernel-side TCP_INFO,
bare namespaces, and the in-process stack helper (stackproc.py).

The reference streams are written here independently of the stack's code, so a test compares
the stack against the RFC, not against itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from tests.integration.world import netns_add, netns_del, new_netns_name

REPO = Path(__file__).resolve().parents[3]
HOST_IP = "192.0.2.1"
STACK_IP = "192.0.2.2"
ECHO, DISCARD, CHARGEN = 7, 9, 19
MB = 1_000_000
CHUNK = 256 * 1024


# -- reference streams -----------------------------------------------------------------------
def rfc864_period() -> bytes:
    """RFC 864: 72-character lines through the 95 printable ASCII characters (from ' '),
    each line starting one character later than the one before, ended by CRLF; 95 lines
    make a period."""
    lines = []
    for line in range(95):
        chars = bytes(0x20 + (line + k) % 95 for k in range(72))
        lines.append(chars + b"\r\n")
    return b"".join(lines)


def chargen_sha256(n: int) -> str:
    """sha256 of the first n bytes of a chargen stream."""
    period = rfc864_period()
    block = period * (CHUNK // len(period) + 1)  # a whole number of periods
    digest = hashlib.sha256()
    left = n
    while left:
        piece = block[: min(left, len(block))]
        digest.update(piece)
        left -= len(piece)
    return digest.hexdigest()


def chargen_check(data: bytes, offset: int = 0) -> int | None:
    """Index of the first byte of `data` (stream offset `offset`) that breaks the pattern."""
    period = rfc864_period()
    start = offset % len(period)
    reps = (start + len(data)) // len(period) + 2
    expected = (period * reps)[start : start + len(data)]
    if data == expected:
        return None
    return next(i for i, (a, b) in enumerate(zip(data, expected, strict=True)) if a != b)


def seeded_chunks(seed: int, n: int, chunk: int = CHUNK) -> Iterator[bytes]:
    """The pseudo-random stream the stack helper sends: randbytes of a seeded Random."""
    rng = random.Random(seed)
    left = n
    while left:
        size = min(chunk, left)
        yield rng.randbytes(size)
        left -= size


def seeded_sha256(seed: int, n: int) -> str:
    digest = hashlib.sha256()
    for piece in seeded_chunks(seed, n):
        digest.update(piece)
    return digest.hexdigest()


def sha256_file(path: Path, n: int | None = None) -> str:
    """sha256 of the file, or of its first n bytes."""
    digest = hashlib.sha256()
    left = n if n is not None else 1 << 62
    with open(path, "rb") as f:
        while left and (piece := f.read(min(1 << 20, left))):
            digest.update(piece)
            left -= len(piece)
    return digest.hexdigest()


# -- kernel sockets --------------------------------------------------------------------------
# struct tcp_info (linux/tcp.h): tcpi_bytes_acked (u64) sits at offset 120, bytes_received at 128
TCPI_BYTES_ACKED = struct.Struct("=Q")


def bytes_acked(sock: socket.socket) -> int:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return TCPI_BYTES_ACKED.unpack_from(info, 120)[0]


def recv_until_eof(sock: socket.socket, sink, deadline: float) -> int:
    """Read to EOF, feeding every piece to sink(bytes); TimeoutError past the deadline.
    A reset (ConnectionResetError) propagates: callers that expect FIN see it fail."""
    total = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no EOF before the deadline ({total} bytes read)")
        sock.settimeout(left)
        data = sock.recv(1 << 20)
        if not data:
            return total
        sink(data)
        total += len(data)


def echo_transfer(
    sock: socket.socket, path: Path, limit: float, n: int | None = None
) -> tuple[str, int, float]:
    """Send the file (or its first n bytes) through an echo connection while a thread reads it
    back; then half-close and read to EOF. Returns (sha256 of what came back, bytes, seconds)."""
    digest = hashlib.sha256()
    result: dict[str, object] = {}
    deadline = time.monotonic() + limit
    started = time.monotonic()

    def reader() -> None:
        try:
            result["n"] = recv_until_eof(sock, digest.update, deadline)
        except BaseException as err:
            result["error"] = err

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    left = n if n is not None else 1 << 62
    with open(path, "rb") as f:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        while left and (piece := f.read(min(CHUNK, left))):
            left -= len(piece)
            sock.sendall(piece)
            if time.monotonic() > deadline:
                raise TimeoutError("echo transfer: sending took too long")
    sock.shutdown(socket.SHUT_WR)
    thread.join(max(0.1, deadline - time.monotonic()) + 1)
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    if thread.is_alive():
        raise TimeoutError("echo transfer: the echo did not end in time")
    return digest.hexdigest(), int(result["n"]), time.monotonic() - started  # type: ignore[arg-type]


# -- processes ---------------------------------------------------------------------------------
def vm_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


@contextlib.contextmanager
def bare_namespace(tag: str) -> Iterator[str]:
    """A fresh namespace with only lo up; deleted on the way out, whatever happened."""
    name = new_netns_name(tag)
    try:
        netns_add(name)
        yield name
    finally:
        netns_del(name)


def stackproc(ns: str, args: list[str], log: Path, **kwargs) -> subprocess.Popen:
    """Start tests/integration/tcp/stackproc.py inside `ns` (stdout: its JSON result)."""
    cmd = ["ip", "netns", "exec", ns, sys.executable, "-m", "tests.integration.tcp.stackproc"]
    with open(log, "wb") as err:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [*cmd, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True, **kwargs
        )


def stackproc_result(proc: subprocess.Popen, timeout: float, log: Path) -> dict:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(
            f"stack helper ran over {timeout}s:\n{log.read_text()[-3000:]}"
        ) from None
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    assert proc.returncode == 0 and lines, (
        f"stack helper failed ({proc.returncode}): {out}\n{log.read_text()[-3000:]}"
    )
    return json.loads(lines[-1])


def ns_popen(ns: str, cmd: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", ns, *cmd], **kwargs)


def wait_listening(ns: str, port: int, timeout: float = 10.0) -> None:
    """Until something in `ns` listens on TCP `port` (ss -ltn)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["ip", "netns", "exec", ns, "ss", "-Hltn", f"sport = :{port}"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        if out.strip():
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on {port} in {ns}")


def metrics(world, names: tuple[str, ...] = ("netstack_tcp_",)) -> dict[str, float]:
    """The stack's Prometheus samples whose names start with one of `names`, fetched over
    127.0.0.1:9464 inside the world's namespace."""
    sock = world.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(5)
        sock.connect(("127.0.0.1", 9464))
        sock.sendall(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        parts = []
        while data := sock.recv(1 << 16):
            parts.append(data)
    finally:
        sock.close()
    body = b"".join(parts).decode().split("\r\n\r\n", 1)[-1]
    out: dict[str, float] = {}
    for line in body.splitlines():
        if line.startswith(names):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out
