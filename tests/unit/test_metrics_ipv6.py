"""IPv6, ICMPv6 and ND in the exposition and in `netstack stats`."""

from __future__ import annotations

import re

from netstack.counters import Counters
from netstack.stats import Snapshot, render
from tests.unit.test_metrics import exposition, samples


def v6_counters() -> Counters:
    c = Counters()
    c.ipv6_rx, c.ipv6_tx, c.ipv6_fragments_rx, c.ipv6_reassembled = 12, 9, 6, 1
    c.nd_solicitations_rx, c.nd_advertisements_tx, c.nd_dad_conflicts = 3, 3, 1
    c.icmp6[("rx", "echo_request")] = 4
    c.icmp6[("tx", "echo_reply")] = 4
    return c


def test_families_and_labels() -> None:
    parsed = samples(exposition(v6_counters(), nd_cache_entries=lambda: 2))
    assert parsed[("netstack_ipv6_packets_total", frozenset({("direction", "rx")}))] == 12
    assert parsed[("netstack_ipv6_reassemblies_total", frozenset({("result", "ok")}))] == 1
    key = frozenset({("direction", "rx"), ("type", "echo_request")})
    assert parsed[("netstack_icmpv6_messages_total", key)] == 4
    key = frozenset({("direction", "tx"), ("type", "neighbor_solicitation")})
    assert parsed[("netstack_icmpv6_messages_total", key)] == 0  # every type exported
    assert parsed[("netstack_nd_dad_conflicts_total", frozenset())] == 1
    assert parsed[("netstack_nd_cache_entries", frozenset())] == 2


def test_stats_sections() -> None:
    text = render("http://x/metrics", Snapshot(exposition(v6_counters()), 1.0))
    for section in ("Ip6:", "Icmp6:", "Nd:"):
        assert section in text, text
    assert re.search(r"^\s+4 echo_request received$", text, re.M), text
    assert re.search(r"^\s+1 duplicate addresses \(DAD\)$", text, re.M), text
