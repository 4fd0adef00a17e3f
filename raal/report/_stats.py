"""The report's per-arm measures: saving curve, cumulative cost, phase totals and cost to the baseline's accuracy.

Everything the tables and plots show about an arm is computed here once (`ArmStats`), from the loaded runs.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from raal import metrics
from raal.report._load import Arm, Run


@dataclass
class ArmStats:
    """What the report shows about one arm."""

    arm: Arm
    key: str
    color: object
    saving: metrics.SavingCurve | None
    cum_cost: np.ndarray          # overall cost (USD) after each round: labels x price + compute so far
    seconds: np.ndarray           # compute seconds of each round
    phases: dict[str, float]
    final_labels: int | None
    final_accuracy: float
    total_cost: float
    cost_to_target: float         # overall cost to reach the baseline's final accuracy (NaN if never/unknown)


def _arm_stats(run: Run, arm: Arm, key: str, color) -> ArmStats:
    r = arm.rounds
    prices = run.prices
    if r is None:
        return ArmStats(arm, key, color, None, np.zeros(0), np.zeros(0), {}, None, float("nan"), float("nan"),
                        float("nan"))
    secs = metrics.round_seconds(r)
    comp = metrics.compute_cost(secs, [str(d) for d in r["device"]], prices)
    labels = np.maximum(r["n_labeled"], 0).astype(np.float64)
    cum_cost = labels * prices.label_price + np.cumsum(comp)
    acc = r["accuracy"]
    evaluated = np.flatnonzero(np.isfinite(acc))
    final_acc = float(acc[evaluated[-1]]) if evaluated.size else float("nan")
    if evaluated.size and evaluated[-1] != len(acc) - 1:
        arm.notes.append(f"the last round ({int(r['round'][-1])}) has no accuracy; the final accuracy shown is "
                         f"that of round {int(r['round'][evaluated[-1]])}")
    saving = None
    base = run.baseline
    brounds = base.rounds if base is not None else None  # the baseline is an arm with rounds
    if brounds is not None and np.isfinite(brounds["accuracy"]).any() and evaluated.size:
        bcurve = np.c_[brounds["n_labeled"], brounds["accuracy"]]
        exclude = r["random_only"] if run.exclude_random_rounds else None
        saving = metrics.saving_curve(bcurve, np.c_[labels, acc], exclude=exclude)
    target = float("nan")
    if brounds is not None and np.isfinite(brounds["accuracy"]).any():
        bacc = brounds["accuracy"]
        target = float(bacc[np.flatnonzero(np.isfinite(bacc))[-1]])
    reach = np.flatnonzero(np.isfinite(acc) & (acc >= target)) if np.isfinite(target) else np.zeros(0, int)
    return ArmStats(arm=arm, key=key, color=color, saving=saving, cum_cost=cum_cost, seconds=secs,
                    phases=metrics.phase_totals(r), final_labels=int(r["n_labeled"][-1]), final_accuracy=final_acc,
                    total_cost=float(cum_cost[-1]), cost_to_target=float(cum_cost[reach[0]]) if reach.size else
                    float("nan"))


def _collect(runs: Sequence[Run]) -> list[ArmStats]:
    from matplotlib import colormaps

    multi = len(runs) > 1
    arms = [(run, a) for run in runs for a in sorted(run.arms, key=lambda a: not a.baseline)]
    n_col = sum(1 for _, a in arms if not a.baseline)
    cmap = colormaps["tab10" if n_col <= 10 else "tab20"]
    stats, i = [], 0
    for run, a in arms:
        key = f"{run.label}/{a.name}" if multi else a.name
        color: object
        if a.baseline:
            color = "black"
        else:
            color = cmap(i % cmap.N)
            i += 1
        stats.append(_arm_stats(run, a, key, color))
    return stats



def _acc_scale(stats: Sequence[ArmStats]) -> tuple[float, str]:
    vals = [s.arm.rounds["accuracy"] for s in stats if s.arm.rounds is not None]
    top = max((float(np.nanmax(v)) for v in vals if np.isfinite(v).any()), default=1.0)
    return (100.0, "test accuracy (%)") if top <= 1.0 + 1e-9 else (1.0, "test accuracy")
