"""`netstack run` as systemd runs it, without systemd: the sd_notify protocol against a test
socket (READY=1 once it answers, WATCHDOG=1 at half of WATCHDOG_USEC, STATUS=, STOPPING=1 and
exit 0 on SIGTERM), SIGHUP reloads, and running with CAP_NET_ADMIN as its only capability."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from unittest import mock

import pytest

from tests.integration.world import (
    STACK_IP,
    World,
    can_run_world,
    netns_add,
    netns_del,
    new_netns_name,
)

pytestmark = pytest.mark.integration

ok, why = can_run_world()
if not ok:
    pytest.skip(why, allow_module_level=True)

REPO = Path(__file__).resolve().parents[2]
WATCHDOG_USEC = 1_000_000  # the stack should ping every 0.5 s
SLACK = 0.3  # a busy 2-core CI machine


class Manager(threading.Thread):
    """The service manager's end of NOTIFY_SOCKET: records (time, message); on READY=1 it
    immediately runs `on_ready` (which checks the stack answers at that very moment)."""

    def __init__(self, path: Path, on_ready) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self.on_ready = on_ready
        self.messages: list[tuple[float, str]] = []
        self.ready_result: object = None
        self.ready_event = threading.Event()
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            try:
                data = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), data))
            if data.startswith("READY=1") and not self.ready_event.is_set():
                self.ready_result = self.on_ready()
                self.ready_event.set()

    def close(self) -> None:
        self._done.set()
        self.join(5)
        self.sock.close()

    def times(self, prefix: str) -> list[float]:
        return [t for t, m in self.messages if m.startswith(prefix)]

    def lines(self, prefix: str) -> list[str]:
        return [line for _, m in self.messages for line in m.split("\n") if line.startswith(prefix)]


class ServiceWorld(World):
    """A World whose stack gets extra environment (NOTIFY_SOCKET, WATCHDOG_USEC)."""

    def __init__(self, workdir: Path, env: dict[str, str], extra_args: tuple[str, ...] = ()):
        super().__init__(workdir, extra_args, tag="svc")
        self.env = env

    def start(self, timeout: float = 20.0) -> None:
        with mock.patch.dict(os.environ, self.env):  # Popen inherits it
            super().start(timeout)


def _ping_once(world: World, count: int = 1, interval: float = 0.2) -> int:
    cmd = ["ping", "-n", "-q", "-c", str(count), "-i", str(interval), "-W", "1", world.stack_ip]
    return world.run(cmd, check=False, timeout=30).returncode


def _service(tmp_path: Path, extra_args: tuple[str, ...] = ()):
    world = ServiceWorld(
        tmp_path,
        {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": str(WATCHDOG_USEC)},
        extra_args,
    )

    def on_ready() -> tuple[int, str]:
        link = world.run(["ip", "-o", "-4", "addr", "show", "dev", "tap0"], check=False).stdout
        return _ping_once(world), link

    manager = Manager(tmp_path / "notify.sock", on_ready)
    manager.start()
    return world, manager


def test_notify_protocol_end_to_end(tmp_path: Path) -> None:
    world, manager = _service(tmp_path, ("--metrics-address", "none"))
    try:
        world.start()
        assert manager.ready_event.wait(20), world.log()
        ping_rc, link = manager.ready_result
        assert ping_rc == 0, f"READY=1 came before the stack answered:\n{world.log()}"
        assert "192.0.2.1/24" in link  # the kernel side was configured by then
        (ready_at,) = manager.times("READY=1")
        # Some traffic for STATUS= to report, then watch the heartbeat for a while.
        assert _ping_once(world, count=20, interval=0.05) == 0
        time.sleep(max(0.0, ready_at + 3.0 - time.monotonic()))
        assert world.proc is not None and world.proc.poll() is None
        term_at = time.monotonic()
        code = world.stop()
        time.sleep(0.2)  # let the last datagrams land
    finally:
        world.close()
        manager.close()
    assert code == 0, world.log()

    pings = [t for t in manager.times("WATCHDOG=1") if ready_at <= t < term_at]
    gaps = [b - a for a, b in zip([ready_at, *pings], pings, strict=False)]
    assert len(pings) >= 5, (pings, world.log())
    assert max(gaps) <= WATCHDOG_USEC / 2e6 + SLACK, gaps
    assert min(gaps[1:]) >= WATCHDOG_USEC / 2e6 - 0.1, gaps  # half the timeout, not a spin
    assert term_at - pings[-1] <= WATCHDOG_USEC / 2e6 + SLACK  # it kept going to the end

    statuses = manager.lines("STATUS=")
    assert statuses[0].startswith(f"STATUS=up: {STACK_IP} on tap0, 0 connections, rx ")
    periodic = [m for t, m in manager.messages if m.startswith("STATUS=") and t < term_at]
    assert periodic, manager.messages  # refreshed on its own, not only with READY
    rx_pps = int(periodic[0].split("rx ")[1].split()[0])
    assert rx_pps >= 5, periodic  # the 20 pings in the first second

    stopping = [t for t, m in manager.messages if m.startswith("STOPPING=1")]
    assert stopping and stopping[0] >= term_at, manager.messages
    assert "Traceback" not in world.log()


def test_sighup_reloads_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "netstack.toml"
    config.write_text('metrics_address = "none"\nshutdown_timeout = 5\n')
    world, manager = _service(tmp_path, ("--config", str(config)))
    try:
        world.start()
        assert manager.ready_event.wait(20), world.log()
        config.write_text(
            'metrics_address = "none"\nshutdown_timeout = 7\n[services]\nudp_echo = 17\n'
        )
        assert world.proc is not None
        world.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while len(manager.times("READY=1")) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        log = world.log()
        assert "shutdown_timeout changed (5 -> 7), applied" in log, log
        assert "services.udp_echo changed (7 -> 17), needs a restart" in log, log
        # Not applied: echo still answers on 7.
        sock = world.socket()
        sock.settimeout(3)
        sock.sendto(b"still here", (world.stack_ip, 7))
        assert sock.recv(100) == b"still here"
        sock.close()
        assert world.proc.poll() is None
        code = world.stop()
    finally:
        world.close()
        manager.close()
    assert code == 0, world.log()
    kinds = [m.split("\n")[0] for _, m in manager.messages if not m.startswith("WATCHDOG")]
    reload_at = kinds.index("RELOADING=1")
    assert kinds[reload_at + 1] == "READY=1", kinds


def _can_run_as_nobody() -> bool:
    probe = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         sys.executable, "-c", "import netstack.runtime"],
        cwd=REPO, capture_output=True, timeout=60,
    )  # fmt: skip
    return probe.returncode == 0


@pytest.mark.parametrize("user", ["root", "nobody"])
def test_runs_with_cap_net_admin_as_its_only_capability(tmp_path: Path, user: str) -> None:
    """What the unit grants: CAP_NET_ADMIN in every set, nothing else; no_new_privs; and with
    DynamicUser=, a uid that is not root (/dev/net/tun is 0666 on a VM, as udev makes it)."""
    if user == "nobody" and not _can_run_as_nobody():
        pytest.skip("this Python or checkout is not readable by uid 65534")
    caps = ["--inh-caps=-all,+net_admin", "--ambient-caps=-all,+net_admin",
            "--bounding-set=-all,+net_admin", "--no-new-privs"]  # fmt: skip
    ids = ["--reuid=65534", "--regid=65534", "--clear-groups"] if user == "nobody" else []
    stack = [sys.executable, "-m", "netstack", "run", "--address", "10.0.0.2/24",
             "--host-address", "10.0.0.1/24", "--metrics-address", "none"]  # fmt: skip
    inner = " ".join(["exec", "setpriv", *ids, *caps, *stack])
    if user == "nobody":  # a private /dev/net with a 0666 tun node, like udev's rule
        inner = (
            "mount -t tmpfs -o mode=755 none /dev/net && mknod -m 666 /dev/net/tun c 10 200 && "
            + inner
        )
    ns = new_netns_name("cap")
    netns_add(ns)
    log = tmp_path / "stack.log"
    proc = None
    try:
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, "unshare", "--mount", "--propagation", "private",
                 "sh", "-c", inner],
                stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
            )  # fmt: skip
        ping = ["ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "1", "10.0.0.2"]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if subprocess.run(ping, capture_output=True).returncode == 0:
                break
            time.sleep(0.1)  # no route yet fails at once: the stack is still starting
            if proc.poll() is not None:
                if user == "nobody" and "mknod" in log.read_text():
                    pytest.skip("cannot make a device node here")
                pytest.fail(f"stack exited ({proc.returncode}):\n{log.read_text()}")
        else:
            pytest.fail("no ping answer:\n" + log.read_text())
        status = Path(f"/proc/{proc.pid}/status").read_text()
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        for name in ("CapEff", "CapPrm", "CapBnd", "CapAmb"):
            assert int(fields[name], 16) == 1 << 12, (name, fields[name])  # CAP_NET_ADMIN
        assert fields["NoNewPrivs"].strip() == "1"
        assert fields["Uid"].split()[0] == ("65534" if user == "nobody" else "0")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0, log.read_text()
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        netns_del(ns)
