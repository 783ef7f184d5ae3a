"""DHCP around the pure client: config, lease file, RELEASE at shutdown, metrics, stats."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from netstack.config import ConfigError, build_config
from netstack.counters import Counters
from netstack.lease import LeaseFile, ReleaseOnShutdown, lease_from_json, lease_to_json
from netstack.metrics import DHCP_STATES, build_registry
from netstack.proto.dhcp import DhcpClient, DhcpConfig, DhcpState, Lease
from netstack.stats import Snapshot, render
from netstack.wire import dhcp as wdhcp
from tests.unit.test_dhcp import FakeHost, Run
from tests.wire.reference import ip

LEASE = Lease(
    address=ip("192.0.2.50"), prefix_len=24, gateway=ip("192.0.2.1"), server_id=ip("192.0.2.1"),
    lease_time=600, renewal_time=300.0, rebinding_time=525.0, mtu=1400, acquired=1000.0,
)  # fmt: skip


# -- config ----------------------------------------------------------------------------------
def test_address_dhcp_and_its_settings() -> None:
    config = build_config({"address": "DHCP", "interface": "tap7"})
    assert config.dhcp and config.dhcp_release
    assert config.lease_file() == Path("/var/lib/netstack/dhcp-tap7.json")
    assert "address = dhcp" in config.describe()
    assert "# dhcp lease file in use = /var/lib/netstack/dhcp-tap7.json" in config.describe()
    other = build_config({"address": "dhcp", "dhcp_release": "false", "dhcp_lease_file": "/x/l"})
    assert not other.dhcp_release and other.lease_file() == Path("/x/l")
    static = build_config({})
    assert not static.dhcp and str(static.address) == "192.0.2.2/24"
    assert config.stack_mac() != static.stack_mac()  # stable, and its own
    assert config.stack_mac() == build_config({"address": "dhcp", "interface": "tap7"}).stack_mac()


@pytest.mark.parametrize(
    ("layer", "key"),
    [
        ({"address": "dhcp", "gateway": "192.0.2.1"}, "gateway"),
        ({"address": "dhcpx"}, "address"),
        ({"address": "dhcp", "dhcp_release": "maybe"}, "dhcp_release"),
        ({"address": "dhcp", "dhcp_lease_file": 3}, "dhcp_lease_file"),
    ],
)
def test_bad_dhcp_settings_name_the_key(layer: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=f"'{key}'"):
        build_config(layer)


# -- lease file ------------------------------------------------------------------------------
def test_lease_json_round_trip_across_clocks() -> None:
    """Saved at loop time 1100 (wall 50_000), loaded by a new process whose loop clock reads 7
    at wall 50_030: the lease was acquired 130 s before that."""
    text = lease_to_json(LEASE, loop_now=1100.0, wall_now=50_000.0)
    back = lease_from_json(text, loop_now=7.0, wall_now=50_030.0)
    assert back == Lease(**{**_fields(LEASE), "acquired": 7.0 - 130.0})


def _fields(lease: Lease) -> dict:
    return {name: getattr(lease, name) for name in Lease.__slots__}


def test_lease_file_save_load_forget(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    wall = [50_000.0]
    store = LeaseFile(tmp_path / "sub" / "lease.json", lambda: wall[0])
    assert store.load(0.0) is None
    store.save(LEASE, 1100.0)
    assert not list((tmp_path / "sub").glob("*.tmp"))
    assert store.load(1100.0) == LEASE
    store.path.write_text("{not json")
    assert store.load(0.0) is None and "ignoring lease file" in caplog.text
    store.forget()
    store.forget()  # already gone: fine
    assert not store.path.exists()
    blocked = LeaseFile(tmp_path / "file" / "lease.json", lambda: 0.0)
    (tmp_path / "file").write_text("a file where a directory should be")
    blocked.save(LEASE, 0.0)  # logged, not raised
    assert "cannot write lease file" in caplog.text


# -- RELEASE at shutdown -----------------------------------------------------------------------
class Busy:
    def __init__(self) -> None:
        self.quiet = False

    def is_quiet(self) -> bool:
        return self.quiet


def test_release_waits_for_the_other_closers_then_for_arp() -> None:
    run = Run()
    run.bind()
    clock = [run.now]
    tcp = Busy()
    queued = [1]
    released = []
    closer = ReleaseOnShutdown(
        run.client, [tcp], lambda: clock[0], lambda: queued[0], lambda: released.append(1)
    )
    assert closer.is_quiet()  # not shutting down
    closer.begin_shutdown(clock[0])
    assert not closer.is_quiet() and not run.host.sent  # TCP still closing: address needed
    tcp.quiet = True
    assert not closer.is_quiet()  # RELEASE sent, waiting in the ARP queue
    ((_, release, _),) = run.host.take()
    assert release.message_type == wdhcp.RELEASE and released == [1]
    queued[0] = 0
    assert closer.is_quiet()
    queued[0] = 1
    clock[0] += 1.0
    assert closer.is_quiet()  # or after RELEASE_WAIT at the latest
    closer.abort(clock[0])
    assert not run.host.sent  # sent once


def test_abort_releases_at_once() -> None:
    run = Run()
    run.bind()
    closer = ReleaseOnShutdown(run.client, [Busy()], lambda: 0.0, lambda: 0, lambda: None)
    closer.begin_shutdown(0.0)
    closer.abort(0.0)
    assert [m.message_type for _, m, _ in run.host.take()] == [wdhcp.RELEASE]


# -- metrics and stats ---------------------------------------------------------------------------
def _samples(counters: Counters, **hooks) -> dict:
    text = generate_latest(build_registry(counters, interface="tap0", **hooks)).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }, text


def test_dhcp_metric_families() -> None:
    c = Counters()
    client = DhcpClient(bytes(6), FakeHost(), c, random.Random(1), DhcpConfig())
    assert [s.value for s in DhcpState] == list(DHCP_STATES)  # the label set is the enum
    assert set(wdhcp.TYPE_NAMES.values()) < set(__import__("netstack.metrics").metrics.DHCP_TYPES)
    c.dhcp_renewals = 2
    c.dhcp_declines = 1
    c.dhcp_messages["tx", "discover"] = 3
    c.dhcp_messages["rx", "ack"] = 1
    parsed, text = _samples(c, dhcp_status=lambda: ("renewing", 42.5))
    assert parsed[("netstack_dhcp_state", frozenset({("state", "renewing")}))] == 1
    assert parsed[("netstack_dhcp_state", frozenset({("state", "bound")}))] == 0
    assert parsed[("netstack_dhcp_lease_seconds_left", frozenset())] == 42.5
    assert parsed[("netstack_dhcp_renewals_total", frozenset())] == 2
    assert parsed[("netstack_dhcp_declines_total", frozenset())] == 1
    key = frozenset({("direction", "tx"), ("type", "discover")})
    assert parsed[("netstack_dhcp_messages_total", key)] == 3
    assert (
        parsed[("netstack_dhcp_messages_total", frozenset({("direction", "rx"), ("type", "nak")}))]
        == 0
    )

    out = render("http://x/metrics", Snapshot(text, 1.0))
    assert "Dhcp:\n    state renewing, lease 42.5 s left" in out
    assert "3 discover sent" in out and "2 renewals" in out and "1 ack received" in out

    static, text = _samples(Counters())  # a static address: series exist, all 0; no section
    assert static[("netstack_dhcp_state", frozenset({("state", "bound")}))] == 0
    assert "Dhcp:" not in render("http://x/metrics", Snapshot(text, 1.0))
    assert client.state is DhcpState.INIT


# -- the Stack: a DHCP exchange over a fake link, STATUS=, the lease file, RELEASE on SIGTERM ----
def test_stack_with_dhcp_on_a_fake_link(tmp_path: Path) -> None:
    from netstack.notify import Notifier
    from netstack.runtime import Stack
    from netstack.wire import arp as warp
    from netstack.wire import ethernet as weth
    from tests.unit.hosttools import PEER_IP, PEER_MAC, udp_frame
    from tests.unit.test_host_dhcp import dhcp_of
    from tests.unit.test_notify import FakeClock, FakeLink, Manager

    lease_path = tmp_path / "lease.json"
    config = build_config(
        # IPv6 off: this test reads the frames the DHCP client sends, in order
        {
            "address": "dhcp",
            "dhcp_lease_file": str(lease_path),
            "metrics_address": "none",
            "address6": "none",
        }
    )
    manager = Manager(tmp_path / "notify.sock")
    clock = FakeClock(100.0)
    link = FakeLink()
    stack = Stack(config, link, clock=clock, notifier=Notifier(manager.env))
    mac = stack.host.config.mac
    assert stack.describe().startswith("netstack up: address from DHCP")
    leased = ip("192.0.2.66")

    def turn(when: float) -> None:
        """One loop turn with the fake clock at `when`."""
        clock.now = max(clock.now, when)
        stack.loop.run_once(timeout=0)

    def reply(kind: int, xid: int) -> None:
        msg = wdhcp.DhcpMessage(
            op=wdhcp.OP_REPLY, xid=xid, chaddr=mac, message_type=kind, yiaddr=leased,
            server_id=PEER_IP, lease_time=600, subnet_mask=0xFFFFFF00,
        )  # fmt: skip
        frame = udp_frame(wdhcp.build(msg), 67, 68, dst=0xFFFFFFFF, dst_mac=weth.BROADCAST)
        link.peer.send(frame)
        turn(clock.now)

    try:
        stack.host.start(clock.now, stack.lease_file.load(clock.now))
        while not link.sent:
            turn(stack.host.next_deadline())
        _, _, discover = dhcp_of(link.sent.pop())
        reply(wdhcp.OFFER, discover.xid)
        _, _, request = dhcp_of(link.sent.pop())
        reply(wdhcp.ACK, request.xid)
        assert "dhcp (checking, no address yet)" in stack.status_line(clock.now)
        while stack.host.dhcp.state is DhcpState.CHECKING:
            turn(stack.host.next_deadline())
        status = [m for m in manager.messages() if m.startswith("STATUS=")]
        # the lease counts from the REQUEST; the probe took a few seconds of it
        assert status and re.search(
            r"up: 192.0.2.66/24 \(dhcp bound, lease 59\ds left\)", status[-1]
        )
        assert json.loads(lease_path.read_text())["address"] == "192.0.2.66"

        link.sent.clear()
        stack.request_shutdown(clock.now)  # SIGTERM: no TCP connections, so RELEASE at once
        turn(clock.now)
        arp_request = warp.parse(weth.parse(memoryview(link.sent[-1]))[1])
        assert arp_request.target_ip == PEER_IP  # the server's MAC first: RELEASE waits for it
        assert not stack.loop._stop_requested
        answer = warp.build(warp.OP_REPLY, PEER_MAC, PEER_IP, mac, leased)
        link.peer.send(weth.build(mac, PEER_MAC, weth.ETHERTYPE_ARP) + answer)
        turn(clock.now + 0.1)
        eth, ip_header, release = dhcp_of(link.sent[-1])
        assert release.message_type == wdhcp.RELEASE and release.ciaddr == leased
        assert eth.dst == PEER_MAC and ip_header.src == leased and ip_header.dst == PEER_IP
        turn(clock.now + 0.1)
        assert stack.loop._stop_requested and not lease_path.exists()
    finally:
        stack.close()
        manager.close()
