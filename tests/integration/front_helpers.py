"""Helpers shared by the front's integration tests (forwards, SOCKS)."""

from __future__ import annotations

import time

from tests.integration.world import World


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def listening(world: World, port: int) -> bool:
    out = world.run(["ss", "-Htln", f"sport = :{port}"], check=False).stdout
    return bool(out.strip())


def metric(world: World, name: str, **labels: str) -> float:
    text = world.run(["curl", "-s", "http://127.0.0.1:9464/metrics"]).stdout
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
