"""Progress of the long phases (embedding, proxy, fine-tune, selection), seen from the console.

The work runs in Ray processes (the driver actor, Ray Data actors, Ray Train workers) whose output does not reach
the console by default (raal/console.py). Each of them calls `report(phase, done, total, unit)`; the call goes,
at most twice a second per process, to one small named actor (`ProgressBoard`, num_cpus=0) that the CLI started
and polls while it waits for a round. Without a board (tests, library use) `report` does nothing.
"""
from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)

BOARD_NAME = "raal_progress_board"
#: the round's timed phases (raal/metrics.py PHASES) as the console names them
PHASE_LABELS = {"t_pre": "embedding", "t_tr_proxy": "proxy", "t_f_proxy": "proxy scoring", "t_tr_full": "fine-tune",
                "t_f_full": "embedding", "t_select": "selection", "t_eval": "evaluation"}
MIN_INTERVAL_S = 0.5  # per process and phase, except the first and last report of a phase
LOOKUP_RETRY_S = 10.0

_board = None
_board_checked = 0.0
_last_sent: dict[str, float] = {}
_context: dict = {}
_started: dict[str, float] = {}


class ProgressBoard:
    """The latest report from any process (one progress line), plus the context (round, arm) set by the driver."""

    def __init__(self):
        self.phase: dict | None = None
        self.context: dict = {}

    def update(self, phase: str, done: float, total: float | None, unit: str, started: float, context: dict) -> None:
        if context:
            self.context = context
        self.phase = {"phase": phase, "done": done, "total": total, "unit": unit, "started": started,
                      "at": time.time()}

    def get(self) -> dict:
        return {"phase": self.phase, "context": self.context}


def start_board():
    """The board of this Ray job (started by the CLI before the driver actor)."""
    import ray

    return ray.remote(num_cpus=0, max_restarts=0)(ProgressBoard).options(name=BOARD_NAME).remote()


def _lookup():
    global _board, _board_checked
    now = time.monotonic()
    if _board is None and now - _board_checked >= LOOKUP_RETRY_S:
        _board_checked = now
        try:
            import ray

            if ray.is_initialized():
                _board = ray.get_actor(BOARD_NAME)
        except ValueError:  # no board in this job: nobody is watching
            _board = None
    return _board


def set_context(**context) -> None:
    """What the driver is working on now (round, arm); sent with this process's next report."""
    _context.clear()
    _context.update(context)


def report(phase: str, done: float, total: float | None = None, unit: str = "") -> None:
    """`done` of `total` `unit`s of `phase` (total None: no known end). Cheap, never raises."""
    now = time.monotonic()
    if done == 0 or phase not in _started:
        _started[phase] = time.time()
    last = _last_sent.get(phase, 0.0)
    if done not in (0, total) and now - last < MIN_INTERVAL_S:
        return
    board = _lookup()
    if board is None:
        return
    _last_sent[phase] = now
    try:
        board.update.remote(phase, done, total, unit, _started[phase], dict(_context))
    except Exception:  # noqa: BLE001 - progress is a courtesy: a dead board must not stop the work
        log.debug("progress board unreachable", exc_info=True)


class PassProgress:
    """Progress of one pass over items (embedding, pool scoring): reports to the board, a log line every
    `log_every_s` (for runs watched through raal.log) and the pass's rates at the end."""

    def __init__(self, total: int, desc: str, unit: str = "img", enabled: bool = True, log_every_s: float = 30.0,
                 phase: str = "embedding"):
        self.total, self.desc, self.unit, self.phase = total, desc, unit, phase
        self.enabled = enabled
        self.t0 = self.last = time.perf_counter()
        self.count = 0
        self.first: tuple[float, int] | None = None  # (time, rows) of the first output: start-up ends there
        self.log_every_s = log_every_s
        if enabled:
            report(phase, 0, total, unit)

    def update(self, n: int) -> None:
        self.count += n
        if self.enabled:
            report(self.phase, self.count, self.total, self.unit)
        now = time.perf_counter()
        if self.first is None:
            self.first = (now, n)
            log.info("%s: first %d %s after %.1fs (start-up)", self.desc, n, self.unit, now - self.t0)
        if now - self.last >= self.log_every_s:
            self.last = now
            rate = self.count / max(now - self.t0, 1e-9)
            eta = (self.total - self.count) / rate if rate > 0 else float("inf")
            log.info("%s: %d/%d %s (%.1f%%), %.1f %s/s, ETA %.0fs", self.desc, self.count, self.total, self.unit,
                     100.0 * self.count / max(self.total, 1), rate, self.unit, eta)

    def close(self) -> dict:
        end = time.perf_counter()
        elapsed = end - self.t0
        rate = self.count / elapsed if elapsed > 0 else 0.0
        out = {"items": self.count, "seconds": round(elapsed, 3), "items_per_s": round(rate, 2)}
        if self.first is not None:
            t, n = self.first
            out["first_output_s"] = round(t - self.t0, 3)
            out["items_per_s_after_first"] = round((self.count - n) / (end - t), 2) if end > t and self.count > n \
                else out["items_per_s"]
        log.info("%s: %d %s in %.1fs (%.1f %s/s; %.1f %s/s after a start-up of %.1fs)", self.desc, self.count,
                 self.unit, elapsed, rate, self.unit, out.get("items_per_s_after_first", rate), self.unit,
                 out.get("first_output_s", 0.0))
        return out
