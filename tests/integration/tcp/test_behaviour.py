"""TCP behaviour seen from the kernel: many connections at once, half-close both ways, RST for
a closed port, negotiated options (ss -tin), a bounded SYN flood, and checksums by tshark."""

from __future__ import annotations

import contextlib
import hashlib
import random
import re
import selectors
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from netstack.proto.tcp.config import TcpConfig
from tests.integration.tcp.conftest import need_world
from tests.integration.tcp.kit import (
    CHARGEN,
    DISCARD,
    ECHO,
    MB,
    STACK_IP,
    bare_namespace,
    chargen_sha256,
    metrics,
    recv_until_eof,
    seeded_chunks,
    seeded_sha256,
    stackproc,
    stackproc_result,
    vm_rss_kb,
)
from tests.integration.world import World, have_tools, ns_socket, running_world

pytestmark = pytest.mark.integration

CONNECTIONS = 250


def kernel_socket(world: World, timeout: float = 10.0) -> socket.socket:
    sock = world.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    return sock


# -- many connections -------------------------------------------------------------------------
def test_250_concurrent_echo_connections(stack_world: World) -> None:
    """250 kernel sockets open at once (ss agrees), each echoing its own bytes back."""
    socks: list[socket.socket] = []
    messages: dict[socket.socket, bytes] = {}
    try:
        for i in range(CONNECTIONS):
            sock = kernel_socket(stack_world)
            socks.append(sock)
            sock.connect((STACK_IP, ECHO))
            messages[sock] = random.Random(i).randbytes(1000 + i * 7)
        established = stack_world.run(
            ["ss", "-Htn", "state", "established", "dst", STACK_IP]
        ).stdout.splitlines()
        assert len(established) >= CONNECTIONS
        for sock, message in messages.items():
            sock.sendall(message)
        got = {sock: bytearray() for sock in socks}
        sel = selectors.DefaultSelector()
        for sock in socks:
            sock.setblocking(False)
            sel.register(sock, selectors.EVENT_READ)
        deadline = time.monotonic() + 30
        pending = set(socks)
        while pending and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=1):
                sock = key.fileobj
                data = sock.recv(65536)  # type: ignore[union-attr]
                assert data, "echo closed early"
                got[sock] += data  # type: ignore[index]
                if len(got[sock]) >= len(messages[sock]):  # type: ignore[index]
                    sel.unregister(sock)
                    pending.discard(sock)  # type: ignore[arg-type]
        sel.close()
        assert not pending, f"{len(pending)} connections did not echo in 30 s"
        assert all(bytes(got[s]) == messages[s] for s in socks)
    finally:
        for sock in socks:
            sock.close()


# -- half-close -------------------------------------------------------------------------------
def test_kernel_half_closes_echo_keeps_sending(stack_world: World) -> None:
    """The kernel shuts down its write side first and keeps reading: echo sends back every
    byte after our FIN, then its own FIN (EOF, not a reset)."""
    data = random.Random(3).randbytes(2 * MB)
    sock = kernel_socket(stack_world)
    try:
        sock.connect((STACK_IP, ECHO))
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        digest = hashlib.sha256()
        n = recv_until_eof(sock, digest.update, time.monotonic() + 30)
    finally:
        sock.close()
    assert n == len(data)
    assert digest.digest() == hashlib.sha256(data).digest()


def test_kernel_half_closes_chargen_finishes_cleanly(stack_world: World) -> None:
    """FIN to chargen: it stops after what it already queued, then FIN; every byte valid."""
    sock = kernel_socket(stack_world)
    try:
        sock.connect((STACK_IP, CHARGEN))
        time.sleep(0.2)  # let it fill its send buffer
        sock.shutdown(socket.SHUT_WR)
        digest = hashlib.sha256()
        n = recv_until_eof(sock, digest.update, time.monotonic() + 30)
    finally:
        sock.close()
    assert n > 0
    assert digest.hexdigest() == chargen_sha256(n)


def test_discard_after_kernel_half_close(stack_world: World) -> None:
    """Discard closes once the kernel's FIN arrives: EOF to the kernel, no reset."""
    sock = kernel_socket(stack_world)
    try:
        sock.connect((STACK_IP, DISCARD))
        sock.sendall(bytes(100_000))
        sock.shutdown(socket.SHUT_WR)
        assert recv_until_eof(sock, lambda d: None, time.monotonic() + 10) == 0
    finally:
        sock.close()


