"""The report's plots: accuracy curves (with a band across seeds), sample saving, ASVP decisions, time per phase,
cost against accuracy.

matplotlib Figure + Agg canvas: no global backend state, safe inside a Ray worker. Arms that would hide each other
(equal accuracies at equal labels, e.g. the shared random round 0) stay visible: each arm has its own marker and
dash, and later arms are drawn with smaller markers on top of earlier ones.
"""
from __future__ import annotations

import io
import json
from collections.abc import Sequence

import numpy as np

from raal import metrics
from raal.report._stop import mark_stop

PHASE_NAMES = {
    "t_pre": "feature extraction (T_pre)", "t_tr_proxy": "proxy training (T_tr,proxy)",
    "t_f_proxy": "proxy forward (T_f,proxy)", "t_tr_full": "full-model training (T_tr,full)",
    "t_f_full": "full-model forward (T_f,full)", "t_select": "selection", "t_eval": "evaluation",
    "other": "other (round time not in a phase)",
}
PHASE_COLORS = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#bab0ac")
BASELINE_STYLES = ("--", ":", "-.", (0, (5, 1)))
ARM_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">")
ARM_DASHES = ("-", (0, (6, 2)), (0, (3, 1, 1, 1)), (0, (1, 1)))
#: config keys that differ between the seeds of one experiment (runs equal in every other key form a seed group)
SEED_KEYS = ("al.seed", "run_dir", "name", "report", "track", "log", "ray")


def _figure(w: float, h: float, nrows: int = 1, ncols: int = 1, **kw):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def _line_kw(s, base_idx: dict[str, int], i: int = 0) -> dict:
    """Line style of the i-th arm: baselines black and dashed by run; other arms each their own marker and dash,
    markers shrinking with i so that an arm drawn over an equal one leaves it visible."""
    if s.arm.baseline:
        ls = BASELINE_STYLES[base_idx.get(s.arm.run_label, 0) % len(BASELINE_STYLES)]
        return {"color": "black", "linestyle": ls, "linewidth": 2.0, "marker": "o", "markersize": 4, "zorder": 2}
    return {"color": s.color, "linestyle": ARM_DASHES[i % len(ARM_DASHES)], "linewidth": 1.6,
            "marker": ARM_MARKERS[i % len(ARM_MARKERS)], "markersize": max(3.0, 8.0 - 1.5 * i),
            "markerfacecolor": "white" if i % 2 else s.color, "zorder": 3 + i}


