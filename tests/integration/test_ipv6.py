"""IPv6 against the Linux kernel over the TAP, and radvd, inside the test's own namespace."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from netstack.proto.addr6 import stable_iid
from netstack.wire import ipv6 as wipv6
from tests.integration.world import can_run_world, have_tools, running_world

pytestmark = pytest.mark.integration

SECRET = "00112233445566778899aabbccddeeff"
STACK6 = "2001:db8::2"


@pytest.fixture(autouse=True)
def _requirements() -> None:
    ok, why = can_run_world()
    if not ok:
        pytest.skip(why)
    if not have_tools("ping"):
        pytest.skip("needs ping")


def wait_for(what: str, check: Callable[[], object], timeout: float, log: Callable[[], str]):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}:\n{log()}")


def config_file(tmp_path: Path, address6: str) -> str:
    path = tmp_path / "netstack.toml"
    path.write_text(f'ipv6_secret = "{SECRET}"\naddress6 = "{address6}"\n')
    return str(path)


def address_with(prefix: str) -> str:
    net = wipv6.from_str(prefix)
    return wipv6.to_str(net[:8] + stable_iid(net, "tap0", bytes.fromhex(SECRET)))


def test_ping6_neighbor_cache_and_closed_port(tmp_path: Path) -> None:
    with running_world(tmp_path, "--config", config_file(tmp_path, f"{STACK6}/64")) as w:
        wait_for("DAD", lambda: f"address {STACK6}/64 ready" in w.log(), 10, w.log)
        ping = w.run(["ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", STACK6], check=False)
        assert ping.returncode == 0, ping.stdout + ping.stderr + w.log()
        # fragments both ways: 8000 bytes (MTU 1500), and the largest datagram ping sends
        for size in ("8000", "65000"):
            ping = w.run(["ping", "-6", "-c", "2", "-i", "0.3", "-W", "3", "-s", size, STACK6],
                         check=False)  # fmt: skip
            assert ping.returncode == 0, size + ping.stdout + ping.stderr
        mac = re.search(r"\(([0-9a-f:]{17})\) on tap0", w.log()).group(1)
        neigh = w.run(["ip", "-6", "neigh", "show", "dev", "tap0"]).stdout
        assert re.search(rf"{STACK6} lladdr {mac} (REACHABLE|STALE|DELAY|PROBE)", neigh), neigh
        # our stable link-local address answers too
        ll = address_with("fe80::")
        ping = w.run(["ping", "-6", "-c", "1", "-W", "2", f"{ll}%tap0"], check=False)
        assert ping.returncode == 0, ping.stdout + ping.stderr + w.log()
        # the UDP echo service answers over IPv6 too (one port table for both families)
        if have_tools("nc"):
            echo = w.run(["nc", "-6", "-u", "-w", "2", STACK6, "7"], input="hello six\n",
                         check=False)  # fmt: skip
            assert echo.stdout == "hello six\n", echo.stdout + echo.stderr + w.log()
        # a closed UDP port: ICMPv6 port unreachable, which the kernel turns into ECONNREFUSED
        sock = w.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        try:
            sock.settimeout(3)
            sock.connect((STACK6, 9999))
            sock.send(b"anyone?")
            with pytest.raises(ConnectionRefusedError):
                sock.recv(100)
        finally:
            sock.close()


RADVD_CONF = """interface tap0 {
    AdvSendAdvert on;
    MinRtrAdvInterval 3;
    MaxRtrAdvInterval 4;
    prefix 2001:db8:1::/64 {
        AdvOnLink on;
        AdvAutonomous on;
        DeprecatePrefix on;
    };
};
"""


@pytest.mark.skipif(not have_tools("radvd"), reason="needs radvd")
def test_slaac_from_radvd(tmp_path: Path) -> None:
    conf = tmp_path / "radvd.conf"
    conf.write_text(RADVD_CONF)
    expected = address_with("2001:db8:1::")
    with running_world(tmp_path, "--config", config_file(tmp_path, "auto")) as w:
        w.run(["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])  # radvd insists on it
        # the kernel's own address in the advertised prefix: the ping's source is on-link for
        # the stack, so replies need no default router (radvd withdraws it when it stops)
        w.run(["ip", "-6", "addr", "add", "2001:db8:1::1/64", "dev", "tap0", "nodad"])
        log = tmp_path / "radvd.log"
        radvd = w.popen(
            ["radvd", "-n", "-C", str(conf), "-p", str(tmp_path / "radvd.pid"), "-m", "stderr"],
            stdout=subprocess.DEVNULL,
            stderr=open(log, "wb"),  # noqa: SIM115 - closed with the process
        )
        try:
            wait_for(
                "a SLAAC address",
                lambda: f"address {expected}/64 ready (slaac)" in w.log(),
                30,
                lambda: w.log() + log.read_text(errors="replace"),
            )
            ping = w.run(["ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", expected], check=False)
            assert ping.returncode == 0, ping.stdout + ping.stderr + w.log()
            # radvd's last RA (DeprecatePrefix) withdraws the prefix: preferred lifetime 0
            radvd.terminate()
            radvd.wait(10)
            wait_for(
                "the address deprecated",
                lambda: f"address {expected}/64 deprecated" in w.log(),
                10,
                lambda: w.log() + log.read_text(errors="replace"),
            )
            # deprecated, still valid: it still answers (RFC 4862 5.5.4)
            ping = w.run(["ping", "-6", "-c", "1", "-W", "2", expected], check=False)
            assert ping.returncode == 0, ping.stdout + ping.stderr + w.log()
        finally:
            radvd.terminate()
            try:
                radvd.wait(10)
            except subprocess.TimeoutExpired:
                radvd.kill()
                radvd.wait()


@pytest.mark.parametrize("offload", ["auto", "off"])
def test_udp_echo_burst_over_ipv6_with_offloads(tmp_path: Path, offload: str) -> None:
    """A burst of echo requests over IPv6 (the fast path, the one-step reply, and the
    replies' UDP super-frames on a kernel with USO, or cut by the link's software GSO with
    `--offload off`): every datagram comes back exactly once, from the address asked (the
    socket is connected: the kernel takes nothing else), checksums good."""
    from scapy.layers import inet6 as s6
    from scapy.utils import rdpcap

    args = ("--config", config_file(tmp_path, f"{STACK6}/64"), "--offload", offload)
    with running_world(tmp_path, *args) as w:
        wait_for("DAD", lambda: f"address {STACK6}/64 ready" in w.log(), 10, w.log)
        ping = w.run(["ping", "-6", "-c", "1", "-W", "2", STACK6], check=False)
        assert ping.returncode == 0, ping.stdout + ping.stderr + w.log()
        sock = w.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.connect((STACK6, 7))
            sent = {i.to_bytes(4, "big") + bytes([i & 0xFF]) * 60 for i in range(256)}
            got: list[bytes] = []
            for rnd in range(4):  # bursts of 64: one receive batch, one run of replies
                burst = sorted(sent)[rnd * 64 : (rnd + 1) * 64]
                # the stack (our child, by PID) stopped while the burst queues on the TAP, so
                # that it reads the burst as one batch however fast it would have woken
                w.proc.send_signal(signal.SIGSTOP)
                try:
                    for payload in burst:
                        sock.send(payload)
                finally:
                    w.proc.send_signal(signal.SIGCONT)
                sock.settimeout(3)
                while len(got) < (rnd + 1) * 64:
                    try:
                        got.append(sock.recv(2048))
                    except TimeoutError:
                        break
        finally:
            sock.close()
        assert sorted(got) == sorted(sent), f"{len(got)} of {len(sent)} back\n{w.log()}"
        uso = "uso for sending only" in w.log() or "software gso" in w.log()
    replies = [p for p in rdpcap(str(w.pcap)) if p.haslayer(s6.UDP) and p[s6.UDP].sport == 7]
    assert replies and all(p[s6.IPv6].src == STACK6 for p in replies)
    supers = [p for p in replies if len(p[s6.UDP].payload) > 64]
    # the pcap holds super-frames as the stack handed them over: there when the kernel has USO
    # or the link cuts them in software
    assert bool(supers) == uso, (len(supers), uso)
