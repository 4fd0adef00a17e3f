"""Shared fixtures. One private local Ray per test session, started lazily by the tests that need it."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="session")
def ray_local():
    """A private local Ray with 2 CPUs and a small object store; shut down at the end of the session."""
    import ray

    from raal.raylocal import init_local_ray

    init_local_ray(num_cpus=2, quiet=True)
    yield ray
    ray.shutdown()
