"""bench/placement.py: how often a responder and its load generator shared a CPU, sampled from
/proc while real processes run pinned where the test puts them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))
import placement  # noqa: E402

# A busy loop that ends by itself (bounded), and says when it runs so the sampler sees it.
SPIN = (
    "import time\nend = time.monotonic() + {secs}\nprint(1, flush=True)\n"
    "while time.monotonic() < end:\n    pass\n"
)


def spinner(cpu: int, secs: float) -> subprocess.Popen:
    proc = subprocess.Popen(
        ["taskset", "-c", str(cpu), sys.executable, "-c", SPIN.format(secs=secs)],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"1"
    return proc


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
@pytest.mark.parametrize(("server_cpu", "client_cpu", "want"), [(0, 0, 100.0), (0, 1, 0.0)])
def test_shared_and_separate_cpus(server_cpu: int, client_cpu: int, want: float) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    server = spinner(cpus[server_cpu], 30)
    try:
        # sampled only once the client runs pinned (spinner() waits for it): before its exec
        # the taskset process may still be on another CPU
        client = spinner(cpus[client_cpu], 1.0)
        sampler = placement.PlacementSampler(server.pid, every=0.005).start()
        client.wait(timeout=30)
        share = sampler.stop()
    finally:
        server.kill()
        server.wait()
    assert share == want


def test_no_client_is_none() -> None:
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        sampler = placement.PlacementSampler(server.pid, root=server.pid, every=0.002).start()
        deadline = time.monotonic() + 30
        while sampler.looks < 5 and time.monotonic() < deadline:  # it looked, found no client
            time.sleep(0.01)
        assert sampler.looks >= 5
        assert sampler.stop() is None
    finally:
        server.kill()
        server.wait()


def test_proc_readers_on_a_gone_task() -> None:
    assert placement.cpu_of("/proc/0/stat") is None
    assert placement.ticks_of("/proc/0/stat") == 0
    assert placement.threads_of(0) == []
    me = placement.ticks_of(f"/proc/{os.getpid()}/stat")
    assert me >= 0 and placement.cpu_of(f"/proc/{os.getpid()}/stat") in os.sched_getaffinity(0)
