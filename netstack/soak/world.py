"""The soak's world: a fresh network namespace, the stack on tap0 in it, the impairment relay
with the kernel on peer0, and a real Prometheus scraping the stack.

The soak process itself moves into the namespace (setns on the main thread before any thread
starts), so every tool it spawns — hping3, nc, ping, Prometheus — and every socket it opens
lives there, and nothing can reach the machine's own network. The namespace is deleted when the
world closes, on failure too; each process is ended by the PID it was started with.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import IO, Any

CLONE_NEWNET = 0x40000000
HOST_IP = "192.0.2.1"
STACK_IP = "192.0.2.2"
STACK_IF = "tap0"
KERNEL_IF = "peer0"
METRICS_PORT = 9464
PROMETHEUS_PORT = 9090  # a fresh namespace: nothing else listens there
TOOLS = ("ip", "hping3", "nc", "ping", "prometheus")


class WorldError(RuntimeError):
    """The world could not be built; str() says which part and shows its log."""


def missing_tools(tools: tuple[str, ...] = TOOLS) -> list[str]:
    return [t for t in tools if shutil.which(t) is None]


def enter_new_netns(name: str) -> None:
    """Create namespace `name` and move this process (its main thread) into it."""
    if threading.active_count() != 1:
        raise WorldError("enter the namespace before starting threads")
    subprocess.run(["ip", "netns", "add", name], check=True)
    with open(f"/run/netns/{name}") as handle:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(handle.fileno(), CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            subprocess.run(["ip", "netns", "del", name], check=False)
            raise OSError(err, f"setns into {name} failed")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)


def delete_netns(name: str) -> None:
    subprocess.run(["ip", "netns", "del", name], check=False, stderr=subprocess.DEVNULL)


def stop_process(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 15.0):
    """Signal one process we started (by its PID), wait, kill if it lingers; its exit code."""
    if proc is None:
        return None
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


def read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def http_get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    """A GET inside the namespace (this process lives there); never uses a proxy."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


class Prometheus:
    """A real Prometheus in the namespace scraping the stack; queried over its HTTP API."""

    def __init__(self, workdir: Path, scrape_interval: float) -> None:
        self.base = f"http://127.0.0.1:{PROMETHEUS_PORT}"
        self.log_path = workdir / "prometheus.log"
        config = workdir / "prometheus.yml"
        interval = f"{max(1, round(scrape_interval))}s"
        config.write_text(
            "global:\n"
            f"  scrape_interval: {interval}\n"
            f"  evaluation_interval: {interval}\n"
            "scrape_configs:\n"
            "  - job_name: netstack\n"
            "    static_configs:\n"
            f"      - targets: ['127.0.0.1:{METRICS_PORT}']\n"
        )
        self._log: IO[bytes] = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'prometheus-data'}",
                f"--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"{self.base}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        status, body = http_get(url)
        reply = json.loads(body)
        if status != 200 or reply.get("status") != "success":
            raise WorldError(f"prometheus query {expr!r} failed: {body[:300]!r}")
        return reply["data"]["result"]

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise WorldError(f"prometheus exited:\n{read_text(self.log_path)}")
            with contextlib.suppress(OSError, ValueError, WorldError):
                if http_get(f"{self.base}/-/ready", timeout=2)[0] == 200 and self.query(
                    'netstack_up{job="netstack"} == 1'
                ):
                    return
            time.sleep(0.5)
        raise WorldError(f"prometheus saw no scrape in {timeout}s:\n{read_text(self.log_path)}")

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()