def _gapped(rounds: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Insert a NaN point wherever round numbers jump by more than one, so a plotted line breaks at missing rounds."""
    brk = np.flatnonzero(np.diff(rounds) > 1) + 1
    if brk.size == 0:
        return x.astype(np.float64), y.astype(np.float64)
    return np.insert(x.astype(np.float64), brk, np.nan), np.insert(y.astype(np.float64), brk, np.nan)


def _legend_label(s) -> str:
    return f"{s.key} (random baseline)" if s.arm.baseline else s.key


def _group_key(config: dict) -> str:
    """The config without the keys that tell seeds apart: runs with equal keys are seeds of one experiment."""
    def strip(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            key = f"{prefix}{k}"
            if key in SEED_KEYS:
                continue
            out[k] = strip(v, key + ".") if isinstance(v, dict) else v
        return out
    return json.dumps(strip(config), sort_keys=True, default=str)


def seed_groups(stats: Sequence) -> list[list]:
    """Arms of the same name in runs of the same config (differing only in the seed): one list per arm name,
    only where there are at least two seeds. Runs without a config.yaml are never grouped."""
    groups: dict[tuple[str, str], list] = {}
    for s in stats:
        if s.arm.rounds is None or not s.arm.config:
            continue
        groups.setdefault((_group_key(s.arm.config), s.arm.name), []).append(s)
    return [g for g in groups.values() if len({s.arm.run_label for s in g}) >= 2]


def _band(group: Sequence, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """labels, mean, min, max of the accuracy at each round that every seed evaluated."""
    n = min(len(s.arm.rounds["round"]) for s in group)
    acc = np.array([s.arm.rounds["accuracy"][:n] for s in group], dtype=np.float64) * scale
    labels = np.array([s.arm.rounds["n_labeled"][:n] for s in group], dtype=np.float64).mean(axis=0)
    ok = np.isfinite(acc).all(axis=0)
    return labels[ok], acc[:, ok].mean(axis=0), acc[:, ok].min(axis=0), acc[:, ok].max(axis=0)


def plot_accuracy(stats, base_idx, scale, ylab):
    fig, ax = _figure(8, 5)
    ax = ax[0, 0]
    banded = seed_groups(stats)
    in_band = {id(s) for g in banded for s in g}
    for i, s in enumerate(stats):
        r = s.arm.rounds
        if r is None or not np.isfinite(r["accuracy"]).any() or id(s) in in_band:
            continue
        ok = np.isfinite(r["accuracy"])
        kw = _line_kw(s, base_idx, i)
        ax.plot(*_gapped(r["round"][ok], r["n_labeled"][ok], r["accuracy"][ok] * scale), label=_legend_label(s),
                **kw)
        mark_stop(ax, r, scale, kw["color"])
    for i, g in enumerate(banded):
        x, mean, lo, hi = _band(g, scale)
        first = g[0]
        kw = _line_kw(first, base_idx, i)
        ax.fill_between(x, lo, hi, color=kw["color"], alpha=0.18, linewidth=0)
        label = f"{first.arm.name}{' (random baseline)' if first.arm.baseline else ''}: mean of {len(g)} seeds, " \
                "band min-max"
        ax.plot(x, mean, label=label, **kw)
    ax.set_title("Learning curves: test accuracy vs number of labels")
    ax.set_xlabel("labeled samples (count)")
    ax.set_ylabel(ylab)
    ax.grid(alpha=0.3)
    if ax.has_data():
        ax.legend(fontsize=8, loc="lower right")
    else:
        ax.text(0.5, 0.5, "no evaluated round in any arm", ha="center", va="center", transform=ax.transAxes)
    return fig


def _time_unit(seconds: float) -> tuple[float, str]:
    if seconds >= 2 * 3600:
        return 3600.0, "h"
    if seconds >= 120:
        return 60.0, "min"
    return 1.0, "s"


def fmt_time(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "n/a"
    div, unit = _time_unit(seconds)
    return f"{seconds / div:.3g} {unit}"


def plot_time(stats):
    rows = [s for s in stats if s.phases]
    if not rows:
        return None
    keys = list(metrics.PHASES) + ["other"]
    totals = np.array([[s.phases.get(k, 0.0) for k in keys] for s in rows])
    div, unit = _time_unit(float(totals.sum(axis=1).max(initial=0.0)))
    fig, ax = _figure(9, 2.4 + 0.45 * len(rows))
    ax = ax[0, 0]
    y = np.arange(len(rows))
    left = np.zeros(len(rows))
    for j, k in enumerate(keys):
        w = totals[:, j] / div
        if not np.any(w > 0):
            continue
        ax.barh(y, w, left=left, color=PHASE_COLORS[j % len(PHASE_COLORS)], label=PHASE_NAMES[k])
        left += w
    ax.set_yticks(y, [s.key for s in rows])
    ax.invert_yaxis()
    ax.set_title("Compute time per phase, summed over rounds")
    ax.set_xlabel(f"time ({unit})")
    ax.grid(axis="x", alpha=0.3)
    if ax.has_data():  # below the axes, never over the bars
        fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=3, fontsize=8, frameon=False)
    return fig


def plot_saving(stats):
    from matplotlib.lines import Line2D

    rows = [s for s in stats if s.saving is not None and not s.arm.baseline]
    fig, axes = _figure(12, 5, 1, 2)
    a1, a2 = axes[0]
    if not rows:
        for a in (a1, a2):
            a.text(0.5, 0.5, "no saving ratio: no random baseline with evaluated rounds",
                   ha="center", va="center", transform=a.transAxes, wrap=True)
            a.set_axis_off()
        fig.suptitle("Sample saving against the random baseline")
        return fig
    top = 0.0
    for s in rows:
        sv, rnd = s.saving, s.arm.rounds["round"]
        ok = np.isfinite(sv.equivalent_labels)
        ext = sv.extrapolated & ok
        a1.plot(*_gapped(rnd[ok], sv.labels[ok], sv.equivalent_labels[ok]), "-", color=s.color, label=s.key)
        a1.plot(sv.labels[ok & ~ext], sv.equivalent_labels[ok & ~ext], "o", color=s.color, ms=5)
        a1.plot(sv.labels[ext], sv.equivalent_labels[ext], "o", mfc="white", mec=s.color, ms=6)
        top = max(top, float(np.nanmax(sv.labels)), float(np.nanmax(sv.equivalent_labels[ok], initial=0)))
        okr = np.isfinite(sv.ratios)
        mean = f"{sv.mean * 100:.1f}%" if np.isfinite(sv.mean) else "n/a"
        a2.plot(*_gapped(rnd[okr], rnd[okr], sv.ratios[okr] * 100), "-", color=s.color,
                label=f"{s.key} (mean {mean})")
        used, ex = okr & sv.used, okr & ~sv.used
        a2.plot(rnd[used & ~sv.extrapolated], sv.ratios[used & ~sv.extrapolated] * 100, "o", color=s.color, ms=5)
        a2.plot(rnd[used & sv.extrapolated], sv.ratios[used & sv.extrapolated] * 100, "o", mfc="white",
                mec=s.color, ms=6)
        a2.plot(rnd[ex], sv.ratios[ex] * 100, "x", color="grey", ms=7)
    a1.plot([0, top], [0, top], ":", color="grey", label="no saving (N2 = N1)")
    a1.set_title("Equivalent random-baseline labels")
    a1.set_xlabel("AL labels N1 (count)")
    a1.set_ylabel("random labels for the same accuracy N2 (count)")
    a1.grid(alpha=0.3)
    a1.legend(fontsize=8)
    a2.axhline(0, color="grey", lw=1)
    a2.set_title("Sample saving ratio per round, r = (N2 - N1) / N2")
    a2.set_xlabel("round")
    a2.set_ylabel("sample saving ratio (%)")
    a2.grid(alpha=0.3)
    extra = [Line2D([], [], ls="", marker="o", mfc="white", mec="black", label="extrapolated (outside random curve)"),
             Line2D([], [], ls="", marker="x", color="grey", label="left out of the mean (random start)")]
    h, lab = a2.get_legend_handles_labels()
    a2.legend(h + extra, lab + [e.get_label() for e in extra], fontsize=8)
    return fig


def plot_tradeoff(stats):
    """Each method's mean saving ratio against its selection compute (`metrics.selection_seconds`): one point per
    arm; arms repeated over seeds (same config) become one point with 95 % t-intervals on both axes."""
    from raal.metrics import mean_ci, selection_seconds

    fig, ax = _figure(8, 5)
    ax = ax[0, 0]
    rows = [s for s in stats if s.saving is not None and not s.arm.baseline and np.isfinite(s.saving.mean)]
    groups = {id(s): g for g in seed_groups(rows) for s in g}
    seen: set[int] = set()
    for s in rows:
        if id(s) in seen:
            continue
        group = groups.get(id(s), [s])
        seen.update(id(g) for g in group)
        n_al = min(len(g.arm.rounds["round"]) for g in group)
        xs = [selection_seconds(g.arm.rounds, n_al) for g in group]
        ys = [100 * g.saving.mean for g in group]
        (x, xlo, xhi), (y, ylo, yhi) = mean_ci(xs), mean_ci(ys)
        label = s.arm.name if len(group) > 1 else s.key
        if len(group) > 1 and np.isfinite(xlo):
            ax.errorbar([x], [y], xerr=[[x - xlo], [xhi - x]], yerr=[[y - ylo], [yhi - y]], fmt="o",
                        color=s.color, capsize=3, label=f"{label}: mean of {len(group)} seeds, 95 % CI")
        else:
            ax.plot([x], [y], "o", color=s.color, ms=7, label=label)
    ax.axhline(0, color="grey", lw=1)
    ax.set_xscale("log")
    ax.set_title("Label saving against the compute spent choosing the labels")
    ax.set_xlabel("selection compute over the schedule (s, log): proxy, selection, fine-tunes and re-embeds that "
                  "select or refresh")
    ax.set_ylabel("mean sample saving ratio vs random (%)")
    ax.grid(alpha=0.3)
    if ax.has_data() and rows:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no saving ratio: no random baseline with evaluated rounds", ha="center", va="center",
                transform=ax.transAxes)
    return fig


def _asvp_arms(stats):
    out = []
    for s in stats:
        r = s.arm.rounds
        if r is None:
            continue
        if s.arm.pipeline == "asvp" or (r["ped_steps"] >= 0).any() or np.isfinite(r["logme_ped"]).any() \
                or r["refreshed"].any():
            out.append(s)
    return out


def plot_asvp(stats, scale, ylab, threshold):
    from matplotlib.lines import Line2D

    rows = _asvp_arms(stats)
    if not rows:
        return None
    fig, axes = _figure(9, 10, 4, 1, sharex=True)
    a_acc, a_ped, a_score, a_diff = axes[:, 0]
    for s in rows:
        r = s.arm.rounds
        x, acc = r["n_labeled"], r["accuracy"] * scale
        ok = np.isfinite(acc)
        a_acc.plot(*_gapped(r["round"][ok], x[ok], acc[ok]), "-", color=s.color, label=s.key)
        ft = np.array([m.upper() == "FT" for m in r["train_method"]], dtype=bool)
        lp = np.array([m.upper() == "LP-FT" for m in r["train_method"]], dtype=bool)
        a_acc.plot(x[ok & lp], acc[ok & lp], "o", color=s.color, ms=5)
        a_acc.plot(x[ok & ft], acc[ok & ft], "s", color=s.color, ms=6)
        a_acc.plot(x[ok & ~ft & ~lp], acc[ok & ~ft & ~lp], ".", color=s.color)
        for xr in x[r["refreshed"]]:
            for a in (a_acc, a_ped, a_score, a_diff):
                a.axvline(xr, color=s.color, ls=":", lw=1.5)
        refr = r["refreshed"] & ok
        a_acc.plot(x[refr], acc[refr], "*", color=s.color, mec="black", ms=14)
        ped = r["ped_steps"].astype(np.float64)
        pk = ped >= 0
        a_ped.plot(*_gapped(r["round"][pk], x[pk], ped[pk]), "o-", color=s.color, label=s.key)
        sc = np.isfinite(r["logme_ped"])
        a_score.plot(*_gapped(r["round"][sc], x[sc], r["logme_ped"][sc]), "o-", color=s.color, label=s.key)
        d = np.abs(r["score_diff"])
        dk = np.isfinite(d)
        a_diff.plot(*_gapped(r["round"][dk], x[dk], d[dk]), "o-", color=s.color, label=s.key)
    a_acc.set_title("ASVP decisions: PED steps, LogME-PED, feature refreshes, LP-FT / FT")
    a_acc.set_ylabel(ylab)
    h, lab = a_acc.get_legend_handles_labels()
    extra = [Line2D([], [], ls="", marker="o", color="grey", label="trained with LP-FT"),
             Line2D([], [], ls="", marker="s", color="grey", label="trained with FT"),
             Line2D([], [], ls="", marker="*", color="grey", mec="black", ms=12,
                    label="features refreshed (dotted line)")]
    a_acc.legend(h + extra, lab + [e.get_label() for e in extra], fontsize=8)
    a_ped.set_ylabel("PED steps (count)")
    a_ped.axhline(1, color="grey", lw=1, ls="--")
    a_ped.text(0.99, 0.02, "at or below the dashed line (<= 1 step): LogME-PED skipped, no refresh",
               transform=a_ped.transAxes, fontsize=8, color="dimgrey", ha="right", va="bottom")
    a_score.set_ylabel("LogME-PED score")
    a_diff.set_ylabel("|change of LogME-PED|")
    a_diff.axhline(threshold, color="red", lw=1, ls="--", label=f"threshold tau = {threshold:g}")
    a_diff.legend(fontsize=8)
    a_diff.set_xlabel("labeled samples (count)")
    for a in axes[:, 0]:
        a.grid(alpha=0.3)
    return fig


def plot_cost(stats, base_idx, scale, ylab):
    fig, ax = _figure(8, 5)
    ax = ax[0, 0]
    for i, s in enumerate(stats):
        r = s.arm.rounds
        if r is None:
            continue
        ok = np.isfinite(r["accuracy"])
        if ok.any():
            ax.plot(*_gapped(r["round"][ok], s.cum_cost[ok], r["accuracy"][ok] * scale), label=_legend_label(s),
                    **_line_kw(s, base_idx, i))
    for s in stats:
        if s.arm.baseline and np.isfinite(s.final_accuracy):
            ax.axhline(s.final_accuracy * scale, color="grey", lw=1, ls=":")
    ax.set_title("Overall cost (labels + compute) vs test accuracy")
    ax.set_xlabel("overall cost so far (USD)")
    ax.set_ylabel(ylab)
    ax.grid(alpha=0.3)
    if ax.has_data():
        ax.legend(fontsize=8)
    return fig
