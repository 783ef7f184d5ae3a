"""The exporter without a network: histogram, collector, HTTP server on 127.0.0.1, stats, dashboard.

The dashboard and alert rules are checked against the exporter's own output here, so a renamed
metric breaks a unit test rather than a panel; tests/integration/test_prometheus.py then runs the
queries through a real Prometheus.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import re
import socket
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from netstack import __version__
from netstack.cli import main
from netstack.config import ConfigError, HostPort, build_config
from netstack.counters import Counters
from netstack.drops import Drop
from netstack.histogram import Histogram
from netstack.io.loop import Loop
from netstack.metrics import (
    COUNTER_FAMILIES,
    ICMP_TYPES,
    LINK_FAMILIES,
    TCP_STATES,
    MetricsServer,
    _QuietHandler,
    build_registry,
)
from netstack.stats import Snapshot, render

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "grafana"


# -- helpers -------------------------------------------------------------------------------------
def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """{(sample name, labels): value} of an exposition text, parsed by prometheus_client."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(parsed: dict, name: str, **labels: str) -> float:
    return parsed[(name, frozenset(labels.items()))]


def exposition(counters: Counters, **hooks) -> str:
    registry = build_registry(counters, interface="tap0", **hooks)
    return generate_latest(registry).decode()


@contextlib.contextmanager
def serving(counters: Counters, **hooks) -> Iterator[MetricsServer]:
    server = MetricsServer("127.0.0.1", 0, build_registry(counters, interface="tap0", **hooks))
    try:
        yield server
    finally:
        server.close()


def get(url: str, timeout: float = 5) -> tuple[str, str]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.headers["Content-Type"], response.read().decode()


# -- histogram -----------------------------------------------------------------------------------
def test_histogram_buckets_follow_le_semantics() -> None:
    h = Histogram((1, 2, 4))
    for v in (0, 1, 1.5, 2, 3, 4, 5, 100):
        h.observe(v)
    snap = h.snapshot()
    assert snap.buckets == [(1, 2), (2, 4), (4, 6), (float("inf"), 8)]
    assert snap.count == h.count == 8
    assert snap.sum == pytest.approx(116.5)


@pytest.mark.parametrize("bounds", [(), (2, 1), (1, 1, 2)])
def test_histogram_rejects_unsorted_bounds(bounds: tuple) -> None:
    with pytest.raises(ValueError):
        Histogram(bounds)


def test_loop_observes_turn_time_and_batch_sizes() -> None:
    """run_once records one busy-time sample per turn and one batch size per non-empty read."""

    class FakeLink:
        name, max_batch, rx_oversize = "fake0", 8, 0

        def __init__(self) -> None:
            self.r, self.w = socket.socketpair()
            self.fd = self.r.fileno()
            self.batches = [[memoryview(b"x" * 60)] * 3, []]

        def receive_batch(self) -> list[memoryview]:
            self.r.recv(16)
            return self.batches.pop(0) if self.batches else []

        def send_batch(self, frames) -> int:
            return len(frames)

    counters = Counters()
    link = FakeLink()
    with Loop(counters) as loop:
        loop.add_link(link, lambda frames, now: None)
        loop.run_once(timeout=0)
        assert counters.loop_iteration_seconds.count == 1
        assert counters.loop_batch_frames.count == 0
        link.w.send(b"!")
        loop.run_once(timeout=1)
    assert counters.loop_iteration_seconds.count == 2
    assert counters.loop_batch_frames.snapshot().buckets[:3] == [(1, 0), (2, 0), (4, 1)]
    assert counters.loop_batch_frames.sum == 3
    link.r.close()
    link.w.close()


# -- collector -----------------------------------------------------------------------------------
def busy_counters() -> Counters:
    c = Counters()
    c.rx_packets, c.rx_bytes, c.tx_packets, c.tx_bytes = 11, 1100, 7, 700
    c.arp_requests_rx, c.arp_replies_tx, c.arp_conflicts = 3, 2, 1
    c.ipv4_rx, c.ipv4_fragments_rx, c.ipv4_reassembled, c.ipv4_reassembly_failures = 9, 4, 1, 2
    c.udp_rx, c.udp_tx = 5, 4
    c.tcp_segments_tx, c.tcp_retransmitted_segments, c.tcp_resets_rx = 40, 3, 2
    c.tcp_syn_queue_overflows, c.tcp_accept_queue_overflows = 6, 8
    c.loop_wakeups = 99
    c.icmp[("rx", "echo_request")] = 4
    c.icmp[("tx", "echo_reply")] = 4
    c.drop(Drop.UDP_NO_PORT, 2)
    c.drop(Drop.IPV4_BAD_CHECKSUM)
    c.tcp_rtt_seconds.observe(0.003)
    c.loop_batch_frames.observe(5)
    return c


