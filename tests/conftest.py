"""Shared fixtures. One private local Ray per test session, started lazily by the tests that need it.

Every test that starts or uses Ray carries the `ray` marker, so that `make test-fast` (`-m "not ray and not slow"`)
runs without Ray. Two guards keep that true: a test that requests `ray_local` (directly or through another
fixture) without the marker fails at setup, and an unmarked test runs with `RAY_TMPDIR` pointing at a fresh
folder of its own, so a Ray node started during it, in this process or in a subprocess that inherits the
environment, leaves a `ray/session_*` folder there and fails the test.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TQDM_DISABLE", "1")

RAY_FIXTURES = frozenset({"ray_local"})
UNMARKED = "is not marked `ray` but {what}: add @pytest.mark.ray (or a module-level pytestmark) so that " \
           "`make test-fast` leaves it out"


@pytest.fixture(scope="session")
def ray_local():
    """A private local Ray with 2 CPUs and a small object store; shut down at the end of the session."""
    import ray

    from raal.raylocal import init_local_ray

    init_local_ray(num_cpus=2, quiet=True)
    yield ray
    ray.shutdown()


def pytest_runtest_setup(item: pytest.Item) -> None:
    """An unmarked test may not request the session's Ray (fixturenames holds the fixtures' fixtures too)."""
    used = RAY_FIXTURES.intersection(getattr(item, "fixturenames", ()))
    if used and item.get_closest_marker("ray") is None:
        pytest.fail(f"{item.nodeid} " + UNMARKED.format(what=f"requests {', '.join(sorted(used))}"), pytrace=False)


def _ray_initialized() -> bool:
    ray = sys.modules.get("ray")  # never import Ray here: the fast lane does not need it
    return bool(ray is not None and getattr(ray, "is_initialized", lambda: False)())


@pytest.fixture(autouse=True)
def _ray_only_when_marked(request: pytest.FixtureRequest):
    """Fail an unmarked test during which a Ray node started (here or in a child process)."""
    if request.node.get_closest_marker("ray") is not None:
        yield
        return
    before = _ray_initialized()
    tmp = tempfile.mkdtemp(prefix="raal-noray-")  # short: Ray's socket paths live under it
    old = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = tmp
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = old
        sessions = sorted(p.name for p in (Path(tmp) / "ray").glob("session_*"))
        started_here = not before and _ray_initialized()
        shutil.rmtree(tmp, ignore_errors=True)
    if sessions or started_here:
        pytest.fail(f"{request.node.nodeid} " + UNMARKED.format(what="a Ray node started during it"), pytrace=False)
