"""`netstack ss`: the connection table (built on the loop thread), the loop's side door, the
metrics server's /connections route, and the `ss -ti`-shaped rendering."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from netstack.api.admin import LoopDoor
from netstack.io.loop import Loop
from netstack.metrics import MetricsServer
from netstack.proto.tcp.introspect import connection_table
from netstack.stats import render_connections
from tests.unit.tcp.tcptools import established_passive


def test_the_table_lists_listeners_and_connections_with_tcp_info() -> None:
    t, conn = established_passive()
    conn.send(b"x" * 3000)
    t.engine.flush(t.now)
    table = connection_table(t.engine, t.now)
    json.dumps(table)  # JSON-ready
    (listener,) = table["listeners"]
    assert listener["local"] == "192.0.2.2:80" and listener["state"] == "listen"
    (c,) = table["connections"]
    assert (c["state"], c["local"], c["peer"]) == ("established", "192.0.2.2:80", "192.0.2.1:49500")
    assert c["send_q"] == 3000 and c["recv_q"] == 0
    info = c["tcp_info"]
    assert info["tcpi_snd_mss"] == 1460 and info["tcpi_unacked"] == 3
    assert info["tcpi_snd_cwnd"] == 10 and info["tcpi_bytes_sent"] == 3000
    text = render_connections(table)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["State", "Recv-Q", "Send-Q"]
    assert lines[1].split() == ["ESTAB", "0", "3000", "192.0.2.2:80", "192.0.2.1:49500"]
    assert lines[2].startswith("\t reno") and " mss:1460 " in lines[2] and " unacked:3 " in lines[2]
    assert "LISTEN" not in text
    assert render_connections(table, listening=True).splitlines()[1].startswith("LISTEN")
    assert len(render_connections(table, every=True).splitlines()) == 4


def test_the_loop_door_runs_functions_on_the_loop_thread() -> None:
    loop = Loop()
    door = LoopDoor(loop)
    threads: list[str] = []

    def work(now: float) -> int:
        threads.append(threading.current_thread().name)
        return 42

    runner = threading.Thread(target=loop.run, name="the-loop")
    runner.start()
    try:
        assert door.call(work, timeout=5.0) == 42
        with pytest.raises(ZeroDivisionError):
            door.call(lambda now: 1 // 0, timeout=5.0)
    finally:
        loop.stop()
        runner.join(5)
    assert threads == ["the-loop"]
    with pytest.raises(TimeoutError):  # nobody runs the loop: an answer never comes
        door.call(work, timeout=0.2)
    door.close()
    loop.close()


def test_the_metrics_server_serves_routes_as_json() -> None:
    def busy() -> object:
        raise TimeoutError("the loop did not answer")

    routes = {"/connections": lambda: {"connections": [], "listeners": []}, "/busy": busy}
    server = MetricsServer("127.0.0.1", 0, CollectorRegistry(), routes)
    try:
        base = f"http://127.0.0.1:{server.port}"
        with urllib.request.urlopen(base + "/connections", timeout=5) as r:
            assert r.headers["Content-Type"] == "application/json"
            assert json.load(r) == {"connections": [], "listeners": []}
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(base + "/busy", timeout=5)
        assert err.value.code == 503
        with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
            assert r.status == 200
    finally:
        server.close()
