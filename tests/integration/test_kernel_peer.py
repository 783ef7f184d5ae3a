"""The Linux kernel talks to the stack over tap0: ping, arping, neighbours, UDP services."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time

import pytest

from tests.integration.world import World, have_tools

pytestmark = pytest.mark.integration


def _ping(world: World, size: int, count: int = 3, extra: tuple[str, ...] = ()) -> str:
    result = world.run(
        ["ping", "-n", "-c", str(count), "-W", "3", "-s", str(size), *extra, world.stack_ip],
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, f"ping -s {size} failed:\n{result.stdout}{result.stderr}"
    return result.stdout


@pytest.mark.skipif(not have_tools("ping"), reason="no ping")
@pytest.mark.parametrize("size", [56, 1472, 4000, 8000, 65000])
def test_ping_sizes(world: World, size: int) -> None:
    """Echo replies of every size come back, fragmented both ways above the MTU."""
    out = _ping(world, size)
    assert " 0% packet loss" in out
    assert f"{size + 8} bytes from {world.stack_ip}" in out


@pytest.mark.skipif(not have_tools("ping"), reason="no ping")
def test_ping_flood_bounded(world: World) -> None:
    """A bounded flood ping (count and deadline) loses nothing."""
    out = world.run(
        ["ping", "-n", "-f", "-c", "3000", "-w", "30", world.stack_ip], check=False, timeout=60
    ).stdout
    match = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert match, out
    sent, received = int(match[1]), int(match[2])
    assert sent == 3000
    assert received >= sent * 0.995, out


@pytest.mark.skipif(not have_tools("arping"), reason="no arping")
def test_arping_and_neighbour_entry(world: World) -> None:
    """arping gets our stable MAC, and the kernel's neighbour table holds it."""
    out = world.run(
        ["arping", "-c", "3", "-w", "5", "-I", world.interface, world.stack_ip],
        check=False,
        timeout=30,
    ).stdout
    macs = set(re.findall(r"\[([0-9a-fA-F:]{17})\]|from ([0-9a-fA-F:]{17})", out))
    found = {m for pair in macs for m in pair if m}
    assert len(found) == 1, out
    mac = found.pop().lower()
    assert int(mac[:2], 16) & 0x02, "stack MAC should be locally administered"
    assert not int(mac[:2], 16) & 0x01, "stack MAC must be unicast"
    _ping(world, 56, count=1)
    neigh = world.run(["ip", "neigh", "show", world.stack_ip, "dev", world.interface]).stdout
    assert mac in neigh.lower(), neigh


@pytest.mark.parametrize("size", [0, 1, 64, 1472, 1473, 8000, 65507])
def test_udp_echo_python_socket(world: World, size: int) -> None:
    """UDP echo returns each payload byte for byte, fragmented where it must be."""
    sock = world.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.settimeout(5)
    try:
        sock.connect((world.stack_ip, 7))
        for _ in range(3):
            payload = os.urandom(size)
            sock.send(payload)
            data = sock.recv(70000)
            assert data == payload
    finally:
        sock.close()


@pytest.mark.skipif(not have_tools("nc"), reason="no nc")
def test_udp_echo_with_nc(world: World) -> None:
    out = world.run(
        ["nc", "-u", "-w", "2", world.stack_ip, "7"], input="hello from nc\n", timeout=20
    ).stdout
    assert out == "hello from nc\n"


def test_udp_discard_answers_nothing(world: World) -> None:
    """Discard swallows datagrams: no echo and no ICMP port unreachable."""
    sock = world.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(1.0)
    try:
        sock.connect((world.stack_ip, 9))
        for _ in range(5):
            sock.send(b"into the void")
        with pytest.raises(TimeoutError):
            sock.recv(2048)
    finally:
        sock.close()


def test_udp_closed_port_gets_port_unreachable(world: World) -> None:
    """The kernel turns our ICMP port unreachable into ECONNREFUSED on a connected socket."""
    sock = world.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(3.0)
    try:
        sock.connect((world.stack_ip, 5999))
        sock.send(b"anyone?")
        with pytest.raises(ConnectionRefusedError):
            sock.recv(2048)
    finally:
        sock.close()


@pytest.mark.skipif(not have_tools("tcpdump", "tshark"), reason="no tcpdump/tshark")
def test_captures_have_no_bad_checksums(world: World, tmp_path) -> None:
    """tcpdump on tap0 and the stack's own pcap both parse in tshark with valid checksums."""
    capture = tmp_path / "tap0.pcap"
    dump = world.popen(
        ["tcpdump", "-i", world.interface, "-U", "-w", str(capture), "-c", "2000"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.0)
        _ping(world, 56, count=2)
        _ping(world, 3000, count=2)
        sock = world.socket()
        sock.settimeout(3)
        sock.sendto(b"x" * 100, (world.stack_ip, 7))
        sock.recv(200)
        sock.sendto(b"x" * 100, (world.stack_ip, 5999))
        time.sleep(0.5)
        sock.close()
    finally:
        dump.terminate()
        dump.wait(10)
    for path in (capture, world.pcap):
        assert path.exists()
        checks = [
            "-o", "ip.check_checksum:TRUE",
            "-o", "udp.check_checksum:TRUE",
        ]  # fmt: skip
        total = subprocess.run(
            ["tshark", "-n", "-r", str(path), *checks], capture_output=True, text=True, timeout=60
        )
        assert total.returncode == 0, total.stderr
        assert total.stdout.count("\n") >= 8, total.stdout
        bad = subprocess.run(
            [
                "tshark", "-n", "-r", str(path), *checks, "-Y",
                "ip.checksum.status == 0 || udp.checksum.status == 0 "
                "|| icmp.checksum.status == 0 || _ws.malformed || _ws.expert.severity >= 6291456",
            ],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert bad.returncode == 0, bad.stderr
        assert bad.stdout.strip() == "", f"{path}: bad frames:\n{bad.stdout}"
