"""`netstack run` as systemd runs it, without systemd: the sd_notify protocol against a test
socket (READY=1 once it answers, WATCHDOG=1 at half of WATCHDOG_USEC, STATUS=, STOPPING=1 and
exit 0 on SIGTERM), SIGHUP reloads, and running with CAP_NET_ADMIN as its only capability."""

from __future__ import annotations

import os
import shutil
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
    stack = [sys.executable, "-m", "netstack", "run", "--address", "198.51.100.2/24",
             "--host-address", "198.51.100.1/24", "--metrics-address", "none"]  # fmt: skip
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
        ping = ["ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "1", "198.51.100.2"]
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


# -- the real unit under a real systemd ---------------------------------------------------------
# A throwaway container (systemd-nspawn --volatile=yes: the host's /usr, an empty /etc and /var,
# its own network namespace) boots systemd; the stack is installed the README's way (a venv at
# /opt/netstack, built from this checkout) and deploy/netstack.service runs with all its
# hardening: DynamicUser, one capability, the seccomp filter, IPAddressAllow, the watchdog.
SOURCE_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "build", "*.egg-info", "__pycache__", ".hypothesis", ".pytest_cache",
    ".ruff_cache", "*.so", "results",
)  # fmt: skip


class Container:
    def __init__(self, proc: subprocess.Popen, log: Path, etc: Path) -> None:
        self.proc, self.log, self.etc = proc, log, etc
        self.pid = 0

    def find_init(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
            for child in children.read_text().split() if children.exists() else []:
                comm = Path(f"/proc/{child}/comm")
                if comm.exists() and comm.read_text().strip() == "systemd":  # exec'd by now
                    self.pid = int(child)
                    return
            time.sleep(0.1)
        pytest.skip(f"systemd-nspawn did not start a container:\n{self.log.read_text()[-2000:]}")

    def run(self, *cmd: str, timeout: float = 60, check: bool = False):
        return subprocess.run(
            ["nsenter", "-t", str(self.pid), "-a", *cmd],
            capture_output=True, text=True, timeout=timeout, check=check,
        )  # fmt: skip

    def show(self, *props: str) -> dict[str, str]:
        args = [a for p in props for a in ("-p", p)]
        out = self.run("systemctl", "show", "netstack", *args).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, *args: str) -> str:
        return self.run("journalctl", "-u", "netstack", "-o", "cat", "--no-pager", *args).stdout


def _build_opt_venv(tmp: Path) -> Path:
    """pip install this checkout into a venv whose path is /opt/netstack (in a private mount
    namespace, so the host's /opt is untouched), as deploy/README.md does."""
    src, venv = tmp / "src", tmp / "opt-netstack"
    shutil.copytree(REPO, src, ignore=SOURCE_IGNORE)
    venv.mkdir()
    script = (
        f"mount -t tmpfs tmpfs /opt && mkdir /opt/netstack && mount --bind {venv} /opt/netstack"
        f" && /usr/bin/python3 -m venv /opt/netstack && /opt/netstack/bin/pip install -q {src}"
    )
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return venv


