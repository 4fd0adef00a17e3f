"""What a run shows on the console, and where everything else goes.

By default the console carries raal's own lines only (the header, one live progress line, one line per round,
the summary). raal's log records, and those of Ray's Python loggers that reach the root or `ray` logger, from
the CLI and from every Ray worker process, go to `raal.log` in the run dir: the CLI sets up its own logging, and
`worker_setup` is Ray's documented per-worker hook (`runtime_env={"worker_process_setup_hook": ...}`). Ray's
forwarding of worker stdout/stderr to the console (`log_to_driver`) is off unless verbose; those streams, and the
logs Ray Data and Ray Train keep in files of their own, stay in Ray's session log directory, whose path the run
prints. `-v/--verbose` (or `log.verbose=true`) turns the forwarding back on and shows every log line.
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
import time
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
STALE_S = 5.0  # a finished phase stays on the progress line this long


def local_dir(run_dir: str) -> Path | None:
    """The run dir as a local path (a plain path or a `file://` URI), else None; creates nothing."""
    import pyarrow.fs as pafs  # lazy: light CLI: pyarrow

    from raal.store import _resolve  # lazy: light CLI: pyarrow

    fs, root = _resolve(run_dir)
    return Path(root) if isinstance(fs, pafs.LocalFileSystem) else None


def log_file_for(run_dir: str) -> Path:
    """raal.log in the run dir when the store is local (also `file://`); else in ./runs/ beside local runs."""
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
            "runtime_env": {"worker_process_setup_hook": "raal.console.worker_setup", "env_vars": env}}


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


def fmt_seconds(s: float) -> str:
    if not s == s or s == float("inf"):
        return "?"
    s = int(round(s))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def progress_text(snapshot: dict, now: float | None = None) -> str | None:
    """'round 2 · asvp_margin · embedding 120/200 img, 9.1 img/s, ETA 9s' from a board snapshot."""
    p = snapshot.get("phase")
    now = time.time() if now is None else now
    if not p or (p["total"] and p["done"] >= p["total"] and now - p.get("at", now) > STALE_S):
        return None  # nothing yet, or a finished phase while the next one reports nothing
    ctx = snapshot.get("context") or {}
    where = " · ".join(str(x) for x in (f"round {ctx['round']}" if "round" in ctx else None, ctx.get("arm")) if x)
    elapsed = max(now - p["started"], 1e-9)
    done, total, unit = p["done"], p["total"], p["unit"]
    text = f"{p['phase']} {done:g}" + (f"/{total:g}" if total else "") + (f" {unit}" if unit else "")
    if done > 0:
        rate = done / elapsed
        text += f", {rate:.1f} {unit or 'it'}/s"
        if total:
            text += f", ETA {fmt_seconds((total - done) / rate)}"
    else:
        text += f", {fmt_seconds(elapsed)}"
    return f"  {where} · {text}" if where else f"  {text}"


class Display:
    """The live progress line: redrawn in place on a terminal; on a pipe, one line per `pipe_every_s` at most,
    so a long phase still shows it moves while a captured run stays short."""

    def __init__(self, stream=None, pipe_every_s: float = 60.0):
        self.stream = stream or sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.pipe_every_s = pipe_every_s
        self.shown = False
        self.last_pipe = time.monotonic()

    def show(self, text: str | None) -> None:
        if not text:
            return
        if self.tty:
            width = max(20, _columns() - 1)
            self.stream.write("\r\x1b[K" + text[:width])
            self.stream.flush()
            self.shown = True
        elif time.monotonic() - self.last_pipe >= self.pipe_every_s:
            self.last_pipe = time.monotonic()
            print(text, file=self.stream, flush=True)

    def clear(self) -> None:
        """Before a permanent line: wipe the live one."""
        if self.tty and self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False
        self.last_pipe = time.monotonic()

    def print(self, text: str = "") -> None:
        self.clear()
        print(text, file=self.stream, flush=True)


def _columns() -> int:

    return shutil.get_terminal_size((100, 20)).columns


def wait(ref, board, display: Display, poll_s: float = 0.5):
    """ray.get(ref), showing the board's progress meanwhile. The board is asked without blocking: on a loaded
    machine its first answer may take seconds (a new worker process), which must neither delay the round nor
    turn the progress off."""
    import ray
    from ray.exceptions import RayActorError

    asked = None
    while True:
        ready, _ = ray.wait([ref], timeout=poll_s)
        if ready:
            display.clear()
            return ray.get(ref)
        if board is None:
            continue
        if asked is None:
            asked = board.get.remote()
        if ray.wait([asked], timeout=0)[0]:
            try:
                display.show(progress_text(ray.get(asked)))
            except RayActorError:  # the board is gone: the run goes on without a progress line
                board = None
            asked = None
