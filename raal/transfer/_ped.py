"""PED (Potential Energy Decline, Li et al., ICCV 2023): push overlapping classes of the features apart.

The motion only translates whole classes, so it runs on the C x D class means and radii, and the samples are
moved once at the end (see raal/transfer/__init__.py for the overview and the deviations from the reference code).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from raal.transfer._passes import (
    _as_features,
    _class_scatter,
    _class_sums,
    _encode_labels,
    _raise_not_finite,
    _row_chunks,
)

# One logger for the whole transfer API (raal.transfer re-exports this module), as before the split.
log = logging.getLogger("raal.transfer")

#: Standard-deviation floor of the PED rescaling (§2.2).
STD_FLOOR = 1e-3

_PAIR_BLOCK = 1 << 22        # entries of one block of the C x C pair matrix in a PED step
_CLOSE = 1e-4                # squared distance below _CLOSE * (|a|^2 + |b|^2): recompute it from the difference


# ---------------------------------------------------------------------------------------------------------------
# PED
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RescaleStats:
    """Per-dimension mean and population std of a reference feature set, as PED rescales by them (§2.2)."""

    mean: np.ndarray
    std: np.ndarray


def reference_stats(reference) -> RescaleStats:
    """Mean and population std (ddof 0) of `reference` in float64, two chunked passes (works on a memmap).

    Pass the result as `reference=` to reuse it across rounds, as ASVP does with the whole pool's features.
    """
    R = _as_features(reference, "reference")
    total = np.zeros(R.shape[1])
    for a, b in _row_chunks(R):
        total += np.asarray(R[a:b], dtype=np.float64).sum(axis=0)
    if not np.all(np.isfinite(total)):
        _raise_not_finite(R, "reference")
    mean = total / R.shape[0]
    sq = np.zeros(R.shape[1])
    for a, b in _row_chunks(R):
        blk = np.array(R[a:b], dtype=np.float64)
        blk -= mean
        sq += np.einsum("ij,ij->j", blk, blk)
    return RescaleStats(mean=mean, std=np.sqrt(sq / R.shape[0]))


def _check_ped_params(dt: float, nsigma: float, exit_ratio: float, max_steps: int) -> None:
    if not (math.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be a positive number, got {dt!r}")
    if not (math.isfinite(nsigma) and nsigma >= 0):
        raise ValueError(f"nsigma must be a non-negative number, got {nsigma!r}")
    if not (math.isfinite(exit_ratio) and exit_ratio >= 0):
        raise ValueError(f"exit_ratio must be a non-negative number, got {exit_ratio!r}")
    if isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer)) or max_steps < 0:
        raise ValueError(f"max_steps must be a non-negative integer, got {max_steps!r}")


def _ped_step(mu: np.ndarray, reach: np.ndarray, coef: float) -> np.ndarray:
    """Displacement of every class for one step (§2.2 steps 3-4), from class means mu (C x D) and reach = nsigma*R.

    delta_ab = min(coef * o_ab, o_ab) with o_ab the overlap and coef = dt^2 / 2 (k = 1); class a moves by
    sum_b delta_ab (mu_a - mu_b) / d_ab = (sum_b w_ab) mu_a - sum_b w_ab mu_b with w_ab = delta_ab / d_ab, so a
    row block of the pair matrix W and one matrix product give a block of classes' displacements.
    """
    c = mu.shape[0]
    sq = np.einsum("ij,ij->i", mu, mu)
    delta = np.empty_like(mu)
    rows = max(1, _PAIR_BLOCK // c)
    for a0 in range(0, c, rows):
        a1 = min(c, a0 + rows)
        idx = np.arange(a1 - a0)
        scale = sq[a0:a1, None] + sq[None, :]
        d2 = mu[a0:a1] @ mu.T
        d2 *= -2.0
        d2 += scale
        np.maximum(d2, 0.0, out=d2)
        dist = np.sqrt(d2)
        over = reach[a0:a1, None] + reach[None, :] - dist
        over[idx, idx + a0] = 0.0                         # no self pair
        np.maximum(over, 0.0, out=over)
        disp = np.minimum(coef * over, over)
        # The Gram identity loses the distance of near pairs to cancellation: those are redone from differences.
        close = (disp > 0.0) & (d2 <= _CLOSE * scale)
        w = np.divide(disp, dist, out=np.zeros_like(disp), where=(disp > 0.0) & ~close)
        block = w.sum(axis=1)[:, None] * mu[a0:a1] - w @ mu
        if close.any():
            ia, ib = np.nonzero(close)
            diff = mu[a0 + ia] - mu[ib]
            dd = np.sqrt(np.einsum("ij,ij->i", diff, diff))
            o = np.maximum(reach[a0 + ia] + reach[ib] - dd, 0.0)
            w_close = np.divide(np.minimum(coef * o, o), dd, out=np.zeros_like(dd), where=dd > 0.0)
            np.add.at(block, ia, diff * w_close[:, None])      # d = 0 exactly: no direction, no force
        delta[a0:a1] = block
    return delta


def _ped_motion(mu: np.ndarray, radius: np.ndarray, dt: float, nsigma: float, exit_ratio: float,
                max_steps: int) -> tuple[np.ndarray, int]:
    """The outer loop of §2.3 on rescaled class means: (total displacement C x D, accepted steps n)."""
    mu = mu - mu.mean(axis=0)          # translation-invariant; keeps |mu| small for the distance identity
    total = np.zeros_like(mu)
    reach = nsigma * radius
    coef = 0.5 * dt * dt
    steps, first = 0, 0.0
    while steps < max_steps:
        delta = _ped_step(mu, reach, coef)
        change = float(np.abs(delta).sum())
        if steps == 0:
            first = change
            if first == 0.0:               # no overlap: the reference's 0/0 ratio is NaN and the loop ends at n = 0
                break
        if not change / first > exit_ratio:
            break
        mu += delta
        total += delta
        steps += 1
    return total, steps


def _resolve_reference(reference, X: np.ndarray, T: np.ndarray, V: np.ndarray, counts: np.ndarray,
                       means: np.ndarray) -> RescaleStats:
    """Rescaling stats: given, from a reference array, or of X itself (from its class sums and scatter)."""
    if isinstance(reference, RescaleStats):
        mean, std = np.asarray(reference.mean, dtype=np.float64), np.asarray(reference.std, dtype=np.float64)
        if mean.shape != (X.shape[1],) or std.shape != (X.shape[1],):
            raise ValueError(f"reference stats must have {X.shape[1]} dims, got mean {mean.shape}, std {std.shape}")
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std >= 0)):
            raise ValueError("reference stats must be finite, with a non-negative std")
        return RescaleStats(mean, std)
    if reference is not None and reference is not X:
        stats = reference_stats(reference)
        if stats.mean.shape[0] != X.shape[1]:
            raise ValueError(f"reference has {stats.mean.shape[0]} dims but features has {X.shape[1]}")
        return stats
    n = X.shape[0]
    mean = T.sum(axis=0) / n
    between = counts[:, None] * (means - mean) ** 2            # total scatter = within + between, no cancellation
    return RescaleStats(mean, np.sqrt((V.sum(axis=0) + between.sum(axis=0)) / n))


def _ped_shift(X: np.ndarray, codes: np.ndarray, counts: np.ndarray, reference, dt: float, nsigma: float,
               exit_ratio: float, max_steps: int, gram: bool):
    """Class statistics, the rescaling and the motion: (shift C x D in feature units or None, steps, (T, G))."""
    _check_ped_params(dt, nsigma, exit_ratio, max_steps)
    T, G = _class_sums(X, codes, counts.size, gram=gram)
    if not (np.all(np.isfinite(T)) and (G is None or np.all(np.isfinite(np.diagonal(G))))):
        _raise_not_finite(X)
    means = T / counts[:, None]
    V = _class_scatter(X, codes, means)
    if not np.all(np.isfinite(V)):
        _raise_not_finite(X)
    stats = _resolve_reference(reference, X, T, V, counts, means)
    scale = np.maximum(stats.std, STD_FLOOR)
    mu = (means - stats.mean) / scale
    radius = np.sqrt((V / (counts[:, None] * scale * scale)).sum(axis=1))    # sqrt of the total class variance
    total, steps = _ped_motion(mu, radius, dt, nsigma, exit_ratio, max_steps)
    log.info("PED: %d step(s) for %d samples in %d classes", steps, X.shape[0], counts.size)
    return (total * scale if steps else None), steps, (T, G)


def ped(features, labels, reference=None, dt: float = 0.1, nsigma: float = 0.6, exit_ratio: float = 0.5,
        max_steps: int = 6) -> tuple[np.ndarray, int]:
    """PED (Li et al., ICCV 2023; §2): push overlapping classes apart, return (moved features float64, steps n).

    Features are rescaled per dimension by the mean and population std (floored at 1e-3) of `reference` (an
    array, or the `RescaleStats` of `reference_stats`; default the features themselves). Each class is a ball at
    its mean with radius sqrt(total variance); overlapping pairs repel by min(dt^2/2 * overlap, overlap) each.
    A step is accepted while its total motion exceeds exit_ratio times the first step's, up to max_steps; n = 0
    when no pair overlaps, and then the returned array equals the input bit for bit (as float64).

    Labels are remapped to the classes present (pitfall P6). Degenerate inputs: one class, or classes that do not
    overlap -> n = 0; singleton classes have radius 0; exactly coincident class means exert no force on each
    other (no direction; the reference gives NaN), so classes overlapping only such partners do not move; constant
    dimensions are rescaled by the 1e-3 floor. NaN/inf, non-integer labels, mismatched lengths or a reference of
    another width -> ValueError.
    """
    X = _as_features(features)
    codes, _, counts = _encode_labels(labels, X.shape[0])
    shift, steps, _ = _ped_shift(X, codes, counts, reference, dt, nsigma, exit_ratio, max_steps, gram=False)
    out = np.array(X, dtype=np.float64, copy=True)
    if shift is not None:
        for a, b in _row_chunks(out):
            out[a:b] += shift[codes[a:b]]
    return out, steps


def ped_steps(features, labels, reference=None, dt: float = 0.1, nsigma: float = 0.6, exit_ratio: float = 0.5,
              max_steps: int = 6) -> int:
    """Only PED's step count n (ASVP's first test: n <= 1 skips LogME), without materialising moved features."""
    X = _as_features(features)
    codes, _, counts = _encode_labels(labels, X.shape[0])
    _, steps, _ = _ped_shift(X, codes, counts, reference, dt, nsigma, exit_ratio, max_steps, gram=False)
    return steps
