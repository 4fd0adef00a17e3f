"""What a run shows on the console: the live progress line, the round table, and the waits that drive them.

By default the console carries raal's own lines only (the header, one live progress line, one line per round,
the summary); everything else goes to `raal.log` (raal/logs.py). `-v/--verbose` (or `log.verbose=true`) shows every
log line here too.
"""
from __future__ import annotations

import math
import shutil
import sys
import time

STALE_S = 5.0  # a finished phase stays on the progress line this long


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


def format_row(r: int, rows: dict[str, dict], names: list[str]) -> str:
    """One line per round: the labels (of the lock-step arms) and each arm's accuracy; `-` where an arm has none."""
    counts = sorted({row["n_labeled"] for row in rows.values()})
    labels = "/".join(str(c) for c in counts)
    cells = []
    for n in names:
        acc = rows.get(n, {}).get("accuracy", float("nan"))
        cells.append(f"{acc:>{max(8, len(n))}.4f}" if math.isfinite(acc) else f"{'-':>{max(8, len(n))}}")
    return f"{r:>5}  {labels:>7}  " + "  ".join(cells)


def format_header(names: list[str]) -> str:
    return f"{'round':>5}  {'labels':>7}  " + "  ".join(f"{n:>{max(8, len(n))}}" for n in names)
