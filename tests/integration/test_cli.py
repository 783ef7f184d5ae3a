"""`netstack run` as users meet it: clear one-line errors, TAP options, the AF_PACKET link."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.world import (
    World,
    can_run_world,
    netns_add,
    netns_del,
    new_netns_name,
    ns_socket,
    running_world,
)

pytestmark = pytest.mark.integration

ok, why = can_run_world()
if not ok:
    pytest.skip(why, allow_module_level=True)

NETSTACK = [sys.executable, "-m", "netstack", "run"]
REPO = Path(__file__).resolve().parents[2]


def _in_fresh_netns(cmd: list[str], timeout: float = 20) -> subprocess.CompletedProcess[str]:
    ns = new_netns_name("cli")
    netns_add(ns)
    try:
        return subprocess.run(
            ["ip", "netns", "exec", ns, *cmd],
            capture_output=True, text=True, timeout=timeout, cwd=REPO,
        )  # fmt: skip
    finally:
        netns_del(ns)


def _one_line_error(result: subprocess.CompletedProcess[str], pattern: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("netstack: "), result.stderr
    assert re.search(pattern, lines[0]), result.stderr


def test_no_cap_net_admin_is_a_clear_error() -> None:
    """Root without CAP_NET_ADMIN (dropped from the bounding set) is told what it lacks."""
    cmd = ["setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin", *NETSTACK]
    _one_line_error(_in_fresh_netns(cmd), r"needs root or CAP_NET_ADMIN")


def test_missing_tun_device_is_a_clear_error() -> None:
    script = "mount -t tmpfs none /dev/net && exec " + " ".join(NETSTACK)
    result = _in_fresh_netns(["unshare", "--mount", "--propagation", "private", "sh", "-c", script])
    _one_line_error(result, r"/dev/net/tun does not exist")


def test_bad_address_is_a_clear_error() -> None:
    result = _in_fresh_netns([*NETSTACK, "--address", "192.0.2.300/24"])
    assert result.returncode == 2
    _one_line_error(result, r"'address'")


def test_interface_in_use(tmp_path: Path) -> None:
    with running_world(tmp_path, tag="busy") as world:
        result = world.run([*NETSTACK, "--interface", "tap0"], check=False, cwd=REPO)
        _one_line_error(result, r"interface tap0 is in use")
        # The first stack is unharmed.
        world.run(["ping", "-c", "1", "-W", "2", world.stack_ip])


def test_host_address_none_leaves_kernel_side_unaddressed(tmp_path: Path) -> None:
    world = World(tmp_path, ("--host-address", "none"), tag="noaddr")
    world._kernel_side_up = lambda: True  # type: ignore[method-assign]
    try:
        world.start()
        link = world.run(["ip", "-o", "link", "show", "tap0"]).stdout
        assert "state UP" in link or ",UP" in link, link
        addrs = world.run(["ip", "-4", "-o", "addr", "show", "dev", "tap0"]).stdout
        assert addrs.strip() == ""
        # Addressed by "someone else": then it answers.
        world.run(["ip", "addr", "add", "192.0.2.1/24", "dev", "tap0"])
        world.run(["ping", "-c", "1", "-W", "2", world.stack_ip])
    finally:
        world.close()


def test_mtu_flag_sets_both_sides(tmp_path: Path) -> None:
    with running_world(tmp_path, "--mtu", "9000", tag="mtu") as world:
        assert "mtu 9000" in world.run(["ip", "-o", "link", "show", "tap0"]).stdout
        # 8972 bytes of ICMP data fill a 9000-byte datagram: no fragments with DF set.
        world.run(["ping", "-c", "2", "-W", "2", "-M", "do", "-s", "8972", world.stack_ip])
        assert "mtu 9000" in world.log()


def test_config_file_with_flag_override(tmp_path: Path) -> None:
    config = tmp_path / "netstack.toml"
    config.write_text(
        'address = "198.51.100.2/24"\nhost_address = "198.51.100.1/24"\n'
        "[services]\nudp_echo = 7007\nudp_discard = false\n"
    )
    world = World(tmp_path, ("--config", str(config), "--interface", "tap5"), tag="cfg")
    world.interface, world.host_ip, world.stack_ip = "tap5", "198.51.100.1", "198.51.100.2"
    try:
        world.start()
        world.run(["ping", "-c", "1", "-W", "2", "198.51.100.2"])
        sock = world.socket()
        sock.settimeout(3)
        sock.sendto(b"custom port", ("198.51.100.2", 7007))
        assert sock.recv(100) == b"custom port"
        sock.close()
    finally:
        world.close()


@pytest.mark.parametrize(("ring", "offload"), [("off", "auto"), ("auto", "off")])
def test_packet_link_over_veth_between_namespaces(tmp_path: Path, ring: str, offload: str) -> None:
    """--link packet: the stack on one end of a veth pair, the kernel on the other; received
    by recvmmsg (with the vnet header), then by the TPACKET_V3 ring (plain frames)."""
    kernel_ns, stack_ns = new_netns_name("pk"), new_netns_name("ps")
    netns_add(kernel_ns)
    netns_add(stack_ns)
    proc = None
    log = tmp_path / "stack.log"
    try:
        subprocess.run(
            ["ip", "-n", kernel_ns, "link", "add", "veth-k", "type", "veth",
             "peer", "name", "veth-s", "netns", stack_ns],
            check=True,
        )  # fmt: skip
        subprocess.run(
            ["ip", "-n", kernel_ns, "addr", "add", "192.0.2.1/24", "dev", "veth-k"], check=True
        )
        subprocess.run(["ip", "-n", kernel_ns, "link", "set", "veth-k", "up"], check=True)
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", stack_ns, *NETSTACK, "--link", "packet",
                 "--interface", "veth-s", "--pcap", str(tmp_path / "p.pcap"),
                 "--packet-ring", ring, "--offload", offload],
                stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
            )  # fmt: skip
        ping = ["ip", "netns", "exec", kernel_ns, "ping", "-c", "1", "-W", "1", "192.0.2.2"]
        for _ in range(40):
            if subprocess.run(ping, capture_output=True).returncode == 0:
                break
            assert proc.poll() is None, log.read_text()
        else:
            pytest.fail("no ping answer over the packet link:\n" + log.read_text())
        subprocess.run([*ping[:-1], "-s", "4000", "-c", "3", "192.0.2.2"], check=True,
                       capture_output=True)  # fmt: skip
        sock = ns_socket(kernel_ns, socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(3)
        payload = os.urandom(3000)
        sock.sendto(payload, ("192.0.2.2", 7))
        assert sock.recv(4000) == payload
        sock.close()
        mac = subprocess.run(
            ["ip", "-n", stack_ns, "-o", "link", "show", "veth-s"], capture_output=True, text=True
        ).stdout
        neigh = subprocess.run(
            ["ip", "-n", kernel_ns, "neigh", "show", "192.0.2.2"], capture_output=True, text=True
        ).stdout
        lladdr = neigh.split("lladdr ")[1].split()[0]
        assert lladdr in mac, (neigh, mac)
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(10)
        netns_del(kernel_ns)
        netns_del(stack_ns)
    assert proc.returncode == 0, log.read_text()
    assert "drops" in log.read_text()
    receive = "recvmmsg" if ring == "off" else "tpacket_v3 ring"
    assert f"receive {receive}, qdisc bypass on" in log.read_text()
