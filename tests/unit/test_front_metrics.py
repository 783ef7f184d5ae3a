"""The front's metric families: names per DESIGN.md, every reason from the start, bounded."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from netstack.front.stats import FORWARD_ERRORS, SOCKS_ERRORS, FrontStats
from netstack.metrics import FrontCollector


def test_front_families() -> None:
    stats = FrontStats()
    fwd = stats.forward("tcp:80", "tcp")
    fwd.sessions, fwd.active, fwd.bytes_to_target, fwd.bytes_from_target = 3, 1, 100, 2000
    fwd.error("refused")
    stats.socks.error("not_allowed")
    stats.socks.connects = 2
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FrontCollector(stats))
    text = generate_latest(registry).decode()
    assert 'netstack_forward_connections_total{forward="tcp:80",proto="tcp"} 3.0' in text
    assert 'netstack_forward_active_connections{forward="tcp:80",proto="tcp"} 1.0' in text
    assert (
        'netstack_forward_bytes_total{direction="from_target",forward="tcp:80",proto="tcp"} 2000.0'
        in text
    )
    assert 'reason="refused"} 1.0' in text
    for reason in FORWARD_ERRORS:
        assert (
            f'netstack_forward_errors_total{{forward="tcp:80",proto="tcp",reason="{reason}"}}'
            in text
        )
    for reason in SOCKS_ERRORS:
        assert f'netstack_socks_errors_total{{reason="{reason}"}}' in text
    assert 'netstack_socks_errors_total{reason="not_allowed"} 1.0' in text
    assert 'netstack_socks_requests_total{command="connect"} 2.0' in text
    assert "netstack_socks_active_sessions 0.0" in text


def test_reasons_stay_a_closed_set() -> None:
    stats = FrontStats()
    stats.forward("udp:53", "udp").error("made_up")
    stats.socks.error("also_made_up")
    assert stats.forwards["udp:53"].errors == {"other": 1}
    assert stats.socks.errors == {"other": 1}
