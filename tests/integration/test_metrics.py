"""The running stack's metrics endpoint, scraped from inside its namespace after known traffic.

The stack serves http://127.0.0.1:9464/metrics by default; 127.0.0.1 is the namespace's own
loopback, so every request is made through a socket created inside the namespace (ns_socket).
Each test reads the counters before and after its traffic and checks the difference.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from netstack import __version__
from netstack.drops import Drop
from netstack.wire import ethernet as weth
from netstack.wire import ipv4 as wipv4
from netstack.wire import udp as wudp
from tests.integration.world import (
    World,
    can_run_world,
    have_tools,
    netns_add,
    netns_del,
    new_netns_name,
    ns_socket,
    running_world,
)

pytestmark = pytest.mark.integration

METRICS_PORT = 9464


# -- helpers (test_prometheus.py uses them too) ---------------------------------------------------
def ns_http_get(
    ns: str, port: int, path: str, host: str = "127.0.0.1", timeout: float = 5.0
) -> tuple[int, dict[str, str], bytes]:
    """GET http://host:port/path from inside namespace `ns`: (status, headers, body)."""
    sock = ns_socket(ns, socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect((host, port))
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        conn.sock = sock  # already connected, inside the namespace
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        sock.close()


def scrape_text(world: World, port: int = METRICS_PORT) -> str:
    status, headers, body = ns_http_get(world.ns, port, "/metrics")
    assert status == 200, body[:200]
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return body.decode()


class Scrape:
    """One parsed scrape: value(name, **labels) of any sample."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.values: dict[tuple[str, frozenset], float] = {}
        self.types: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for s in family.samples:
                self.values[(s.name, frozenset(s.labels.items()))] = s.value

    def value(self, name: str, **labels: str) -> float:
        return self.values[(name, frozenset(labels.items()))]

    def drop(self, reason: Drop) -> float:
        return self.value("netstack_drops_total", layer=reason.layer, reason=reason.reason)


def scrape(world: World) -> Scrape:
    return Scrape(scrape_text(world))


def wait_for(world: World, check, timeout: float = 5.0) -> Scrape:
    """Scrape until check(scrape) holds: the stack counts a frame a moment after the kernel
    hands it over, and some answers (ICMP errors) come after the request returned."""
    deadline = time.monotonic() + timeout
    while True:
        now = scrape(world)
        if check(now) or time.monotonic() > deadline:
            return now
        time.sleep(0.05)


def stack_mac(world: World) -> bytes:
    """The stack's MAC as the kernel learnt it (ping first so the neighbour entry exists)."""
    world.run(["ping", "-n", "-c", "1", "-W", "3", world.stack_ip])
    out = world.run(["ip", "-j", "neigh", "show", world.stack_ip, "dev", world.interface]).stdout
    return weth.mac_from_str(json.loads(out)[0]["lladdr"])


def bad_checksum_frame(world: World) -> bytes:
    """A UDP datagram for the stack whose IPv4 header checksum is wrong (and only that)."""
    mac = stack_mac(world)
    host_ip, stack_ip = wipv4.ip_from_str(world.host_ip), wipv4.ip_from_str(world.stack_ip)
    kernel_mac = weth.mac_from_str(
        world.run(["cat", f"/sys/class/net/{world.interface}/address"]).stdout.strip()
    )
    payload = b"bad checksum"
    udp = wudp.build(host_ip, stack_ip, 40000, 7, payload)
    header = bytearray(wipv4.build(host_ip, stack_ip, wipv4.PROTO_UDP, len(udp) + len(payload)))
    header[10] ^= 0xFF  # corrupt the header checksum
    return weth.build(mac, kernel_mac, weth.ETHERTYPE_IPV4) + bytes(header) + udp + payload


def inject(world: World, frames: list[bytes]) -> None:
    """Write raw Ethernet frames onto tap0 from the kernel side (AF_PACKET inside the netns)."""
    sock = ns_socket(world.ns, socket.AF_PACKET, socket.SOCK_RAW)
    try:
        sock.bind((world.interface, 0))
        for frame in frames:
            sock.send(frame)
    finally:
        sock.close()


# -- tests ------------------------------------------------------------------------------------
def test_scrape_parses_and_holds_every_family(world: World) -> None:
    s = scrape(world)
    assert s.value("netstack_up") == 1
    assert s.value("netstack_build_info", version=__version__) == 1
    for member in Drop:  # every reason from the start, 0 included
        assert s.drop(member) >= 0
    for name in (
        "netstack_rx_packets_total",
        "netstack_tx_bytes_total",
        "netstack_arp_requests_total",
        "netstack_arp_cache_entries",
        "netstack_ipv4_packets_total",
        "netstack_ipv4_fragments_total",
        "netstack_ipv4_reassemblies_total",
        "netstack_icmp_messages_total",
        "netstack_udp_datagrams_total",
        "netstack_udp_no_port_total",
        "netstack_tcp_segments_total",
        "netstack_tcp_retransmitted_segments_total",
        "netstack_tcp_connections",
        "netstack_tcp_listen_overflows_total",
        "netstack_tcp_rtt_seconds_bucket",
        "netstack_loop_batch_frames_bucket",
        "netstack_loop_iteration_seconds_bucket",
        "netstack_loop_wakeups_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_cpu_seconds_total",
    ):
        assert any(n == name for n, _ in s.values), name
    assert s.value("netstack_rx_packets_total", interface=world.interface) > 0
    assert s.value("netstack_arp_requests_total", direction="tx") >= 1  # gratuitous ARP at start
    assert s.value("process_resident_memory_bytes") > 1 << 20
    assert s.types["netstack_loop_batch_frames"] == "histogram"
    assert "_created" not in s.text


@pytest.mark.skipif(not have_tools("promtool"), reason="no promtool (apt install prometheus)")
def test_promtool_check_metrics_is_clean(world: World) -> None:
    text = scrape_text(world)
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result.stdout


def test_only_on_loopback_by_default(world: World) -> None:
    """The default metrics_address is 127.0.0.1: the tap0 address of the namespace gets nothing."""
    with pytest.raises(ConnectionRefusedError):
        ns_http_get(world.ns, METRICS_PORT, "/metrics", host=world.host_ip)


@pytest.mark.skipif(not have_tools("ping"), reason="no ping")
def test_ping_moves_icmp_ipv4_and_link_counters(world: World) -> None:
    before = scrape(world)
    world.run(["ping", "-n", "-c", "5", "-i", "0.05", "-W", "3", world.stack_ip])

    def done(s: Scrape) -> bool:
        return s.value("netstack_icmp_messages_total", direction="tx", type="echo_reply") >= (
            before.value("netstack_icmp_messages_total", direction="tx", type="echo_reply") + 5
        )

    after = wait_for(world, done)

    def delta(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert delta("netstack_icmp_messages_total", direction="rx", type="echo_request") == 5
    assert delta("netstack_icmp_messages_total", direction="tx", type="echo_reply") == 5
    assert delta("netstack_ipv4_packets_total", direction="rx") >= 5
    assert delta("netstack_ipv4_packets_total", direction="tx") >= 5
    assert delta("netstack_rx_packets_total", interface=world.interface) >= 5
    assert delta("netstack_rx_bytes_total", interface=world.interface) >= 5 * 98
    assert delta("netstack_tx_bytes_total", interface=world.interface) >= 5 * 98
    assert delta("netstack_loop_batch_frames_count") >= 1
    assert delta("netstack_loop_wakeups_total") >= 5
    assert after.value("netstack_arp_cache_entries") >= 1  # the kernel side is known


@pytest.mark.skipif(not have_tools("ping"), reason="no ping")
def test_fragmented_ping_counts_fragments_and_a_reassembly(world: World) -> None:
    before = scrape(world)
    world.run(["ping", "-n", "-c", "1", "-W", "3", "-s", "4000", world.stack_ip])
    key = {"direction": "tx"}
    after = wait_for(
        world,
        lambda s: (
            s.value("netstack_ipv4_fragments_total", **key)
            >= before.value("netstack_ipv4_fragments_total", **key) + 3
        ),
    )

    def delta(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    # 4008 bytes of ICMP in 1500-byte-MTU fragments: 1480 + 1480 + 1048 each way.
    assert delta("netstack_ipv4_fragments_total", direction="rx") == 3
    assert delta("netstack_ipv4_fragments_total", direction="tx") == 3
    assert delta("netstack_ipv4_reassemblies_total", result="ok") == 1
    assert delta("netstack_ipv4_reassemblies_total", result="failed") == 0


@pytest.mark.skipif(not have_tools("arping"), reason="no arping")
def test_arping_moves_arp_counters(world: World) -> None:
    before = scrape(world)
    world.run(["arping", "-c", "3", "-w", "5", "-I", world.interface, world.stack_ip], check=False)
    after = wait_for(
        world,
        lambda s: (
            s.value("netstack_arp_replies_total", direction="tx")
            >= before.value("netstack_arp_replies_total", direction="tx") + 3
        ),
    )
    for name in ("netstack_arp_requests_total", "netstack_arp_replies_total"):
        direction = "rx" if "requests" in name else "tx"
        assert after.value(name, direction=direction) - before.value(name, direction=direction) >= 3


def test_udp_echo_and_closed_port(world: World) -> None:
    before = scrape(world)
    sock = world.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(3)
    try:
        for i in range(4):
            sock.sendto(b"metrics %d" % i, (world.stack_ip, 7))
            assert sock.recvfrom(100)[0] == b"metrics %d" % i
        sock.sendto(b"nobody home", (world.stack_ip, 99))
    finally:
        sock.close()
    no_port = Drop.UDP_NO_PORT
    after = wait_for(
        world,
        lambda s: (
            s.value("netstack_icmp_messages_total", direction="tx", type="destination_unreachable")
            > before.value(
                "netstack_icmp_messages_total", direction="tx", type="destination_unreachable"
            )
        ),
    )

    def delta(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert delta("netstack_udp_datagrams_total", direction="rx") == 5  # 4 echoed + 1 refused
    assert delta("netstack_udp_datagrams_total", direction="tx") == 4
    assert after.drop(no_port) - before.drop(no_port) == 1
    assert delta("netstack_udp_no_port_total") == 1
    assert (
        delta("netstack_icmp_messages_total", direction="tx", type="destination_unreachable") == 1
    )


def test_tcp_transfer_and_refused_connection(world: World) -> None:
    """An echo round trip and a connect to a closed port move the TCP families as they should."""
    before = scrape(world)
    payload = os.urandom(200_000)
    sock = world.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(10)
    try:
        sock.connect((world.stack_ip, 7))
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        echoed = bytearray()
        while chunk := sock.recv(65536):
            echoed += chunk
    finally:
        sock.close()
    assert echoed == payload
    refused = world.socket(socket.AF_INET, socket.SOCK_STREAM)
    refused.settimeout(5)
    with pytest.raises(ConnectionRefusedError):
        refused.connect((world.stack_ip, 4444))
    refused.close()

    def settled(s: Scrape) -> bool:
        return (
            s.value("netstack_tcp_connections", state="established") == 0
            and s.value("netstack_tcp_connections", state="last_ack") == 0
            and s.value("netstack_tcp_resets_total", direction="tx")
            > before.value("netstack_tcp_resets_total", direction="tx")
        )

    after = wait_for(world, settled)

    def delta(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert delta("netstack_tcp_passive_opens_total") == 1
    assert delta("netstack_tcp_active_opens_total") == 0
    # 200 kB each way at MSS 1460 is at least 137 segments each way.
    assert delta("netstack_tcp_segments_total", direction="rx") >= 137
    assert delta("netstack_tcp_segments_total", direction="tx") >= 137
    assert delta("netstack_tcp_resets_total", direction="tx") == 1
    assert after.drop(Drop.TCP_NO_LISTENER) - before.drop(Drop.TCP_NO_LISTENER) == 1
    assert delta("netstack_tcp_rtt_seconds_count") >= 1
    assert after.value("netstack_tcp_connections", state="listen") == 3


def test_injected_bad_checksum_is_a_counted_drop(world: World) -> None:
    """Frames with a broken IPv4 header checksum, written on tap0 from the kernel side."""
    frame = bad_checksum_frame(world)
    before = scrape(world)
    inject(world, [frame] * 3)
    reason = Drop.IPV4_BAD_CHECKSUM
    after = wait_for(world, lambda s: s.drop(reason) >= before.drop(reason) + 3)
    assert after.drop(reason) - before.drop(reason) == 3
    rx = "netstack_udp_datagrams_total"
    assert after.value(rx, direction="rx") == before.value(rx, direction="rx")  # never got there


def test_netstack_stats_reads_the_stack(world: World) -> None:
    """`netstack stats --interval 1` inside the namespace: a summary with rates and drops."""
    sock = world.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.sendto(b"x", (world.stack_ip, 99))  # at least one udp/no_port drop to list
    finally:
        sock.close()
    result = world.run(
        [sys.executable, "-m", "netstack", "stats", "--interval", "1"],
        cwd=Path(__file__).resolve().parents[2],
        timeout=30,
    )
    out = result.stdout
    assert out.startswith(f"netstack {__version__} at http://127.0.0.1:{METRICS_PORT}/metrics")
    # the two scrapes are --interval apart, plus however long the second one took on a busy
    # machine: the figure is measured, not fixed
    over = re.search(r"rates over (\d+\.\d) s", out)
    assert over is not None and float(over.group(1)) >= 1.0, out
    for section in ("Link tap0:", "Arp:", "Ip:", "Icmp:", "Udp:", "Tcp:", "Drops (", "Loop:"):
        assert section in out, out
    assert "udp/no_port" in out
    assert "connections: 3 (listen 3)" in out  # the TCP services' listeners, nothing else
    assert "/s)" in out


# -- metrics turned off ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def quiet_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    ok, why = can_run_world()
    if not ok:
        pytest.skip(why)
    with running_world(
        tmp_path_factory.mktemp("quiet"), "--metrics-address", "none", tag="q"
    ) as world:
        yield world


def test_metrics_address_none_serves_nothing(quiet_world: World) -> None:
    with pytest.raises(ConnectionRefusedError):
        ns_http_get(quiet_world.ns, METRICS_PORT, "/metrics")
    assert "metrics at" not in quiet_world.log()
    result = quiet_world.run(
        [sys.executable, "-m", "netstack", "stats", "--timeout", "2"],
        cwd=Path(__file__).resolve().parents[2],
        check=False,
    )
    assert result.returncode == 1
    assert "cannot read" in result.stderr


def test_busy_metrics_port_is_a_one_line_startup_error(tmp_path: Path) -> None:
    """Another listener on the metrics port: the stack refuses to start, saying which setting."""
    ok, why = can_run_world()
    if not ok:
        pytest.skip(why)
    ns = new_netns_name("busy")
    netns_add(ns)
    try:
        squatter = ns_socket(ns, socket.AF_INET, socket.SOCK_STREAM)
        squatter.bind(("127.0.0.1", METRICS_PORT))
        squatter.listen()
        try:
            result = subprocess.run(
                ["ip", "netns", "exec", ns, sys.executable, "-m", "netstack", "run"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        finally:
            squatter.close()
    finally:
        netns_del(ns)
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"netstack: cannot serve metrics on 127.0.0.1:{METRICS_PORT}")
    assert "metrics_address" in last


def test_loopback_down_is_named_in_the_startup_error() -> None:
    """A fresh namespace starts with lo down: the error says so instead of a bare errno."""
    ok, why = can_run_world()
    if not ok:
        pytest.skip(why)
    ns = new_netns_name("nolo")
    subprocess.run(["ip", "netns", "add", ns], check=True)  # lo left down on purpose
    try:
        result = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "netstack", "run"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    finally:
        netns_del(ns)
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("netstack: cannot serve metrics on 127.0.0.1:"), last
    assert "loopback interface up" in last, last
