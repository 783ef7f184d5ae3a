"""Fixtures for the TCP kernel-peer tests: a payload file per session, worlds per module.

Every stack these tests start runs in checked mode (NETSTACK_CHECKED=1: the TCP invariants of
netstack/proto/tcp/invariants.py checked on every segment and flush), and a world's log must
show no violation when its module is done.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.tcp.kit import MB, sha256_file
from tests.integration.world import World, can_run_world, running_world

# Bulk worlds run without the capture (100 MB through a pcap writer only measures the disk)
# and without per-segment debug logging.
FAST_ARGS = ("--pcap", "none", "--log-level", "info")


VIOLATION = "TCP invariant violated"


@pytest.fixture(scope="module", autouse=True)
def checked_mode() -> Iterator[None]:
    """NETSTACK_CHECKED=1 for the stacks this module starts (they inherit the environment),
    unless the run sets NETSTACK_CHECKED=0 (to compare with the unchecked stack)."""
    old = os.environ.get("NETSTACK_CHECKED")
    if old == "0":
        yield
        return
    os.environ["NETSTACK_CHECKED"] = "1"
    yield
    if old is None:
        del os.environ["NETSTACK_CHECKED"]
    else:
        os.environ["NETSTACK_CHECKED"] = old


def assert_checked(log: str) -> None:
    """The stack ran in checked mode and broke no TCP invariant."""
    found = [line for line in log.splitlines() if VIOLATION in line]
    assert not found, "\n".join(found[:5])


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
        assert_checked(world.log())