def test_stack_half_closes_and_keeps_reading(tmp_path: Path) -> None:
    """The reverse: the stack (in-process, blocking facade) sends 5 MB and shuts down its write
    side; the kernel reads to EOF, then answers with 3 MB and closes; the stack reads it all."""
    need_world()
    sent, reply = 5 * MB, 3 * MB
    log = tmp_path / "stackproc.log"
    with bare_namespace("tcph") as ns:
        server = ns_socket(ns, socket.AF_INET, socket.SOCK_STREAM)
        server.bind(("0.0.0.0", 5002))
        server.listen(1)
        server.settimeout(30)
        outcome: dict[str, object] = {}

        def serve() -> None:
            try:
                conn, _ = server.accept()
                with conn:
                    digest = hashlib.sha256()
                    outcome["n"] = recv_until_eof(conn, digest.update, time.monotonic() + 30)
                    outcome["sha"] = digest.hexdigest()
                    for piece in seeded_chunks(11, reply):  # after the stack's FIN
                        conn.sendall(piece)
            except BaseException as err:
                outcome["error"] = err

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            proc = stackproc(
                ns, ["send", "--to", "192.0.2.1:5002", "--bytes", str(sent), "--seed", "5",
                     "--timeout", "40"], log,
            )  # fmt: skip
            result = stackproc_result(proc, 60, log)
            thread.join(10)
        finally:
            server.close()
    assert "error" not in outcome, outcome
    assert outcome["n"] == sent and outcome["sha"] == seeded_sha256(5, sent)
    assert result["received"] == reply
    assert result["sha256_received"] == seeded_sha256(11, reply)
    assert result["close_error"] is None


# -- flow control and resets ------------------------------------------------------------------
def connection_states(world: World) -> dict[str, float]:
    """The stack's netstack_tcp_connections gauge: {state: count} for non-zero states."""
    samples = metrics(world, ("netstack_tcp_connections{",))
    return {key.split('"')[1]: value for key, value in samples.items() if value}


def test_zero_window_then_resume(stack_world: World) -> None:
    """A kernel reader that stops for 2 s closes its window on chargen; the stack probes and
    goes on when it reads again: every byte after the stall still in pattern."""
    sock = kernel_socket(stack_world)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.connect((STACK_IP, CHARGEN))
        time.sleep(2.0)
        n, digest = 5 * MB, hashlib.sha256()
        got = 0
        while got < n:
            data = sock.recv(min(65536, n - got))
            assert data
            digest.update(data)
            got += len(data)
    finally:
        sock.close()
    assert digest.hexdigest() == chargen_sha256(n)


def test_kernel_resets_mid_transfer_and_nothing_leaks(stack_world: World) -> None:
    """Kernel peers that vanish with RST (SO_LINGER 0) while chargen streams and while echo is
    stalled by flow control: the stack forgets both connections at once."""
    linger0 = struct.pack("ii", 1, 0)
    chargen = kernel_socket(stack_world)
    echo = kernel_socket(stack_world, timeout=1.0)
    try:
        chargen.connect((STACK_IP, CHARGEN))
        chargen.recv(65536)
        echo.connect((STACK_IP, ECHO))
        with contextlib.suppress(TimeoutError):
            echo.sendall(bytes(8 * MB))  # nobody reads the echo: everything stalls
        assert connection_states(stack_world).get("established", 0) >= 2
    finally:
        for sock in (chargen, echo):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger0)
            sock.close()
    deadline = time.monotonic() + 2.0
    while (states := connection_states(stack_world)).keys() - {"listen", "time_wait"}:
        assert time.monotonic() < deadline, states
        time.sleep(0.05)


# -- resets and options -----------------------------------------------------------------------
def test_closed_port_is_refused(stack_world: World) -> None:
    sock = kernel_socket(stack_world, timeout=5)
    started = time.monotonic()
    try:
        with pytest.raises(ConnectionRefusedError):
            sock.connect((STACK_IP, 1))
    finally:
        sock.close()
    assert time.monotonic() - started < 1.0  # a RST, not a timeout


def expected_wscale(buffer: int) -> int:
    """RFC 7323 2.3: the smallest shift that lets the whole receive buffer be advertised."""
    shift = 0
    while (0xFFFF << shift) < buffer and shift < 14:
        shift += 1
    return shift


def test_ss_shows_wscale_sack_and_timestamps(stack_world: World) -> None:
    sock = kernel_socket(stack_world)
    try:
        sock.connect((STACK_IP, ECHO))
        sock.sendall(b"x" * 1000)
        assert len(sock.recv(2000)) > 0
        port = sock.getsockname()[1]
        # iproute2 6.x prints "ts" and "sack" only with -o (timer/option details)
        out = stack_world.run(["ss", "-tino", "src", f"192.0.2.1:{port}"]).stdout
        options = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)[5]
    finally:
        sock.close()
    assert options & 0b111 == 0b111, bin(options)  # TCPI_OPT_TIMESTAMPS | _SACK | _WSCALE
    info = " ".join(out.splitlines()[1:])
    match = re.search(r"wscale:(\d+),(\d+)", info)
    assert match, out
    # ss prints the peer's (the stack's) shift first, then the kernel's own
    assert int(match[1]) == expected_wscale(TcpConfig().receive_buffer), out
    assert re.search(r"\bsack\b", info), out
    assert re.search(r"\bts\b", info), out


# -- SYN flood --------------------------------------------------------------------------------
@pytest.fixture
def flood_world(tmp_path: Path) -> Iterator[World]:
    """Its own world: a flood leaves half-open state behind that should not leak into others."""
    need_world()
    if not have_tools("hping3"):
        pytest.skip("no hping3")
    with running_world(tmp_path, "--pcap", "none", "--log-level", "info", tag="tcpf") as w:
        yield w


