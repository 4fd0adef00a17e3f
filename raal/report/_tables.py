"""The report's summary table: one row per arm, in text (stdout, summary.txt) and in HTML."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from raal.report._plots import fmt_time
from raal.report._stop import stop_cell

SUMMARY_HEAD = ("arm", "final labels", "final accuracy", "final saving ratio", "mean saving ratio (rounds)",
                "selector's own (diag.)", "compute time", "cost (USD)", "stop advised at")
#: beside a number read off the random curve outside its measured range (linear extrapolation)
EXTRAP_MARK = " (extrap.)"


def final_ratio(s) -> str:
    """The last evaluated round's saving ratio, marked when its equivalent random labels were extrapolated."""
    if s.arm.baseline:
        return "baseline"
    sv = s.saving
    ok = np.flatnonzero(np.isfinite(sv.ratios)) if sv is not None else np.zeros(0, int)
    if not ok.size:
        return "n/a"
    i = ok[-1]
    return f"{sv.ratios[i] * 100:+.1f}%" + (EXTRAP_MARK if sv.extrapolated[i] else "")


def summary_rows(stats: Sequence, scale: float = 100.0) -> list[tuple[str, ...]]:
    """One row per arm with the columns of SUMMARY_HEAD, formatted (accuracy times `scale`: 100 for fractions)."""
    rows = []
    for s in stats:
        if s.arm.rounds is None:
            rows.append((s.key, *("-",) * (len(SUMMARY_HEAD) - 1)))
            continue
        if not np.isfinite(s.final_accuracy):
            acc = "n/a"
        else:
            acc = f"{s.final_accuracy * scale:.2f}" + ("%" if scale == 100.0 else "")
        if s.arm.baseline:
            ratio = "baseline"
        elif s.saving is None or not np.isfinite(s.saving.mean):
            ratio = "n/a"
        else:  # interpolated rounds only; extrapolated ones are counted beside it, never averaged
            ratio = f"{s.saving.mean * 100:+.1f}% ({s.saving.n_used} interp."
            ratio += f", {s.saving.n_extrapolated} extrap.)" if s.saving.n_extrapolated else ")"
        own = s.arm.rounds["model_accuracy"][-1] if "model_accuracy" in s.arm.rounds else np.nan
        kind = str(s.arm.rounds["model_eval"][-1]) if "model_eval" in s.arm.rounds else ""
        diag = f"{kind} {own * scale:.2f}" if np.isfinite(own) and kind not in ("", "none") else "-"
        rows.append((s.key, str(s.final_labels), acc, final_ratio(s), ratio, diag, fmt_time(float(s.seconds.sum())),
                     f"{s.total_cost:.2f}", stop_cell(s.arm.rounds)))
    return rows


def _text_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(head), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])
