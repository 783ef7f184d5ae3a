"""`netstack ss` against a running stack: a few kernel nc connections to its services show up
with their states, addresses and tcp_info, read through the metrics server's /connections."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.integration.world import can_run_world, have_tools, running_world


def test_ss_lists_the_connections_of_a_running_stack(tmp_path) -> None:
    ok, why = can_run_world()
    if not ok:
        pytest.skip(why)
    if not have_tools("nc"):
        pytest.skip("no nc")
    with running_world(tmp_path, "--pcap", "none", "--log-level", "info", tag="ss") as world:
        ncs = [
            world.popen(["nc", world.stack_ip, str(port)], stdin=subprocess.PIPE,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for port in (7, 9, 9)
        ]  # fmt: skip
        try:
            for nc in ncs[:2]:
                assert nc.stdin is not None
                nc.stdin.write(b"hello\n")
                nc.stdin.flush()
            ss = [sys.executable, "-m", "netstack", "ss", "--metrics-address", "127.0.0.1:9464"]
            deadline = time.monotonic() + 20
            while True:
                table = json.loads(world.run([*ss, "--json"]).stdout)
                conns = table["connections"]
                done = [c for c in conns if c["tcp_info"]["tcpi_bytes_received"] == 6]
                if len(conns) == 3 and len(done) == 2:
                    break
                assert time.monotonic() < deadline, table
                time.sleep(0.05)
            assert {c["state"] for c in conns} == {"established"}
            assert sorted(int(c["local"].rsplit(":", 1)[1]) for c in conns) == [7, 9, 9]
            assert all(c["peer"].startswith(world.host_ip + ":") for c in conns)
            echo = next(c for c in conns if c["local"].endswith(":7"))
            assert echo["tcp_info"]["tcpi_bytes_acked"] == 6  # the echo came back, ACKed
            assert echo["tcp_info"]["tcpi_rtt"] > 0 and echo["tcp_info"]["tcpi_snd_mss"] > 1000
            text = world.run(ss).stdout.splitlines()
            assert text[0].split()[0] == "State"
            estab = [line for line in text if line.startswith("ESTAB")]
            assert len(estab) == 3
            assert sum(line.startswith("\t ") and " mss:" in line for line in text) == 3
            listening = world.run([*ss, "-l"]).stdout
            assert {line.split()[3].rsplit(":", 1)[1] for line in listening.splitlines()[1:]} >= {
                "7", "9", "19"
            }  # fmt: skip
        finally:
            for nc in ncs:
                nc.kill()
                nc.wait(5)
