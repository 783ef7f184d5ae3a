"""The test world: a fresh network namespace, the stack on a TAP inside it, kernel tools beside it.

Everything lives in a namespace this module creates and always deletes; nothing is addressed
in the machine's own namespace. Processes are ended by the PID we started them with.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_counter = itertools.count()

HOST_IP = "192.0.2.1"
STACK_IP = "192.0.2.2"


def have_tools(*names: str) -> bool:
    return all(shutil.which(n) for n in names)


def can_run_world() -> tuple[bool, str]:
    if os.geteuid() != 0:
        return False, "needs root"
    if not os.path.exists("/dev/net/tun"):
        return False, "no /dev/net/tun"
    if not have_tools("ip"):
        return False, "no iproute2"
    return True, ""


def new_netns_name(tag: str = "w") -> str:
    return f"nst-{tag}-{os.getpid()}-{next(_counter)}"


def netns_add(name: str) -> None:
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)


def netns_del(name: str) -> None:
    subprocess.run(["ip", "netns", "del", name], check=False, stderr=subprocess.DEVNULL)


def ns_socket(ns: str, family: int, kind: int) -> socket.socket:
    """A socket living in namespace `ns` (setns is per-thread: do it in a throwaway thread)."""
    result: list[object] = []

    def make() -> None:
        try:
            with open(f"/run/netns/{ns}") as handle:
                if _libc.setns(handle.fileno(), CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns failed")
            result.append(socket.socket(family, kind))
        except BaseException as err:  # handed to the caller
            result.append(err)

    thread = threading.Thread(target=make)
    thread.start()
    thread.join()
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]  # type: ignore[return-value]


class World:
    """One namespace with the stack running in it on tap0 (kernel side 192.0.2.1/24)."""

    def __init__(self, workdir: Path, extra_args: tuple[str, ...] = (), tag: str = "w") -> None:
        self.ns = new_netns_name(tag)
        self.workdir = workdir
        self.extra_args = extra_args
        self.pcap = workdir / "stack.pcap"
        self.log_path = workdir / "stack.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.host_ip = HOST_IP
        self.stack_ip = STACK_IP
        self.interface = "tap0"

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, timeout: float = 20.0) -> None:
        netns_add(self.ns)
        cmd = [
            "ip", "netns", "exec", self.ns,
            sys.executable, "-m", "netstack", "run",
            "--interface", self.interface,
            "--pcap", str(self.pcap),
            "--log-level", "debug",
            *self.extra_args,
        ]  # fmt: skip
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"stack exited early ({self.proc.returncode}):\n{self.log()}")
            if "netstack up" in self.log() and self._kernel_side_up():
                return
            time.sleep(0.05)
        raise RuntimeError(f"stack did not come up in {timeout}s:\n{self.log()}")

    def _kernel_side_up(self) -> bool:
        out = self.run(["ip", "-4", "-o", "addr", "show", "dev", self.interface], check=False)
        return self.host_ip in out.stdout

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the stack (by PID), wait for it; returns its exit code."""
        code = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        elif self.proc is not None:
            code = self.proc.returncode
        if hasattr(self, "_log"):
            self._log.close()
        return code

    def close(self) -> None:
        try:
            self.stop()
        finally:
            netns_del(self.ns)

    # -- helpers ---------------------------------------------------------------------------
    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def run(
        self, cmd: list[str], *, timeout: float = 60.0, check: bool = True, **kwargs
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace."""
        return subprocess.run(
            ["ip", "netns", "exec", self.ns, *cmd],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            **kwargs,
        )

    def popen(self, cmd: list[str], **kwargs) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.ns, *cmd], **kwargs)

    def socket(self, family: int = socket.AF_INET, kind: int = socket.SOCK_DGRAM) -> socket.socket:
        return ns_socket(self.ns, family, kind)


@contextlib.contextmanager
def running_world(workdir: Path, *extra_args: str, tag: str = "w") -> Iterator[World]:
    world = World(workdir, extra_args, tag)
    try:
        world.start()
        yield world
    finally:
        world.close()
