"""Where raal's log records go: `raal.log` in the run dir, from the CLI and from every Ray worker process.

raal's log records, and those of Ray's Python loggers that reach the root or `ray` logger, go to `raal.log`: the
CLI sets up its own logging (`setup`), and `worker_setup` is Ray's documented per-worker hook
(`runtime_env={"worker_process_setup_hook": "raal.logs.worker_setup"}`), which training code on the workers calls
again after Ray Train's own set-up. Ray's forwarding of worker stdout/stderr to the console (`log_to_driver`) is off
unless verbose; those streams, and the logs Ray Data and Ray Train keep in files of their own, stay in Ray's
session log directory, whose path the run prints. A module of its own so that code on Ray workers needs neither the
CLI's console nor the run store.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

from raal import layout

LOG_NAME = layout.LOG
FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"
ENV_FILE, ENV_LEVEL = "RAAL_LOG_FILE", "RAAL_LOG_LEVEL"
#: Ray's own loggers whose records are expected conditions, not problems: kept out of raal.log below ERROR.
#: - Ray Train's placement-group cleaner asks the State API, which a Ray without dashboard lacks, every second;
#: - Ray Data announces that its progress bars are off, which raal does on purpose (raal shows its own).
QUIET_LOGGERS = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",
                 "ray.data._internal.progress")
_TAG = "_raal_handler"


def log_file_for(run_dir: str) -> Path:
    """raal.log in the run dir when the store is local (also `file://`); else in ./runs/ beside local runs."""
    from raal.store import local_dir  # lazy: light CLI: pyarrow

    local = local_dir(run_dir)
    if local is not None:
        return local / LOG_NAME

    name = Path(urlsplit(run_dir).path.rstrip("/")).name or "run"  # the path only: a URI's query may hold secrets
    return Path("runs").resolve() / f"{name}.{LOG_NAME}"


def _install(path: Path, level: str, verbose: bool) -> None:
    """Idempotent: raal's handlers replace raal's handlers, so no record is written twice."""
    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, _TAG, False)]:
        root.removeHandler(h)
        h.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    setattr(handler, _TAG, True)
    root.addHandler(handler)
    if verbose:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
        setattr(stream, _TAG, True)
        root.addHandler(stream)
    root.setLevel(level.upper())
    for name in ("raal", "ray"):  # Ray's logger keeps its own handlers and does not propagate: give it ours too
        lg = logging.getLogger(name)
        for h in [h for h in lg.handlers if getattr(h, _TAG, False)]:
            lg.removeHandler(h)
        if name == "ray" and not lg.propagate:
            lg.addHandler(handler)
    for name, obj in list(logging.root.manager.loggerDict.items()):  # a dictConfig elsewhere may have disabled them
        if name.startswith("raal") and isinstance(obj, logging.Logger):
            obj.disabled = False
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger("faiss").setLevel(logging.WARNING)


def setup(log_file: Path, level: str = "INFO", verbose: bool = False) -> dict:
    """Logging of this (CLI) process, and the keyword arguments of `ray.init` that extend it to every worker."""
    os.environ[ENV_FILE], os.environ[ENV_LEVEL] = str(log_file), level.upper()
    _install(log_file, level, verbose)
    env = {ENV_FILE: str(log_file), ENV_LEVEL: level.upper()}
    if not verbose:
        env["RAY_DATA_DISABLE_PROGRESS_BARS"] = "1"  # raal's progress line replaces Ray Data's bars
    return {"log_to_driver": verbose,
            "runtime_env": {"worker_process_setup_hook": "raal.logs.worker_setup", "env_vars": env}}


def worker_setup() -> None:
    """Ray's worker_process_setup_hook: the worker's log records go to the run's raal.log (appends of whole
    lines from several processes, which POSIX keeps unmixed for lines this short)."""
    path = os.environ.get(ENV_FILE)
    if path:
        _install(Path(path), os.environ.get(ENV_LEVEL, "INFO"), verbose=False)


def ray_log_dir() -> str | None:
    """Ray's own log directory of this session (worker stdout/stderr, Ray's components); None when attached to a
    cluster from elsewhere. Ray 2.60 has no public accessor for it."""
    try:
        from ray._private import worker

        node = worker._global_node
        return node.get_logs_dir_path() if node is not None else None
    except Exception:  # noqa: BLE001 - only a hint on the console
        return None
