"""CI's fuzzing budget: every target under atheris for a short while, fixed seed.

About 18 s per target, except those whose coverage is complete within seconds (their feature
counts stop growing in the first second: ethernet 6, arp 9, mldv2 ~29, ipv6 ~179 even after
millions of executions), which get 5 s: ~164 s of fuzzing in all (NETSTACK_FUZZ_SECONDS
overrides every per-target budget, e.g. 300 before a release). Crash inputs go to a temporary
directory and are printed; rerun `python tests/fuzz/run.py --target NAME` to get one into
tests/fuzz/crashes/.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.targets import TARGETS

HERE = Path(__file__).resolve().parent
SECONDS = 18.0
QUICK = {"ethernet", "arp", "mldv2", "ipv6"}  # saturated within a second
QUICK_SECONDS = 5.0


def run(names: list[str], seconds: float, tmp_path: Path) -> tuple[int, int, int, str]:
    """(execs, crashes, features, output) of one run.py over `names`."""
    proc = subprocess.run(
        [sys.executable, str(HERE / "run.py"), "--target", ",".join(names), "--seconds",
         str(seconds), "--seed", "1", "--workdir", str(tmp_path / "work"),
         "--crash-dir", str(tmp_path / "crashes")],
        capture_output=True, text=True, timeout=len(names) * (seconds * 3 + 120),
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    match = re.fullmatch(r"fuzz: (\d+) execs, (\d+) crashes, (\d+) features", last)
    assert match, output
    execs, crashes, features = map(int, match.groups())
    assert proc.returncode == 0 and crashes == 0, output
    return execs, crashes, features, output


def test_every_target_fuzzes_clean(tmp_path: Path) -> None:
    pytest.importorskip("atheris")  # in the test extra; missing only off-CI (say so, don't fail)
    override = os.environ.get("NETSTACK_FUZZ_SECONDS")
    quick = sorted(QUICK & set(TARGETS))
    rest = sorted(set(TARGETS) - QUICK)
    execs = features = 0
    for names, seconds in ((rest, SECONDS), (quick, QUICK_SECONDS)):
        e, _, f, _ = run(names, float(override or seconds), tmp_path)
        execs += e
        features += f
    assert execs > 1000 * len(TARGETS) and features > 100, (execs, features)