def test_every_family_reads_the_counters() -> None:
    parsed = samples(
        exposition(
            busy_counters(),
            arp_cache_entries=lambda: 3,
            tcp_connections_by_state=lambda: {"established": 2, "listen": 1},
        )
    )
    expect = {
        ("netstack_rx_packets_total", (("interface", "tap0"),)): 11,
        ("netstack_tx_bytes_total", (("interface", "tap0"),)): 700,
        ("netstack_arp_requests_total", (("direction", "rx"),)): 3,
        ("netstack_arp_replies_total", (("direction", "tx"),)): 2,
        ("netstack_arp_conflicts_total", ()): 1,
        ("netstack_arp_cache_entries", ()): 3,
        ("netstack_ipv4_packets_total", (("direction", "rx"),)): 9,
        ("netstack_ipv4_fragments_total", (("direction", "rx"),)): 4,
        ("netstack_ipv4_reassemblies_total", (("result", "ok"),)): 1,
        ("netstack_ipv4_reassemblies_total", (("result", "failed"),)): 2,
        ("netstack_udp_datagrams_total", (("direction", "tx"),)): 4,
        ("netstack_udp_no_port_total", ()): 2,
        ("netstack_drops_total", (("layer", "udp"), ("reason", "no_port"))): 2,
        ("netstack_drops_total", (("layer", "ipv4"), ("reason", "bad_checksum"))): 1,
        ("netstack_icmp_messages_total", (("direction", "rx"), ("type", "echo_request"))): 4,
        ("netstack_icmp_messages_total", (("direction", "tx"), ("type", "echo_reply"))): 4,
        ("netstack_tcp_segments_total", (("direction", "tx"),)): 40,
        ("netstack_tcp_retransmitted_segments_total", ()): 3,
        ("netstack_tcp_resets_total", (("direction", "rx"),)): 2,
        ("netstack_tcp_listen_overflows_total", (("queue", "syn"),)): 6,
        ("netstack_tcp_listen_overflows_total", (("queue", "accept"),)): 8,
        ("netstack_tcp_connections", (("state", "established"),)): 2,
        ("netstack_tcp_connections", (("state", "listen"),)): 1,
        ("netstack_tcp_connections", (("state", "time_wait"),)): 0,
        ("netstack_tcp_rtt_seconds_bucket", (("le", "0.0025"),)): 0,
        ("netstack_tcp_rtt_seconds_bucket", (("le", "0.005"),)): 1,
        ("netstack_tcp_rtt_seconds_count", ()): 1,
        ("netstack_loop_batch_frames_bucket", (("le", "8.0"),)): 1,
        ("netstack_loop_batch_frames_sum", ()): 5,
        ("netstack_loop_wakeups_total", ()): 99,
        ("netstack_build_info", (("version", __version__),)): 1,
        ("netstack_up", ()): 1,
    }
    for (name, labels), want in expect.items():
        assert parsed[(name, frozenset(labels))] == want, (name, labels)
    assert parsed[("process_resident_memory_bytes", frozenset())] > 0
    assert ("process_open_fds", frozenset()) in parsed
    assert ("process_cpu_seconds_total", frozenset()) in parsed


def test_every_table_family_reads_its_own_field() -> None:
    """Each Counters field behind a table family lands in its own series (no copy-paste slips)."""
    c = Counters()
    fields = [(spec, labels, field) for spec in COUNTER_FAMILIES for labels, field in spec.series]
    for n, (_, _, field) in enumerate(fields, start=1):
        setattr(c, field, 1000 + n)
    parsed = samples(exposition(c))
    for n, (spec, labels, _) in enumerate(fields, start=1):
        name = f"netstack_{spec.name}_total"
        assert value(parsed, name, **dict(zip(spec.labels, labels, strict=True))) == 1000 + n


