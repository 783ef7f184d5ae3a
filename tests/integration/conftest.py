"""Fixtures for tests that use the Linux kernel as the peer, inside namespaces they create."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.world import World, can_run_world, running_world

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    """The stack on tap0 in a fresh namespace, shared by the tests of one module; a module
    that needs other `netstack run` flags names them in WORLD_ARGS."""
    ok, why = can_run_world()
    if not ok:
        pytest.skip(why)
    args = getattr(request.module, "WORLD_ARGS", ())
    with running_world(tmp_path_factory.mktemp("world"), *args) as world:
        yield world
