"""The monitoring files against the real tools: promtool on the config and rules, and a real
Prometheus scraping the stack and answering every query of the dashboard.

Prometheus (Debian's `prometheus` package, which brings promtool) runs INSIDE the test namespace,
listening on 127.0.0.1 there and scraping the stack on that same loopback every second; it is
stopped by its PID. Every query is sent from inside the namespace too.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_metrics import (
    METRICS_PORT,
    bad_checksum_frame,
    inject,
    ns_http_get,
)
from tests.integration.world import World, have_tools, ns_socket

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not have_tools("prometheus", "promtool"), reason="needs prometheus (apt install prometheus)"
    ),
]

ROOT = Path(__file__).resolve().parents[2]
PROM_DIR = ROOT / "grafana" / "prometheus"
DASHBOARD = ROOT / "grafana" / "netstack.json"
RATE_INTERVAL = "10s"  # what Grafana would give $__rate_interval for a 1 s scrape interval


def promtool(*args: str, cwd: Path = PROM_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


# -- promtool on the committed files -------------------------------------------------------------
def test_promtool_check_config() -> None:
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 rules found" in result.stdout + result.stderr


def test_promtool_test_rules() -> None:
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


# -- a real Prometheus ---------------------------------------------------------------------------
def free_port(ns: str) -> int:
    sock = ns_socket(ns, socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
    finally:
        sock.close()


class Prometheus:
    """A Prometheus process in the world's namespace; api() queries it from inside too."""

    def __init__(self, world: World, workdir: Path) -> None:
        self.world = world
        self.port = free_port(world.ns)
        config = workdir / "prometheus.yml"
        config.write_text(
            "global:\n"
            "  scrape_interval: 1s\n"
            "  evaluation_interval: 1s\n"
            f"rule_files:\n  - {PROM_DIR / 'alerts.yml'}\n"
            "scrape_configs:\n"
            "  - job_name: netstack\n"
            "    static_configs:\n"
            f"      - targets: ['127.0.0.1:{METRICS_PORT}']\n"
        )
        self.log_path = workdir / "prometheus.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = world.popen(
            [
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str) -> tuple[int, bytes]:
        status, _, body = ns_http_get(self.world.ns, self.port, path, timeout=10)
        return status, body

    def api(self, endpoint: str, **params: str) -> object:
        status, body = self.get(f"/api/v1/{endpoint}?{urllib.parse.urlencode(params)}")
        reply = json.loads(body)
        assert status == 200 and reply["status"] == "success", (endpoint, params, reply)
        return reply["data"]

    def query(self, expr: str) -> list[dict]:
        data = self.api("query", query=expr)
        assert isinstance(data, dict)
        return data["result"]

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited ({self.proc.returncode}):\n{self.log()}")
            with contextlib.suppress(OSError):
                if self.get("/-/ready")[0] == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"prometheus not ready in {timeout}s:\n{self.log()}")

    def wait_for(self, expr: str, timeout: float = 30.0) -> list[dict]:
        """Poll an instant query until it returns a series."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if result or time.monotonic() > deadline:
                return result
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # by PID: `ip netns exec` execs prometheus in its place
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


@pytest.fixture(scope="module")
def prometheus(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    prom = Prometheus(world, tmp_path_factory.mktemp("prometheus"))
    try:
        prom.wait_ready()
        # Targets are applied a few seconds after start: wait for the first scrape.
        assert prom.wait_for('netstack_up{job="netstack"} == 1'), prom.log()
        yield prom
    finally:
        prom.stop()


def drive_traffic(world: World, seconds: float = 4.0) -> None:
    """Pings (some fragmented), UDP echo, a closed port and bad frames, bounded in time."""
    bad = bad_checksum_frame(world)
    count = int(seconds / 0.1)
    ping = world.popen(
        ["ping", "-n", "-q", "-c", str(count), "-i", "0.1", "-W", "1", world.stack_ip],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    sock = world.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(1)
    try:
        deadline = time.monotonic() + seconds
        for i in range(count):  # bounded in count and time
            if time.monotonic() > deadline:
                break
            sock.sendto(b"x" * (100 if i % 4 else 3000), (world.stack_ip, 7))
            with contextlib.suppress(TimeoutError):
                sock.recvfrom(4000)
            sock.sendto(b"closed", (world.stack_ip, 99))
            inject(world, [bad])
            time.sleep(0.1)
    finally:
        sock.close()
        try:
            ping.wait(seconds + 10)
        except subprocess.TimeoutExpired:
            ping.kill()
            ping.wait()


def dashboard_queries() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in board["panels"]
        if panel["type"] != "row"
        for target in panel["targets"]
    ]


def substitute(expr: str) -> str:
    return (
        expr.replace("$__rate_interval", RATE_INTERVAL)
        .replace("$job", "netstack")
        .replace("$instance", f"127.0.0.1:{METRICS_PORT}")
    )


def test_every_dashboard_query_returns_series(world: World, prometheus: Prometheus) -> None:
    started = time.monotonic()
    drive_traffic(world)
    # Two more scrapes, so that the last samples hold all of the traffic; the 10 s rate
    # window then still spans the traffic.
    seen = prometheus.query('count_over_time(netstack_up{job="netstack"}[1m])')
    scrapes = int(seen[0]["value"][1])
    assert prometheus.wait_for(
        f'count_over_time(netstack_up{{job="netstack"}}[1m]) >= {scrapes + 2}'
    ), prometheus.log()

    # The dashboard's variables: label_values(netstack_up, job) and ... instance.
    jobs = prometheus.api("label/job/values", **{"match[]": "netstack_up"})
    assert jobs == ["netstack"]
    instances = prometheus.api(
        "label/instance/values", **{"match[]": 'netstack_up{job="netstack"}'}
    )
    assert instances == [f"127.0.0.1:{METRICS_PORT}"]

    empty, peak = [], {}
    for title, expr in dashboard_queries():
        result = prometheus.query(substitute(expr))
        if not result:
            empty.append(f"{title}: {expr}")
        values = [float(r["value"][1]) for r in result]
        peak[title] = max([peak.get(title, 0.0), *(v for v in values if v == v)])  # skip NaN
    assert not empty, "queries without a series:\n" + "\n".join(empty)
    # Panels the traffic just fed show it within their 10 s window.
    for title in (
        "Frames",
        "Bytes",
        "Drops by reason",
        "Drops by layer",
        "IPv4 packets",
        "IPv4 fragments and reassembly",
        "ICMP messages",
        "UDP datagrams",
        "Frames per receive batch",
        "Loop wakeups",
        "Resident memory",
        "ARP cache entries",
        "Scrape up",
    ):
        assert peak[title] > 0, title

    # And the traffic shows where it should (over the whole run, so no rate window races).
    def total(expr: str) -> float:
        result = prometheus.query(expr)
        assert result, expr
        return sum(float(r["value"][1]) for r in result)

    sel = 'job="netstack"'
    assert total(f'increase(netstack_icmp_messages_total{{{sel}, type="echo_request"}}[1m])') > 10
    assert total(f'increase(netstack_drops_total{{{sel}, reason="no_port"}}[1m])') > 5
    assert total(f'increase(netstack_drops_total{{{sel}, reason="bad_checksum"}}[1m])') > 5
    assert total(f'increase(netstack_ipv4_reassemblies_total{{{sel}, result="ok"}}[1m])') > 0
    # The three TCP services listen; no connection was made (the series exist all the same).
    assert total(f'netstack_tcp_connections{{{sel}, state="listen"}}') == 3
    assert total(f'netstack_tcp_connections{{{sel}, state!="listen"}}') == 0
    assert time.monotonic() - started < 60


def test_alert_rules_load_and_evaluate(prometheus: Prometheus) -> None:
    deadline = time.monotonic() + 20
    while True:
        data = prometheus.api("rules")
        assert isinstance(data, dict)
        rules = [r for g in data["groups"] for r in g["rules"]]
        if all(r.get("lastEvaluation", "").startswith("2") for r in rules) or (
            time.monotonic() > deadline
        ):
            break
        time.sleep(0.5)
    assert {r["name"] for r in rules} == {
        "NetstackExporterDown",
        "NetstackDropsRising",
        "NetstackTcpRetransmissionsHigh",
        "NetstackMemoryGrowing",
    }
    assert all(r["health"] == "ok" for r in rules), rules
    down = next(r for r in rules if r["name"] == "NetstackExporterDown")
    assert down["state"] == "inactive"  # the stack is up
