"""Where the stopping advice fell, for the report: a marker on the learning curve and a summary cell.

Kept out of `_write` (already long); both read the optional `stop_advice` column (absent in older runs).
"""
from __future__ import annotations

import numpy as np


def first_stop(rounds: dict) -> int | None:
    """Row index of the first round advised to stop, or None (never, or a run without the column)."""
    advice = rounds.get("stop_advice") if rounds is not None else None
    if advice is None:
        return None
    hits = np.flatnonzero(np.asarray([str(a) == "stop" for a in advice]))
    return int(hits[0]) if hits.size else None


def mark_stop(ax, rounds: dict, scale: float, color) -> None:
    """A hollow marker on the arm's curve at the first round advised to stop."""
    i = first_stop(rounds)
    if i is None or not np.isfinite(rounds["accuracy"][i]):
        return
    ax.plot([rounds["n_labeled"][i]], [rounds["accuracy"][i] * scale], marker="o", markersize=11, fillstyle="none",
            markeredgewidth=1.8, linestyle="none", color=color)
    ax.annotate("stop advised", (rounds["n_labeled"][i], rounds["accuracy"][i] * scale), textcoords="offset points",
                xytext=(6, -14), fontsize=7, color=color)


def stop_cell(rounds: dict) -> str:
    """'<labels> (<reason>)' of the first stop advice, 'go' when it never came, '-' without the column."""
    if rounds is None or "stop_advice" not in rounds:
        return "-"
    i = first_stop(rounds)
    if i is None:
        return "go" if any(str(a) == "go" for a in rounds["stop_advice"]) else "-"
    reason = str(rounds["stop_reason"][i]).split(":")[0] if "stop_reason" in rounds else ""
    return f"{int(rounds['n_labeled'][i])} ({reason})" if reason else str(int(rounds["n_labeled"][i]))
