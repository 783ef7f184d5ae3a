"""Transfers over an impaired path: the kernel behind tests/integration/impair.py's relay, with
seeded loss, reordering, duplication, delay (and bit corruption) applied to both directions.

Each case moves data both ways and checks every byte: kernel -> stack into discard (TCP_INFO:
the stack acknowledged exactly everything), stack -> kernel out of chargen (RFC 864 pattern by
sha256) and through echo (both directions at once, sha256 of what came back). Sizes are scaled
so the whole TCP suite stays within its 8-minute budget on 2 CPUs: 20 MB at 1 % loss and for
reordering, duplication and a 10 ms delay; 10 MB with 1 % of frames corrupted; 5 MB at 5 % loss
and for a 10 ms delay with 2 ms jitter (which reorders); 3 MB at 10 % loss (loss each way, so
10 % means about 19 % of round trips lose something). Every transfer has a time limit
(Case.limit, 60-90 s).
"""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.impair import ImpairedWorld, Impairment, impaired_world
from tests.integration.tcp.conftest import FAST_ARGS, assert_checked, need_world
from tests.integration.tcp.kit import (
    CHARGEN,
    DISCARD,
    ECHO,
    MB,
    STACK_IP,
    bytes_acked,
    chargen_sha256,
    echo_transfer,
    sha256_file,
)

pytestmark = pytest.mark.integration

CLEAN = Impairment()


class Case:
    def __init__(self, name: str, size: int, limit: float, **faults: float) -> None:
        self.name, self.size, self.limit = name, size, limit
        self.impairment = Impairment(**faults)

    def __repr__(self) -> str:
        return self.name


CASES = [
    Case("loss 1%", 20 * MB, 60, drop=0.01),
    Case("loss 5%", 5 * MB, 60, drop=0.05),
    Case("loss 10%", 3 * MB, 90, drop=0.10),
    Case("reorder 25%", 20 * MB, 60, reorder=0.25),
    Case("duplicate 5%", 20 * MB, 60, dup=0.05),
    Case("delay 10ms", 20 * MB, 60, delay=0.010),
    # one random bit flipped: checksums must catch every one (else sha256 fails)
    Case("corrupt 1%", 10 * MB, 60, corrupt=0.01),
    # jitter reorders heavily (frames microseconds apart, held 10-12 ms): kept small for CI time
    Case("delay 10ms jitter 2ms", 5 * MB, 60, delay=0.010, jitter=0.002),
]
# which relay counter proves the impairment happened
PROOF = {
    "drop": "dropped",
    "reorder": "reordered",
    "dup": "duplicated",
    "delay": "delayed",
    "corrupt": "corrupted",
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImpairedWorld]:
    need_world()
    with impaired_world(tmp_path_factory.mktemp("tcpimp"), extra_args=FAST_ARGS, tag="tcpi") as w:
        yield w
        assert_checked(w.log())


@pytest.fixture(params=CASES, ids=repr)
def case(request: pytest.FixtureRequest, world: ImpairedWorld) -> Iterator[Case]:
    case: Case = request.param
    world.set_impairment(to_stack=case.impairment, to_kernel=case.impairment)
    yield case
    world.set_impairment(to_stack=CLEAN, to_kernel=CLEAN)


def connect(world: ImpairedWorld, port: int, limit: float) -> socket.socket:
    sock = world.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(limit)
    sock.connect((STACK_IP, port))
    return sock


def check_impaired(world: ImpairedWorld, case: Case, before, directions: tuple[str, ...]) -> None:
    """The relay really did what the case says to the data (else the test proves nothing).
    Only the directions carrying data are checked: the other one carries a few hundred ACKs
    (about one per two data segments), where 1 % may well hit nothing."""
    after = world.relay_stats()
    for key, counter in PROOF.items():
        if getattr(case.impairment, key):
            for direction in directions:
                moved = getattr(getattr(after, direction), counter) - getattr(
                    getattr(before, direction), counter
                )
                assert moved > 0, (case, direction, counter)


def test_into_discard(world: ImpairedWorld, case: Case, payload: tuple[Path, str]) -> None:
    path, _ = payload
    before = world.relay_stats()
    started = time.monotonic()
    sock = connect(world, DISCARD, case.limit)
    try:
        with open(path, "rb") as f:
            sock.sendfile(f, count=case.size)
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(max(1.0, case.limit - (time.monotonic() - started)))
        assert sock.recv(1) == b""  # discard's FIN comes after every byte of ours
        assert bytes_acked(sock) == case.size + 2  # SYN + data + FIN
    finally:
        sock.close()
    assert time.monotonic() - started < case.limit
    check_impaired(world, case, before, ("to_stack",))


def test_from_chargen(world: ImpairedWorld, case: Case) -> None:
    before = world.relay_stats()
    started = time.monotonic()
    digest = hashlib.sha256()
    got = 0
    sock = connect(world, CHARGEN, case.limit)
    try:
        while got < case.size:
            sock.settimeout(max(0.1, case.limit - (time.monotonic() - started)))
            data = sock.recv(min(1 << 20, case.size - got))
            assert data, f"chargen ended after {got} bytes"
            digest.update(data)
            got += len(data)
    finally:
        sock.close()
    assert digest.hexdigest() == chargen_sha256(case.size)
    check_impaired(world, case, before, ("to_kernel",))


def test_through_echo(world: ImpairedWorld, case: Case, payload: tuple[Path, str]) -> None:
    path, _ = payload
    before = world.relay_stats()
    sock = connect(world, ECHO, case.limit)
    try:
        got, n, _seconds = echo_transfer(sock, path, case.limit, case.size)
    finally:
        sock.close()
    assert n == case.size
    assert got == sha256_file(path, case.size)
    check_impaired(world, case, before, ("to_stack", "to_kernel"))
