"""Named fault points for the crash-safety tests and `bench/faults.py` (issue 9). Inert unless RAAL_FAULT is set.

RAAL_FAULT="POINT:MODE:MARKER[;POINT:MODE:MARKER...]". The first process that reaches POINT creates the file
MARKER (atomically, so exactly one process fires even when several actors reach the point together); then, by MODE:
  pause  sleeps, so the test can SIGKILL the whole run while it is inside that phase;
  exit   ends this process at once (`os._exit`), e.g. the driver actor, which Ray then restarts;
  raise  raises `InjectedFault` (a RuntimeError: an internal error, not bad input) for the error-contract tests.
An existing MARKER disarms the point, so a restarted process runs on. The variable travels to Ray workers through
the environment of the local Ray the run starts.
"""
from __future__ import annotations

import os
import time

from raal.errors import RaalError

ENV = "RAAL_FAULT"
POINTS = ("embed", "proxy_train", "select", "finetune", "before_commit", "label_import")
MODES = ("pause", "exit", "raise")


class InjectedFault(RaalError, RuntimeError):
    """Raised at a fault point armed with MODE=raise."""


def parse(value: str) -> tuple[str, str, str]:
    point, mode, marker = (value.split(":", 2) + ["", ""])[:3]
    if point not in POINTS or mode not in MODES or not marker:
        raise ValueError(f"{ENV}={value!r}; expected POINT:MODE:MARKER with POINT in {POINTS}, MODE in {MODES}")
    return point, mode, marker


def reach(point: str) -> None:
    """Called by raal at each named point; does nothing unless RAAL_FAULT names this point."""
    value = os.environ.get(ENV, "")
    if not value:
        return
    for spec in value.split(";"):
        want, mode, marker = parse(spec)
        if want == point:
            _fire(point, mode, marker)


def _fire(point: str, mode: str, marker: str) -> None:
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return  # fired already (in this process or another): run on
    with os.fdopen(fd, "w") as f:
        f.write(f"{point} {mode} pid={os.getpid()}\n")
        f.flush()
        os.fsync(f.fileno())
    if mode == "exit":
        os._exit(1)
    if mode == "raise":
        raise InjectedFault(f"fault injected at {point} (RAAL_FAULT)")
    while True:  # pause: the test kills us
        time.sleep(3600)
