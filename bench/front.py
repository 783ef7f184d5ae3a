#!/usr/bin/env python3
"""The front's bench targets (issue 13), each against the stack's own figure in the same run:

- TCP through a forward vs the stack's own discard (into the stack) and chargen (out of it);
- SOCKS CONNECT setups per second;
- asyncio streams (netstack.aio echo) vs the callback API (the built-in TCP echo), same stack.

    sudo python bench/front.py [--mb 64] [--connects 400]

Everything runs in namespaces this script creates and deletes (tests/integration/world.py);
kernel-side clients and sinks are sockets made inside them. Bounded in bytes and time.
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.integration.world import (  # noqa: E402
    HOST_IP,
    STACK_IP,
    netns_add,
    netns_del,
    new_netns_name,
    ns_socket,
    running_world,
)

CHUNK = 1 << 16


def send_mb(ns: str, addr: tuple[str, int], mb: int) -> float:
    """Send mb MiB to addr; MB/s until the receiver has closed after our FIN."""
    sock = ns_socket(ns, socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(60)
    block = os.urandom(CHUNK)
    with sock:
        sock.connect(addr)
        start = time.monotonic()
        for _ in range(mb * (1 << 20) // CHUNK):
            sock.sendall(block)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(CHUNK):
            pass
        return mb / (time.monotonic() - start)


def recv_mb(ns: str, addr: tuple[str, int], mb: int) -> float:
    sock = ns_socket(ns, socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(60)
    want, got = mb << 20, 0
    with sock:
        sock.connect(addr)
        start = time.monotonic()
        while got < want:
            n = len(sock.recv(CHUNK * 4))
            if not n:
                break
            got += n
        return got / (1 << 20) / (time.monotonic() - start)


def echo_mb(ns: str, addr: tuple[str, int], mb: int) -> float:
    """Send mb MiB to an echo server while reading it back; MB/s of the round trip."""
    sock = ns_socket(ns, socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(60)
    block = os.urandom(CHUNK)
    total = mb * (1 << 20) // CHUNK * CHUNK
    got = [0]

    def reader() -> None:
        while got[0] < total and (data := sock.recv(CHUNK * 4)):
            got[0] += len(data)

    with sock:
        sock.connect(addr)
        thread = threading.Thread(target=reader)
        start = time.monotonic()
        thread.start()
        for _ in range(total // CHUNK):
            sock.sendall(block)
        thread.join(60)
        return got[0] / (1 << 20) / (time.monotonic() - start)


# The kernel-side servers run in a process of their own: in the bench's process their
# threads would share the GIL with the client that loads the stack, and with the stack now
# faster than a Python client that sharing, not the stack, set the forward rows.
SERVERS = r"""
import contextlib, os, socket, sys, threading, time
CHUNK = 1 << 16

def serve(host, port, mode):
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    srv.listen(256)

    def handle(conn):
        with conn, contextlib.suppress(OSError):
            if mode == "discard":
                while conn.recv(CHUNK * 4):
                    pass
            elif mode == "source":
                block = os.urandom(CHUNK * 4)
                while True:
                    conn.sendall(block)
            else:
                conn.recv(1)

    def accept():
        while True:
            conn, _ = srv.accept()
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()

for spec in sys.argv[1:]:
    host, port, mode = spec.split(",")
    serve(host, int(port), mode)
print("READY", flush=True)
sys.stdin.read()  # until the bench closes our stdin (or ends)
"""


def kernel_servers(ns: str, *specs: tuple[str, int, str]) -> subprocess.Popen:
    """Sinks ('discard'), sources ('source') and acceptors ('accept') in one process in the
    namespace; it ends when its stdin is closed, and the bench kills it at the latest after
    LIFETIME seconds."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, "timeout", str(LIFETIME), sys.executable, "-c", SERVERS,
         *(f"{h},{p},{m}" for h, p, m in specs)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != b"READY":
        end_servers(proc)
        raise RuntimeError("the kernel-side servers did not start")
    return proc


def end_servers(proc: subprocess.Popen) -> None:
    """Close their stdin (they end), else SIGTERM, which `timeout` passes on to Python: a
    SIGKILL would end only `timeout` and leave the servers running."""
    if proc.stdin is not None:
        proc.stdin.close()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.terminate()
        proc.wait(10)


