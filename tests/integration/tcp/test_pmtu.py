"""Path MTU discovery against the kernel (RFC 1191): the stack on tap0 in namespace A, the
kernel of A routing to a veth into namespace B whose A end has MTU 1280. The stack's segments
(DF set) that do not fit make A's kernel answer "fragmentation needed, next-hop MTU 1280";
the stack must lower its MSS, resend, and finish the transfer byte-exact.

B's end of the veth keeps MTU 1500, so B's SYN offers MSS 1460: only PMTU discovery can
bring the stack's segments down to 1240. B only reads (chargen), its ACKs are small.
"""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
import time

import pytest

from tests.integration.tcp.conftest import FAST_ARGS, need_world
from tests.integration.tcp.kit import bare_namespace, chargen_sha256, metrics
from tests.integration.world import ns_socket, running_world

HOP_MTU = 1280
A_HOP, B_HOP = "198.51.100.1", "198.51.100.2"
N = 3 * 1024 * 1024


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, timeout=20)


@pytest.mark.parametrize("offload", ["auto", "soft", "off"])
def test_transfer_across_a_smaller_mtu_hop_lowers_the_mss(tmp_path, offload: str) -> None:
    """ "soft": offload off, software GSO cutting at the lowered MSS; "off": per segment."""
    need_world()
    modes = {"soft": ("--offload", "off"), "off": ("--offload", "off", "--gso", "off")}
    modes["off"] += ("--gro", "off")
    args = ("--gateway", "192.0.2.1", *modes.get(offload, ("--offload", offload)), *FAST_ARGS)
    with running_world(tmp_path, *args, tag="pmtu") as world, bare_namespace("pmtub") as b:
        a = world.ns
        sh("ip", "-n", a, "link", "add", "vA", "type", "veth", "peer", "name", "vB", "netns", b)
        sh("ip", "-n", a, "link", "set", "vA", "mtu", str(HOP_MTU), "up")
        sh("ip", "-n", a, "addr", "add", f"{A_HOP}/24", "dev", "vA")
        sh("ip", "-n", b, "link", "set", "vB", "up")
        sh("ip", "-n", b, "addr", "add", f"{B_HOP}/24", "dev", "vB")
        sh("ip", "-n", b, "route", "add", "default", "via", A_HOP)
        sh("ip", "netns", "exec", a, "sysctl", "-qw", "net.ipv4.ip_forward=1")

        before = metrics(world, ("netstack_pmtu_",))
        assert before.get("netstack_pmtu_updates_total") == 0.0
        sock = ns_socket(b, socket.AF_INET, socket.SOCK_STREAM)
        digest = hashlib.sha256()
        got = 0
        deadline = time.monotonic() + 60
        try:
            sock.settimeout(10)
            sock.connect((world.stack_ip, 19))  # chargen (RFC 864)
            while got < N:
                sock.settimeout(max(0.1, deadline - time.monotonic()))
                data = sock.recv(min(1 << 20, N - got))
                assert data, f"EOF after {got} bytes"
                digest.update(data)
                got += len(data)
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
            rcv_mss = int.from_bytes(info[20:24], "little")  # tcpi_rcv_mss
            # The stack's side, while the connection is open (netstack ss, /connections).
            ss = [sys.executable, "-m", "netstack", "ss", "--json"]
            table = json.loads(world.run(ss).stdout)
            (conn,) = [c for c in table["connections"] if c["local"].endswith(":19")]
        finally:
            sock.close()
        assert digest.hexdigest() == chargen_sha256(N)
        after = metrics(world, ("netstack_pmtu_",))
        assert after["netstack_pmtu_updates_total"] >= 1
        assert after["netstack_pmtu_cache_entries"] == 1
        # B saw segments of at most the hop's size (its receive MSS estimate, Linux's
        # tcp_measure_rcv_mss: the largest segment seen).
        assert 536 < rcv_mss <= HOP_MTU - 40, rcv_mss
        assert conn["tcp_info"]["tcpi_pmtu"] == HOP_MTU
        assert conn["tcp_info"]["tcpi_snd_mss"] == HOP_MTU - 40 - 12  # timestamps on
        assert conn["tcp_info"]["tcpi_bytes_retrans"] > 0  # what the hop refused, resent
