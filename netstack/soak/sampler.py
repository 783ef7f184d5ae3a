"""Samples a running soak every few seconds: the stack's counters as Prometheus scraped them,
the process's RSS, open fds and CPU from /proc/PID, TCP connections by state, ping RTTs, and
every generator's own counts. Each sample is one JSON line in samples.jsonl as it is taken, so a
soak that is cut short still leaves its series.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from netstack.soak.generators import Generator, Ping

# One query per sample: the families the report plots and the criteria judge.
PROM_QUERY = (
    '{job="netstack",__name__=~"netstack_(rx_packets_total|tx_packets_total|drops_total'
    "|tcp_retransmitted_segments_total|tcp_timeouts_total|tcp_connections|tcp_segments_total"
    '|tcp_resets_total)|process_resident_memory_bytes|process_open_fds|process_cpu_seconds_total"}'
)
SCALARS = {
    "netstack_rx_packets_total": "rx_packets",
    "netstack_tx_packets_total": "tx_packets",
    "netstack_tcp_retransmitted_segments_total": "tcp_retransmits",
    "netstack_tcp_timeouts_total": "tcp_timeouts",
    "netstack_tcp_segments_total": "tcp_segments",
    "netstack_tcp_resets_total": "tcp_resets",
    "process_resident_memory_bytes": "prom_rss",
    "process_open_fds": "prom_fds",
    "process_cpu_seconds_total": "prom_cpu",
}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_stats(pid: int) -> dict[str, Any]:
    """RSS (bytes), open fds, CPU seconds (user+system) and threads of one process."""
    out: dict[str, Any] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                out["rss"] = int(line.split()[1]) * 1024
            elif line.startswith("Threads:"):
                out["threads"] = int(line.split()[1])
        out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        out["cpu"] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def parse_prometheus(result: list[dict[str, Any]], reasons_seen: set[str]) -> dict[str, Any]:
    """An instant-query result -> scalar fields, drops by "layer/reason", connections by state."""
    sample: dict[str, Any] = {"drops": {}, "conns": {}}
    for series in result:
        labels, value = series["metric"], float(series["value"][1])
        name = labels.get("__name__", "")
        if name == "netstack_drops_total":
            reason = f"{labels.get('layer', '')}/{labels.get('reason', '')}"
            reasons_seen.add(reason)
            if value:
                sample["drops"][reason] = int(value)
        elif name == "netstack_tcp_connections":
            sample["conns"][labels.get("state", "")] = int(value)
        elif name in SCALARS:
            key = SCALARS[name]
            sample[key] = sample.get(key, 0) + value
            sample["scraped"] = max(sample.get("scraped", 0.0), float(series["value"][0]))
    return sample


class Sampler:
    """A thread that calls take() every `interval` seconds until stopped."""

    def __init__(
        self,
        *,
        query: Callable[[str], list[dict[str, Any]]],
        pid: int,
        generators: list[Generator],
        phase_at: Callable[[float], str],
        t0: float,
        interval: float,
        path: Path,
    ) -> None:
        self.query = query
        self.pid = pid
        self.generators = generators
        self.phase_at = phase_at
        self.t0 = t0
        self.interval = interval
        self.path = path
        self.samples: list[dict[str, Any]] = []
        self.reasons_seen: set[str] = set()
        self.errors = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="soak-sampler", daemon=True)

    def take(self) -> dict[str, Any]:
        t = time.monotonic() - self.t0
        sample: dict[str, Any] = {"t": round(t, 3), "wall": time.time(), "phase": self.phase_at(t)}
        try:
            sample.update(parse_prometheus(self.query(PROM_QUERY), self.reasons_seen))
        except Exception as err:  # a missed scrape is a gap in the plots, not the end
            self.errors += 1
            sample["prom_error"] = repr(err)[:200]
        sample.update(proc_stats(self.pid))
        sample["gens"] = {g.name: g.snapshot() for g in self.generators}
        for g in self.generators:
            if isinstance(g, Ping):
                rtts, lost = g.drain()
                sample["ping"] = {
                    "n": len(rtts),
                    "lost": lost,
                    "min": min(rtts, default=None),
                    "avg": sum(rtts) / len(rtts) if rtts else None,
                    "max": max(rtts, default=None),
                }
        with self._lock:
            self.samples.append(sample)
            with open(self.path, "a") as out:
                out.write(json.dumps(sample) + "\n")
        return sample

    def _loop(self) -> None:
        next_at = time.monotonic()
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            self.take()
            next_at += self.interval

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
