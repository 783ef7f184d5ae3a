"""An impaired wire between the kernel and the stack, outside the stack, for kernel-peer tests.

The kernel's TCP (or ping, or UDP) must see a lossy path that the stack's code does not
control, so the impairment lives in a relay process between two interfaces of one namespace:

    kernel 192.0.2.1 on peer0 (TAP)                                  stack 192.0.2.2 on tap0
          peer0 fd  <->  relay: to_stack / to_kernel FaultChannels  <->  AF_PACKET on tap0
                                                                      (kernel side unaddressed,
                                                                       ARP off: only a wire)

The relay is the product's `python -m netstack.soak.relay` (the soak's impairment wire) run
inside the namespace. It uses netstack's
own links (TapLink for peer0, PacketLink on tap0), Loop, and the per-direction engine of
netstack/io/fault.py with its own seeded RNGs. SIGUSR1 makes it re-read its control file (new
impairments, applied live) and write its counters (JSON) to its stats file; SIGTERM ends it
with a last write. `impaired_world(...)` wraps all of it around tests/integration/world.py's
World, whose run/popen/socket helpers work unchanged (the kernel's tools reach 192.0.2.1 ->
192.0.2.2 through peer0 and the relay).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from netstack.io.fault import (
    NO_FAULT,
    FaultStats,
    Impairment,
)
from netstack.soak.relay import KERNEL_IF, impairment_text
from tests.integration.world import World

__all__ = ["ImpairedWorld", "Impairment", "RelayStats", "impaired_world"]

REPO = Path(__file__).resolve().parents[2]


@dataclasses.dataclass(frozen=True)
class RelayStats:
    """Counters of the relay per direction (FaultStats: frames in, delivered, dropped, ...)."""

    to_stack: FaultStats
    to_kernel: FaultStats
    # Frames the kernel dropped before the relay saw them (AF_PACKET receive buffer full).
    wire_drops: int = 0
    dumps: int = 0

    @classmethod
    def from_json(cls, data: dict) -> RelayStats:
        return cls(
            FaultStats(**data["to_stack"]),
            FaultStats(**data["to_kernel"]),
            data.get("wire_drops", 0),
            data.get("dumps", 0),
        )


# -- the test side -----------------------------------------------------------------------------
class ImpairedWorld(World):
    """World (stack on tap0, unaddressed kernel side) plus the relay and its peer0."""

    def __init__(
        self,
        workdir: Path,
        *,
        to_stack: Impairment = NO_FAULT,
        to_kernel: Impairment = NO_FAULT,
        seed: int = 1,
        extra_args: tuple[str, ...] = (),
        tag: str = "imp",
        ipv6: str | None = None,
    ) -> None:
        super().__init__(workdir, ("--host-address", "none", *extra_args), tag)
        self.ipv6 = ipv6  # e.g. "2001:db8::1/64": peer0 speaks IPv6 too (tap0 stays a wire)
        self.to_stack = to_stack
        self.to_kernel = to_kernel
        self.seed = seed
        self.kernel_interface = KERNEL_IF
        self.stats_path = workdir / "relay-stats.json"
        self.control_path = workdir / "relay-control.json"
        self.relay_log_path = workdir / "relay.log"
        self.relay: subprocess.Popen[bytes] | None = None
        self._final: RelayStats | None = None

    def _kernel_side_up(self) -> bool:
        """tap0 has no address here: up is enough."""
        out = self.run(["ip", "-o", "link", "show", "dev", self.interface], check=False)
        return ",UP" in out.stdout or "<UP" in out.stdout

    def start(self, timeout: float = 20.0) -> None:
        super().start(timeout)
        # tap0's kernel side is only a wire: no ARP answers for 192.0.2.1 from it, no IPv6
        # chatter from either interface.
        self.run(["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"], check=False)
        self.run(["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"], check=False)
        self.run(["ip", "link", "set", "dev", self.interface, "arp", "off"])
        self._start_relay(timeout)

    def _start_relay(self, timeout: float) -> None:
        self.stats_path.unlink(missing_ok=True)
        cmd = [
            sys.executable, "-m", "netstack.soak.relay",
            "--wire", self.interface,
            "--peer", self.kernel_interface,
            "--to-stack", impairment_text(self.to_stack),
            "--to-kernel", impairment_text(self.to_kernel),
            "--seed", str(self.seed),
            "--stats", str(self.stats_path),
            "--control", str(self.control_path),
        ]  # fmt: skip
        self._relay_log = open(self.relay_log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.relay = self.popen(cmd, cwd=REPO, stdout=self._relay_log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not self.stats_path.exists():
            if self.relay.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"relay did not come up:\n{self.relay_log()}")
            time.sleep(0.02)
        self._wait_kernel_address(deadline)
        if self.ipv6 is not None:
            self._kernel_ipv6(deadline)

    def _kernel_ipv6(self, deadline: float) -> None:
        """IPv6 on peer0 only (no DAD: the only other node on the wire is the stack)."""
        dev = self.kernel_interface
        self.run(["sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=0"])
        self.run(["ip", "-6", "addr", "add", self.ipv6, "dev", dev, "nodad"])
        address = self.ipv6.split("/")[0]
        while time.monotonic() < deadline:
            out = self.run(["ip", "-6", "-o", "addr", "show", "dev", dev]).stdout
            if address in out and "tentative" not in out:
                return
            time.sleep(0.02)
        raise RuntimeError(f"{dev} got no IPv6 address:\n{self.relay_log()}")

    def _wait_kernel_address(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            out = self.run(["ip", "-4", "-o", "addr", "show", "dev", self.kernel_interface])
            if self.host_ip in out.stdout:
                return
            time.sleep(0.02)
        raise RuntimeError(f"{self.kernel_interface} got no address:\n{self.relay_log()}")

    def relay_log(self) -> str:
        try:
            return self.relay_log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def relay_stats(self, timeout: float = 5.0) -> RelayStats:
        """The relay's counters now (asks it, waits for the answer); final ones once stopped."""
        if self.relay is None or self.relay.poll() is not None:
            if self._final is None:
                self._final = RelayStats.from_json(json.loads(self.stats_path.read_text()))
            return self._final
        before = RelayStats.from_json(json.loads(self.stats_path.read_text())).dumps
        self.relay.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
                stats = RelayStats.from_json(json.loads(self.stats_path.read_text()))
                if stats.dumps > before:
                    return stats
            time.sleep(0.01)
        raise TimeoutError(f"relay did not answer:\n{self.relay_log()}")

    def set_impairment(
        self, *, to_stack: Impairment | None = None, to_kernel: Impairment | None = None
    ) -> RelayStats:
        """Change the faults of the running relay (None keeps a direction as it is)."""
        self.to_stack = to_stack if to_stack is not None else self.to_stack
        self.to_kernel = to_kernel if to_kernel is not None else self.to_kernel
        control = {
            "to_stack": impairment_text(self.to_stack),
            "to_kernel": impairment_text(self.to_kernel),
        }
        tmp = self.control_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(control))
        os.replace(tmp, self.control_path)
        return self.relay_stats()

    def stop_relay(self, timeout: float = 10.0) -> None:
        if self.relay is not None and self.relay.poll() is None:
            self.relay.send_signal(signal.SIGTERM)
            try:
                self.relay.wait(timeout)
            except subprocess.TimeoutExpired:
                self.relay.kill()
                self.relay.wait()
        if hasattr(self, "_relay_log"):
            self._relay_log.close()

    def stop(self, timeout: float = 10.0) -> int | None:
        self.stop_relay(timeout)
        return super().stop(timeout)


@contextlib.contextmanager
def impaired_world(
    tmp_path: Path,
    *,
    to_stack: Impairment = NO_FAULT,
    to_kernel: Impairment = NO_FAULT,
    seed: int = 1,
    extra_args: tuple[str, ...] = (),
    tag: str = "imp",
    ipv6: str | None = None,
) -> Iterator[ImpairedWorld]:
    """A fresh namespace: the stack on tap0, the kernel on peer0, the relay between them."""
    world = ImpairedWorld(
        tmp_path, to_stack=to_stack, to_kernel=to_kernel, seed=seed, extra_args=extra_args,
        tag=tag, ipv6=ipv6,
    )  # fmt: skip
    try:
        world.start()
        yield world
    finally:
        world.close()
