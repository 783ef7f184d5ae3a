"""DHCPv4 against dnsmasq on the kernel side of the TAP, inside the test's own namespaces.

dnsmasq's shortest lease is 2 minutes, so T1 would be 60 s; the server is told to send T1 = 3 s
(option 58: a real server setting, honoured by the client as any T1 would be) so a renewal
happens within the test. Two stack runs share one lease file: the first keeps its lease on
SIGTERM (dhcp_release = false), the second gets it back by INIT-REBOOT and releases it.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.world import World, can_run_world, have_tools

pytestmark = pytest.mark.integration

RANGE = ("192.0.2.50", "192.0.2.59")
BOUND = re.compile(r"dhcp: bound (\d+\.\d+\.\d+\.\d+)/(\d+) gateway (\S+) server (\S+)")


@pytest.fixture(autouse=True)
def _requirements() -> None:
    ok, why = can_run_world()
    if not ok:
        pytest.skip(why)
    if not have_tools("dnsmasq", "ping"):
        pytest.skip("needs dnsmasq and ping")


def wait_for(what: str, check: Callable[[], object], timeout: float, log: Callable[[], str]):
    """Poll `check` until it returns something truthy; fail with the logs after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}:\n{log()}")


class Dnsmasq:
    """dnsmasq as the DHCP server on the kernel side of tap0, in the world's namespace."""

    def __init__(
        self, world: World, workdir: Path, leases: Path, extra: tuple[str, ...] = ()
    ) -> None:
        self.leases = leases
        self.log_path = workdir / "dnsmasq.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = world.popen(
            [
                "dnsmasq", "--no-daemon", "--port=0", "--log-dhcp", "--conf-file=/dev/null",
                f"--interface={world.interface}", "--bind-interfaces",
                f"--dhcp-range={RANGE[0]},{RANGE[1]},255.255.255.0,2m",
                "--dhcp-option=option:T1,3", "--dhcp-option=option:T2,100",
                f"--dhcp-leasefile={leases}", f"--pid-file={workdir / 'dnsmasq.pid'}",
                *extra,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def lease_of(self, address: str) -> bool:
        try:
            return any(line.split()[2] == address for line in self.leases.read_text().splitlines())
        except FileNotFoundError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # `ip netns exec` execs: this is dnsmasq's PID
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@pytest.fixture
def dhcp_run(tmp_path: Path) -> Iterator[Callable[..., tuple[World, Dnsmasq]]]:
    """Start a stack with --address dhcp in a fresh namespace, then dnsmasq beside it."""
    started: list[tuple[World, Dnsmasq]] = []

    def start(
        name: str, *args: str, before: Callable[[World], tuple[str, ...]] | None = None
    ) -> tuple[World, Dnsmasq]:
        """`before(world)` runs once the TAP is up and returns extra dnsmasq arguments."""
        workdir = tmp_path / name
        workdir.mkdir()
        world = World(workdir, ("--address", "dhcp", *args), tag="dhcp")
        try:
            world.start()
            extra = before(world) if before is not None else ()
            server = Dnsmasq(world, workdir, tmp_path / "dnsmasq.leases", extra)
        except BaseException:
            world.close()
            raise
        started.append((world, server))
        return world, server

    try:
        yield start
    finally:
        for world, server in started:
            try:
                world.stop()
            finally:
                server.stop()
                world.close()


def stats(world: World) -> str:
    """`netstack stats` in the namespace: the Dhcp section reads the stack's metrics."""
    return world.run([sys.executable, "-m", "netstack", "stats"], check=False).stdout


def stat(text: str, row: str) -> int:
    match = re.search(rf"^\s+(\d+) {row}$", text, re.M)
    return int(match[1]) if match else -1


def test_lease_ping_renew_keep_then_init_reboot_and_release(
    tmp_path: Path, dhcp_run: Callable[..., tuple[World, Dnsmasq]]
) -> None:
    lease_file = tmp_path / "lease.json"
    world, server = dhcp_run(
        "first", "--dhcp-lease-file", str(lease_file), "--dhcp-release", "false"
    )

    def logs() -> str:
        return world.log() + "\n--- dnsmasq ---\n" + server.log()

    found = wait_for("a lease", lambda: BOUND.search(world.log()), 40, logs)
    address, prefix, gateway, server_id = found[1], int(found[2]), found[3], found[4]
    assert RANGE[0] <= address <= RANGE[1] and prefix == 24
    assert gateway == server_id == world.host_ip
    assert server.lease_of(address)
    # bound: the kernel reaches the leased address
    ping = world.run(["ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", address], check=False)
    assert ping.returncode == 0, ping.stdout + logs()
    assert "DHCPOFFER" in server.log() and "DHCPACK" in server.log()

    # T1 = 3 s: the client renews (unicast to dnsmasq) and stays bound
    def renewed() -> bool:
        text = stats(world)
        return stat(text, "renewals") >= 1 and "state bound," in text

    wait_for("a renewal", renewed, 30, logs)
    text = stats(world)
    left = re.search(r"lease (\d+) s left", text)
    assert left and 0 < int(left[1]) <= 120, text
    assert stat(text, "discover sent") >= 1 and stat(text, "ack received") >= 2, text
    assert "renewing -> bound" in world.log()
    remembered = json.loads(lease_file.read_text())
    assert remembered["address"] == address and remembered["server_id"] == server_id

    # SIGTERM with dhcp_release = false: the lease stays, on both sides
    assert world.stop() == 0
    server.stop()
    assert "DHCPRELEASE" not in server.log()
    assert server.lease_of(address) and lease_file.exists()

    # A new stack with the same lease file asks for the address back (INIT-REBOOT) and gets it
    world, server = dhcp_run("second", "--dhcp-lease-file", str(lease_file))
    again = wait_for("the lease again", lambda: BOUND.search(world.log()), 40, logs)
    assert again[1] == address
    assert "init_reboot -> rebooting" in world.log() and "rebooting -> checking" in world.log()
    assert "DHCPDISCOVER" not in server.log()  # no discovery: a REQUEST for the old address
    ping = world.run(["ping", "-n", "-c", "1", "-W", "2", address], check=False)
    assert ping.returncode == 0, ping.stdout + logs()

    # SIGTERM: DHCPRELEASE, and dnsmasq forgets the lease; so does the stack
    assert world.stop() == 0
    wait_for("the release", lambda: "DHCPRELEASE" in server.log(), 10, logs)
    wait_for("dnsmasq to drop the lease", lambda: not server.lease_of(address), 10, logs)
    assert not lease_file.exists()
    assert "dhcp: lease released" in world.log()


def test_address_in_use_is_declined(
    tmp_path: Path, dhcp_run: Callable[..., tuple[World, Dnsmasq]]
) -> None:
    """dnsmasq is made to offer an address the kernel side already owns: the stack's RFC 5227
    probe gets the kernel's answer, it sends DHCPDECLINE and never takes the address. (dnsmasq
    broadcasts its replies here, so the client's broadcast path meets a real server too.)"""
    taken = RANGE[0]

    def occupy(world: World) -> tuple[str, ...]:
        world.run(["ip", "addr", "add", f"{taken}/24", "dev", world.interface])
        mac = re.search(r"address from DHCP \(([0-9a-f:]{17})\)", world.log())
        assert mac, world.log()
        # --dhcp-broadcast: a reply unicast to the taken address would stay in the kernel
        return (f"--dhcp-host={mac[1]},{taken}", "--no-ping", "--dhcp-broadcast")

    world, server = dhcp_run(
        "conflict", "--dhcp-lease-file", str(tmp_path / "lease.json"), before=occupy
    )

    def logs() -> str:
        return world.log() + "\n--- dnsmasq ---\n" + server.log()

    wait_for("a DHCPDECLINE", lambda: "DHCPDECLINE" in server.log(), 40, logs)
    assert "checking -> init" in world.log(), logs()
    assert not BOUND.search(world.log()), logs()
    text = stats(world)
    assert stat(text, "addresses declined") >= 1 and "state bound" not in text, text
    assert not (tmp_path / "lease.json").exists()