def echo_once(world: World, timeout: float) -> float:
    """Connect, echo 64 bytes, close; the time it took."""
    started = time.monotonic()
    sock = kernel_socket(world, timeout=timeout)
    try:
        sock.connect((STACK_IP, ECHO))
        sock.sendall(b"z" * 64)
        got = b""
        while len(got) < 64:
            data = sock.recv(64)
            assert data
            got += data
    finally:
        sock.close()
    return time.monotonic() - started


@pytest.mark.parametrize("extra", [[], ["--rand-source"]], ids=["same-source", "rand-source"])
def test_syn_flood_then_a_connection_within_a_second(flood_world: World, extra: list[str]) -> None:
    """hping3 --flood for 5 s (bounded by `timeout`); then a normal connection works within a
    second and the stack's RSS grew by less than 50 MB."""
    pid = flood_world.proc.pid  # type: ignore[union-attr]  # ip netns exec execs python
    echo_once(flood_world, 5)
    rss_before = vm_rss_kb(pid)
    before = metrics(flood_world)
    flood_world.run(
        ["timeout", "5", "hping3", "-q", "-S", "-p", str(ECHO), "--flood", *extra, STACK_IP],
        timeout=30,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    took = echo_once(flood_world, 5)
    rss_after = vm_rss_kb(pid)
    after = metrics(flood_world)
    opens = after["netstack_tcp_passive_opens_total"] - before["netstack_tcp_passive_opens_total"]
    cookies = after.get("netstack_tcp_syn_cookies_sent_total", 0) - before.get(
        "netstack_tcp_syn_cookies_sent_total", 0
    )
    print(f"flood {extra}: SYN-state opens {opens:.0f}, cookies {cookies:.0f}, reconnect "
          f"{took * 1000:.1f} ms, RSS {rss_before} -> {rss_after} kB")  # fmt: skip
    assert opens + cookies > 1000, "the flood did not reach the stack"
    assert took < 1.0
    assert rss_after - rss_before < 50 * 1024


# -- checksums by tshark ----------------------------------------------------------------------
@pytest.mark.parametrize("offload", ["auto", "soft", "off"])
def test_tshark_finds_no_bad_checksums(tmp_path: Path, offload: str) -> None:
    """A capture (the stack's own --pcap) of transfers both ways through tshark with TCP
    checksum validation on: no frame flagged bad, and thousands checked good. With offloads
    the data travels in super-frames (both ways), recorded whole with completed checksums;
    "soft" (offload off, software GSO/GRO) records them likewise: as TCP handed them to the
    link writer, and as the link reader merged them."""
    need_world()
    if not have_tools("tshark"):
        pytest.skip("no tshark")
    modes = {"soft": ("--offload", "off"), "off": ("--offload", "off", "--gso", "off")}
    modes["off"] += ("--gro", "off")
    args = ("--log-level", "info", *modes.get(offload, ("--offload", offload)))
    with running_world(tmp_path, *args, tag="tcpc") as world:
        sock = kernel_socket(world)
        try:
            sock.connect((STACK_IP, ECHO))
            data = random.Random(1).randbytes(2 * MB)
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            digest = hashlib.sha256()
            recv_until_eof(sock, digest.update, time.monotonic() + 30)
            assert digest.digest() == hashlib.sha256(data).digest()
        finally:
            sock.close()
        world.stop()  # the capture is complete once the stack has exited
    pcap = world.pcap
    base = ["tshark", "-n", "-r", str(pcap), "-o", "tcp.check_checksum:TRUE"]
    base += ["-o", "ip.check_checksum:TRUE"]
    bad = subprocess.run(
        [*base, "-Y", "tcp.checksum.status == 0 || ip.checksum.status == 0"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    good = subprocess.run(
        [*base, "-Y", "tcp.checksum.status == 1", "-T", "fields", "-e", "frame.number"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout.split()  # fmt: skip
    assert bad == "", bad[:2000]
    if offload == "off":
        assert len(good) > 2000  # both directions' data segments were checked
        return
    assert len(good) > 100
    for direction in ("ip.src", "ip.dst"):  # super-frames both ways, read whole by tshark
        query = f"{direction} == {STACK_IP} && tcp.len > 1500 && tcp.checksum.status == 1"
        big = subprocess.run(
            [*base, "-Y", query, "-T", "fields", "-e", "tcp.len"],
            capture_output=True, text=True, timeout=120, check=True,
        ).stdout.split()  # fmt: skip
        if offload == "soft" and direction == "ip.dst":
            # Software GRO merges what one receive batch holds: how much depends on how far
            # the kernel got ahead of the stack's reads, not on the code. One merged
            # super-frame that tshark reads whole is the fact this needs.
            assert big, direction
            continue
        assert len(big) > 5 and sum(map(int, big)) > MB, (direction, big[:10])
