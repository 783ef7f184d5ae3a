"""`netstack stats`: a running stack's counters as a human summary, like `netstat -s` / `ss -s`.

It reads the stack's Prometheus endpoint (the same text Prometheus scrapes, parsed with
prometheus_client's parser), so it needs no privileges and works on any stack it can reach.
With `--interval N` it reads twice, N seconds apart, and shows per-second rates beside totals.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

from netstack.config import SETTINGS_BY_KEY, ConfigError, HostPort, load_toml, parse_host_port

MAX_INTERVAL = 300.0
Labels = Mapping[str, str]


class StatsError(RuntimeError):
    """The endpoint cannot be read; str() is the one line shown to the user."""


class Snapshot:
    """One scrape: every sample by name, with its labels."""

    def __init__(self, text: str, taken: float) -> None:
        from prometheus_client.parser import text_string_to_metric_families  # not for `run`

        self.taken = taken
        self.samples: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.samples[sample.name].append((sample.labels, sample.value))

    def has(self, name: str) -> bool:
        return name in self.samples

    def value(self, name: str, labels: Labels | None = None) -> float:
        """Sum of the samples of `name` whose labels include `labels` (0 when none match)."""
        want = (labels or {}).items()
        return sum(v for have, v in self.samples.get(name, ()) if want <= have.items())

    def by(self, name: str, *label_names: str) -> dict[tuple[str, ...], float]:
        """Samples of `name` summed by the given labels."""
        out: dict[tuple[str, ...], float] = defaultdict(float)
        for labels, v in self.samples.get(name, ()):
            out[tuple(labels.get(n, "") for n in label_names)] += v
        return dict(out)


# (section, rows of (text, metric sample name, label filter)); counters unless named in GAUGES.
SECTIONS: tuple[tuple[str, tuple[tuple[str, str, dict[str, str]], ...]], ...] = (
    (
        "Link",
        (
            ("frames received", "netstack_rx_packets_total", {}),
            ("bytes received", "netstack_rx_bytes_total", {}),
            ("frames sent", "netstack_tx_packets_total", {}),
            ("bytes sent", "netstack_tx_bytes_total", {}),
            ("super-frames received (offload)", "netstack_gso_frames_total", {"direction": "rx"}),
            ("super-frames sent (offload)", "netstack_gso_frames_total", {"direction": "tx"}),
            ("wire segments in them, received", "netstack_gso_segments_total", {"direction": "rx"}),
            ("wire segments in them, sent", "netstack_gso_segments_total", {"direction": "tx"}),
        ),
    ),
    (
        "Arp",
        (
            ("requests received", "netstack_arp_requests_total", {"direction": "rx"}),
            ("requests sent", "netstack_arp_requests_total", {"direction": "tx"}),
            ("replies received", "netstack_arp_replies_total", {"direction": "rx"}),
            ("replies sent", "netstack_arp_replies_total", {"direction": "tx"}),
            ("resolution failures", "netstack_arp_resolution_failures_total", {}),
            ("address conflicts", "netstack_arp_conflicts_total", {}),
            ("cache entries", "netstack_arp_cache_entries", {}),
        ),
    ),
    (
        "Ip",
        (
            ("packets received", "netstack_ipv4_packets_total", {"direction": "rx"}),
            ("packets sent", "netstack_ipv4_packets_total", {"direction": "tx"}),
            ("fragments received", "netstack_ipv4_fragments_total", {"direction": "rx"}),
            ("fragments sent", "netstack_ipv4_fragments_total", {"direction": "tx"}),
            ("datagrams reassembled", "netstack_ipv4_reassemblies_total", {"result": "ok"}),
            ("reassemblies failed", "netstack_ipv4_reassemblies_total", {"result": "failed"}),
        ),
    ),
    (
        "Ip6",
        (
            ("packets received", "netstack_ipv6_packets_total", {"direction": "rx"}),
            ("packets sent", "netstack_ipv6_packets_total", {"direction": "tx"}),
            ("fragments received", "netstack_ipv6_fragments_total", {"direction": "rx"}),
            ("fragments sent", "netstack_ipv6_fragments_total", {"direction": "tx"}),
            ("datagrams reassembled", "netstack_ipv6_reassemblies_total", {"result": "ok"}),
            ("reassemblies failed", "netstack_ipv6_reassemblies_total", {"result": "failed"}),
        ),
    ),
    (
        "Nd",
        (
            (
                "neighbor solicitations received",
                "netstack_nd_solicitations_total",
                {"direction": "rx"},
            ),
            ("neighbor solicitations sent", "netstack_nd_solicitations_total", {"direction": "tx"}),
            (
                "neighbor advertisements received",
                "netstack_nd_advertisements_total",
                {"direction": "rx"},
            ),
            (
                "neighbor advertisements sent",
                "netstack_nd_advertisements_total",
                {"direction": "tx"},
            ),
            ("router solicitations sent", "netstack_nd_router_solicitations_total", {}),
            ("router advertisements received", "netstack_nd_router_advertisements_total", {}),
            ("resolution failures", "netstack_nd_resolution_failures_total", {}),
            ("duplicate addresses (DAD)", "netstack_nd_dad_conflicts_total", {}),
            ("MLD reports sent", "netstack_mld_reports_total", {}),
            ("cache entries", "netstack_nd_cache_entries", {}),
        ),
    ),
    (
        "Udp",
        (
            ("datagrams received", "netstack_udp_datagrams_total", {"direction": "rx"}),
            ("datagrams sent", "netstack_udp_datagrams_total", {"direction": "tx"}),
            ("datagrams to closed ports", "netstack_udp_no_port_total", {}),
        ),
    ),
    (
        "Tcp",
        (
            ("segments received", "netstack_tcp_segments_total", {"direction": "rx"}),
            ("segments sent", "netstack_tcp_segments_total", {"direction": "tx"}),
            ("segments retransmitted", "netstack_tcp_retransmitted_segments_total", {}),
            ("fast retransmits", "netstack_tcp_fast_retransmits_total", {}),
            ("retransmission timeouts", "netstack_tcp_timeouts_total", {}),
            ("active opens", "netstack_tcp_active_opens_total", {}),
            ("passive opens", "netstack_tcp_passive_opens_total", {}),
            ("resets received", "netstack_tcp_resets_total", {"direction": "rx"}),
            ("resets sent", "netstack_tcp_resets_total", {"direction": "tx"}),
            ("SYN queue overflows", "netstack_tcp_listen_overflows_total", {"queue": "syn"}),
            ("accept queue overflows", "netstack_tcp_listen_overflows_total", {"queue": "accept"}),
            ("SYN cookies sent", "netstack_tcp_syn_cookies_sent_total", {}),
            ("SYN cookies validated", "netstack_tcp_syn_cookies_validated_total", {}),
            ("SYN cookies failed", "netstack_tcp_syn_cookies_failed_total", {}),
            ("challenge ACKs sent", "netstack_tcp_challenge_acks_total", {}),
            ("pure ACKs filtered (batch)", "netstack_tcp_acks_filtered_total", {}),
        ),
    ),
)
GAUGES = {"netstack_arp_cache_entries", "netstack_nd_cache_entries"}
DIRECTION_WORDS = {"rx": "received", "tx": "sent"}


def fetch(url: str, timeout: float) -> str:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read().decode("utf-8")
    except urllib.error.URLError as err:
        why = getattr(err, "reason", err)
        raise StatsError(
            f"cannot read {url}: {why} (is the stack running with metrics_address set?)"
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise StatsError(f"cannot read {url}: {err}") from None


def _number(value: float) -> str:
    return f"{value:.0f}" if value == int(value) else f"{value:.3g}"


def _rate(now: Snapshot, before: Snapshot | None, name: str, labels: Labels) -> str:
    if before is None or name in GAUGES:
        return ""
    dt = now.taken - before.taken
    per_s = (now.value(name, labels) - before.value(name, labels)) / dt if dt > 0 else 0.0
    return f"  ({per_s:.1f}/s)"


def _lines(rows: list[tuple[float, str, str]]) -> list[str]:
    width = max((len(_number(v)) for v, _, _ in rows), default=1)
    text_width = (
        max((len(text) for _, text, _ in rows), default=1) if any(r for *_, r in rows) else 0
    )
    return [
        f"    {_number(v):>{width}} {text:<{text_width}}{rate}".rstrip() for v, text, rate in rows
    ]


def render(url: str, now: Snapshot, before: Snapshot | None = None) -> str:
    """The summary text; rates when `before` (an earlier snapshot of the same stack) is given."""
    version = next(iter(now.by("netstack_build_info", "version")), ("?",))[0]
    head = f"netstack {version} at {url}"
    if before is not None:
        head += f", rates over {now.taken - before.taken:.1f} s"
    out = [head]
    interface = next(iter(now.by("netstack_rx_packets_total", "interface")), ("?",))[0]
    receive = next(iter(now.by("netstack_link_receive_info", "mode")), None)
    for section, table in SECTIONS:
        title = f"{section} {interface}:" if section == "Link" else f"{section}:"
        if section == "Link" and receive is not None:
            title = f"{section} {interface} (receive {receive[0]}):"
        rows = [
            (now.value(name, labels), text, _rate(now, before, name, labels))
            for text, name, labels in table
            if now.has(name)
        ]
        out += [title, *_lines(rows)]
        if section == "Ip":
            out += _icmp(now, before)
        if section == "Ip6":
            out += _icmp(now, before, "netstack_icmpv6_messages_total", "Icmp6:")
        if section == "Tcp":
            out += _tcp_states(now)
    out += _dhcp(now, before)
    out += _drops(now, before)
    out += _loop(now, before)
    out += _process(now, before)
    return "\n".join(out)


def _icmp(
    now: Snapshot,
    before: Snapshot | None,
    name: str = "netstack_icmp_messages_total",
    title: str = "Icmp:",
) -> list[str]:
    rows = []
    for (direction, kind), value in sorted(now.by(name, "direction", "type").items()):
        if value:
            labels = {"direction": direction, "type": kind}
            text = f"{kind} {DIRECTION_WORDS.get(direction, direction)}"
            rows.append((value, text, _rate(now, before, name, labels)))
    return [title, *(_lines(rows) if rows else ["    none"])]


def _dhcp(now: Snapshot, before: Snapshot | None) -> list[str]:
    """Only for a stack whose address comes from DHCP (one netstack_dhcp_state is 1)."""
    state = next((s for (s,), v in now.by("netstack_dhcp_state", "state").items() if v), None)
    if state is None:  # a static address: every state is 0
        return []
    left = now.value("netstack_dhcp_lease_seconds_left")
    lines = [f"    state {state}, lease {_number(left)} s left"]
    rows = [
        (now.value(name), text, _rate(now, before, name, {}))
        for text, name in (
            ("renewals", "netstack_dhcp_renewals_total"),
            ("addresses declined", "netstack_dhcp_declines_total"),
        )
    ]
    name = "netstack_dhcp_messages_total"
    for (direction, kind), value in sorted(now.by(name, "direction", "type").items()):
        if value:
            labels = {"direction": direction, "type": kind}
            text = f"{kind} {DIRECTION_WORDS.get(direction, direction)}"
            rows.append((value, text, _rate(now, before, name, labels)))
    return ["Dhcp:", *lines, *_lines(rows)]


def _tcp_states(now: Snapshot) -> list[str]:
    states = {s: v for (s,), v in now.by("netstack_tcp_connections", "state").items() if v}
    total = sum(states.values())
    detail = ", ".join(
        f"{s} {_number(v)}" for s, v in sorted(states.items(), key=lambda kv: -kv[1])
    )
    return [f"    connections: {_number(total)}" + (f" ({detail})" if detail else "")]


def _drops(now: Snapshot, before: Snapshot | None) -> list[str]:
    name = "netstack_drops_total"
    drops = {k: v for k, v in now.by(name, "layer", "reason").items() if v}
    rows = [
        (v, f"{layer}/{reason}", _rate(now, before, name, {"layer": layer, "reason": reason}))
        for (layer, reason), v in sorted(drops.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    title = f"Drops ({_number(sum(drops.values()))} total):"
    return [title, *(_lines(rows) if rows else ["    none"])]


def _mean(snap: Snapshot, before: Snapshot | None, histogram: str) -> float | None:
    total, count = snap.value(histogram + "_sum"), snap.value(histogram + "_count")
    if before is not None:
        total -= before.value(histogram + "_sum")
        count -= before.value(histogram + "_count")
    return total / count if count else None


def _loop(now: Snapshot, before: Snapshot | None) -> list[str]:
    lines = _lines(
        [
            (
                now.value("netstack_loop_wakeups_total"),
                "wakeups",
                _rate(now, before, "netstack_loop_wakeups_total", {}),
            )
        ]
    )
    batch = _mean(now, before, "netstack_loop_batch_frames")
    busy = _mean(now, before, "netstack_loop_iteration_seconds")
    if batch is not None:
        lines.append(f"    {batch:.1f} frames per receive batch (mean)")
    if busy is not None:
        lines.append(f"    {busy * 1e6:.0f} us busy per turn (mean)")
    return ["Loop:", *lines]


def _process(now: Snapshot, before: Snapshot | None) -> list[str]:
    if not now.has("process_resident_memory_bytes"):
        return []
    rss = now.value("process_resident_memory_bytes") / 2**20
    fds = now.value("process_open_fds")
    cpu = now.value("process_cpu_seconds_total")
    line = f"    rss {rss:.1f} MiB, {fds:.0f} open fds, cpu {cpu:.2f} s"
    if before is not None and now.taken > before.taken:
        used = cpu - before.value("process_cpu_seconds_total")
        line += f" ({100 * used / (now.taken - before.taken):.0f}% of a core)"
    return ["Process:", line]


# -- the command -------------------------------------------------------------------------------
def add_parser(commands: argparse._SubParsersAction) -> None:
    default = SETTINGS_BY_KEY["metrics_address"].default
    parser = commands.add_parser(
        "stats", help="summarise a running stack's counters (from its metrics endpoint)"
    )
    parser.add_argument(
        "--metrics-address",
        metavar="HOST:PORT",
        help=f"the stack's metrics address (default: from --config, else {default})",
    )
    parser.add_argument("--config", type=Path, help="read metrics_address from this TOML file")
    parser.add_argument(
        "--interval",
        type=float,
        metavar="SECONDS",
        help="read twice, this far apart, and show per-second rates",
    )
    parser.add_argument("--timeout", type=float, default=3.0, help="HTTP timeout in seconds")


def _address(args: argparse.Namespace) -> HostPort:
    setting = SETTINGS_BY_KEY["metrics_address"]
    raw, source = setting.default, "default"
    if args.config is not None:
        raw = load_toml(args.config).get(setting.key, raw)
        source = str(args.config)
    if args.metrics_address is not None:
        raw, source = args.metrics_address, "--metrics-address"
    if isinstance(raw, str) and raw.strip().lower() in ("none", "off", "false", ""):
        raise ConfigError(f"{source}: metrics are off ('none'); nothing to read")
    try:
        return parse_host_port(raw)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{source}: bad value for 'metrics_address' ({raw!r}): {err}") from None


def main(args: argparse.Namespace) -> int:
    address = _address(args)
    if args.interval is not None and not 0 < args.interval <= MAX_INTERVAL:
        raise ConfigError(f"--interval must be between 0 and {MAX_INTERVAL:g} seconds")
    host = f"[{address.host}]" if ":" in address.host else address.host
    url = f"http://{host}:{address.port}/metrics"
    try:
        before = None
        if args.interval is not None:
            before = Snapshot(fetch(url, args.timeout), time.monotonic())
            time.sleep(args.interval)
        now = Snapshot(fetch(url, args.timeout), time.monotonic())
    except StatsError as err:
        print(f"netstack: {err}", file=sys.stderr)
        return 1
    except ValueError as err:  # the parser's complaint: not a Prometheus endpoint
        print(f"netstack: {url} is not Prometheus text: {err}", file=sys.stderr)
        return 1
    print(render(url, now, before))
    return 0


# -- `netstack ss`: connections, like Linux's `ss -ti` ------------------------------------------
SS_STATES = {
    "listen": "LISTEN",
    "syn_sent": "SYN-SENT",
    "syn_received": "SYN-RECV",
    "established": "ESTAB",
    "fin_wait_1": "FIN-WAIT-1",
    "fin_wait_2": "FIN-WAIT-2",
    "close_wait": "CLOSE-WAIT",
    "closing": "CLOSING",
    "last_ack": "LAST-ACK",
    "time_wait": "TIME-WAIT",
}


def add_ss_parser(commands: argparse._SubParsersAction) -> None:
    default = SETTINGS_BY_KEY["metrics_address"].default
    parser = commands.add_parser(
        "ss", help="list a running stack's TCP connections with tcp_info, like `ss -ti`"
    )
    parser.add_argument(
        "--metrics-address",
        metavar="HOST:PORT",
        help=f"the stack's metrics address (default: from --config, else {default})",
    )
    parser.add_argument("--config", type=Path, help="read metrics_address from this TOML file")
    parser.add_argument("--timeout", type=float, default=3.0, help="HTTP timeout in seconds")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("-l", "--listening", action="store_true", help="listeners only")
    which.add_argument("-a", "--all", action="store_true", help="listeners and connections")
    parser.add_argument("--json", action="store_true", help="the endpoint's JSON as it is")


def _ms(us: int) -> str:
    return _number(round(us / 1000, 3))


def _info_line(c: Mapping) -> str:
    """The second line of `ss -ti` for one connection, in its field names and units."""
    i = c["tcp_info"]
    parts = [
        str(c.get("congestion_control") or ""),
        f"wscale:{c['wscale'][0]},{c['wscale'][1]}"
        if c["tcp_info"].get("tcpi_options", 0) & 4
        else "",
        f"rto:{_ms(i['tcpi_rto'])}",
        f"rtt:{_ms(i['tcpi_rtt'])}/{_ms(i['tcpi_rttvar'])}",
        f"ato:{_ms(i['tcpi_ato'])}",
        f"mss:{i['tcpi_snd_mss']}",
        f"pmtu:{i['tcpi_pmtu']}",
        f"rcvmss:{i['tcpi_rcv_mss']}",
        f"advmss:{i['tcpi_advmss']}",
        f"cwnd:{i['tcpi_snd_cwnd']}",
    ]
    if i["tcpi_snd_ssthresh"] < 0x7FFFFFFF // max(1, i["tcpi_snd_mss"]):
        parts.append(f"ssthresh:{i['tcpi_snd_ssthresh']}")
    parts += [
        f"bytes_sent:{i['tcpi_bytes_sent']}",
        f"bytes_retrans:{i['tcpi_bytes_retrans']}",
        f"bytes_acked:{i['tcpi_bytes_acked']}",
        f"bytes_received:{i['tcpi_bytes_received']}",
        f"segs_out:{i['tcpi_segs_out']}",
        f"segs_in:{i['tcpi_segs_in']}",
        f"data_segs_out:{i['tcpi_data_segs_out']}",
        f"data_segs_in:{i['tcpi_data_segs_in']}",
        f"lastsnd:{i['tcpi_last_data_sent']}",
        f"lastrcv:{i['tcpi_last_data_recv']}",
        f"lastack:{i['tcpi_last_ack_recv']}",
        f"unacked:{i['tcpi_unacked']}",
        f"retrans:{i['tcpi_retrans']}/{i['tcpi_total_retrans']}",
    ]
    for key, name in (("tcpi_lost", "lost"), ("tcpi_sacked", "sacked")):
        if i[key]:
            parts.append(f"{name}:{i[key]}")
    parts += [f"rcv_space:{i['tcpi_rcv_space']}", f"notsent:{i['tcpi_notsent_bytes']}"]
    parts.append(f"minrtt:{_ms(i['tcpi_min_rtt'])}")
    return "\t " + " ".join(p for p in parts if p)


def render_connections(table: Mapping, listening: bool = False, every: bool = False) -> str:
    """`ss -ti`-shaped text from the /connections JSON."""
    rows: list[tuple[Mapping, bool]] = []
    if listening or every:
        rows += [(entry, False) for entry in table.get("listeners", [])]
    if not listening:
        rows += [(entry, True) for entry in table.get("connections", [])]
    head = ("State", "Recv-Q", "Send-Q", "Local Address:Port", "Peer Address:Port")
    cells = [
        (SS_STATES.get(e["state"], e["state"]), str(e["recv_q"]), str(e["send_q"]), e["local"],
         e["peer"])
        for e, _ in rows
    ]  # fmt: skip
    widths = [max(len(r[k]) for r in [head, *cells]) for k in range(5)]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip()]
    for (entry, has_info), row in zip(rows, cells, strict=True):
        out.append("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
        if has_info:
            out.append(_info_line(entry))
    return "\n".join(out)


def ss_main(args: argparse.Namespace) -> int:
    import json

    address = _address(args)
    host = f"[{address.host}]" if ":" in address.host else address.host
    url = f"http://{host}:{address.port}/connections"
    try:
        text = fetch(url, args.timeout)
        table = json.loads(text)
    except StatsError as err:
        print(f"netstack: {err}", file=sys.stderr)
        return 1
    except ValueError as err:
        print(f"netstack: {url} did not answer JSON: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(table, indent=1))
    else:
        print(render_connections(table, args.listening, args.all))
    return 0