class SoakWorld:
    """Stack + relay + Prometheus inside this process's (fresh) namespace."""

    def __init__(self, workdir: Path, stack_args: tuple[str, ...], scrape_interval: float) -> None:
        self.workdir = workdir
        self.stack_args = stack_args
        self.scrape_interval = scrape_interval
        self.stack_log_path = workdir / "stack.log"
        self.relay_log_path = workdir / "relay.log"
        self.relay_stats_path = workdir / "relay-stats.json"
        self.relay_control_path = workdir / "relay-control.json"
        self.stack: subprocess.Popen[bytes] | None = None
        self.relay: subprocess.Popen[bytes] | None = None
        self.prometheus: Prometheus | None = None
        self.stack_exit: int | None = None
        self._logs: list[IO[bytes]] = []

    # -- start -------------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> None:
        self._start_stack(timeout)
        for key in ("all", "default"):  # no IPv6 chatter on either interface
            self._quiet(["sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1"])
        # tap0's kernel side is only a wire for the relay: no address, no ARP answers.
        subprocess.run(["ip", "link", "set", "dev", STACK_IF, "arp", "off"], check=True)
        self._start_relay(timeout)
        self.prometheus = Prometheus(self.workdir, self.scrape_interval)
        self.prometheus.wait_ready()

    @staticmethod
    def _quiet(cmd: list[str]) -> None:
        subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _open_log(self, path: Path) -> IO[bytes]:
        handle = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._logs.append(handle)
        return handle

    def _start_stack(self, timeout: float) -> None:
        cmd = [
            sys.executable, "-m", "netstack", "run",
            "--interface", STACK_IF,
            "--host-address", "none",
            *self.stack_args,
        ]  # fmt: skip
        log = self._open_log(self.stack_log_path)
        self.stack = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while "netstack up" not in self.stack_log():
            if self.stack.poll() is not None or time.monotonic() > deadline:
                raise WorldError(f"the stack did not come up:\n{self.stack_log()}")
            time.sleep(0.05)

    def _start_relay(self, timeout: float) -> None:
        self.set_impairment("none", "none")
        cmd = [
            sys.executable, "-m", "netstack.soak.relay",
            "--wire", STACK_IF, "--peer", KERNEL_IF,
            "--stats", str(self.relay_stats_path),
            "--control", str(self.relay_control_path),
        ]  # fmt: skip
        log = self._open_log(self.relay_log_path)
        self.relay = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            out = subprocess.run(
                ["ip", "-4", "-o", "addr", "show", "dev", KERNEL_IF],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if self.relay_stats_path.exists() and HOST_IP in out.stdout:
                return
            if self.relay.poll() is not None or time.monotonic() > deadline:
                raise WorldError(f"the relay did not come up:\n{read_text(self.relay_log_path)}")
            time.sleep(0.05)

    # -- during the run ----------------------------------------------------------------------
    def stack_log(self) -> str:
        return read_text(self.stack_log_path)

    def set_impairment(self, to_stack: str, to_kernel: str) -> None:
        """Write the relay's control file and tell it (SIGUSR1) to apply it now."""
        tmp = self.relay_control_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"to_stack": to_stack, "to_kernel": to_kernel}))
        os.replace(tmp, self.relay_control_path)
        if self.relay is not None and self.relay.poll() is None:
            self.relay.send_signal(signal.SIGUSR1)

    def relay_stats(self) -> dict[str, Any]:
        with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
            return json.loads(self.relay_stats_path.read_text())
        return {}

    def alive(self) -> list[str]:
        """Names of the world's processes that died (empty while all run)."""
        procs = {"stack": self.stack, "relay": self.relay}
        if self.prometheus is not None:
            procs["prometheus"] = self.prometheus.proc
        return [name for name, p in procs.items() if p is None or p.poll() is not None]

    # -- end ---------------------------------------------------------------------------------
    def stop_stack(self) -> int | None:
        """SIGTERM the stack; it prints its counters summary (drops by reason) as it exits."""
        if self.stack is not None and self.stack_exit is None:
            self.stack_exit = stop_process(self.stack, timeout=30)
        return self.stack_exit

    def close(self) -> None:
        try:
            if self.prometheus is not None:
                self.prometheus.stop()
            stop_process(self.relay)
            self.stop_stack()
        finally:
            for handle in self._logs:
                handle.close()
