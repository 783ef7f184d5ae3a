"""The Prometheus exporter: reads the loop's plain counters at scrape time, serves them over HTTP.

Nothing here runs on the packet path. The loop only does `counters.x += 1` (netstack/counters.py)
and `histogram.observe(v)` (netstack/histogram.py); `StackCollector.collect()` turns those into
metric families when Prometheus asks, on the HTTP server's thread. Reading an int attribute or
copying a dict is atomic under the GIL, and counters only grow, so no lock is needed.

Conventions (see /work/shared/DESIGN.md): `netstack_` prefix, base units, `_total` on counters,
label values from closed sets only (Drop members, directions, ICMP type names, TCP states). Every
labelled series is emitted from the first scrape, 0 included, so `rate()` works from the start
and dashboards show flat lines rather than "no data".
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import NamedTuple
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.metrics import disable_created_metrics

from netstack import __version__
from netstack.counters import Counters
from netstack.drops import Drop
from netstack.histogram import Histogram
from netstack.wire.icmp import TYPE_NAMES as ICMP_TYPE_NAMES
from netstack.wire.icmpv6 import TYPE_NAMES as ICMPV6_TYPE_NAMES

log = logging.getLogger("netstack.metrics")

PREFIX = "netstack_"
DIRECTIONS = ("rx", "tx")
# ICMP type label values: the names netstack/proto/icmp.py counts under, plus its catch-all.
ICMP_TYPES: tuple[str, ...] = (*sorted(set(ICMP_TYPE_NAMES.values())), "other")
ICMPV6_TYPES: tuple[str, ...] = (*sorted(set(ICMPV6_TYPE_NAMES.values())), "other")
# TCP connection states (RFC 9293 names, snake_case): the `state` label of
# netstack_tcp_connections. The TCP engine's tcp_connections_by_state hook returns counts keyed
# by these names; each is always emitted (0 when absent) so the series exist before TCP does.
# DHCP client states (netstack/proto/dhcp.py DhcpState values): the `state` label of
# netstack_dhcp_state, and the type names of netstack_dhcp_messages_total.
DHCP_STATES = (
    "init",
    "selecting",
    "requesting",
    "checking",
    "bound",
    "renewing",
    "rebinding",
    "init_reboot",
    "rebooting",
)
DHCP_TYPES = ("discover", "offer", "request", "decline", "ack", "nak", "release", "inform", "other")
TCP_STATES = (
    "listen",
    "syn_sent",
    "syn_received",
    "established",
    "fin_wait_1",
    "fin_wait_2",
    "close_wait",
    "closing",
    "last_ack",
    "time_wait",
)


class Family(NamedTuple):
    """One counter family read straight from Counters fields: (label values, field) per series."""

    name: str  # without the prefix and the `_total` suffix
    help: str
    labels: tuple[str, ...]
    series: tuple[tuple[tuple[str, ...], str], ...]


def _per_direction(name: str, help: str, rx: str, tx: str) -> Family:
    return Family(name, help, ("direction",), ((("rx",), rx), (("tx",), tx)))


def _single(name: str, help: str, field: str) -> Family:
    return Family(name, help, (), (((), field),))


# Counter families whose values are plain Counters fields. The link-level families carry an
# `interface` label whose value is only known at run time, so they live in LINK_FAMILIES.
COUNTER_FAMILIES: tuple[Family, ...] = (
    _per_direction(
        "arp_requests", "ARP requests received and sent.", "arp_requests_rx", "arp_requests_tx"
    ),
    _per_direction(
        "arp_replies", "ARP replies received and sent.", "arp_replies_rx", "arp_replies_tx"
    ),
    _single(
        "arp_resolution_failures",
        "Next hops that did not answer ARP after every retry.",
        "arp_resolution_failures",
    ),
    _single(
        "arp_conflicts",
        "ARP packets from another host claiming our IPv4 address (RFC 5227).",
        "arp_conflicts",
    ),
    _per_direction(
        "ipv4_packets",
        "IPv4 packets received and sent on the wire (each fragment counts once).",
        "ipv4_rx",
        "ipv4_tx",
    ),
    _per_direction(
        "ipv4_fragments",
        "IPv4 fragments received and sent (a subset of netstack_ipv4_packets_total).",
        "ipv4_fragments_rx",
        "ipv4_fragments_tx",
    ),
    Family(
        "ipv4_reassemblies",
        "Fragmented datagrams reassembled (ok) or given up (failed; the drops say why).",
        ("result",),
        ((("ok",), "ipv4_reassembled"), (("failed",), "ipv4_reassembly_failures")),
    ),
    _per_direction("udp_datagrams", "UDP datagrams received and sent.", "udp_rx", "udp_tx"),
    _per_direction(
        "tcp_segments", "TCP segments received and sent.", "tcp_segments_rx", "tcp_segments_tx"
    ),
    _single(
        "tcp_retransmitted_segments",
        "TCP segments sent again (timeouts and fast retransmits).",
        "tcp_retransmitted_segments",
    ),
    _single(
        "tcp_fast_retransmits",
        "TCP fast retransmits (three duplicate ACKs or SACK loss detection).",
        "tcp_fast_retransmits",
    ),
    _single("tcp_timeouts", "TCP retransmission timer expiries.", "tcp_timeouts"),
    _single("tcp_active_opens", "TCP connections opened by us (SYN sent).", "tcp_active_opens"),
    _single(
        "tcp_passive_opens",
        "TCP connections accepted by a listener (SYN received).",
        "tcp_passive_opens",
    ),
    _per_direction(
        "tcp_resets", "TCP RST segments received and sent.", "tcp_resets_rx", "tcp_resets_tx"
    ),
    Family(
        "tcp_listen_overflows",
        "Connections refused because a listener's SYN queue or accept queue was full.",
        ("queue",),
        ((("syn",), "tcp_syn_queue_overflows"), (("accept",), "tcp_accept_queue_overflows")),
    ),
    _single(
        "tcp_syn_cookies_sent",
        "SYN-ACKs sent with a SYN cookie (SYN queue full).",
        "tcp_syn_cookies_sent",
    ),
    _single(
        "tcp_syn_cookies_validated",
        "ACKs that carried a valid SYN cookie and opened a connection.",
        "tcp_syn_cookies_validated",
    ),
    _single(
        "tcp_syn_cookies_failed",
        "ACKs to a listener that carried no valid SYN cookie.",
        "tcp_syn_cookies_failed",
    ),
    _single(
        "tcp_challenge_acks",
        "RFC 5961 challenge ACKs sent (suspicious RST or SYN in window).",
        "tcp_challenge_acks",
    ),
    _single("loop_wakeups", "Returns from epoll_wait (loop turns).", "loop_wakeups"),
    _single(
        "dhcp_renewals",
        "DHCP leases extended by an ACK while renewing (T1) or rebinding (T2).",
        "dhcp_renewals",
    ),
    _single(
        "dhcp_declines",
        "DHCP addresses declined: another host answered the ARP probe (RFC 5227).",
        "dhcp_declines",
    ),
    _per_direction(
        "gso_frames",
        "Super-frames (virtio-net GSO, up to 64 KiB) received and sent with offloads on.",
        "gso_frames_rx",
        "gso_frames_tx",
    ),
    _per_direction(
        "gso_segments",
        "Wire segments inside those super-frames (what the kernel merged or will cut).",
        "gso_segments_rx",
        "gso_segments_tx",
    ),
    _single(
        "pmtu_updates",
        "Path MTU estimates lowered by a validated ICMP fragmentation needed (RFC 1191).",
        "pmtu_updates",
    ),
    _single(
        "tcp_plpmtud_black_holes",
        "TCP MSS reductions by black-hole detection after repeated RTOs (RFC 4821/8899).",
        "tcp_plpmtud_black_holes",
    ),
    _per_direction(
        "ipv6_packets",
        "IPv6 packets received and sent on the wire (each fragment counts once).",
        "ipv6_rx",
        "ipv6_tx",
    ),
    _per_direction(
        "ipv6_fragments",
        "IPv6 fragments received and sent (a subset of netstack_ipv6_packets_total).",
        "ipv6_fragments_rx",
        "ipv6_fragments_tx",
    ),
    Family(
        "ipv6_reassemblies",
        "Fragmented IPv6 datagrams reassembled (ok) or given up (failed; the drops say why).",
        ("result",),
        ((("ok",), "ipv6_reassembled"), (("failed",), "ipv6_reassembly_failures")),
    ),
    _per_direction(
        "nd_solicitations",
        "Neighbor solicitations received and sent (DAD probes included).",
        "nd_solicitations_rx",
        "nd_solicitations_tx",
    ),
    _per_direction(
        "nd_advertisements",
        "Neighbor advertisements received and sent.",
        "nd_advertisements_rx",
        "nd_advertisements_tx",
    ),
    _single(
        "nd_router_solicitations",
        "Router solicitations sent.",
        "nd_router_solicitations_tx",
    ),
    _single(
        "nd_router_advertisements",
        "Router advertisements received.",
        "nd_router_advertisements_rx",
    ),
    _single(
        "nd_resolution_failures",
        "IPv6 next hops that did not answer neighbor solicitation after every retry.",
        "nd_resolution_failures",
    ),
    _single(
        "nd_dad_conflicts",
        "IPv6 addresses of ours another node holds (duplicate address detection, RFC 4862).",
        "nd_dad_conflicts",
    ),
    _single("mld_reports", "MLDv2 reports sent for the groups we join.", "mld_reports_tx"),
    _single(
        "loop_busy_polls",
        "Loop turns whose frames busy polling found (busy_poll) before the loop slept.",
        "loop_busy_polls",
    ),
    _single(
        "loop_busy_poll_spins",
        "Busy-poll spins begun after a turn that received frames (busy_poll on; with auto, "
        "those its success history allowed); loop_busy_polls counts those that found events.",
        "loop_busy_poll_spins",
    ),
    _single(
        "tcp_acks_filtered",
        "Pure TCP ACKs a later ACK of the same receive batch made redundant (not processed).",
        "tcp_acks_filtered",
    ),
)

# Counter families by (direction, type): (name, help, Counters field keyed by (direction, type),
# every type, so each series exists from the first scrape, 0 included).
TYPED_FAMILIES: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("icmp_messages", "ICMP messages received and sent, by type.", "icmp", ICMP_TYPES),
    (
        "icmpv6_messages",
        "ICMPv6 messages received and sent, by type (ND and MLD included).",
        "icmp6",
        ICMPV6_TYPES,
    ),
    (
        "dhcp_messages",
        "DHCP messages received (rx, for us) and sent (tx), by type.",
        "dhcp_messages",
        DHCP_TYPES,
    ),
)

# (name, help, Counters field) of the per-interface link counters.
LINK_FAMILIES = (
    ("rx_packets", "Ethernet frames received.", "rx_packets"),
    ("tx_packets", "Ethernet frames sent.", "tx_packets"),
    ("rx_bytes", "Bytes of Ethernet frames received.", "rx_bytes"),
    ("tx_bytes", "Bytes of Ethernet frames sent.", "tx_bytes"),
)

# (name, help, Counters field) of the histograms.
HISTOGRAMS = (
    ("loop_batch_frames", "Frames per receive batch (one read_batch call).", "loop_batch_frames"),
    (
        "loop_iteration_seconds",
        "Busy time of one loop turn: dispatch, timers and transmit (the epoll wait excluded).",
        "loop_iteration_seconds",
    ),
    ("tcp_rtt_seconds", "TCP round-trip time samples (RFC 6298).", "tcp_rtt_seconds"),
)


def _no_connections() -> Mapping[str, int]:
    return {}


def _no_dhcp() -> tuple[str, float] | None:
    return None


class StackCollector:
    """A prometheus_client custom collector over one stack's Counters and a few gauge hooks.

    `arp_cache_entries()` and `tcp_connections_by_state()` run on the scrape thread: they must
    only read (len() of a dict, a copy of per-state ints) and never iterate a dict the loop may
    be resizing. A hook that raises costs its family for that scrape, never the whole scrape.
    """

    def __init__(
        self,
        counters: Counters,
        *,
        interface: str,
        arp_cache_entries: Callable[[], int] = lambda: 0,
        tcp_connections_by_state: Callable[[], Mapping[str, int]] = _no_connections,
        version: str = __version__,
        dhcp_status: Callable[[], tuple[str, float] | None] = _no_dhcp,
        pmtu_cache_entries: Callable[[], int] = lambda: 0,
        nd_cache_entries: Callable[[], int] = lambda: 0,
        receive_mode: str | None = None,
        rx_checksums_completed: Callable[[], int] | None = None,
    ) -> None:
        self.receive_mode = receive_mode  # AF_PACKET: "recvmmsg" or "tpacket_v3 ring"
        # AF_PACKET without the vnet header: partial checksums the link completed (a C counter
        # read on the scrape thread; one aligned 64-bit load)
        self.rx_checksums_completed = rx_checksums_completed
        self.pmtu_cache_entries = pmtu_cache_entries  # len() of the PMTU caches (v4 + v6)
        self.nd_cache_entries = nd_cache_entries
        self.counters = counters
        self.dhcp_status = dhcp_status  # (state, lease seconds left), None without DHCP
        self.interface = interface
        self.arp_cache_entries = arp_cache_entries
        self.tcp_connections_by_state = tcp_connections_by_state
        self.version = version
        self._hook_failures: set[str] = set()

    def describe(self) -> list[Metric]:
        # Registration asks describe() for the names; returning nothing skips the duplicate
        # check instead of running the hooks at registration time.
        return []

    def collect(self) -> Iterator[Metric]:
        c = self.counters
        up = GaugeMetricFamily(PREFIX + "up", "1 while the stack's loop is running.")
        up.add_metric([], 1)
        yield up
        info = GaugeMetricFamily(
            PREFIX + "build_info",
            "Always 1; the labels say which netstack this is.",
            labels=["version"],
        )
        info.add_metric([self.version], 1)
        yield info
        if self.receive_mode is not None:
            mode = GaugeMetricFamily(
                PREFIX + "link_receive_info",
                "Always 1; `mode` says how the link receives (AF_PACKET: recvmmsg or the "
                "TPACKET_V3 ring).",
                labels=["interface", "mode"],
            )
            mode.add_metric([self.interface, self.receive_mode], 1)
            yield mode
        if self.rx_checksums_completed is not None:
            completed = self._call("rx_checksums_completed", self.rx_checksums_completed)
            if completed is not None:
                family = CounterMetricFamily(
                    PREFIX + "link_rx_checksums_completed",
                    "Partial TCP/UDP checksums (a local sender's CHECKSUM_PARTIAL over a veth) "
                    "the AF_PACKET link completed without the virtio-net header.",
                    labels=["interface"],
                )
                family.add_metric([self.interface], completed)
                yield family

        for name, help, field in LINK_FAMILIES:
            family = CounterMetricFamily(PREFIX + name, help, labels=["interface"])
            family.add_metric([self.interface], getattr(c, field))
            yield family

        drops = dict(c.drops)  # one C-level copy: the loop may add a key meanwhile
        family = CounterMetricFamily(
            PREFIX + "drops",
            "Frames, packets, datagrams or segments dropped, by layer and reason.",
            labels=["layer", "reason"],
        )
        for member in Drop:
            family.add_metric([member.layer, member.reason], drops.get(member, 0))
        yield family
        no_port = CounterMetricFamily(
            PREFIX + "udp_no_port",
            "UDP datagrams for a port nobody listens on (also a drop, udp/no_port).",
        )
        no_port.add_metric([], drops.get(Drop.UDP_NO_PORT, 0))
        yield no_port

        for spec in COUNTER_FAMILIES:
            family = CounterMetricFamily(PREFIX + spec.name, spec.help, labels=list(spec.labels))
            for values, field in spec.series:
                family.add_metric(list(values), getattr(c, field))
            yield family

        for name, help, field, kinds in TYPED_FAMILIES:
            counts = dict(getattr(c, field))
            family = CounterMetricFamily(PREFIX + name, help, labels=["direction", "type"])
            for direction in DIRECTIONS:
                for kind in kinds:
                    family.add_metric([direction, kind], counts.get((direction, kind), 0))
            yield family

        for name, help, field in HISTOGRAMS:
            yield _histogram(PREFIX + name, help, getattr(c, field))

        yield from self._gauges()

    def _gauges(self) -> Iterator[Metric]:
        entries = self._call("arp_cache_entries", self.arp_cache_entries)
        if entries is not None:
            yield GaugeMetricFamily(
                PREFIX + "arp_cache_entries", "Entries in the ARP cache.", value=entries
            )
        entries = self._call("nd_cache_entries", self.nd_cache_entries)
        if entries is not None:
            yield GaugeMetricFamily(
                PREFIX + "nd_cache_entries", "Entries in the IPv6 neighbor cache.", value=entries
            )
        states = self._call("tcp_connections_by_state", self.tcp_connections_by_state)
        if states is not None:
            family = GaugeMetricFamily(
                PREFIX + "tcp_connections", "TCP connections by state.", labels=["state"]
            )
            for state in TCP_STATES:
                family.add_metric([state], states.get(state, 0))
            yield family

        yield GaugeMetricFamily(
            PREFIX + "pmtu_cache_entries",
            "Destinations with a path MTU estimate below the link MTU (RFC 1191, RFC 8201).",
            value=self._call("pmtu_cache_entries", self.pmtu_cache_entries) or 0,
        )
        # Exported with a static address too (all 0), so dashboards and rate() find the series.
        current, seconds_left = self._call("dhcp_status", self.dhcp_status) or (None, 0.0)
        family = GaugeMetricFamily(
            PREFIX + "dhcp_state",
            "1 for the DHCP client's current state (RFC 2131; checking: the ARP probe); "
            "all 0 when the address is static.",
            labels=["state"],
        )
        for state in DHCP_STATES:
            family.add_metric([state], 1 if state == current else 0)
        yield family
        yield GaugeMetricFamily(
            PREFIX + "dhcp_lease_seconds_left",
            "Seconds until the DHCP lease expires (0 without a lease; +Inf if infinite).",
            value=seconds_left,
        )

    def _call(self, name: str, hook: Callable[[], object]):  # -> hook's result or None
        try:
            return hook()
        except Exception:
            if name not in self._hook_failures:  # log once per hook, not once per scrape
                self._hook_failures.add(name)
                log.exception("metrics hook %s failed; its family is left out", name)
            return None


def _histogram(name: str, help: str, histogram: Histogram) -> HistogramMetricFamily:
    snap = histogram.snapshot()
    buckets = [(_le(bound), count) for bound, count in snap.buckets]
    return HistogramMetricFamily(name, help, buckets=buckets, sum_value=snap.sum)


def _le(bound: float) -> str:
    if bound == float("inf"):
        return "+Inf"
    return repr(float(bound))


def build_registry(
    counters: Counters,
    *,
    interface: str,
    arp_cache_entries: Callable[[], int] = lambda: 0,
    tcp_connections_by_state: Callable[[], Mapping[str, int]] = _no_connections,
    dhcp_status: Callable[[], tuple[str, float] | None] = _no_dhcp,
    pmtu_cache_entries: Callable[[], int] = lambda: 0,
    nd_cache_entries: Callable[[], int] = lambda: 0,
    receive_mode: str | None = None,
    rx_checksums_completed: Callable[[], int] | None = None,
) -> CollectorRegistry:
    """A fresh registry (never the global default one) with the stack and process collectors."""
    disable_created_metrics()  # no `_created` series: they double the series count for nothing
    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        StackCollector(
            counters,
            interface=interface,
            arp_cache_entries=arp_cache_entries,
            tcp_connections_by_state=tcp_connections_by_state,
            dhcp_status=dhcp_status,
            pmtu_cache_entries=pmtu_cache_entries,
            nd_cache_entries=nd_cache_entries,
            receive_mode=receive_mode,
            rx_checksums_completed=rx_checksums_completed,
        )
    )
    ProcessCollector(registry=registry)  # process_resident_memory_bytes, _open_fds, _cpu_...
    return registry


class _QuietHandler(WSGIRequestHandler):
    """No access log on stderr; a client that stalls is dropped after `timeout` seconds."""

    timeout = 3.0

    def log_message(self, format: str, *args: object) -> None:
        pass


def _with_routes(metrics_app, routes: Mapping[str, Callable[[], object]]):
    """A WSGI app serving `routes` as JSON and everything else as the Prometheus app does."""

    def app(environ, start_response):
        route = routes.get(environ.get("PATH_INFO", ""))
        if route is None:
            return metrics_app(environ, start_response)
        try:
            body = json.dumps(route()).encode()
            status = "200 OK"
        except TimeoutError as err:  # the loop is busy or gone: say so, never guess
            body = json.dumps({"error": str(err)}).encode()
            status = "503 Service Unavailable"
        start_response(status, [("Content-Type", "application/json")])
        return [body]

    return app


class MetricsServer:
    """Serves one registry at http://HOST:PORT/metrics from a single daemon thread.

    One request at a time on purpose: the thread only reads counters, and a scrape is a few
    milliseconds. `close()` stops the thread and frees the port.
    """

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        routes: Mapping[str, Callable[[], object]] | None = None,
    ) -> None:
        """`routes`: admin endpoints beside /metrics, path -> a function returning JSON-ready
        data (e.g. /connections for `netstack ss`); it runs on this server's thread."""
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family = infos[0][0]

        class Server(WSGIServer):
            address_family = family
            allow_reuse_address = True

            def handle_error(self, request: object, client_address: object) -> None:
                log.debug("metrics request from %s failed", client_address, exc_info=True)

        self._server = Server(infos[0][4][:2], _QuietHandler)
        self._server.set_app(_with_routes(make_wsgi_app(registry), routes or {}))
        bound = self._server.server_address
        self.host, self.port = str(bound[0]), int(bound[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.5},
            name="netstack-metrics", daemon=True,
        )  # fmt: skip
        self._thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5)
        with contextlib.suppress(OSError):
            self._server.server_close()