def test_every_int_counter_is_exported() -> None:
    """A new Counters int field needs a row in metrics.COUNTER_FAMILIES (one line)."""
    exported = {field for spec in COUNTER_FAMILIES for _, field in spec.series}
    exported |= {field for _, _, field in LINK_FAMILIES}
    ints = {f.name for f in dataclasses.fields(Counters) if f.type in ("int", int)}
    missing = sorted(ints - exported)
    assert not missing, f"add these Counters fields to netstack/metrics.py: {missing}"


def test_labelled_series_exist_from_the_start() -> None:
    """A fresh stack exports every drop reason, ICMP type and TCP state at 0 so rate() works."""
    parsed = samples(exposition(Counters()))
    for member in Drop:
        assert value(parsed, "netstack_drops_total", layer=member.layer, reason=member.reason) == 0
    for direction in ("rx", "tx"):
        for kind in ICMP_TYPES:
            assert (
                value(parsed, "netstack_icmp_messages_total", direction=direction, type=kind) == 0
            )
    for state in TCP_STATES:
        assert value(parsed, "netstack_tcp_connections", state=state) == 0
    for name in ("netstack_tcp_segments_total", "netstack_tcp_resets_total"):
        assert value(parsed, name, direction="rx") == value(parsed, name, direction="tx") == 0
    assert value(parsed, "netstack_tcp_rtt_seconds_count") == 0


def test_no_created_series_and_bounded_names() -> None:
    text = exposition(busy_counters())
    assert "_created" not in text
    names = {name for name, _ in samples(text)}
    assert all(re.fullmatch(r"(netstack|process)_[a-z0-9_]+", n) for n in names), names
    counters = {f.name for f in text_string_to_metric_families(text) if f.type == "counter"}
    assert all(f"{n}_total" in names for n in counters)


def test_fresh_registry_leaves_the_default_one_alone() -> None:
    before = set(REGISTRY._names_to_collectors)
    build_registry(Counters(), interface="tap0")
    assert set(REGISTRY._names_to_collectors) == before
    assert not any(n.startswith("netstack_") for n in before)


