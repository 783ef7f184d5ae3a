"""The comparison of test_linux_trace.py, re-run on this machine's kernel: the kernel sends
through a TUN in a fresh namespace to a receiver we script (linux_sender.py), and our engine,
given the same ACKs at the same times, must send the same segments after the same ACKs.

No timing is asserted: the receiver waits for each segment the kernel sends (select on the
TUN, a 4 s bound on the whole run), and the comparison is of the order of segments and ACKs,
which the replay takes from what actually happened on the wire.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.tcp.linux_sender import capture
from tests.integration.world import can_run_world
from tests.unit.tcp.lintrace_replay import diff, linux_sent, replay

pytestmark = pytest.mark.integration


@pytest.mark.skipif(not can_run_world()[0], reason=can_run_world()[1] or "world")
@pytest.mark.parametrize("name", ["sack_early_loss", "sack_reorder_2", "reno_early_loss"])
def test_this_kernel_and_our_engine_send_the_same_segments(name: str, tmp_path: Path) -> None:
    capture([name], tmp_path)
    trace = json.loads((tmp_path / f"{name}.json").read_text())
    linux = linux_sent(trace)
    assert len({o.seq for o in linux}) == trace["segments"]  # the kernel sent it all
    ours, conn = replay(trace)
    assert [o.key() for o in ours] == [o.key() for o in linux], (
        f"kernel {trace['kernel']}, {trace['sysctls']}\n{diff(linux, ours)}"
    )
    assert conn.snd_una == conn.snd_nxt
