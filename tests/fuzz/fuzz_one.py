"""Run one fuzz target under atheris/libFuzzer (one process per target; run.py drives it).

    python tests/fuzz/fuzz_one.py NAME [libFuzzer arguments: corpus dirs, -max_total_time=...]

The netstack package is instrumented for coverage (atheris.instrument_imports) before anything
of it is imported; the cffi C module cannot be (it would need a clang/libFuzzer build), so the
`checksum` target checks it differentially against a Python reference instead.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import atheris  # noqa: E402

with atheris.instrument_imports(include=["netstack"]):
    from tests.fuzz import hostfuzz, reasmfuzz, targets  # noqa: F401  (instrument them now)


def main() -> None:
    name = sys.argv[1]
    target = targets.TARGETS[name]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
