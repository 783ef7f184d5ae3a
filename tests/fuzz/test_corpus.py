"""Replay every committed seed and crash reproducer through its fuzz target (fast, no atheris).

A reproducer in tests/fuzz/crashes/<target>/ is an input that once crashed the target; with the
product fix committed beside it, it must pass here for good.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz.targets import TARGETS

HERE = Path(__file__).resolve().parent


def inputs(kind: str) -> list[tuple[str, Path]]:
    return [
        (name, path)
        for name in sorted(TARGETS)
        if (HERE / kind / name).is_dir()
        for path in sorted((HERE / kind / name).iterdir())
        if path.is_file() and not path.name.startswith(".")
    ]


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_seed_corpus(name: str) -> None:
    seeds = [p for n, p in inputs("corpus") if n == name]
    assert seeds, f"no seeds for {name}: run tests/fuzz/make_corpus.py"
    for path in seeds:
        TARGETS[name](path.read_bytes())


def test_crash_reproducers() -> None:
    """Every reproducer ever committed passes now (they are few and fast: one test)."""
    reproducers = inputs("crashes")
    for name, path in reproducers:
        TARGETS[name](path.read_bytes())
    assert all(name in TARGETS for name, _ in reproducers)