def test_failing_hook_costs_only_its_family(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> dict:
        raise RuntimeError("dictionary changed size during iteration")

    registry = build_registry(busy_counters(), interface="tap0", tcp_connections_by_state=broken)
    generate_latest(registry)
    text = generate_latest(registry).decode()  # the second failure is not logged again
    assert "netstack_tcp_connections{" not in text
    assert "netstack_rx_packets_total" in text
    assert sum("tcp_connections_by_state" in r.message for r in caplog.records) == 1


# -- HTTP server ---------------------------------------------------------------------------------
def test_server_reads_counters_at_scrape_time() -> None:
    counters = Counters()
    with serving(counters) as server:
        assert server.url.startswith("http://127.0.0.1:")
        ctype, text = get(server.url)
        assert ctype.startswith("text/plain")
        assert value(samples(text), "netstack_udp_datagrams_total", direction="rx") == 0
        counters.udp_rx += 17
        counters.drop(Drop.ARP_BAD_SENDER)
        parsed = samples(get(server.url)[1])
        assert value(parsed, "netstack_udp_datagrams_total", direction="rx") == 17
        assert value(parsed, "netstack_drops_total", layer="arp", reason="bad_sender") == 1


def test_server_close_frees_the_port_and_busy_port_fails() -> None:
    with serving(Counters()) as server:
        port = server.port
        with pytest.raises(OSError):
            MetricsServer("127.0.0.1", port, build_registry(Counters(), interface="x"))
    again = MetricsServer("127.0.0.1", port, build_registry(Counters(), interface="x"))
    again.close()


def test_server_drops_a_client_that_stalls() -> None:
    """A connection that never sends its request cannot keep the exporter from serving."""
    with serving(Counters()) as server:
        stalled = socket.create_connection(("127.0.0.1", server.port))
        try:
            started = time.monotonic()
            ctype, _ = get(server.url, timeout=15)  # served once the stalled one times out
            assert ctype.startswith("text/plain")
            assert time.monotonic() - started < _QuietHandler.timeout + 2
        finally:
            stalled.close()


# -- config --------------------------------------------------------------------------------------
def test_metrics_address_setting() -> None:
    assert build_config().metrics_address == HostPort("127.0.0.1", 9464)
    assert build_config({"metrics_address": "none"}).metrics_address is None
    assert build_config({"metrics_address": "[::1]:9100"}).metrics_address == ("::1", 9100)
    assert str(build_config({"metrics_address": "[::1]:9100"}).metrics_address) == "[::1]:9100"
    assert "metrics_address = 127.0.0.1:9464" in build_config().describe()


@pytest.mark.parametrize(
    "bad", ["9464", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:65536", "::1:80", "a b:80", "1.2.3:80"]
)
def test_bad_metrics_address_names_the_key(bad: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_config({"metrics_address": bad})
    assert "'metrics_address'" in str(err.value)


# -- netstack stats ------------------------------------------------------------------------------
def test_stats_rates_and_drops() -> None:
    c = busy_counters()
    c.tcp_rtt_seconds.observe(0.001)
    before = Snapshot(exposition(c, tcp_connections_by_state=lambda: {"established": 2}), 10.0)
    c.rx_packets += 50
    c.drop(Drop.UDP_NO_PORT, 4)
    now = Snapshot(exposition(c, tcp_connections_by_state=lambda: {"established": 2}), 12.0)
    text = render("http://x/metrics", now, before)
    assert "rates over 2.0 s" in text
    assert re.search(r"^\s+61 frames received\s+\(25\.0/s\)$", text, re.M), text
    assert re.search(r"^\s+6 udp/no_port\s+\(2\.0/s\)$", text, re.M), text
    assert re.search(r"^\s+1 ipv4/bad_checksum\s+\(0\.0/s\)$", text, re.M), text
    assert "Drops (7 total):" in text
    assert "ethernet/" not in text  # zero reasons are left out
    assert "connections: 2 (established 2)" in text
    assert re.search(r"^\s+4 echo_request received", text, re.M)


def test_link_receive_mode_is_exported_and_shown_by_stats() -> None:
    """An AF_PACKET link says how it receives (recvmmsg or the TPACKET_V3 ring); a link that
    does not (TAP) exports no such series and stats shows the plain Link title."""
    c = busy_counters()
    text = exposition(c, receive_mode="tpacket_v3 ring")
    parsed = samples(text)
    assert (
        value(parsed, "netstack_link_receive_info", interface="tap0", mode="tpacket_v3 ring") == 1
    )
    shown = render("http://x/metrics", Snapshot(text, 1.0))
    assert "Link tap0 (receive tpacket_v3 ring):" in shown
    plain = exposition(c)
    assert "netstack_link_receive_info" not in plain
    assert "Link tap0:" in render("http://x/metrics", Snapshot(plain, 1.0))


def test_completed_checksums_are_exported_for_a_link_that_completes_them() -> None:
    """AF_PACKET without the vnet header counts the partial checksums it completed; other
    links export no such series (there is nothing to complete)."""
    count = [0]
    c = busy_counters()
    count[0] = 41
    text = exposition(c, rx_checksums_completed=lambda: count[0])
    assert (
        value(samples(text), "netstack_link_rx_checksums_completed_total", interface="tap0") == 41
    )
    count[0] = 42
    text = exposition(c, rx_checksums_completed=lambda: count[0])
    assert (
        value(samples(text), "netstack_link_rx_checksums_completed_total", interface="tap0") == 42
    )
    assert "netstack_link_rx_checksums_completed" not in exposition(c)


def test_stats_command_against_a_server(capsys: pytest.CaptureFixture[str]) -> None:
    c = busy_counters()
    with serving(c, arp_cache_entries=lambda: 3) as server:
        assert main(["stats", "--metrics-address", f"127.0.0.1:{server.port}"]) == 0
    out = capsys.readouterr().out
    assert f"netstack {__version__} at {server.url}" in out
    assert re.search(r"^\s+11 frames received$", out, re.M), out
    assert re.search(r"^\s+3 cache entries$", out, re.M), out
    assert re.search(r"^\s+2 udp/no_port$", out, re.M), out


def test_stats_command_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert main(["stats", "--metrics-address", f"127.0.0.1:{port}", "--timeout", "2"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("netstack: cannot read") and err.count("\n") == 1
    assert main(["stats", "--metrics-address", "none"]) == 2
    assert "metrics are off" in capsys.readouterr().err
    assert main(["stats", "--metrics-address", "nonsense"]) == 2
    off = tmp_path / "off.toml"
    off.write_text('metrics_address = "none"\n')
    assert main(["stats", "--config", str(off)]) == 2
    assert str(off) in capsys.readouterr().err


# -- dashboard and rules -------------------------------------------------------------------------
def load_generator():
    spec = importlib.util.spec_from_file_location("grafana_generate", GRAFANA / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def dashboard() -> dict:
    return json.loads((GRAFANA / "netstack.json").read_text())


def panels() -> list[dict]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def exprs() -> list[str]:
    return [t["expr"] for p in panels() for t in p["targets"]]


METRIC = re.compile(r"\b((?:netstack|process)_[a-z0-9_]+|up)\b(?:\{[^}]*\})?(\[[^\]]*\])?")
COUNTER_SUFFIXES = ("_total", "_bucket", "_sum", "_count")


def exported_names() -> set[str]:
    text = exposition(Counters(), tcp_connections_by_state=dict)
    return {name for name, _ in samples(text)}


def test_committed_dashboard_is_the_generators_output() -> None:
    assert load_generator().render() == (GRAFANA / "netstack.json").read_text(), (
        "run python grafana/generate.py"
    )


def test_dashboard_variables() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("job", "instance"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"]["uid"] == "${datasource}"
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".+"


def test_every_panel_has_a_unit_and_the_datasource_variable() -> None:
    assert len(panels()) >= 25
    ids = [p["id"] for p in dashboard()["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels():
        assert panel["fieldConfig"]["defaults"].get("unit"), panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            assert target["legendFormat"], panel["title"]


def test_every_query_selects_job_and_instance_and_rates_counters() -> None:
    for expr in exprs():
        for match in METRIC.finditer(expr):
            name, selector, window = match[1], match[0], match[2]
            assert 'job=~"$job"' in selector and 'instance=~"$instance"' in selector, expr
            is_counter = name.endswith(COUNTER_SUFFIXES)
            rated = expr[: match.start()].endswith("rate(") and window == "[$__rate_interval]"
            assert rated == is_counter, (
                f"{name}: counters need rate(...[$__rate_interval]), gauges not"
            )


def test_every_dashboard_and_alert_metric_is_exported() -> None:
    names = exported_names() | {"up"}
    rules = (GRAFANA / "prometheus" / "alerts.yml").read_text()  # names only: no YAML needed
    for expr in [*exprs(), rules]:
        for match in METRIC.finditer(expr):
            assert match[1] in names, f"{match[1]} is not exported (in {expr})"
    assert "netstack_drops_total" in rules and "process_resident_memory_bytes" in rules


def test_dashboard_covers_the_issue() -> None:
    """Panels for every area the dashboard promises, each with the metric it needs."""
    text = "\n".join(exprs())
    for needle in (
        "netstack_rx_packets_total",
        "netstack_rx_bytes_total",
        "sum by (layer, reason) (rate(netstack_drops_total",
        "netstack_arp_requests_total",
        "netstack_ipv4_fragments_total",
        "netstack_icmp_messages_total",
        "netstack_udp_datagrams_total",
        "sum by (state) (netstack_tcp_connections",
        "netstack_tcp_retransmitted_segments_total",
        "netstack_tcp_timeouts_total",
        "histogram_quantile(0.99, sum by (instance, le) (rate(netstack_tcp_rtt_seconds_bucket",
        "netstack_tcp_listen_overflows_total",
        "netstack_loop_batch_frames_bucket",
        "process_resident_memory_bytes",
        "process_open_fds",
        "rate(process_cpu_seconds_total",
    ):
        assert needle in text, needle


def test_provisioning_files() -> None:
    yaml = pytest.importorskip("yaml")
    prov = GRAFANA / "provisioning"
    ds = yaml.safe_load((prov / "datasources" / "netstack.yaml").read_text())
    assert ds["datasources"][0]["type"] == "prometheus"
    boards = yaml.safe_load((prov / "dashboards" / "netstack.yaml").read_text())
    assert boards["providers"][0]["type"] == "file"
    assert boards["providers"][0]["options"]["path"]