LIFETIME = 900


def socks_connect(ns: str, dst: tuple[str, int]) -> None:
    sock = ns_socket(ns, socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(10)
    with sock:
        sock.connect(("127.0.0.1", 1080))
        sock.sendall(
            b"\x05\x01\x00\x05\x01\x00\x01" + socket.inet_aton(dst[0]) + struct.pack("!H", dst[1])
        )
        reply = b""
        while len(reply) < 12:
            chunk = sock.recv(12 - len(reply))
            if not chunk:
                break
            reply += chunk
        assert reply[:4] == b"\x05\x00\x05\x00", reply


def bench_forward_and_socks(mb: int, connects: int) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp, running_world(
        Path(tmp), "--pcap", "none", "--log-level", "info",
        "--forward", "tcp:5000=127.0.0.1:5001", "--forward", "tcp:5002=127.0.0.1:5003",
        "--socks", "127.0.0.1:1080", tag="bf",
    ) as world:  # fmt: skip
        ns = world.ns
        servers = kernel_servers(
            ns, ("127.0.0.1", 5001, "discard"), ("127.0.0.1", 5003, "source"),
            (HOST_IP, 6000, "accept"),
        )  # fmt: skip
        try:
            forward_rows(ns, mb, connects)
        finally:
            end_servers(servers)


def forward_rows(ns: str, mb: int, connects: int) -> None:
    rows = []
    for _ in range(2):  # alternate so drift hits both
        rows.append(("in: discard (stack)", send_mb(ns, (STACK_IP, 9), mb)))
        rows.append(("in: forward -> kernel sink", send_mb(ns, (STACK_IP, 5000), mb)))
        rows.append(("out: chargen (stack)", recv_mb(ns, (STACK_IP, 19), mb)))
        rows.append(("out: forward <- kernel source", recv_mb(ns, (STACK_IP, 5002), mb)))
    best: dict[str, float] = {}
    for name, rate in rows:
        best[name] = max(best.get(name, 0.0), rate)
    for name, rate in best.items():
        print(f"{name:34s} {rate:8.1f} MiB/s")
    ratio_in = best["in: forward -> kernel sink"] / best["in: discard (stack)"]
    ratio_out = best["out: forward <- kernel source"] / best["out: chargen (stack)"]
    print(f"forward/discard ratio  {ratio_in:.2f}")
    print(f"forward/chargen ratio  {ratio_out:.2f}")
    start = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: socks_connect(ns, (HOST_IP, 6000)), range(connects)))
    took = time.monotonic() - start
    rate = connects / took
    print(f"SOCKS CONNECT setups     {rate:8.0f} /s ({connects} in {took:.2f}s, 8 clients)")


def bench_aio(mb: int) -> None:
    ns = new_netns_name("ba")
    netns_add(ns)
    proc = None
    try:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, str(ROOT / "examples" / "aio_echo.py")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"READY"
        deadline = time.monotonic() + 15
        while HOST_IP not in subprocess.run(["ip", "-n", ns, "-o", "addr"], capture_output=True,
                                            text=True).stdout:  # fmt: skip
            assert time.monotonic() < deadline
            time.sleep(0.05)
        best = {"callback echo (api.tcp)": 0.0, "asyncio echo (netstack.aio)": 0.0}
        for _ in range(2):
            best["callback echo (api.tcp)"] = max(
                best["callback echo (api.tcp)"], echo_mb(ns, (STACK_IP, 7), mb)
            )
            best["asyncio echo (netstack.aio)"] = max(
                best["asyncio echo (netstack.aio)"], echo_mb(ns, (STACK_IP, 7007), mb)
            )
        for name, rate in best.items():
            print(f"{name:34s} {rate:8.1f} MiB/s")
        ratio = best["asyncio echo (netstack.aio)"] / best["callback echo (api.tcp)"]
        print(f"asyncio/callback ratio {ratio:.2f}")
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        netns_del(ns)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=64)
    parser.add_argument("--connects", type=int, default=400)
    args = parser.parse_args()
    bench_forward_and_socks(min(args.mb, 1024), min(args.connects, 10000))
    bench_aio(min(args.mb, 1024))


if __name__ == "__main__":
    main()
