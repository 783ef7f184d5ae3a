"""The short soak CI runs: `netstack soak` for 100 s of mixed load (every generator on, floods,
loss / reorder / delay phases, a real Prometheus scraping), then up to 2*MSL + 15 s of settling;
about 2-3 minutes in all. Any failed criterion fails the build; the report is printed then.

It runs the installed command exactly as a person would, as a child process (which moves itself
into its own namespace and deletes it at the end), with an outer timeout as the last bound.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from netstack.soak.world import missing_tools

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(not os.path.exists("/dev/net/tun"), reason="no /dev/net/tun"),
    pytest.mark.skipif(bool(missing_tools()), reason=f"missing tools: {missing_tools()}"),
]

DURATION = 100  # seconds of load: seven phases of 15 s
OUTER_TIMEOUT = 420  # startup + load + settle (<= 75 s) + report, with room


def test_short_soak_passes_every_criterion(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "soak"
    before = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    cmd = [sys.executable, "-m", "netstack", "soak", "--duration", str(DURATION),
           "--phase", "15", "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=OUTER_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.terminate()  # SIGTERM: the soak tears its namespace down and still reports
        stdout, stderr = proc.communicate(timeout=120)
    report_md = out / "report.md"
    shown = report_md.read_text() if report_md.exists() else stdout
    assert proc.returncode == 0, f"soak failed (exit {proc.returncode}):\n{shown}\n{stderr}"

    report = json.loads((out / "report.json").read_text())
    assert report["passed"] is True
    assert all(v["passed"] for v in report["verdicts"])
    # Everything really ran and was measured: generators did work, Prometheus was read.
    gens = report["generators"]
    assert gens["tcp_short"]["verified"] > 50 and gens["bulk_chargen"]["verified"] >= 1
    assert gens["syn_flood_rand"]["sent"] > 500 and gens["ping"]["received"] > 100
    assert report["samples"] > 30 and report["sampler_errors"] == 0
    assert report["final"]["drops"], "no drops seen: the Prometheus series were not read"
    for png in ("pps.png", "drops.png", "tcp.png", "connections.png", "resources.png",
                "ping.png"):  # fmt: skip
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    # The namespace is gone, and nothing was left running in it.
    # (only this soak's: its namespace is named after its PID, and other runs may share the host)
    after = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    assert not {n for n in after - before if n.startswith(f"nst-soak-{proc.pid}-")}
    shutil.rmtree(out / "work", ignore_errors=True)
