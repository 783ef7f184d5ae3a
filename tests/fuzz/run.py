"""Run the coverage-guided fuzz targets (atheris), one process per target.

    python tests/fuzz/run.py --target NAME[,NAME...]|all --seconds N [--rounds R] [--seed S]

Each target starts from its committed seed corpus (tests/fuzz/corpus/NAME, read only) and a
work corpus (--workdir/NAME, where libFuzzer adds what it finds; kept between runs so a long
run goes on where it stopped). A crash leaves its input in --crash-dir/NAME (by default the
committed tests/fuzz/crashes/NAME: commit it with the fix; tests/fuzz/test_corpus.py replays
it). With --rounds R the targets run round-robin R times, N seconds a slice.

The last line printed is exactly `fuzz: E execs, C crashes, F features`, where features are
libFuzzer's coverage features (`ft:`) reached, summed over the targets; the exit status is 1
when anything crashed.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from tests.fuzz.targets import TARGETS  # noqa: E402

MAX_LEN = {"host": 8192}  # records of several frames; the wire targets get libFuzzer's 4096
_FT = re.compile(rb"\bft: (\d+)")
_EXECS = re.compile(rb"stat::number_of_executed_units: (\d+)")
_PROGRESS = re.compile(rb"^#(\d+)\s", re.MULTILINE)


@dataclass
class Result:
    name: str
    execs: int
    features: int
    crashes: list[Path]
    returncode: int


def run_target(
    name: str, seconds: float, seed: int, workdir: Path, crash_dir: Path, extra: list[str]
) -> Result:
    work = workdir / name
    work.mkdir(parents=True, exist_ok=True)
    crashes = crash_dir / name
    crashes.mkdir(parents=True, exist_ok=True)
    before = set(crashes.iterdir())
    seeds = HERE / "corpus" / name
    cmd = [
        sys.executable, str(HERE / "fuzz_one.py"), name, str(work),
        *([str(seeds)] if seeds.is_dir() else []),
        f"-max_total_time={max(1, int(seconds))}", f"-seed={seed}",
        f"-artifact_prefix={crashes}/", f"-max_len={MAX_LEN.get(name, 4096)}",
        "-timeout=20", "-rss_limit_mb=2048", "-print_final_stats=1", *extra,
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, timeout=seconds * 3 + 120)
    out = proc.stderr + proc.stdout
    fts = _FT.findall(out)
    execs = _EXECS.findall(out) or _PROGRESS.findall(out)
    new = sorted(set(crashes.iterdir()) - before)
    if proc.returncode != 0 or new:
        tail = out.decode(errors="replace").splitlines()[-40:]
        print(f"--- {name}: exit {proc.returncode}, crash inputs {new}", file=sys.stderr)
        print("\n".join(tail), file=sys.stderr)
    return Result(name, int(execs[-1]) if execs else 0, int(fts[-1]) if fts else 0, new,
                  proc.returncode)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--target", default="all", help=f"all, or comma-separated names from {sorted(TARGETS)}"
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="per target and round")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1, help="libFuzzer -seed (+ round)")
    parser.add_argument("--workdir", type=Path, default=None, help="work corpora (default: a "
                        "temporary directory, removed at the end)")  # fmt: skip
    parser.add_argument("--crash-dir", type=Path, default=HERE / "crashes")
    parser.add_argument("extra", nargs="*", help="more libFuzzer flags (after --)")
    args = parser.parse_args(argv)
    names = sorted(TARGETS) if args.target == "all" else args.target.split(",")
    for name in names:
        if name not in TARGETS:
            parser.error(f"unknown target {name!r}; known: {', '.join(sorted(TARGETS))}")
    with tempfile.TemporaryDirectory(prefix="netstack-fuzz-") as tmp:
        workdir = args.workdir if args.workdir is not None else Path(tmp)
        execs = 0
        features: dict[str, int] = {}
        crashes: list[Path] = []
        failed = False
        for round_ in range(args.rounds):
            for name in names:
                r = run_target(name, args.seconds, args.seed + round_, workdir, args.crash_dir,
                               args.extra)  # fmt: skip
                execs += r.execs
                features[name] = max(features.get(name, 0), r.features)
                crashes += r.crashes
                failed |= r.returncode != 0 or bool(r.crashes)
                print(f"{name}: round {round_ + 1}: {r.execs} execs, {r.features} features, "
                      f"{len(r.crashes)} crashes, exit {r.returncode}", flush=True)  # fmt: skip
    for path in crashes:
        print(f"crash input: {path}")
    n_crashes = len(crashes) if crashes or not failed else 1
    print(f"fuzz: {execs} execs, {n_crashes} crashes, {sum(features.values())} features")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
