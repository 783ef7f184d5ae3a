"""Life as a service, without systemd or devices: the sd_notify protocol over a test socket,
the loop-driven heartbeat, the graceful-shutdown sequence with fake closers on a fake clock,
SIGHUP reloads, the loop's signal hook, journald-friendly logging and rate-limited warnings."""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from netstack.config import build_config, load_toml
from netstack.counters import Counters
from netstack.drops import Drop
from netstack.io.link import LinkTxError
from netstack.io.loop import Loop
from netstack.logsetup import (
    JournalFormatter,
    RateLimitedLog,
    is_journal_stream,
    setup_logging,
)
from netstack.notify import Heartbeat, Notifier, socket_address, watchdog_interval
from netstack.pcap import read_pcap
from netstack.runtime import GracefulShutdown, Stack


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Manager:
    """The service manager's end: an AF_UNIX datagram socket collecting notifications."""

    def __init__(self, path: Path | None = None, abstract: str | None = None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract is not None:
            self.sock.bind("\0" + abstract)
            self.env = {"NOTIFY_SOCKET": "@" + abstract}
        else:
            assert path is not None
            self.sock.bind(str(path))
            self.env = {"NOTIFY_SOCKET": str(path)}
        self.sock.setblocking(False)

    def messages(self) -> list[str]:
        out = []
        while True:
            try:
                out.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return out

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[Manager]:
    m = Manager(tmp_path / "notify.sock")
    yield m
    m.close()


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


# -- the protocol -------------------------------------------------------------------------------
def test_socket_address_forms() -> None:
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@abstract/name") == "\0abstract/name"
    assert socket_address("") is None
    assert socket_address("@") is None
    assert socket_address("relative/path") is None


@pytest.mark.parametrize(
    ("env", "pid", "interval"),
    [
        ({"WATCHDOG_USEC": "1000000"}, 42, 0.5),
        ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "42"}, 42, 5.0),
        ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "43"}, 42, None),  # someone else's
        ({"WATCHDOG_USEC": "0"}, 42, None),
        ({"WATCHDOG_USEC": "soon"}, 42, None),
        ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "x"}, 42, None),
        ({}, 42, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec(env, pid, interval) -> None:
    assert watchdog_interval(env, pid) == interval


def test_no_notify_socket_is_a_no_op() -> None:
    notifier = Notifier({"WATCHDOG_USEC": "1000000"})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None  # nobody to ping
    assert not notifier.ready("x") and not notifier.watchdog() and not notifier.stopping()
    notifier.close()


def test_messages_reach_a_path_socket(manager: Manager) -> None:
    notifier = Notifier({**manager.env, "WATCHDOG_USEC": "2000000"})
    assert notifier.enabled and notifier.watchdog_interval == 1.0
    assert notifier.ready("up: 10.0.0.2\non tap0")
    assert notifier.watchdog()
    assert notifier.status("busy")
    assert notifier.reloading(123)
    assert notifier.stopping("bye")
    assert manager.messages() == [
        "READY=1\nSTATUS=up: 10.0.0.2 on tap0",  # STATUS is kept to one line
        "WATCHDOG=1",
        "STATUS=busy",
        "RELOADING=1\nMONOTONIC_USEC=123",
        "STOPPING=1\nSTATUS=bye",
    ]
    assert notifier.sent == 5
    notifier.close()


def test_messages_reach_an_abstract_socket() -> None:
    manager = Manager(abstract=f"netstack-test-{os.getpid()}-{time.monotonic_ns()}")
    try:
        notifier = Notifier(manager.env)
        assert notifier.ready()
        assert manager.messages() == ["READY=1"]
        notifier.close()
    finally:
        manager.close()


def test_a_vanished_manager_does_not_raise(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert notifier.enabled
    assert not notifier.watchdog()
    assert notifier.failed == 1
    notifier.close()


# -- the heartbeat --------------------------------------------------------------------------------
def test_heartbeat_pings_from_loop_timers(manager: Manager) -> None:
    clock = FakeClock()
    with Loop(Counters(), clock=clock) as loop:
        notifier = Notifier({**manager.env, "WATCHDOG_USEC": "1000000"})
        beat = Heartbeat(notifier, loop, lambda now: f"at {now:.1f}", status_interval=2.0)
        beat.start(clock.now)
        assert manager.messages() == ["WATCHDOG=1"]  # the first ping goes out at once
        seen: list[tuple[float, str]] = []
        for _ in range(50):  # 5 seconds of fake time in 0.1 s steps
            clock.now = round(clock.now + 0.1, 6)
            loop.run_once(timeout=0)
            seen += [(clock.now, m) for m in manager.messages()]
        pings = [t for t, m in seen if m == "WATCHDOG=1"]
        assert pings == pytest.approx([100.5, 101.0, 101.5, 102.0, 102.5, 103.0, 103.5, 104.0,
                                       104.5, 105.0])  # fmt: skip
        assert [m for _, m in seen if m.startswith("STATUS=")] == ["STATUS=at 102.0",
                                                                  "STATUS=at 104.0"]  # fmt: skip
        beat.stop()
        clock.now += 10
        loop.run_once(timeout=0)
        assert manager.messages() == []  # a stopped heartbeat (or loop) sends nothing
        notifier.close()


def test_heartbeat_without_manager_schedules_nothing() -> None:
    with Loop(Counters(), clock=FakeClock()) as loop:
        Heartbeat(Notifier({}), loop, lambda now: "x").start(100.0)
        assert len(loop.timers) == 0


# -- the shutdown sequence (pure) ------------------------------------------------------------------
class FakeCloser:
    """Stands in for the TCP engine: emits a FIN-ish frame on begin, an RST-ish one on abort."""

    def __init__(self, tx: list | None = None, name: bytes = b"c") -> None:
        self.tx = tx if tx is not None else []
        self.name = name
        self.quiet = False
        self.events: list[tuple[str, float]] = []

    def begin_shutdown(self, now: float) -> None:
        self.events.append(("begin", now))
        self.tx.append((b"FIN:" + self.name + b"\0" * 56,))

    def is_quiet(self) -> bool:
        return self.quiet

    def abort(self, now: float) -> None:
        self.events.append(("abort", now))
        self.tx.append((b"RST:" + self.name + b"\0" * 56,))


def test_shutdown_without_closers_is_immediate() -> None:
    shutdown = GracefulShutdown([], timeout=5)
    shutdown.begin(10.0)
    assert shutdown.done and shutdown.aborted == []
    assert shutdown.next_deadline() is None


def test_shutdown_waits_for_quiet_closers() -> None:
    a, b = FakeCloser(), FakeCloser()
    shutdown = GracefulShutdown([a, b], timeout=5)
    assert shutdown.next_deadline() is None and not shutdown.poll(10.0)  # not started
    shutdown.begin(10.0)
    assert a.events == b.events == [("begin", 10.0)]
    assert not shutdown.done
    assert 10.0 < shutdown.next_deadline() <= 15.0  # asks again before the deadline
    a.quiet = True
    assert not shutdown.poll(12.0)
    b.quiet = True
    assert shutdown.poll(12.5)
    assert shutdown.aborted == [] and a.events == b.events == [("begin", 10.0)]
    assert shutdown.next_deadline() is None
    shutdown.begin(13.0)  # idempotent
    assert a.events == [("begin", 10.0)]


def test_shutdown_aborts_loud_closers_at_the_deadline_not_before() -> None:
    quiet, loud = FakeCloser(), FakeCloser()
    shutdown = GracefulShutdown([quiet, loud], timeout=5)
    shutdown.begin(10.0)
    quiet.quiet = True
    now = 10.0
    while (deadline := shutdown.next_deadline()) is not None and deadline < 15.0:
        now = deadline
        assert not shutdown.poll(now)
        assert loud.events == [("begin", 10.0)]
    assert shutdown.next_deadline() == 15.0
    assert shutdown.poll(15.0)
    assert loud.events == [("begin", 10.0), ("abort", 15.0)]
    assert quiet.events == [("begin", 10.0)]
    assert shutdown.aborted == [loud]


def test_abort_now_skips_the_grace_period() -> None:
    loud = FakeCloser()
    shutdown = GracefulShutdown([loud], timeout=30)
    shutdown.begin(10.0)
    assert shutdown.abort_now(11.0)
    assert loud.events == [("begin", 10.0), ("abort", 11.0)]


# -- the stack's shutdown, reload and notifications ------------------------------------------------
class FakeLink:
    """A Link over a socketpair: frames written by the stack are kept in `sent`."""

    def __init__(self) -> None:
        self.sock, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.name, self.mac, self.mtu, self.fd = "fake0", b"\x02" * 6, 1500, self.sock.fileno()
        self.rx_oversize = 0
        self.max_batch = 8
        self.sent: list[bytes] = []
        self.closed = False

    def receive_batch(self) -> list[memoryview]:
        frames = []
        while len(frames) < self.max_batch:
            try:
                frames.append(memoryview(self.sock.recv(2048)))
            except BlockingIOError:
                break
        return frames

    def send_batch(self, frames) -> int:
        self.sent += [b"".join(frame) for frame in frames]
        return len(frames)

    def close(self) -> None:
        self.closed = True
        self.sock.close()
        self.peer.close()

    def marked(self) -> list[bytes]:
        return [f[:5] for f in self.sent if f[:4] in (b"FIN:", b"RST:")]


def _stack(tmp_path: Path, manager: Manager, clock=None, **settings) -> tuple[Stack, FakeLink]:
    config = build_config({"pcap": str(tmp_path / "s.pcap"), "metrics_address": "none", **settings})
    link = FakeLink()
    notifier = Notifier({**manager.env, "WATCHDOG_USEC": "1000000"})
    return Stack(config, link, clock=clock, notifier=notifier), link


def test_sigterm_sequence_on_a_fake_clock(tmp_path: Path, manager: Manager) -> None:
    clock = FakeClock(100.0)
    stack, link = _stack(tmp_path, manager, clock, shutdown_timeout=2)
    closer = FakeCloser(stack.host.tx)
    stack.add_closer(closer)
    try:
        stack.request_shutdown(clock.now)  # what the SIGTERM handler does
        assert any(m.startswith("STOPPING=1\nSTATUS=stopping: ") for m in manager.messages())
        stack.loop.run_once(timeout=0)
        assert link.marked() == [b"FIN:c"]  # FINs go out at once
        for step in range(1, 20):  # the loop keeps running through the grace period
            clock.now = 100.0 + step * 0.1
            stack.loop.run_once(timeout=0)
            assert closer.events == [("begin", 100.0)] and not stack.loop._stop_requested
        clock.now = 102.0
        stack.loop.run_once(timeout=0)
        assert closer.events == [("begin", 100.0), ("abort", 102.0)]
        assert link.marked() == [b"FIN:c", b"RST:c"]  # the RST made it out before the stop
        assert stack.loop._stop_requested
    finally:
        stack.close()
    _, records = read_pcap(tmp_path / "s.pcap")  # flushed on close
    assert [r[2][:5] for r in records if r[2][:4] in (b"FIN:", b"RST:")] == [b"FIN:c", b"RST:c"]


def test_quiet_closers_end_the_grace_period_early(tmp_path: Path, manager: Manager) -> None:
    clock = FakeClock(100.0)
    stack, link = _stack(tmp_path, manager, clock, shutdown_timeout=5)
    closer = FakeCloser(stack.host.tx)
    stack.add_closer(closer)
    try:
        stack.request_shutdown(clock.now)
        clock.now = 100.3
        stack.loop.run_once(timeout=0)
        assert not stack.loop._stop_requested
        closer.quiet = True  # its peers acknowledged the FINs
        clock.now = 100.4
        stack.loop.run_once(timeout=0)
        assert stack.loop._stop_requested
        assert closer.events == [("begin", 100.0)]
        assert link.marked() == [b"FIN:c"]
    finally:
        stack.close()


def _run_with_signals(stack: Stack, *signals_at: tuple[float, int], limit: float = 10.0) -> float:
    """stack.run() with real signals sent to ourselves at the given times; returns seconds."""
    for delay, signum in signals_at:
        stack.loop.call_later(delay, lambda now, s=signum: os.kill(os.getpid(), s))
    stack.loop.call_later(limit, lambda now: stack.loop.stop())
    start = time.monotonic()
    stack.run()
    return time.monotonic() - start


def test_real_sigterm_runs_the_sequence_and_restores_handlers(
    tmp_path: Path, manager: Manager
) -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    stack, link = _stack(tmp_path, manager, shutdown_timeout=1)
    closer = FakeCloser(stack.host.tx)
    stack.add_closer(closer)
    took = _run_with_signals(stack, (0.1, signal.SIGTERM))
    assert 1.0 <= took < 5.0  # the grace period, then the abort
    assert [e for e, _ in closer.events] == ["begin", "abort"]
    begin, abort = (t for _, t in closer.events)
    assert abort - begin == pytest.approx(1.0, abs=0.1)
    messages = manager.messages()
    assert messages[0].startswith("READY=1\nSTATUS=up: 192.0.2.2 on fake0, 0 connections")
    assert sum(m == "WATCHDOG=1" for m in messages) >= 2  # 0.5 s pings while draining too
    assert any(m.startswith("STOPPING=1") for m in messages)
    assert link.closed
    _, records = read_pcap(tmp_path / "s.pcap")
    assert [r[2][:5] for r in records if r[2][:4] in (b"FIN:", b"RST:")] == [b"FIN:c", b"RST:c"]
    assert {s: signal.getsignal(s) for s in before} == before


def test_second_sigterm_resets_at_once(tmp_path: Path, manager: Manager) -> None:
    stack, _ = _stack(tmp_path, manager, shutdown_timeout=30)
    closer = FakeCloser(stack.host.tx)
    stack.add_closer(closer)
    took = _run_with_signals(stack, (0.05, signal.SIGTERM), (0.2, signal.SIGTERM))
    assert took < 5.0
    assert [e for e, _ in closer.events] == ["begin", "abort"]


def test_sigint_is_graceful_too(tmp_path: Path, manager: Manager) -> None:
    stack, _ = _stack(tmp_path, manager)
    took = _run_with_signals(stack, (0.05, signal.SIGINT))
    assert took < 5.0
    assert any(m.startswith("STOPPING=1") for m in manager.messages())


def test_sighup_reloads_live_settings_and_names_the_rest(
    tmp_path: Path, manager: Manager, caplog: pytest.LogCaptureFixture, restore_logging
) -> None:
    path = tmp_path / "n.toml"
    path.write_text(
        f'pcap = "{tmp_path / "a.pcap"}"\nlog_level = "info"\nmetrics_address = "none"\n'
    )
    config = build_config(load_toml(path))
    link = FakeLink()
    stack = Stack(
        config,
        link,
        notifier=Notifier(manager.env),
        reload=lambda: build_config(load_toml(path)),
    )
    logging.getLogger().setLevel(logging.INFO)

    def edit(now: float) -> None:
        path.write_text(
            f'pcap = "{tmp_path / "b.pcap"}"\nlog_level = "debug"\nmetrics_address = "none"\n'
            'address = "192.0.2.9/24"\n'
        )
        os.kill(os.getpid(), signal.SIGHUP)

    stack.loop.call_later(0.05, edit)
    # A frame to capture after the reload, then stop.
    stack.loop.call_later(0.3, lambda now: stack.host.tx.append((b"AFTER" + b"\0" * 55,)))
    with caplog.at_level(logging.INFO, logger="netstack"):
        _run_with_signals(stack, (0.5, signal.SIGTERM))
    assert logging.getLogger().level == logging.DEBUG
    assert stack.config.log_level == "debug"
    assert stack.config.address == config.address  # needs a restart: kept
    text = caplog.text
    assert "address changed (192.0.2.2/24 -> 192.0.2.9/24), needs a restart" in text
    assert "log_level changed (info -> debug), applied" in text
    assert "pcap changed" in text
    _, after = read_pcap(tmp_path / "b.pcap")
    assert any(r[2].startswith(b"AFTER") for r in after)
    _, before = read_pcap(tmp_path / "a.pcap")
    assert not any(r[2].startswith(b"AFTER") for r in before)
    messages = manager.messages()
    reload_at = next(i for i, m in enumerate(messages) if m.startswith("RELOADING=1"))
    assert messages[reload_at + 1].startswith("READY=1")


def test_a_bad_reload_keeps_the_running_settings(
    tmp_path: Path, manager: Manager, caplog: pytest.LogCaptureFixture
) -> None:
    stack, _ = _stack(tmp_path, manager)
    path = tmp_path / "bad.toml"
    path.write_text("bogus = 1\n")
    stack.reload_config = lambda: build_config(load_toml(path))
    running = stack.config
    try:
        with caplog.at_level(logging.INFO, logger="netstack"):
            stack._on_reload_signal(signal.SIGHUP, stack.loop.now())
    finally:
        stack.close()
    assert stack.config is running
    assert "reload failed, running settings kept" in caplog.text and "'bogus'" in caplog.text
    assert [m.split("\n")[0] for m in manager.messages()] == ["RELOADING=1", "READY=1"]


def test_apply_config_turns_pcap_off_and_reports_restart_keys(
    tmp_path: Path, manager: Manager
) -> None:
    stack, _ = _stack(tmp_path, manager)
    try:
        assert stack.pcap is not None
        assert stack._capture in stack.loop.frame_observers
        new = dataclasses.replace(stack.config, pcap=None, interface="tap9", shutdown_timeout=9)
        assert stack.apply_config(new) == ["interface"]
        assert stack.pcap is None and stack._capture not in stack.loop.frame_observers
        assert stack.shutdown.timeout == 9
        assert stack.config.interface == "tap0"
    finally:
        stack.close()


# -- the loop's signal hook ------------------------------------------------------------------------
def test_loop_signal_handlers_run_inside_a_turn() -> None:
    calls: list[tuple[int, float]] = []
    with Loop(Counters()) as loop:
        loop.signal_handlers[signal.SIGUSR1] = lambda s, now: calls.append((s, now))
        loop.signal_handlers[signal.SIGTERM] = lambda s, now: (calls.append((s, now)), loop.stop())
        loop.call_later(0.02, lambda now: os.kill(os.getpid(), signal.SIGUSR1))
        loop.call_later(0.1, lambda now: os.kill(os.getpid(), signal.SIGTERM))
        loop.call_later(5.0, lambda now: pytest.fail("SIGTERM handler did not stop the loop"))
        before = signal.getsignal(signal.SIGUSR1)
        loop.run()
        assert signal.getsignal(signal.SIGUSR1) == before
    assert [s for s, _ in calls] == [signal.SIGUSR1, signal.SIGTERM]
    assert all(isinstance(now, float) for _, now in calls)


# -- logging --------------------------------------------------------------------------------------
def test_journal_stream_is_recognised_by_device_and_inode(tmp_path: Path) -> None:
    with open(tmp_path / "stream", "w") as stream:
        st = os.fstat(stream.fileno())
        assert is_journal_stream(stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert not is_journal_stream(stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
        assert not is_journal_stream(stream, {"JOURNAL_STREAM": "junk"})
        assert not is_journal_stream(stream, {})
    assert not is_journal_stream(io.StringIO(), {"JOURNAL_STREAM": "1:2"})


def test_journal_lines_carry_priorities_and_no_timestamps(tmp_path: Path, restore_logging) -> None:
    with open(tmp_path / "journal", "w+") as stream:
        st = os.fstat(stream.fileno())
        setup_logging("info", stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        log = logging.getLogger("netstack.test")
        log.debug("hidden")
        log.info("hello")
        log.warning("careful")
        log.error("broken")
        stream.seek(0)
        lines = stream.read().splitlines()
    assert lines == [
        "<6>netstack.test: hello",
        "<4>netstack.test: careful",
        "<3>netstack.test: broken",
    ]


def test_terminal_lines_have_timestamps_and_level_names(restore_logging) -> None:
    stream = io.StringIO()
    setup_logging("warning", stream, {})
    logging.getLogger("netstack.test").warning("careful")
    logging.getLogger("netstack.test").info("hidden")
    (line,) = stream.getvalue().splitlines()
    assert line.endswith(" WARNING netstack.test: careful")
    assert line[:4].isdigit()  # 2026-...


def test_tracebacks_keep_their_priority() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    lines = JournalFormatter().format(record).splitlines()
    assert len(lines) > 2 and all(line.startswith("<3>") for line in lines)


def test_rate_limited_log_counts_what_it_holds_back(caplog: pytest.LogCaptureFixture) -> None:
    limited = RateLimitedLog(logging.getLogger("netstack.test"), rate=1.0, burst=3)
    with caplog.at_level(logging.WARNING, logger="netstack.test"):
        sent = [limited.warning(10.0, "bad frame %d", i) for i in range(100)]
        assert sent.count(True) == 3
        assert limited.warning(11.0, "bad frame %d", 100)  # one token a second later
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["bad frame 0", "bad frame 1", "bad frame 2",
                        "bad frame 100 (97 similar messages suppressed)"]  # fmt: skip


def test_loop_tx_warnings_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    class RefusingLink(FakeLink):
        def send_batch(self, frames) -> int:
            raise LinkTxError("refused", 22, 0)

    clock = FakeClock()
    link = RefusingLink()
    with Loop(Counters(), clock=clock) as loop, caplog.at_level(logging.WARNING):
        queue = loop.add_link(link, lambda frames, now: None)
        queue.extend((b"x" * 60,) for _ in range(1000))
        loop.run_once(timeout=0)
        assert loop.counters.drops[Drop.LINK_TX_ERROR] == 1000
    link.close()
    warnings = [r for r in caplog.records if "frame dropped" in r.getMessage()]
    assert 1 <= len(warnings) <= 5
