"""bench/udpprobe.py's /proc readers: the placement sampler finds the client by name among the
wrapper's descendants, and the server's counters are read over all its threads."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))
import udpprobe  # noqa: E402


def _wrapped(tmp_path: Path, name: str, secs: float = 0.3) -> subprocess.Popen:
    """A shell whose child is `sleep` renamed `name` (as ip netns exec -> timeout -> udpecho)."""
    exe = tmp_path / name
    shutil.copy(shutil.which("sleep") or "/bin/sleep", exe)
    return subprocess.Popen(["sh", "-c", f"{exe} {secs}; true"])


def _end(proc: subprocess.Popen) -> None:
    """End the wrapped client (the shell then exits) and reap the shell."""
    for kid in udpprobe.descendants(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(kid, signal.SIGTERM)
    proc.wait(timeout=10)


def test_placement_is_sampled_from_the_named_descendant(tmp_path: Path, monkeypatch) -> None:
    """The client lives until the sampler has taken a sample of it (then it is ended), not for
    a guessed time a busy machine could let pass before the first sample."""
    proc = _wrapped(tmp_path, "udpecho-anchor", secs=60)
    real_cpu_of = udpprobe.cpu_of

    def cpu_of_then_end(path: str) -> int | None:
        cpu = real_cpu_of(path)
        kids = udpprobe.descendants(proc.pid)
        if cpu is not None and kids and path == f"/proc/{kids[0]}/stat":
            os.kill(kids[0], signal.SIGTERM)  # sampled once: the client may go
        return cpu

    monkeypatch.setattr(udpprobe, "cpu_of", cpu_of_then_end)
    try:
        share = udpprobe.sample_placement(proc, os.getpid(), every=0.002)
    finally:
        _end(proc)
    assert share is not None and 0.0 <= share <= 100.0


def test_no_client_no_placement(tmp_path: Path) -> None:
    proc = _wrapped(tmp_path, "other-tool")
    assert udpprobe.sample_placement(proc, os.getpid(), every=0.002) is None


def test_descendants_and_cpu_of(tmp_path: Path) -> None:
    proc = _wrapped(tmp_path, "udpecho-x", secs=60)  # ended below, once looked at
    try:
        kids: list[int] = []
        for _ in range(200):  # the shell forks its child right away; poll for it
            kids = udpprobe.descendants(proc.pid)
            if kids:
                break
            time.sleep(0.01)
        assert kids
        cpu = udpprobe.cpu_of(f"/proc/{kids[0]}/stat")
        assert cpu is not None and 0 <= cpu < os.cpu_count()
    finally:
        _end(proc)
    assert udpprobe.cpu_of("/proc/0/stat") is None  # gone or never there: None, not a raise


def test_stack_stats_counts_this_process() -> None:
    user, system, vol, invol, wait = udpprobe.stack_stats(os.getpid())
    assert user + system > 0 and vol >= 0 and invol >= 0 and wait >= 0
