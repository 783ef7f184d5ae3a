"""The blocking socket facade (netstack/api/sockets.py) over two TCP engines joined in memory.

One real epoll Loop runs in a background thread and drives both engines; segments between them
go through an in-memory wire (a deadline source of the loop), so the facade is tested exactly as
it runs on a stack: commands through the queue + eventfd, events back through each socket's
queue. The server side is either a second facade or the built-in TCP services.
"""

from __future__ import annotations

import errno
import hashlib
import random
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from netstack.api.services import TcpChargen, TcpEcho
from netstack.api.sockets import BlockingStack, TcpSocket
from netstack.api.tcp import listen
from netstack.counters import Counters
from netstack.io.loop import Loop
from netstack.proto.ipv4 import Ipv4Config
from netstack.proto.pmtu import PmtuCache
from netstack.proto.tcp.config import TcpConfig
from netstack.proto.tcp.engine import TcpEngine
from netstack.wire import ipv4 as wipv4

A_IP, B_IP, NOBODY_IP = "192.0.2.1", "192.0.2.2", "192.0.2.99"


class WireIpv4:
    """What TcpEngine needs of Ipv4Engine; sent segments go on the in-memory wire."""

    def __init__(self, wire: MemoryWire, address: str) -> None:
        self.wire = wire
        self.config = Ipv4Config(address=wipv4.ip_from_str(address), prefix_len=24, mtu=1500)
        self.pmtu = PmtuCache()
        self.handler = None

    def register(self, protocol: int, handler) -> None:
        self.handler = handler

    def route(self, dst: int) -> int | None:
        return dst

    def send(self, dst: int, protocol: int, pieces, now: float, **kw) -> bool:
        self.wire.queue.append((self.config.address, dst, b"".join(bytes(p) for p in pieces)))
        return True


class MemoryWire:
    """Delivers every queued segment at the next loop turn; unknown destinations eat them."""

    def __init__(self, loop: Loop) -> None:
        self.queue: list[tuple[int, int, bytes]] = []
        self.ipv4: dict[int, WireIpv4] = {}
        self.engines: dict[int, TcpEngine] = {}
        self.delivered = 0
        loop.add_deadline_source(self.next_deadline, self.deliver)

    def add(self, address: str, config: TcpConfig | None = None, seed: int = 0) -> TcpEngine:
        ip = WireIpv4(self, address)
        engine = TcpEngine(ip, Counters(), random.Random(seed), config)  # type: ignore[arg-type]
        self.ipv4[ip.config.address] = ip
        self.engines[ip.config.address] = engine
        return engine

    def next_deadline(self) -> float | None:
        return 0.0 if self.queue else None

    def deliver(self, now: float) -> None:
        batch, self.queue = self.queue, []
        touched = set()
        for src, dst, data in batch:
            engine = self.engines.get(dst)
            if engine is None:
                continue
            header = wipv4.Ipv4Header(20, 0, 20 + len(data), 0, True, False, 0, 64, 6, 0, src, dst)
            view = memoryview(data)
            engine.receive(header, view, view, now)
            self.delivered += 1
            touched.add(dst)
        for dst in touched:
            self.engines[dst].flush(now)


class Pair:
    """Two engines (A client side, B server side), one loop thread, a facade on each."""

    def __init__(self, config: TcpConfig | None = None) -> None:
        self.loop = Loop()
        self.wire = MemoryWire(self.loop)
        self.tcp_a = self.wire.add(A_IP, config, seed=1)
        self.tcp_b = self.wire.add(B_IP, config, seed=2)
        for engine in (self.tcp_a, self.tcp_b):
            self.loop.add_deadline_source(engine.next_deadline, engine.poll)
        # services on B, set up before the loop runs (single-threaded until start())
        self.echo = listen(self.tcp_b, 7, TcpEcho)
        self.chargen = listen(self.tcp_b, 19, TcpChargen)
        self.a = BlockingStack(self.loop, self.tcp_a)
        self.b = BlockingStack(self.loop, self.tcp_b)  # attached: A's thread runs the loop
        self.a.start()

    def close(self) -> None:
        self.b.close()
        self.a.close()
        self.loop.close()


