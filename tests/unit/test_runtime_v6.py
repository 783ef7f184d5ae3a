"""The runtime's IPv6 views: the addresses the front's SOCKS allow-list and STATUS= use."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from netstack.config import build_config


def test_current_addresses6_and_the_status_line(tmp_path: Path) -> None:
    from netstack.notify import Notifier
    from netstack.runtime import Stack
    from tests.unit.test_notify import FakeClock, FakeLink, Manager

    config = build_config(
        {
            "metrics_address": "none",
            "address6": "2001:db8::2/64",
            "ipv6_secret": "00112233445566778899aabbccddeeff",
        }
    )
    manager = Manager(tmp_path / "notify.sock")
    clock = FakeClock(100.0)
    stack = Stack(config, FakeLink(), clock=clock, notifier=Notifier(manager.env))
    try:
        stack.host.start(clock.now)
        assert stack.current_addresses6() == ()  # tentative until DAD is done
        assert "ipv6" not in stack.status_line(clock.now)
        for _ in range(100):
            if len(stack.current_addresses6()) == 2:
                break
            clock.now = max(clock.now, stack.host.next_deadline() or clock.now)
            stack.loop.run_once(timeout=0)
        ours = stack.current_addresses6()
        assert ipaddress.IPv6Interface("2001:db8::2/64") in ours
        assert any(a.ip.is_link_local and a.network.prefixlen == 64 for a in ours)
        line = stack.status_line(clock.now)
        assert line.startswith("up: 192.0.2.2 on ") and line.endswith("; ipv6 2001:db8::2/64")
    finally:
        stack.close()
        manager.close()


def test_the_start_up_line_says_how_to_reach_us_over_ipv6(tmp_path: Path) -> None:
    """A static address6 is named with its ping; `auto` says that a global address waits for
    a router; `none` says IPv6 is off (a user of the default run otherwise tries
    `ping -6 2001:db8::2` and gets nothing)."""
    from netstack.notify import Notifier
    from netstack.runtime import Stack
    from tests.unit.test_notify import FakeClock, FakeLink, Manager

    expected = {
        "2001:db8::2/64": ", ping -6 2001:db8::2",
        "auto": "; ipv6 auto: link-local now, global addresses from router advertisements",
        "none": "; ipv6 off",
    }
    for address6, tail in expected.items():
        manager = Manager(tmp_path / f"notify-{len(tail)}.sock")
        config = build_config({"metrics_address": "none", "address6": address6})
        stack = Stack(config, FakeLink(), clock=FakeClock(100.0), notifier=Notifier(manager.env))
        try:
            line = stack.describe()
            assert line.startswith("netstack up: 192.0.2.2 ")
            assert tail in line, (address6, line)
        finally:
            stack.close()
            manager.close()
