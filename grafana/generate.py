#!/usr/bin/env python3
"""Writes grafana/netstack.json, the netstack dashboard, from the panel table below.

    python grafana/generate.py           # rewrite netstack.json
    python grafana/generate.py --check   # exit 1 if netstack.json is not what the table says

Why a generator rather than hand-written JSON: ~30 panels share the same datasource, selector,
legend and layout boilerplate; as a table each panel is one entry (title, unit, queries), the
`$__rate_interval` and `$job`/`$instance` conventions are applied in one place, and the layout
cannot overlap. No SDK: plain dicts and json. The JSON is committed so that importing the
dashboard needs nothing but the file, and a unit test checks the two agree.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, NamedTuple

OUT = Path(__file__).resolve().parent / "netstack.json"
DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'job=~"$job", instance=~"$instance"'
RATE = "$__rate_interval"


def sel(metric: str, **labels: str) -> str:
    extra = "".join(f', {k}="{v}"' for k, v in labels.items())
    return f"{metric}{{{SEL}{extra}}}"


def rate(metric: str, **labels: str) -> str:
    return f"rate({sel(metric, **labels)}[{RATE}])"


def quantile(q: float, histogram: str) -> str:
    return f"histogram_quantile({q}, sum by (instance, le) ({rate(histogram + '_bucket')}))"


def mean(histogram: str) -> str:
    return (
        f"sum by (instance) ({rate(histogram + '_sum')})"
        f" / sum by (instance) ({rate(histogram + '_count')})"
    )


class Panel(NamedTuple):
    title: str
    unit: str  # a Grafana unit id: pps, Bps, cps, s, bytes, percentunit, short, none
    targets: tuple[tuple[str, str], ...]  # (PromQL, legend)
    description: str = ""
    kind: str = "timeseries"  # or "stat"
    width: int = 12
    height: int = 8


def by_direction(metric: str, legend: str = "") -> tuple[tuple[str, str], ...]:
    expr = f"sum by (instance, direction) ({rate(metric)})"
    return ((expr, f"{legend}{{{{direction}}}} {{{{instance}}}}"),)


def quantiles(histogram: str) -> tuple[tuple[str, str], ...]:
    return tuple(
        (quantile(q, histogram), f"p{int(q * 100)} {{{{instance}}}}") for q in (0.5, 0.9, 0.99)
    )


# (row title, panels); a panel's queries select `job=~"$job", instance=~"$instance"`.
ROWS: tuple[tuple[str, tuple[Panel, ...]], ...] = (
    (
        "Overview",
        (
            Panel(
                "Scrape up",
                "none",
                ((f"up{{{SEL}}}", "{{instance}}"),),
                "1 when Prometheus could scrape the stack's metrics endpoint.",
                kind="stat",
                width=6,
                height=4,
            ),
            Panel(
                "Version",
                "none",
                ((sel("netstack_build_info"), "{{version}}"),),
                "The netstack version of each instance.",
                kind="stat",
                width=6,
                height=4,
            ),
            Panel(
                "Drops",
                "pps",
                ((f"sum({rate('netstack_drops_total')})", "drops"),),
                "Everything dropped, all layers and reasons.",
                kind="stat",
                width=6,
                height=4,
            ),
            Panel(
                "TCP established",
                "short",
                ((f"sum({sel('netstack_tcp_connections', state='established')})", "established"),),
                "Connections in the established state.",
                kind="stat",
                width=6,
                height=4,
            ),
        ),
    ),
    (
        "Traffic",
        (
            Panel(
                "Frames",
                "pps",
                (
                    (
                        f"sum by (instance, interface) ({rate('netstack_rx_packets_total')})",
                        "rx {{interface}} {{instance}}",
                    ),
                    (
                        f"sum by (instance, interface) ({rate('netstack_tx_packets_total')})",
                        "tx {{interface}} {{instance}}",
                    ),
                ),
                "Ethernet frames received and sent per second.",
            ),
            Panel(
                "Bytes",
                "Bps",
                (
                    (
                        f"sum by (instance, interface) ({rate('netstack_rx_bytes_total')})",
                        "rx {{interface}} {{instance}}",
                    ),
                    (
                        f"sum by (instance, interface) ({rate('netstack_tx_bytes_total')})",
                        "tx {{interface}} {{instance}}",
                    ),
                ),
                "Bytes of Ethernet frames received and sent per second.",
            ),
        ),
    ),
    (
        "Drops",
        (
            Panel(
                "Drops by layer",
                "pps",
                ((f"sum by (layer) ({rate('netstack_drops_total')})", "{{layer}}"),),
                "Dropped input (or output the link refused) per layer.",
            ),
            Panel(
                "Drops by reason",
                "pps",
                (
                    (
                        f"sum by (layer, reason) ({rate('netstack_drops_total')})",
                        "{{layer}}/{{reason}}",
                    ),
                ),
                "Every drop has exactly one reason; see netstack/drops.py for their meaning.",
            ),
        ),
    ),
    (
        "ARP and IPv4",
        (
            Panel(
                "ARP messages",
                "pps",
                (
                    *by_direction("netstack_arp_requests_total", "requests "),
                    *by_direction("netstack_arp_replies_total", "replies "),
                ),
                "ARP requests and replies received (rx) and sent (tx).",
                width=8,
            ),
            Panel(
                "ARP cache entries",
                "short",
                ((f"sum by (instance) ({sel('netstack_arp_cache_entries')})", "{{instance}}"),),
                "Neighbours in the ARP cache (bounded by arp cache_size).",
                width=8,
            ),
            Panel(
                "ARP failures and conflicts",
                "cps",
                (
                    (
                        f"sum by (instance) ({rate('netstack_arp_resolution_failures_total')})",
                        "resolution failures {{instance}}",
                    ),
                    (
                        f"sum by (instance) ({rate('netstack_arp_conflicts_total')})",
                        "address conflicts {{instance}}",
                    ),
                ),
                "Next hops that never answered; other hosts claiming our address.",
                width=8,
            ),
            Panel(
                "IPv4 packets",
                "pps",
                by_direction("netstack_ipv4_packets_total"),
                "IPv4 packets on the wire (each fragment counts once).",
            ),
            Panel(
                "IPv4 fragments and reassembly",
                "pps",
                (
                    *by_direction("netstack_ipv4_fragments_total", "fragments "),
                    (
                        f"sum by (instance, result) ({rate('netstack_ipv4_reassemblies_total')})",
                        "reassembly {{result}} {{instance}}",
                    ),
                ),
                "Fragments received and sent; datagrams reassembled or given up.",
            ),
        ),
    ),
    (
        "ICMP and UDP",
        (
            Panel(
                "ICMP messages",
                "pps",
                (
                    (
                        f"sum by (direction, type) ({rate('netstack_icmp_messages_total')})",
                        "{{direction}} {{type}}",
                    ),
                ),
                "ICMP messages received (rx) and sent (tx), by type.",
            ),
            Panel(
                "UDP datagrams",
                "pps",
                (
                    *by_direction("netstack_udp_datagrams_total"),
                    (
                        f"sum by (instance) ({rate('netstack_udp_no_port_total')})",
                        "no port {{instance}}",
                    ),
                ),
                "UDP datagrams received and sent, and those for ports nobody listens on.",
            ),
        ),
    ),
    (
        "TCP",
        (
            Panel(
                "TCP connections by state",
                "short",
                ((f"sum by (state) ({sel('netstack_tcp_connections')})", "{{state}}"),),
                "Open connections per state, like `ss -s`.",
                width=8,
            ),
            Panel(
                "TCP segments",
                "pps",
                by_direction("netstack_tcp_segments_total"),
                "TCP segments received and sent.",
                width=8,
            ),
            Panel(
                "Offload super-frames",
                "pps",
                (
                    *by_direction("netstack_gso_frames_total", "super-frames "),
                    *by_direction("netstack_gso_segments_total", "wire segments "),
                ),
                "Super-frames (virtio-net GSO, up to 64 KiB) and the wire segments inside them; "
                "empty with offload = off.",
                width=8,
            ),
            Panel(
                "TCP retransmission ratio",
                "percentunit",
                (
                    (
                        f"sum by (instance) ({rate('netstack_tcp_retransmitted_segments_total')})"
                        " / sum by (instance) "
                        f"({rate('netstack_tcp_segments_total', direction='tx')})",
                        "{{instance}}",
                    ),
                ),
                "Retransmitted segments / segments sent (empty while nothing is sent).",
                width=8,
            ),
            Panel(
                "TCP retransmissions and timeouts",
                "cps",
                (
                    (
                        f"sum by (instance) ({rate('netstack_tcp_retransmitted_segments_total')})",
                        "retransmitted segments {{instance}}",
                    ),
                    (
                        f"sum by (instance) ({rate('netstack_tcp_fast_retransmits_total')})",
                        "fast retransmits {{instance}}",
                    ),
                    (
                        f"sum by (instance) ({rate('netstack_tcp_timeouts_total')})",
                        "RTO expiries {{instance}}",
                    ),
                ),
                "Segments sent again, fast retransmits and retransmission timer expiries.",
                width=8,
            ),
            Panel(
                "TCP opens and resets",
                "cps",
                (
                    (
                        f"sum by (instance) ({rate('netstack_tcp_active_opens_total')})",
                        "active opens {{instance}}",
                    ),
                    (
                        f"sum by (instance) ({rate('netstack_tcp_passive_opens_total')})",
                        "passive opens {{instance}}",
                    ),
                    *by_direction("netstack_tcp_resets_total", "resets "),
                ),
                "Connections opened by us (active) and accepted (passive); RSTs.",
                width=8,
            ),
            Panel(
                "TCP RTT",
                "s",
                quantiles("netstack_tcp_rtt_seconds"),
                "Round-trip time quantiles from the RTT samples (empty without samples).",
                width=8,
            ),
            Panel(
                "TCP listen queue overflows, SYN cookies, challenge ACKs",
                "cps",
                (
                    (
                        f"sum by (instance, queue) ({rate('netstack_tcp_listen_overflows_total')})",
                        "{{queue}} queue overflows {{instance}}",
                    ),
                    (
                        f"sum by (instance) ({rate('netstack_tcp_syn_cookies_sent_total')})",
                        "SYN cookies sent {{instance}}",
                    ),
                    (
                        f"sum by (instance) ({rate('netstack_tcp_syn_cookies_validated_total')})",
                        "SYN cookies validated {{instance}}",
                    ),
                    (
                        f"sum by (instance) ({rate('netstack_tcp_syn_cookies_failed_total')})",
                        "SYN cookies failed {{instance}}",
                    ),
                    (
                        f"sum by (instance) ({rate('netstack_tcp_challenge_acks_total')})",
                        "challenge ACKs {{instance}}",
                    ),
                ),
                "SYN queue or accept queue full; SYN cookies sent, accepted and refused; "
                "RFC 5961 challenge ACKs.",
                width=24,
            ),
        ),
    ),
    (
        "Loop",
        (
            Panel(
                "Frames per receive batch",
                "short",
                (
                    *quantiles("netstack_loop_batch_frames"),
                    (mean("netstack_loop_batch_frames"), "mean {{instance}}"),
                ),
                "How many frames one read_batch returned: higher under load.",
                width=8,
            ),
            Panel(
                "Loop wakeups",
                "cps",
                (
                    (
                        f"sum by (instance) ({rate('netstack_loop_wakeups_total')})",
                        "{{instance}}",
                    ),
                ),
                "Returns from epoll_wait per second.",
                width=8,
            ),
            Panel(
                "Loop busy time",
                "percentunit",
                (
                    (
                        f"sum by (instance) ({rate('netstack_loop_iteration_seconds_sum')})",
                        "busy {{instance}}",
                    ),
                ),
                "Share of wall time the loop spends working rather than waiting: "
                "near 100% means it is saturated.",
                width=8,
            ),
            Panel(
                "Loop turn duration",
                "s",
                quantiles("netstack_loop_iteration_seconds"),
                "Busy time per loop turn (dispatch, timers, transmit).",
                width=24,
            ),
        ),
    ),
    (
        "Process",
        (
            Panel(
                "Resident memory",
                "bytes",
                ((sel("process_resident_memory_bytes"), "{{instance}}"),),
                "RSS of the netstack process.",
                width=8,
            ),
            Panel(
                "Open file descriptors",
                "short",
                ((sel("process_open_fds"), "{{instance}}"),),
                "File descriptors the process holds.",
                width=8,
            ),
            Panel(
                "CPU",
                "percentunit",
                ((rate("process_cpu_seconds_total"), "{{instance}}"),),
                "CPU time (user + system) per second of wall time: 100% is one core.",
                width=8,
            ),
        ),
    ),
    (
        "DHCP",
        (
            Panel(
                "DHCP client state",
                "short",
                ((f"sum by (instance, state) ({sel('netstack_dhcp_state')})", "{{state}}"),),
                "1 for the current state of the DHCP client (all 0 with a static address).",
                width=8,
            ),
            Panel(
                "DHCP lease time left",
                "s",
                ((sel("netstack_dhcp_lease_seconds_left"), "{{instance}}"),),
                "Seconds until the lease expires: a saw-tooth renewed at T1; 0 without a lease.",
                width=8,
            ),
            Panel(
                "DHCP messages, renewals and declines",
                "cps",
                (
                    (
                        f"sum by (instance, direction, type) "
                        f"({rate('netstack_dhcp_messages_total')})",
                        "{{direction}} {{type}} {{instance}}",
                    ),
                    (
                        f"sum by (instance) ({rate('netstack_dhcp_renewals_total')})",
                        "renewals {{instance}}",
                    ),
                    (
                        f"sum by (instance) ({rate('netstack_dhcp_declines_total')})",
                        "declines {{instance}}",
                    ),
                ),
                "DHCP messages by type; leases extended; addresses declined after an ARP "
                "conflict (RFC 5227).",
                width=8,
            ),
        ),
    ),
    (
        "IPv6",
        (
            Panel(
                "IPv6 packets and fragments",
                "pps",
                (
                    *by_direction("netstack_ipv6_packets_total", "packets "),
                    *by_direction("netstack_ipv6_fragments_total", "fragments "),
                ),
                "IPv6 packets on the wire (each fragment counts once), and the fragments.",
                width=8,
            ),
            Panel(
                "ICMPv6 messages by type",
                "cps",
                (
                    (
                        f"sum by (instance, direction, type) "
                        f"({rate('netstack_icmpv6_messages_total')})",
                        "{{direction}} {{type}} {{instance}}",
                    ),
                ),
                "Echo, errors, neighbor discovery and MLD messages received and sent.",
                width=8,
            ),
            Panel(
                "Neighbor discovery",
                "short",
                (
                    (sel("netstack_nd_cache_entries"), "cache entries {{instance}}"),
                    (
                        f"sum by (instance) ({rate('netstack_nd_resolution_failures_total')})",
                        "resolution failures/s {{instance}}",
                    ),
                    (
                        f"sum by (instance) ({rate('netstack_nd_dad_conflicts_total')})",
                        "duplicate addresses (DAD)/s {{instance}}",
                    ),
                ),
                "Neighbor cache size, next hops that never answered, and addresses another "
                "node holds (a DAD failure needs a human: the address is not used).",
                width=8,
            ),
        ),
    ),
)


def _panel(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    targets = [
        {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": chr(ord("A") + i)}
        for i, (expr, legend) in enumerate(panel.targets)
    ]
    out: dict[str, Any] = {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": panel.width, "h": panel.height},
        "targets": targets,
    }
    if panel.kind == "stat":
        out["fieldConfig"] = {"defaults": {"unit": panel.unit}, "overrides": []}
        out["options"] = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "textMode": "name" if panel.title == "Version" else "value",
            "colorMode": "none",
            "graphMode": "none",
        }
    else:
        out["fieldConfig"] = {
            "defaults": {
                "unit": panel.unit,
                "min": 0,
                "custom": {"drawStyle": "line", "fillOpacity": 10, "showPoints": "never"},
            },
            "overrides": [],
        }
        out["options"] = {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    return out


def _variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": query,
        "definition": query,
        "refresh": 2,  # on time range change: new instances appear without a reload
        "includeAll": True,
        "multi": True,
        "allValue": ".+",
        "current": {},
        "options": [],
        "regex": "",
        "sort": 1,
        "hide": 0,
    }


def build() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    panel_id, y = 1, 0
    for row_title, row_panels in ROWS:
        panels.append(
            {
                "id": panel_id,
                "type": "row",
                "title": row_title,
                "collapsed": False,
                "gridPos": {"x": 0, "y": y, "w": 24, "h": 1},
                "panels": [],
            }
        )
        panel_id, y, x, row_height = panel_id + 1, y + 1, 0, 0
        for panel in row_panels:
            if x + panel.width > 24:
                x, y, row_height = 0, y + row_height, 0
            panels.append(_panel(panel, panel_id, x, y))
            panel_id, x, row_height = panel_id + 1, x + panel.width, max(row_height, panel.height)
        y += row_height
    return {
        "__requires": [
            {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "9.0.0"},
            {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
        ],
        "uid": "netstack",
        "title": "netstack",
        "description": "netstack, a user-space TCP/IP stack: traffic, drops, protocols, loop.",
        "tags": ["netstack", "network"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 38,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "timezone": "",
        "annotations": {"list": []},
        "links": [],
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "options": [],
                    "refresh": 1,
                    "regex": "",
                    "includeAll": False,
                    "multi": False,
                    "hide": 0,
                },
                _variable("job", "Job", "label_values(netstack_up, job)"),
                _variable(
                    "instance", "Instance", 'label_values(netstack_up{job=~"$job"}, instance)'
                ),
            ]
        },
        "panels": panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run python grafana/generate.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
