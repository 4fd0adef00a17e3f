"""Stopping advice: after each round, does the next round still pay?

Three signals raal has anyway, combined by a pure function of the per-round numbers so a finished run (or any
learning curve) can be replayed offline:

- **plateau**: the slope of the round accuracy (the one evaluator's with `eval.every_round=evaluator`) over the
  last `gain_rounds` rounds, in accuracy points per 100 labels. Below `min_gain` the curve has flattened.
- **cost**: with `point_value` > 0 (what one accuracy point is worth, in the currency of `cost.label_price`), the
  next round's expected gain (slope x next size) is worth less than its labels (next size x label price).
- **stable predictions** (Bloodgood & Vijay-Shanker 2009, "stabilizing predictions"): Cohen's kappa between the
  predictions of consecutive models on a fixed sample of the pool stays >= `kappa` for `kappa_rounds` rounds.
  raal's model for this signal is the converged linear probe on the pre-computed v0 features, the same for every
  pipeline and deterministic, so kappa moves only because the labeled set did.

Any one of them is enough to advise "stop"; the reason names which, with its numbers.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class StopRule:
    """The thresholds of the advice (`stopping.*` in the config)."""

    min_gain: float = 0.5  # accuracy points per 100 labels
    gain_rounds: int = 1  # the slope spans this many rounds back
    kappa: float = 0.99
    kappa_rounds: int = 3  # 0 = the kappa signal is off
    point_value: float = 0.0  # currency per accuracy point; 0 = the cost signal is off
    label_price: float = 0.0

    @classmethod
    def from_config(cls, stopping, label_price: float) -> StopRule:
        return cls(min_gain=stopping.min_gain, gain_rounds=stopping.gain_rounds, kappa=stopping.kappa,
                   kappa_rounds=stopping.kappa_rounds, point_value=stopping.point_value, label_price=label_price)


@dataclass(frozen=True)
class Advice:
    stop: bool
    reason: str
    gain: float  # accuracy points per 100 labels over the last `gain_rounds` rounds (NaN: not measurable yet)

    @property
    def label(self) -> str:
        return "stop" if self.stop else "go"


def cohen_kappa(a: np.ndarray, b: np.ndarray) -> float:
    """Cohen's kappa of two label vectors: (p_o - p_e) / (1 - p_e); 1.0 when both are the same constant."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise ValueError(f"kappa needs two equal-length non-empty label vectors, got {a.shape} and {b.shape}")
    k = int(max(a.max(), b.max())) + 1
    po = float(np.mean(a == b))
    pe = float(np.dot(np.bincount(a, minlength=k), np.bincount(b, minlength=k))) / len(a) ** 2
    return 1.0 if pe >= 1.0 else (po - pe) / (1.0 - pe)


def gain_per_100(n_labeled: Sequence[float], accuracy: Sequence[float], rounds: int = 1) -> float:
    """Accuracy points per 100 labels from `rounds` rounds back to the last one (accuracy given as a fraction)."""
    if len(n_labeled) <= rounds:
        return math.nan
    n0, n1 = float(n_labeled[-1 - rounds]), float(n_labeled[-1])
    a0, a1 = float(accuracy[-1 - rounds]), float(accuracy[-1])
    if n1 <= n0 or not (math.isfinite(a0) and math.isfinite(a1)):
        return math.nan
    return 100.0 * (a1 - a0) / (n1 - n0) * 100.0


def advise(n_labeled: Sequence[float], accuracy: Sequence[float], kappas: Sequence[float], next_size: int,
           rule: StopRule) -> Advice:
    """The advice after the last round of the given curve (every sequence oldest first, one entry per round;
    kappas[i] compares round i's model with round i-1's, NaN where there is none)."""
    gain = gain_per_100(n_labeled, accuracy, rule.gain_rounds)
    recent = [float(k) for k in kappas[-rule.kappa_rounds:]] if rule.kappa_rounds else []
    kappa_txt = f"kappa {recent[-1]:.3f}" if recent and math.isfinite(recent[-1]) else "kappa n/a"
    stable = len(recent) == rule.kappa_rounds and all(math.isfinite(k) and k >= rule.kappa for k in recent)
    if rule.kappa_rounds and stable:
        return Advice(True, f"stable: kappa >= {rule.kappa:g} for {rule.kappa_rounds} rounds", gain)
    if not math.isfinite(gain):
        return Advice(False, f"go: gain not measurable yet; {kappa_txt}", gain)
    if gain < rule.min_gain:
        return Advice(True, f"plateau: {gain:+.2f} pt/100 labels < {rule.min_gain:g}", gain)
    if rule.point_value > 0:
        worth, price = gain * next_size / 100.0 * rule.point_value, next_size * rule.label_price
        if worth < price:
            return Advice(True, f"cost: next {next_size} labels cost {price:.2f}, expected gain worth {worth:.2f}",
                          gain)
    return Advice(False, f"go: {gain:+.2f} pt/100 labels; {kappa_txt}", gain)


def replay(n_labeled: Sequence[float], accuracy: Sequence[float], kappas: Sequence[float] | None = None,
           rule: StopRule = StopRule()) -> list[Advice]:
    """The advice after every round of a finished curve, as the run would have recorded it."""
    n = len(n_labeled)
    kappas = [math.nan] * n if kappas is None else list(kappas)
    out = []
    for r in range(n):
        nxt = int(n_labeled[r + 1] - n_labeled[r]) if r + 1 < n else int(n_labeled[r] - n_labeled[r - 1]) if r else 0
        out.append(advise(n_labeled[:r + 1], accuracy[:r + 1], kappas[:r + 1], nxt, rule))
    return out


def first_stop(advice: Sequence[Advice]) -> int | None:
    """The first round advised to stop (None: never)."""
    return next((i for i, a in enumerate(advice) if a.stop), None)


def plateau_round(n_labeled: Sequence[float], accuracy: Sequence[float], min_gain: float = 0.5) -> int | None:
    """The first round after which every later step of the curve gains < `min_gain` points per 100 labels (the
    point the advice should find); None when the last step still gains that much."""
    n = len(n_labeled)
    steps = [gain_per_100(n_labeled[:i + 2], accuracy[:i + 2]) for i in range(n - 1)]
    r = n - 1
    while r > 0 and steps[r - 1] < min_gain:
        r -= 1
    return r if r < n - 1 else None