@pytest.fixture(scope="module")
def container(tmp_path_factory: pytest.TempPathFactory):
    if shutil.which("systemd-nspawn") is None or shutil.which("nsenter") is None:
        pytest.skip("systemd-nspawn (package systemd-container) is not installed")
    if not (Path("/usr/lib/systemd/systemd").exists() and Path("/bin").is_symlink()):
        pytest.skip("needs a merged-/usr systemd host to boot its /usr in a container")
    tmp = tmp_path_factory.mktemp("nspawn")
    venv = _build_opt_venv(tmp)
    etc = tmp / "etc-netstack"
    etc.mkdir()
    (etc / "netstack.toml").write_text((REPO / "deploy" / "netstack.toml").read_text())
    machine_id = tmp / "machine-id"  # not a first boot: no presets enable units behind our back
    machine_id.write_text(os.urandom(16).hex() + "\n")
    log = tmp / "nspawn.log"
    unit = REPO / "deploy" / "netstack.service"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["systemd-nspawn", "-D", "/", "--volatile=yes", "--boot", "--private-network",
             "--register=no", "--keep-unit", f"--machine=nst-{os.getpid()}", "--console=pipe",
             f"--bind-ro={venv}:/opt/netstack",
             f"--bind-ro={unit}:/etc/systemd/system/netstack.service",
             f"--bind={etc}:/etc/netstack", f"--bind-ro={machine_id}:/etc/machine-id"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    box = Container(proc, log, etc)
    try:
        box.find_init(30)
        deadline = time.monotonic() + 120
        while True:  # the manager's bus socket appears a moment after PID 1 starts
            booted = box.run("systemctl", "is-system-running", "--wait", timeout=120)
            if booted.stdout.strip() or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if booted.stdout.strip() not in ("running", "degraded"):
            why = f"{booted.stdout}{booted.stderr}\n{log.read_text()[-2000:]}"
            pytest.skip(f"the container did not boot: {why}")
        # A VM's udev makes /dev/net/tun 0666 (deploy/README.md, section 1); nspawn copies the
        # host's mode, which may be 0600. Set it in the container's own /dev only.
        box.run("chmod", "0666", "/dev/net/tun", check=True)
        yield box
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # nspawn powers the container off
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_unit_starts_ready_and_confined(container: Container) -> None:
    started = container.run("systemctl", "start", "netstack", timeout=60)
    assert started.returncode == 0, started.stderr + container.journal()
    # Type=notify: `systemctl start` returned after READY=1, so it answers now.
    assert container.run("ping", "-c", "1", "-W", "1", "10.0.0.2").returncode == 0
    props = container.show("StatusText", "MainPID", "UID", "WatchdogUSec", "ActiveState")
    assert props["ActiveState"] == "active"
    assert props["StatusText"].startswith("up: 10.0.0.2 on tap0, 0 connections, rx ")
    assert props["WatchdogUSec"] == "10s"
    assert props["UID"] not in ("0", "[not set]")  # DynamicUser=
    status = container.run("cat", f"/proc/{props['MainPID']}/status").stdout
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert int(fields["CapEff"], 16) == int(fields["CapBnd"], 16) == 1 << 12  # CAP_NET_ADMIN
    assert fields["NoNewPrivs"].strip() == "1"
    assert fields["Seccomp"].strip() == "2"  # SystemCallFilter= is in force
    metrics = container.run(
        "/opt/netstack/bin/python", "-c",
        "import urllib.request as u; print(u.urlopen('http://127.0.0.1:9464/metrics', timeout=5)"
        ".read().decode())",
    )  # fmt: skip
    assert "netstack_up 1.0" in metrics.stdout, metrics.stderr  # IPAddressAllow=localhost
    assert "Traceback" not in container.journal()


def test_unit_reload_applies_live_settings(container: Container) -> None:
    if container.show("ActiveState")["ActiveState"] != "active":
        container.run("systemctl", "start", "netstack", check=True)
    text = (REPO / "deploy" / "netstack.toml").read_text()
    text = text.replace('# pcap = "/var/log/netstack/', 'pcap = "/var/log/netstack/')
    text = text.replace('address = "10.0.0.2/24"', 'address = "10.0.0.3/24"')
    (container.etc / "netstack.toml").write_text(text)
    reloaded = container.run("systemctl", "reload", "netstack", timeout=60)
    assert reloaded.returncode == 0, reloaded.stderr
    assert container.run("ping", "-c", "2", "-W", "1", "10.0.0.2").returncode == 0
    assert "pcap changed (none -> /var/log/netstack/netstack.pcap), applied" in container.journal()
    # Priorities reach the journal: the restart-needing change is a warning.
    warnings = container.journal("-p", "warning")
    assert "address changed (10.0.0.2/24 -> 10.0.0.3/24), needs a restart" in warnings
    assert "pcap changed" not in warnings
    pcap = container.run("stat", "-c", "%s %a", "/var/log/private/netstack/netstack.pcap")
    size, mode = pcap.stdout.split()
    assert int(size) > 24 and mode == "600", pcap  # LogsDirectory=, UMask=0077
    (container.etc / "netstack.toml").write_text((REPO / "deploy" / "netstack.toml").read_text())


def test_unit_watchdog_restarts_a_stuck_loop(container: Container) -> None:
    if container.show("ActiveState")["ActiveState"] != "active":
        container.run("systemctl", "start", "netstack", check=True)
    before = container.show("MainPID", "NRestarts")
    container.run("kill", "-STOP", before["MainPID"], check=True)  # the loop stops turning
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = container.show("MainPID", "NRestarts", "ActiveState")
        if now["NRestarts"] != before["NRestarts"] and now["ActiveState"] == "active":
            break
        time.sleep(0.5)
    else:
        pytest.fail("no watchdog restart:\n" + container.journal())
    assert now["MainPID"] != before["MainPID"]
    assert container.run("ping", "-c", "1", "-W", "1", "10.0.0.2").returncode == 0


def test_unit_stop_is_graceful(container: Container) -> None:
    if container.show("ActiveState")["ActiveState"] != "active":
        container.run("systemctl", "start", "netstack", check=True)
    stopped = container.run("systemctl", "stop", "netstack", timeout=60)
    assert stopped.returncode == 0
    props = container.show("Result", "ExecMainStatus", "ActiveState")
    assert props == {"Result": "success", "ExecMainStatus": "0", "ActiveState": "inactive"}
    journal = container.journal("-n", "30")
    assert "SIGTERM received" in journal and "Deactivated successfully" in journal