# -- the front (netstack/front): forwards and the SOCKS server --------------------------------
class FrontCollector:
    """The front's counters (front/stats.py), read at scrape time like StackCollector's.

    Every forward the config ever named keeps its series (counters never go back after a
    reload removes it); reasons come from the closed tuples in front/stats.py.
    """

    def __init__(self, stats) -> None:  # netstack.front.stats.FrontStats
        self.stats = stats

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        from netstack.front.stats import FORWARD_ERRORS, SOCKS_ERRORS

        forwards = dict(self.stats.forwards)  # one C-level copy: a reload may add a key
        sessions = CounterMetricFamily(
            PREFIX + "forward_connections",
            "Sessions a forward accepted (TCP connections, UDP flows).",
            labels=["forward", "proto"],
        )
        active = GaugeMetricFamily(
            PREFIX + "forward_active_connections",
            "Sessions a forward relays now.",
            labels=["forward", "proto"],
        )
        moved = CounterMetricFamily(
            PREFIX + "forward_bytes",
            "Payload bytes a forward relayed, toward its target and back from it.",
            labels=["forward", "proto", "direction"],
        )
        errors = CounterMetricFamily(
            PREFIX + "forward_errors",
            "Forwarded sessions that failed or ended abnormally, by reason.",
            labels=["forward", "proto", "reason"],
        )
        for name, fs in forwards.items():
            sessions.add_metric([name, fs.proto], fs.sessions)
            active.add_metric([name, fs.proto], fs.active)
            moved.add_metric([name, fs.proto, "to_target"], fs.bytes_to_target)
            moved.add_metric([name, fs.proto, "from_target"], fs.bytes_from_target)
            counts = dict(fs.errors)
            for reason in FORWARD_ERRORS:
                errors.add_metric([name, fs.proto, reason], counts.get(reason, 0))
        yield from (sessions, active, moved, errors)

        socks = self.stats.socks
        yield CounterMetricFamily(
            PREFIX + "socks_sessions", "SOCKS clients accepted.", value=socks.sessions
        )
        yield GaugeMetricFamily(
            PREFIX + "socks_active_sessions", "SOCKS sessions open now.", value=socks.active
        )
        requests = CounterMetricFamily(
            PREFIX + "socks_requests",
            "SOCKS requests granted, by command.",
            labels=["command"],
        )
        requests.add_metric(["connect"], socks.connects)
        requests.add_metric(["udp_associate"], socks.udp_associations)
        requests.add_metric(["bind"], socks.binds)
        yield requests
        moved = CounterMetricFamily(
            PREFIX + "socks_bytes",
            "Payload bytes relayed for SOCKS clients, toward their targets and back.",
            labels=["direction"],
        )
        moved.add_metric(["to_target"], socks.bytes_to_target)
        moved.add_metric(["from_target"], socks.bytes_from_target)
        yield moved
        errors = CounterMetricFamily(
            PREFIX + "socks_errors",
            "SOCKS sessions refused or failed, by reason (unexpected_peer: a stray connection "
            "to a BIND's port, reset while the BIND waits on).",
            labels=["reason"],
        )
        counts = dict(socks.errors)
        for reason in SOCKS_ERRORS:
            errors.add_metric([reason], counts.get(reason, 0))
        yield errors
