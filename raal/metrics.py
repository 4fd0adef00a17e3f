"""Measures of an AL run: equivalent non-AL labels, the sample saving ratio, overall cost, time per phase.

The sample saving ratio follows ASVP (docs/algorithms.md §11.1): for an AL point (N1 labels, accuracy A)
the equivalent number of random-baseline labels N2 is read off the random learning curve, and r = (N2 - N1) / N2.
The time model is docs/algorithms.md §3.8; phase times are the measured ones from the run store, never estimates.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from raal import layout

Curve = Sequence[tuple[float, float]]

#: Per-round phase-time columns of the rounds table, in the order they are stacked in the report.
PHASES: tuple[str, ...] = layout.PHASES

#: Phases of the §3.8 time model (per-round averages over the rounds where the phase ran).
MODEL_PHASES: tuple[str, ...] = ("t_pre", "t_tr_proxy", "t_f_proxy", "t_tr_full", "t_f_full")


# ---------------------------------------------------------------------------------------------------------------
# Sample saving ratio
# ---------------------------------------------------------------------------------------------------------------

def _as_curve(curve: Curve | np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(labels, accuracy) float arrays from a sequence of pairs; accuracy may be NaN (round not evaluated)."""
    try:
        arr = np.asarray(curve, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a sequence of (labels, accuracy) number pairs: {exc}") from None
    if arr.size == 0:
        arr = arr.reshape(0, 2)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{name} must be a sequence of (labels, accuracy) pairs, got an array of shape {arr.shape}")
    labels, acc = arr[:, 0], arr[:, 1]
    if not np.all(np.isfinite(labels)) or np.any(labels < 0):
        raise ValueError(f"{name} has a label count that is negative or not finite: {labels.tolist()}")
    if np.any(np.isinf(acc)):
        raise ValueError(f"{name} has an infinite accuracy: {acc.tolist()}")
    return labels, acc


def monotone_curve(random_curve: Curve | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The random curve sorted by labels, unevaluated points dropped, accuracy made non-decreasing (running max).

    Random learning curves are noisy; without the running max the inverse (accuracy -> labels) is not a function.
    """
    labels, acc = _as_curve(random_curve, "random_curve")
    keep = np.isfinite(acc)
    labels, acc = labels[keep], acc[keep]
    if labels.size == 0:
        raise ValueError("random_curve has no point with a finite accuracy")
    order = np.lexsort((acc, labels))          # by labels, ties by accuracy
    labels, acc = labels[order], acc[order]
    return labels, np.maximum.accumulate(acc)


@dataclass(frozen=True)
class SavingCurve:
    """Per AL point: labels N1, accuracy A, equivalent random labels N2, ratio r, and how each was obtained.

    `extrapolated` marks points whose accuracy lies outside the random curve's range (N2 read off the linear
    continuation of the end segment); they are reported but never averaged. `ratios` is NaN only where it is
    undefined (accuracy not evaluated, no rising segment to extrapolate along); an extrapolated N2 <= 0 is clipped
    to a ratio of -1 (as bad as it gets), never dropped, so the mean cannot favour AL by leaving points out.
    `used` marks the points averaged into `mean` (interpolated, not excluded); `n_extrapolated` counts the
    extrapolated points that would otherwise have been used.
    """

    labels: np.ndarray
    accuracy: np.ndarray
    equivalent_labels: np.ndarray
    ratios: np.ndarray
    extrapolated: np.ndarray
    used: np.ndarray
    mean: float
    n_extrapolated: int = 0

    @property
    def n_used(self) -> int:
        return int(self.used.sum())


def equivalent_labels(random_curve: Curve | np.ndarray, accuracy: Sequence[float] | np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Random-baseline labels N2 needed to reach each accuracy, and a flag for the extrapolated ones.

    N2(A) is the generalised inverse of the monotone piecewise-linear random curve: the smallest label count at
    which the curve reaches A (so a flat segment maps its accuracy to its first, smallest label count and never
    divides by zero). Outside the curve's range the line through the end point with the slope of the nearest
    rising segment is used; with no rising segment at all N2 is NaN.
    """
    n, m = monotone_curve(random_curve)
    a = np.asarray(accuracy, dtype=np.float64).reshape(-1)
    out = np.full(a.shape, np.nan)
    finite = np.isfinite(a)
    above = finite & (a > m[-1])
    below = finite & (a < m[0])
    inside = finite & ~above & ~below

    j = np.searchsorted(m, a[inside], side="left")           # first index with m[j] >= A
    hit = m[j] == a[inside]
    jl = np.maximum(j - 1, 0)
    rise = np.where(hit, 1.0, m[j] - m[jl])                   # > 0 whenever not hit: m[j-1] < A < m[j]
    frac = np.where(hit, 0.0, (a[inside] - m[jl]) / rise)
    out[inside] = np.where(hit, n[j], n[jl] + frac * (n[j] - n[jl]))

    rising = np.flatnonzero(np.diff(m) > 0)
    if rising.size:
        k_hi, k_lo = rising[-1], rising[0]
        slope_hi = (n[k_hi + 1] - n[k_hi]) / (m[k_hi + 1] - m[k_hi])   # labels per unit accuracy
        slope_lo = (n[k_lo + 1] - n[k_lo]) / (m[k_lo + 1] - m[k_lo])
        out[above] = n[-1] + (a[above] - m[-1]) * slope_hi
        out[below] = n[0] + (a[below] - m[0]) * slope_lo
    return out, above | below


def saving_curve(random_curve: Curve | np.ndarray, al_curve: Curve | np.ndarray, *,
                 exclude: Sequence[bool] | np.ndarray | None = None) -> SavingCurve:
    """Equivalent labels, saving ratios, extrapolation flags and the mean ratio of an AL curve.

    `exclude` (one bool per AL point) leaves points out of the mean, e.g. rounds whose labeled set is still purely
    random (docs/algorithms.md §11.1); their ratios are still reported.
    """
    n1, acc = _as_curve(al_curve, "al_curve")
    if exclude is None:
        excl: np.ndarray = np.zeros(n1.shape, dtype=bool)
    else:
        excl = np.asarray(exclude, dtype=bool).reshape(-1)
        if excl.shape != n1.shape:
            raise ValueError(f"exclude has {excl.size} entries but al_curve has {n1.size} points")
    n2, extra = equivalent_labels(random_curve, acc)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(n2 > 0, (n2 - n1) / np.where(n2 > 0, n2, 1.0), np.where(np.isfinite(n2), -1.0, np.nan))
    ratios = np.where(np.isfinite(ratios), np.clip(ratios, -1.0, 1.0), np.nan)
    n2 = np.where(np.isfinite(n2), np.maximum(n2, 0.0), np.nan)
    candidate = ~excl & np.isfinite(ratios)
    used = candidate & ~extra
    mean = float(ratios[used].mean()) if used.any() else float("nan")
    return SavingCurve(labels=n1, accuracy=acc, equivalent_labels=n2, ratios=ratios, extrapolated=extra,
                       used=used, mean=mean, n_extrapolated=int((candidate & extra).sum()))


def mean_ci(values: Sequence[float] | np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and a Student-t confidence interval (lo, hi) of independent values (e.g. one per seed); NaNs ignored.

    With one value the interval is (nan, nan): a single seed gives no interval.
    """

    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    m = float(v.mean())
    if v.size < 2:
        return m, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))
    return m, m - half, m + half


def sample_saving_ratio(random_curve: Curve | np.ndarray, al_curve: Curve | np.ndarray, *,
                        exclude: Sequence[bool] | np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Per-point sample saving ratios r = (N2 - N1) / N2 of `al_curve` against `random_curve`, and their mean.

    A curve is a sequence of (labels, accuracy) pairs. See `saving_curve` for equivalent labels and flags.
    """
    res = saving_curve(random_curve, al_curve, exclude=exclude)
    return res.ratios, res.mean


# ---------------------------------------------------------------------------------------------------------------
# Cost
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Prices:
    """Unit prices in USD per label, GPU hour and CPU-machine hour (docs/algorithms.md §3.8; UNVERIFIED defaults)."""

    label_price: float = 0.12
    gpu_hour_price: float = 3.06
    cpu_hour_price: float = 0.10

    def __post_init__(self) -> None:
        for key in ("label_price", "gpu_hour_price", "cpu_hour_price"):
            v = getattr(self, key)
            if not np.isfinite(v) or v < 0:
                raise ValueError(f"cost.{key} must be a finite number >= 0, got {v!r}")

    @classmethod
    def from_config(cls, cost: Mapping | None) -> Prices:
        """Prices from the `cost` section of a config; absent keys take the defaults."""
        cost = cost or {}
        kw = {}
        for key in ("label_price", "gpu_hour_price", "cpu_hour_price"):
            if cost.get(key) is not None:
                try:
                    kw[key] = float(cost[key])
                except (TypeError, ValueError):
                    raise ValueError(f"cost.{key} must be a number, got {cost[key]!r}") from None
        return cls(**kw)

    def hour_price(self, device: str) -> float:
        """Price of one compute hour on `device` ("cuda…"/"gpu" is GPU, anything else CPU)."""
        d = str(device).lower()
        return self.gpu_hour_price if d.startswith(("cuda", "gpu")) else self.cpu_hour_price


def compute_cost(seconds: float | Sequence[float] | np.ndarray, devices: Sequence[str] | str = "cuda",
                 prices: Prices | None = None) -> np.ndarray:
    """Compute cost in USD of each time span (seconds) on its device; NaN seconds count as 0."""
    prices = prices or Prices()
    s = np.nan_to_num(np.asarray(seconds, dtype=np.float64).reshape(-1), nan=0.0)
    if np.any(s < 0):
        raise ValueError("compute seconds must be >= 0")
    if isinstance(devices, str):
        rate = np.full(s.shape, prices.hour_price(devices))
    else:
        rate = np.array([prices.hour_price(d) for d in devices], dtype=np.float64)
        if rate.shape != s.shape:
            raise ValueError(f"got {s.size} time spans but {rate.size} devices")
    return s / 3600.0 * rate


def overall_cost(n_labels: float, compute_seconds: float | Sequence[float], *, devices: Sequence[str] | str = "cuda",
                 prices: Prices | None = None) -> float:
    """Overall cost N1·P_l + C_tr in USD: labels times the label price plus compute hours times the hour price."""
    prices = prices or Prices()
    if not np.isfinite(n_labels) or n_labels < 0:
        raise ValueError(f"n_labels must be a finite number >= 0, got {n_labels!r}")
    return float(n_labels * prices.label_price + compute_cost(compute_seconds, devices, prices).sum())


# ---------------------------------------------------------------------------------------------------------------
# Time per phase and the §3.8 model
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PhaseTimes:
    """Per-round average phase times (seconds), the number of AL rounds N_al and of feature computations N_pre."""

    t_pre: float
    t_tr_proxy: float
    t_f_proxy: float
    t_tr_full: float
    t_f_full: float
    n_al: int
    n_pre: int = 1


def modelled_totals(t: PhaseTimes) -> dict[str, float]:
    """T_s for standard AL, SVPp and ASVP (docs/algorithms.md §3.8), from per-round averages."""
    if t.n_al < 0 or t.n_pre < 1:
        raise ValueError(f"need n_al >= 0 and n_pre >= 1, got n_al={t.n_al}, n_pre={t.n_pre}")
    proxy = t.n_al * (t.t_tr_proxy + t.t_f_proxy)
    return {
        "standard": t.n_al * (t.t_tr_full + t.t_f_full),
        "svpp": proxy + t.t_pre,
        "asvp": proxy + t.n_pre * t.t_pre + (t.n_pre - 1) * t.t_tr_full,
    }


def _column(rounds: Mapping, key: str, n: int, fill: float | bool = np.nan) -> np.ndarray:
    v = rounds.get(key)
    if v is None:
        return np.full(n, fill)
    return np.asarray(v)


def _n_rows(rounds: Mapping) -> int:
    return len(rounds["round"]) if "round" in rounds else max((len(v) for v in rounds.values()), default=0)


def phase_totals(rounds: Mapping) -> dict[str, float]:
    """Summed seconds per phase over a rounds table (column -> array), plus `other` = t_round not in any phase."""
    n = _n_rows(rounds)
    tot = {p: float(np.nansum(_column(rounds, p, n, 0.0).astype(np.float64))) for p in PHASES}
    t_round = _column(rounds, "t_round", n, np.nan).astype(np.float64)
    per_phase = np.nansum(np.stack([_column(rounds, p, n, 0.0).astype(np.float64) for p in PHASES]), axis=0) \
        if n else np.zeros(0)
    tot["other"] = float(np.nansum(np.clip(np.nan_to_num(t_round, nan=0.0) - per_phase, 0.0, None)))
    return tot


SELECTION_PHASES = ("t_tr_proxy", "t_f_proxy", "t_tr_full", "t_f_full", "t_select")


def selection_seconds(rounds: Mapping, n_rounds: int | None = None) -> float:
    """What choosing the labels cost over the first `n_rounds` rounds (all by default): proxy training and
    scoring, selection, the fine-tunes and pool re-embeds that select (standard AL) or refresh (ASVP: `t_pre` of
    rounds >= 1). Left out: round 0's `t_pre` (the pre-computed features every arm shares), all evaluation, and
    the last round's fine-tune and re-embed (`t_tr_full`, `t_pre`), which choose nothing: standard AL's last
    fine-tune is its final model, which every method trains. A fit the evaluator had memoised is in `t_tr_full`
    at its measured cost (docs/evaluation.md)."""
    n = _n_rows(rounds) if n_rounds is None else min(int(n_rounds), _n_rows(rounds))

    def total(phase: str, a: int, b: int) -> float:
        return float(np.nansum(_column(rounds, phase, n, 0.0)[a:b].astype(np.float64)))

    sel = sum(total(p, 0, n if p != "t_tr_full" else n - 1) for p in SELECTION_PHASES)
    return sel + total("t_pre", 1, n - 1)


def round_seconds(rounds: Mapping) -> np.ndarray:
    """Compute seconds of each round: t_round, or the sum of its phases where t_round is missing or zero."""
    n = _n_rows(rounds)
    t_round = np.nan_to_num(_column(rounds, "t_round", n, np.nan).astype(np.float64), nan=0.0)
    phases = np.nansum(np.stack([_column(rounds, p, n, 0.0).astype(np.float64) for p in PHASES]), axis=0) \
        if n else np.zeros(0)
    return np.where(t_round > 0, t_round, phases)


def measured_phase_times(tables: Mapping | Iterable[Mapping]) -> PhaseTimes:
    """§3.8 inputs from one or several rounds tables (e.g. all arms of one experiment).

    Each phase is averaged over the rounds where it ran (time > 0); a phase that never ran is NaN, so totals that
    need it are NaN rather than silently too small. N_al counts rounds >= 1 (round 0 is the random start), the
    largest over the tables; N_pre = 1 + the most refreshes seen in one table.
    """
    if isinstance(tables, Mapping):
        tables = [tables]
    tables = list(tables)
    sums = {p: 0.0 for p in MODEL_PHASES}
    counts = {p: 0 for p in MODEL_PHASES}
    n_al, n_pre = 0, 1
    for rt in tables:
        n = _n_rows(rt)
        for p in MODEL_PHASES:
            v = np.nan_to_num(_column(rt, p, n, 0.0).astype(np.float64), nan=0.0)
            ran = v > 0
            sums[p] += float(v[ran].sum())
            counts[p] += int(ran.sum())
        rnd = _column(rt, "round", n, -1).astype(np.int64)
        n_al = max(n_al, int((rnd >= 1).sum()))
        refreshed = _column(rt, "refreshed", n, False)
        refreshed = np.asarray([bool(x) if x is not None and x == x else False for x in refreshed], dtype=bool)
        n_pre = max(n_pre, 1 + int(refreshed.sum()))
    avg = {p: (sums[p] / counts[p] if counts[p] else float("nan")) for p in MODEL_PHASES}
    return PhaseTimes(n_al=n_al, n_pre=n_pre, **avg)
