"""An impaired wire between the kernel and the stack, outside the stack, for kernel-peer tests.

The kernel's TCP (or ping, or UDP) must see a lossy path that the stack's code does not
control, so the impairment lives in a relay process between two interfaces of one namespace:

    kernel 192.0.2.1 on peer0 (TAP)                                  stack 192.0.2.2 on tap0
          peer0 fd  <->  relay: to_stack / to_kernel FaultChannels  <->  AF_PACKET on tap0
                                                                      (kernel side unaddressed,
                                                                       ARP off: only a wire)

The relay is `python -m tests.integration.impair` run inside the namespace. It uses netstack's
own links (TapLink for peer0, PacketLink on tap0), Loop, and the per-direction engine of
netstack/io/fault.py with its own seeded RNGs. SIGUSR1 makes it re-read its control file (new
impairments, applied live) and write its counters (JSON) to its stats file; SIGTERM ends it
with a last write. `impaired_world(...)` wraps all of it around tests/integration/world.py's
World, whose run/popen/socket helpers work unchanged (the kernel's tools reach 192.0.2.1 ->
192.0.2.2 through peer0 and the relay).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import ipaddress
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from netstack.io.fault import (
    NO_FAULT,
    RX_FORM,
    FaultChannel,
    FaultStats,
    Impairment,
    channel_rng,
    parse_fault,
)
from tests.integration.world import World

__all__ = ["ImpairedWorld", "Impairment", "RelayStats", "impaired_world"]

REPO = Path(__file__).resolve().parents[2]
KERNEL_IF = "peer0"
KERNEL_ADDRESS = "192.0.2.1/24"
DIRECTIONS = ("to_stack", "to_kernel")
SOL_PACKET = 263
PACKET_STATISTICS = 6
SOCKET_BUFFER = 8 << 20

log = logging.getLogger("impair")


def impairment_text(imp: Impairment) -> str:
    """The fault-setting spelling of one direction ('none' when clean)."""
    return ",".join(imp.items()) or "none"


def impairment_from_text(text: str) -> Impairment:
    spec = parse_fault(text)
    return spec.rx if spec is not None else Impairment()


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


# -- the relay process -------------------------------------------------------------------------
class Relay:
    """Moves frames both ways between two links through one FaultChannel per direction."""

    def __init__(
        self, loop, kernel_link, stack_link, to_stack: Impairment, to_kernel: Impairment, seed: int
    ) -> None:
        self.loop = loop
        self.kernel_link = kernel_link
        self.stack_link = stack_link
        self.channels = {
            "to_stack": FaultChannel(to_stack, channel_rng(seed, "to_stack"), RX_FORM),
            "to_kernel": FaultChannel(to_kernel, channel_rng(seed, "to_kernel"), RX_FORM),
        }
        # add_link returns the link's own tx queue: what goes *to* that side
        self._to_kernel_q = loop.add_link(kernel_link, self._from_kernel)
        self._to_stack_q = loop.add_link(stack_link, self._from_stack)
        loop.add_deadline_source(self.next_deadline, self.release)
        self.wire_drops = 0

    def _from_kernel(self, views: list[memoryview], now: float) -> None:
        out: list[memoryview] = []
        self.channels["to_stack"].process(views, now, out)
        self._to_stack_q.extend((v,) for v in out)

    def _from_stack(self, views: list[memoryview], now: float) -> None:
        out: list[memoryview] = []
        self.channels["to_kernel"].process(views, now, out)
        self._to_kernel_q.extend((v,) for v in out)

    def next_deadline(self) -> float | None:
        deadlines = [c.next_deadline() for c in self.channels.values()]
        return min((d for d in deadlines if d is not None), default=None)

    def release(self, now: float) -> None:
        for name, queue in (("to_stack", self._to_stack_q), ("to_kernel", self._to_kernel_q)):
            out: list[memoryview] = []
            self.channels[name].release(now, out)
            queue.extend((v,) for v in out)

    def set_impairments(self, to_stack: Impairment, to_kernel: Impairment) -> None:
        """Change the faults live; frames already held still leave at their time."""
        self.channels["to_stack"].impairment = to_stack
        self.channels["to_kernel"].impairment = to_kernel

    def stats(self) -> dict:
        return {name: ch.stats.as_dict() for name, ch in self.channels.items()}


def _packet_drops(fd: int) -> int:
    """Frames the AF_PACKET socket lost since the last call (PACKET_STATISTICS resets)."""
    with contextlib.suppress(OSError):
        sock = socket.socket(fileno=os.dup(fd))
        try:
            _, drops = struct.unpack("II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
            return drops
        finally:
            sock.close()
    return 0


def _grow_socket_buffers(fd: int) -> None:
    sock = socket.socket(fileno=os.dup(fd))
    try:
        for force, plain in ((33, socket.SO_RCVBUF), (32, socket.SO_SNDBUF)):  # *BUFFORCE
            try:
                sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)
    finally:
        sock.close()


def relay_main(argv: list[str] | None = None) -> int:
    """Run the relay inside the namespace until SIGTERM (or a link disappears)."""
    from netstack.io import netlink
    from netstack.io.loop import Loop
    from netstack.io.packet import PacketLink
    from netstack.io.tap import TapLink

    parser = argparse.ArgumentParser(prog="impair-relay")
    parser.add_argument("--wire", default="tap0", help="the stack's TAP (AF_PACKET on it)")
    parser.add_argument("--peer", default=KERNEL_IF, help="TAP created for the kernel peer")
    parser.add_argument("--peer-address", default=KERNEL_ADDRESS)
    parser.add_argument("--to-stack", default="none")
    parser.add_argument("--to-kernel", default="none")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--stats", type=Path, required=True)
    parser.add_argument("--control", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s relay %(message)s")

    loop = Loop()
    peer = TapLink(args.peer)
    netlink.configure_interface(
        args.peer, address=ipaddress.IPv4Interface(args.peer_address), mtu=None
    )
    wire = PacketLink(args.wire)
    _grow_socket_buffers(wire.fd)
    relay = Relay(
        loop,
        peer,
        wire,
        impairment_from_text(args.to_stack),
        impairment_from_text(args.to_kernel),
        args.seed,
    )
    dumps = 0

    def dump() -> None:
        nonlocal dumps
        relay.wire_drops += _packet_drops(wire.fd)
        data = {**relay.stats(), "wire_drops": relay.wire_drops, "dumps": dumps}
        dumps += 1
        tmp = args.stats.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, args.stats)

    def on_usr1(signum: int, frame: object) -> None:
        with contextlib.suppress(FileNotFoundError):
            control = json.loads(args.control.read_text())
            relay.set_impairments(
                impairment_from_text(control["to_stack"]),
                impairment_from_text(control["to_kernel"]),
            )
        dump()

    signal.signal(signal.SIGUSR1, on_usr1)
    log.info(
        "relaying %s <-> %s: to_stack %s, to_kernel %s, seed %d",
        args.peer, args.wire, args.to_stack, args.to_kernel, args.seed,
    )  # fmt: skip
    dump()  # the first stats file says "ready"
    try:
        loop.run()
    finally:
        dump()
        log.info("relay done: %s", relay.stats())
        peer.close()
        wire.close()
        loop.close()
    return 0


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
    ) -> None:
        super().__init__(workdir, ("--host-address", "none", *extra_args), tag)
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
            sys.executable, "-m", "tests.integration.impair",
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
) -> Iterator[ImpairedWorld]:
    """A fresh namespace: the stack on tap0, the kernel on peer0, the relay between them."""
    world = ImpairedWorld(
        tmp_path, to_stack=to_stack, to_kernel=to_kernel, seed=seed, extra_args=extra_args, tag=tag
    )
    try:
        world.start()
        yield world
    finally:
        world.close()


if __name__ == "__main__":
    sys.exit(relay_main())
