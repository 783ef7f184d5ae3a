"""The impairment relay (tests/integration/impair.py) between the kernel and the stack, and the
stack's own `--fault` link wrapper, seen from the kernel's tools."""

from __future__ import annotations

import itertools
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.impair import ImpairedWorld, Impairment, impaired_world
from tests.integration.world import can_run_world, have_tools, running_world

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not have_tools("ping"), reason="no ping"),
]

CLEAN = Impairment()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImpairedWorld]:
    """One impaired world for the module; each test sets the impairments it needs."""
    ok, why = can_run_world()
    if not ok:
        pytest.skip(why)
    with impaired_world(tmp_path_factory.mktemp("impair")) as world:
        yield world


@pytest.fixture
def clean(world: ImpairedWorld) -> Iterator[ImpairedWorld]:
    world.set_impairment(to_stack=CLEAN, to_kernel=CLEAN)
    yield world
    world.set_impairment(to_stack=CLEAN, to_kernel=CLEAN)


def ping(world, *args: str, timeout: float = 30) -> tuple[int, int, str]:
    """(transmitted, received) of a ping to the stack, and its output."""
    out = world.run(["ping", "-n", *args, world.stack_ip], check=False, timeout=timeout).stdout
    match = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert match, out
    return int(match[1]), int(match[2]), out


def udp_echo_sequence(world, count: int = 200) -> list[int]:
    """Send `count` numbered datagrams to the echo port back to back; the numbers echoed."""
    sock = world.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.settimeout(2.0)
    got: list[int] = []
    try:
        sock.connect((world.stack_ip, 7))
        for seq in range(count):
            sock.send(seq.to_bytes(4, "big") + bytes(60))
        deadline = time.monotonic() + 5
        while len(got) < count and time.monotonic() < deadline:
            try:
                got.append(int.from_bytes(sock.recv(100)[:4], "big"))
            except TimeoutError:
                break
    finally:
        sock.close()
    return got


def inversions(seqs: list[int]) -> int:
    return sum(1 for a, b in itertools.pairwise(seqs) if a > b)


def test_clean_path_everything_arrives(clean: ImpairedWorld) -> None:
    before = clean.relay_stats()
    sent, received, out = ping(clean, "-c", "200", "-i", "0.01", "-W", "2")
    assert sent == received == 200, out
    seqs = udp_echo_sequence(clean)
    assert seqs == list(range(200))
    stats = clean.relay_stats()
    for name in ("to_stack", "to_kernel"):
        moved = getattr(stats, name).frames - getattr(before, name).frames
        assert moved >= 400  # 200 echo requests/replies + 200 datagrams, through the relay
        assert getattr(stats, name).dropped == 0


def test_loss_each_way(clean: ImpairedWorld) -> None:
    """10 % each way: about 19 % of the pings lost; the relay counts both directions."""
    before = clean.set_impairment(to_stack=Impairment(drop=0.1), to_kernel=Impairment(drop=0.1))
    sent, received, out = ping(clean, "-c", "200", "-i", "0.01", "-W", "1")
    stats = clean.relay_stats()
    assert sent == 200
    assert 0.04 * sent <= sent - received <= 0.45 * sent, out
    for name in ("to_stack", "to_kernel"):
        frames = getattr(stats, name).frames - getattr(before, name).frames
        dropped = getattr(stats, name).dropped - getattr(before, name).dropped
        assert 0.03 * frames <= dropped <= 0.2 * frames, (name, frames, dropped)


def test_duplication_shows_as_dup(clean: ImpairedWorld) -> None:
    before = clean.set_impairment(to_kernel=Impairment(dup=0.3))
    sent, received, out = ping(clean, "-c", "50", "-i", "0.01", "-W", "1")
    assert "DUP!" in out
    assert received >= sent  # ping counts unique replies; nothing was lost
    assert clean.relay_stats().to_kernel.duplicated > before.to_kernel.duplicated


def test_reordering_of_udp_echo(clean: ImpairedWorld) -> None:
    before = clean.set_impairment(to_stack=Impairment(reorder=0.25))
    seqs = udp_echo_sequence(clean)
    stats = clean.relay_stats()
    assert sorted(seqs) == list(range(200))  # reordered, none lost
    assert inversions(seqs) >= 10
    assert stats.to_stack.reordered - before.to_stack.reordered >= inversions(seqs)


def test_bounded_flood_through_the_clean_relay(clean: ImpairedWorld) -> None:
    sent, received, out = ping(clean, "-f", "-c", "3000", "-w", "20", timeout=60)
    assert sent == 3000
    assert received >= 0.995 * sent, out
    assert clean.relay_stats().wire_drops == 0


def test_impairments_given_at_start_delay_both_ways(tmp_path: Path) -> None:
    ok, why = can_run_world()
    if not ok:
        pytest.skip(why)
    with impaired_world(
        tmp_path,
        to_stack=Impairment(delay=0.020),
        to_kernel=Impairment(delay=0.010),
        tag="impd",
    ) as world:
        sent, received, out = ping(world, "-c", "5", "-i", "0.05", "-W", "2")
        assert sent == received == 5, out
        rtt_min = float(re.search(r"= ([\d.]+)/", out)[1])
        assert 30.0 <= rtt_min < 200.0, out
        assert world.relay_stats().to_stack.delayed >= 5


def test_stack_fault_flag(tmp_path: Path) -> None:
    """--fault inside the stack: losses and duplicates, counted as link/fault_injected."""
    ok, why = can_run_world()
    if not ok:
        pytest.skip(why)
    with running_world(tmp_path, "--fault", "rx:drop=0.2,tx:dup=0.2,seed=3", tag="flt") as w:
        sent, received, out = ping(w, "-c", "100", "-i", "0.01", "-W", "1")
        assert 0.05 * sent <= sent - received <= 0.45 * sent, out
        assert "DUP!" in out
        w.stop()
        log = w.log()
    assert "fault injection on tap0: rx:drop=0.2,tx:dup=0.2,seed=3" in log
    match = re.search(r"link/fault_injected (\d+)", log)
    assert match and int(match[1]) >= sent - received, log[-2000:]