@pytest.fixture
def pair() -> Iterator[Pair]:
    p = Pair()
    try:
        yield p
    finally:
        p.close()


def recv_exactly(sock: TcpSocket, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        data = sock.recv(min(65536, n - got))
        if not data:
            break
        parts.append(data)
        got += len(data)
    return b"".join(parts)


def recv_all(sock: TcpSocket) -> bytes:
    parts = []
    while data := sock.recv(65536):
        parts.append(data)
    return b"".join(parts)


# -- connecting ----------------------------------------------------------------------------------
def test_echo_round_trip(pair: Pair) -> None:
    with pair.a.create_connection((B_IP, 7), timeout=5) as sock:
        sock.sendall(b"hello, world")
        assert recv_exactly(sock, 12) == b"hello, world"
        assert sock.getpeername() == (B_IP, 7)
        ip, port = sock.getsockname()
        assert ip == A_IP and 49152 <= port <= 65535


def test_echo_a_megabyte_with_a_reader_thread(pair: Pair) -> None:
    """Both directions flow at once: one thread writes, another reads the same socket."""
    data = random.Random(5).randbytes(1 << 20)
    got: list[bytes] = []
    with pair.a.create_connection((B_IP, 7), timeout=10) as sock:
        reader = threading.Thread(target=lambda: got.append(recv_all(sock)))
        reader.start()
        for i in range(0, len(data), 50_000):
            sock.sendall(data[i : i + 50_000])
        sock.shutdown(socket.SHUT_WR)
        reader.join(20)
        assert not reader.is_alive()
    assert hashlib.sha256(got[0]).digest() == hashlib.sha256(data).digest()


def test_many_connections_at_once(pair: Pair) -> None:
    socks = [pair.a.create_connection((B_IP, 7), timeout=5) for _ in range(40)]
    ports = {s.getsockname()[1] for s in socks}
    assert len(ports) == 40
    for i, s in enumerate(socks):
        s.sendall(f"conn {i}".encode())
    for i, s in enumerate(socks):
        assert recv_exactly(s, len(f"conn {i}")) == f"conn {i}".encode()
        s.close()


def test_refused(pair: Pair) -> None:
    sock = pair.a.socket()
    sock.settimeout(5)
    with pytest.raises(ConnectionRefusedError):
        sock.connect((B_IP, 1))
    assert sock.connect_ex((B_IP, 1)) == errno.EISCONN  # one connect per socket, like a socket
    s2 = pair.a.socket()
    assert s2.connect_ex((B_IP, 2)) == errno.ECONNREFUSED


def test_connect_timeout_to_a_silent_host(pair: Pair) -> None:
    sock = pair.a.socket()
    sock.settimeout(0.3)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        sock.connect((NOBODY_IP, 80))
    assert 0.25 <= time.monotonic() - started < 2.0
    assert issubclass(TimeoutError, OSError) and socket.timeout is TimeoutError


def test_bind_chooses_the_source_port(pair: Pair) -> None:
    with pair.a.create_connection((B_IP, 7), timeout=5, source_port=40000) as sock:
        assert sock.getsockname() == (A_IP, 40000)
    with pytest.raises(OSError) as err:
        pair.a.socket().bind(("203.0.113.1", 1))  # not ours (documentation range)
    assert err.value.errno == errno.EADDRNOTAVAIL


# -- listening -----------------------------------------------------------------------------------
def test_listen_accept_and_half_close(pair: Pair) -> None:
    srv = pair.b.socket()
    srv.bind(("", 8000))
    srv.listen(4)
    srv.settimeout(5)
    client = pair.a.create_connection((B_IP, 8000), timeout=5)
    conn, peer = srv.accept()
    conn.settimeout(5)
    assert peer == client.getsockname()
    assert conn.getpeername() == peer
    client.sendall(b"request")
    client.shutdown(socket.SHUT_WR)
    assert recv_all(conn) == b"request"  # EOF after the data
    conn.sendall(b"response after the peer's FIN")  # half-close: still writable
    conn.close()
    assert recv_all(client) == b"response after the peer's FIN"
    assert client.wait_closed(5) is None
    with pytest.raises(BrokenPipeError):
        client.sendall(b"more")
    client.close()
    srv.close()


def test_accept_timeout_and_a_late_connection(pair: Pair) -> None:
    srv = pair.b.socket()
    srv.bind((B_IP, 8001))
    srv.listen()
    srv.settimeout(0.2)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        srv.accept()
    assert time.monotonic() - started >= 0.19
    client = pair.a.create_connection((B_IP, 8001), timeout=5)
    srv.settimeout(5)
    conn, _ = srv.accept()  # the outstanding request from the timed-out accept is reused
    client.sendall(b"x")
    assert conn.recv(10) == b"x"
    for s in (client, conn, srv):
        s.close()


def test_listen_on_a_busy_port(pair: Pair) -> None:
    srv = pair.b.socket()
    srv.bind(("", 7))
    with pytest.raises(OSError) as err:
        srv.listen()
    assert err.value.errno == errno.EADDRINUSE


# -- timeouts, resets, broken pipes --------------------------------------------------------------
def test_recv_timeout(pair: Pair) -> None:
    with pair.a.create_connection((B_IP, 7), timeout=0.2) as sock:  # echo: silent until spoken to
        started = time.monotonic()
        with pytest.raises(socket.timeout):
            sock.recv(10)
        assert 0.19 <= time.monotonic() - started < 1.5
        sock.sendall(b"still usable")  # a timeout does not break the connection
        sock.settimeout(5)
        assert recv_exactly(sock, 12) == b"still usable"


def test_reset_by_peer_surfaces_after_the_data(pair: Pair) -> None:
    srv = pair.b.socket()
    srv.bind(("", 8002))
    srv.listen()
    client = pair.a.create_connection((B_IP, 8002), timeout=5)
    srv.settimeout(5)
    conn, _ = srv.accept()
    conn.sendall(b"last words")
    time.sleep(0.2)  # delivered before the RST
    conn.abort()
    assert recv_exactly(client, 10) == b"last words"
    with pytest.raises(ConnectionResetError):
        client.recv(10)
    with pytest.raises((ConnectionResetError, BrokenPipeError)):
        client.sendall(b"x")
    client.close()
    srv.close()


def test_closed_socket_and_shut_down_socket(pair: Pair) -> None:
    sock = pair.a.create_connection((B_IP, 7), timeout=5)
    sock.shutdown(socket.SHUT_WR)
    with pytest.raises(BrokenPipeError):
        sock.sendall(b"x")
    assert sock.recv(10) == b""  # echo closes after our FIN
    sock.close()
    with pytest.raises(OSError) as err:
        sock.recv(1)
    assert err.value.errno == errno.EBADF


# -- flow control --------------------------------------------------------------------------------
def test_sendall_blocks_while_the_send_buffer_is_full(pair: Pair) -> None:
    """The server does not read: the window closes, the client's send buffer fills and
    sendall blocks; once the server reads, everything arrives intact."""
    srv = pair.b.socket()
    srv.bind(("", 8003))
    srv.listen()
    srv.settimeout(5)
    client = pair.a.create_connection((B_IP, 8003), timeout=30)
    conn, _ = srv.accept()
    conn.settimeout(30)
    data = random.Random(9).randbytes(4 << 20)
    done = threading.Event()

    def write() -> None:
        client.sendall(data)
        client.shutdown(socket.SHUT_WR)
        done.set()

    writer = threading.Thread(target=write)
    writer.start()
    time.sleep(1.0)
    assert not done.is_set()  # blocked: 4 MiB is more than all the buffers on the way
    info = client.tcp_info()
    assert info["send_buffered"] >= TcpConfig().send_buffer // 2
    assert info["snd_wnd"] < 4 * 1460  # the server's window is (nearly) closed
    got = recv_all(conn)
    writer.join(30)
    assert done.is_set()
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    for s in (client, conn, srv):
        s.close()


def test_sendall_timeout_while_blocked(pair: Pair) -> None:
    srv = pair.b.socket()
    srv.bind(("", 8004))
    srv.listen()
    srv.settimeout(5)
    client = pair.a.create_connection((B_IP, 8004), timeout=0.5)
    conn, _ = srv.accept()
    with pytest.raises(TimeoutError):
        client.sendall(bytes(8 << 20))
    for s in (client, conn, srv):
        s.abort()


def test_chargen_pattern_and_receive_backpressure(pair: Pair) -> None:
    """Chargen writes as fast as it may; a reader that pauses makes the stack pause reading
    (bounded memory), and every byte still follows RFC 864's pattern."""
    pattern = TcpChargen.PATTERN
    with pair.a.create_connection((B_IP, 19), timeout=5) as sock:
        time.sleep(0.5)  # not reading: the facade's buffer fills, then the window closes
        info = sock.tcp_info()
        # bounded: the facade holds about recv_buffer bytes, the engine its receive buffer
        assert sock._endpoint is not None
        assert pair.a.recv_buffer <= sock._endpoint.unread < pair.a.recv_buffer + (64 << 10)
        assert info["rcv_wnd"] < 64 << 10  # the window closed
        got = recv_exactly(sock, 3_000_000)
    repeats = len(got) // len(pattern) + 1
    assert got == (pattern * repeats)[: len(got)]


def test_loop_thread_never_blocks_on_a_slow_reader(pair: Pair) -> None:
    """While one socket is stalled (nobody reads), another connection keeps working."""
    stalled = pair.a.create_connection((B_IP, 19), timeout=5)
    time.sleep(0.3)
    with pair.a.create_connection((B_IP, 7), timeout=5) as sock:
        sock.sendall(b"ping")
        assert recv_exactly(sock, 4) == b"ping"
    stalled.abort()


def test_stack_close_stops_the_loop_thread() -> None:
    p = Pair()
    thread = p.a._thread
    p.close()
    assert thread is not None and not thread.is_alive()
    with pytest.raises(OSError):
        p.a.socket().connect((B_IP, 7))


def test_accepted_socket_knows_its_own_address(pair: Pair) -> None:
    srv = pair.b.socket()
    srv.bind(("", 8005))
    srv.listen()
    srv.settimeout(5)
    client = pair.a.create_connection((B_IP, 8005), timeout=5)
    conn, _ = srv.accept()
    assert conn.getsockname() == (B_IP, 8005)
    for s in (client, conn, srv):
        s.close()


def test_a_waiting_thread_takes_over_when_the_pumping_one_gives_up(pair: Pair) -> None:
    """wait_closed(0.3) pulls events in one thread while recv() (no timeout) waits in another;
    when the first gives up, the second must go on reading events, not sleep forever."""
    srv = pair.b.socket()
    srv.bind(("", 8006))
    srv.listen()
    srv.settimeout(5)
    sock = pair.a.create_connection((B_IP, 8006), timeout=None)
    conn, _ = srv.accept()
    got: list[bytes] = []

    def give_up() -> None:
        with pytest.raises(TimeoutError):
            sock.wait_closed(0.3)

    pumping = threading.Thread(target=give_up)
    pumping.start()
    time.sleep(0.05)  # the wait_closed thread is the one pulling from the queue
    reader = threading.Thread(target=lambda: got.append(sock.recv(10)), daemon=True)
    reader.start()
    pumping.join(5)
    time.sleep(0.2)
    conn.sendall(b"late")  # arrives after the pumping thread has left; A's socket untouched
    reader.join(3)
    assert not reader.is_alive(), "recv() slept through the data"
    assert got == [b"late"]
    for s in (sock, conn, srv):
        s.close()


# -- per-connection buffer sizes (issue 11) -------------------------------------------------------
def test_a_blocking_sendall_blocks_at_the_send_buffer_size(pair: Pair) -> None:
    """SO_SNDBUF per connection: with a reader that never reads (its SO_RCVBUF small too, so
    its window closes), sendall() of 200 KB blocks once the 16 KB send buffer and what the
    receiver holds are full — with the stack's 512 KB default it returns at once."""
    srv = pair.b.socket()
    srv.bind(("", 7100))
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    srv.listen(4)
    assert srv.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 8192
    client = pair.a.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    client.settimeout(5)
    client.connect((B_IP, 7100))
    conn, _ = srv.accept()
    assert client.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 16384
    assert conn.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 8192  # from the listener
    client.settimeout(1.0)
    with pytest.raises(TimeoutError):
        client.sendall(b"x" * 200_000)
    info = client.tcp_info()
    assert info["send_buffered"] <= 16384
    other = pair.a.socket()
    other.settimeout(5)
    other.connect((B_IP, 7100))
    conn2, _ = srv.accept()
    # default send buffer (512 KB): all taken although nothing is read (a blocked sendall
    # would raise TimeoutError; no wall-clock bound, which a busy machine could break)
    other.sendall(b"y" * 200_000)
    assert other.tcp_info()["send_buffered"] > 16384
    for s in (client, other, conn, conn2, srv):
        s.abort() if s is not srv else s.close()


def test_msg_oob_sends_urgent_data_read_inline(pair: Pair) -> None:
    """send(MSG_OOB): the urgent pointer ends after those bytes (RFC 9293 3.8.5); the peer
    reads them inline (SO_OOBINLINE semantics) and learns where they end."""
    srv = pair.b.socket()
    srv.bind(("", 7101))
    srv.listen(4)
    client = pair.a.create_connection((B_IP, 7101), timeout=5)
    conn, _ = srv.accept()
    conn.settimeout(5)
    client.sendall(b"abc")
    client.send(b"!", socket.MSG_OOB)
    assert recv_exactly(conn, 4) == b"abc!"
    endpoint = conn._endpoint
    assert endpoint is not None and endpoint.transport is not None
    mark = pair.b.call(lambda: endpoint.transport.connection.urgent_mark())
    assert mark == 4
    with pytest.raises(OSError):
        client.send(b"x", socket.MSG_PEEK)
    client.close()
    conn.close()
    srv.close()


def test_submit_racing_close_never_writes_a_closed_eventfd(monkeypatch) -> None:
    """A submit whose 'closed?' check passed before close() ran must finish its eventfd write
    before close() releases the fd: otherwise it writes to a closed fd (EBADF, the flake seen
    under load) or to whatever file reused the number. The write is held open until close()
    has either finished (the bug) or is seen to wait (the fix)."""
    import netstack.api.sockets as sockets_mod

    loop = Loop()
    wire = MemoryWire(loop)
    stack = BlockingStack(loop, wire.add(A_IP)).start()
    real_write = sockets_mod.os.eventfd_write
    in_write, close_done = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def slow_write(fd: int, value: int) -> None:
        if threading.current_thread().name == "submitter":
            in_write.set()
            close_done.wait(1.0)  # the fix keeps close() waiting: this times out
        real_write(fd, value)

    def submitter() -> None:
        try:
            stack.submit(lambda now: None)
        except OSError as err:
            errors.append(err)

    monkeypatch.setattr(sockets_mod.os, "eventfd_write", slow_write)
    t = threading.Thread(target=submitter, name="submitter")
    t.start()
    assert in_write.wait(10)
    closer = threading.Thread(target=lambda: (stack.close(), close_done.set()))
    closer.start()
    t.join(10)
    closer.join(10)
    loop.close()
    assert not errors, errors
    with pytest.raises(OSError) as late:
        stack.submit(lambda now: None)
    assert late.value.errno == errno.ESHUTDOWN


def test_closing_an_attached_facade_while_the_loop_drains_its_commands(monkeypatch) -> None:
    """close() of a facade attached to a loop someone else runs queues a detach command and
    then wakes the loop. A wakeup already pending may let the loop run that command before
    close() writes the eventfd: the detach must not close the fd under the writer (it did,
    and close() raised EBADF in CI)."""
    from netstack.api import sockets as sockets_mod

    pair = Pair()
    b = pair.b
    drained = threading.Event()

    class DrainingQueue(type(b._commands)):  # the loop thread drains at once, as it may
        def put(self, item, *args, **kwargs) -> None:
            super().put(item, *args, **kwargs)
            if item.__name__ == "detach":
                drainer = threading.Thread(
                    target=lambda: (b._on_wakeup(time.monotonic()), drained.set())
                )
                drainer.start()
                drainer.join(0.5)  # the fix keeps the drainer waiting on the gate

    monkeypatch.setattr(b, "_commands", DrainingQueue())
    try:
        b.close()  # raised OSError EBADF before the fix
        assert drained.wait(10)  # the detach ran once close() let go of the gate
        with pytest.raises(OSError) as late:
            sockets_mod.os.fstat(b._efd)
        assert late.value.errno == errno.EBADF
    finally:
        pair.a.close()
        pair.loop.close()
