"""Fixtures for the TCP kernel-peer tests: a payload file per session, worlds per module."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.tcp.kit import MB, sha256_file
from tests.integration.world import World, can_run_world, running_world

# Bulk worlds run without the capture (100 MB through a pcap writer only measures the disk)
# and without per-segment debug logging.
FAST_ARGS = ("--pcap", "none", "--log-level", "info")


def need_world() -> None:
    ok, why = can_run_world()
    if not ok:
        pytest.skip(why)


@pytest.fixture(scope="session")
def payload(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """100 MB from /dev/urandom, made once per session, and its sha256."""
    path = tmp_path_factory.mktemp("payload") / "payload.bin"
    subprocess.run(
        ["sh", "-c", f"head -c {100 * MB} /dev/urandom > {path}"], check=True, timeout=60
    )
    assert path.stat().st_size == 100 * MB
    return path, sha256_file(path)


@pytest.fixture(scope="module")
def stack_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """The stack (CLI, TCP services on 7/9/19) in a fresh namespace for the module."""
    need_world()
    with running_world(tmp_path_factory.mktemp("tcpworld"), *FAST_ARGS, tag="tcp") as world:
        yield world
