"""Start (or attach to) Ray the way raal needs it: a private local instance on a laptop, the cluster under a job."""
from __future__ import annotations

import logging
import os

from raal.errors import ConfigError

log = logging.getLogger(__name__)


def init_local_ray(num_cpus: int | None = None, *, address: str | None = None, quiet: bool = False,
                   object_store_bytes: int = 1 << 30, logging_kwargs: dict | None = None) -> None:
    """Initialise Ray once per process.

    Under `ray job submit` (RAY_ADDRESS set, or `address="auto"`) we attach to the cluster. Otherwise we start a
    *private* local instance with `address="local"`: a stale `ray start` session file would make a plain
    `ray.init()` try to attach (docs/ray.md). Auth is disabled for the private instance so that a token written
    by it does not break a later `ray job submit`. `logging_kwargs`: raal/logs.py's `log_to_driver` and
    `runtime_env` (where every worker's log records go).
    """
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = address or os.environ.get("RAY_ADDRESS")
    kw = dict(logging_kwargs or {"log_to_driver": not quiet})
    if address:  # the cluster's own auth setting applies
        try:
            ray.init(address=address, **kw)
        except ConnectionError as err:  # no cluster there: a config mistake, one line (the CLI exits 2)

            raise ConfigError(f"ray.address={address!r}: no Ray cluster answers there ({str(err).splitlines()[0]}); "
                              "leave ray.address empty for a private local Ray, or start the cluster") from None
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, object_store_memory=object_store_bytes,
             configure_logging=logging_kwargs is None, logging_level=logging.WARNING if quiet else logging.INFO, **kw)
    if quiet:
        quiet_ray_data()


def quiet_ray_data() -> None:
    """Turn off Ray Data's own progress bars and start banners in this process."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
