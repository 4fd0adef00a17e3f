"""Transferability scores for the ASVP trigger: LogME, PED (Potential Energy Decline) and LogME-PED.

ASVP (docs/algorithms.md §1-3.2) asks each round how many PED steps the labeled features need and, when
PED moves them, how LogME of the moved features changed since the last round. Both run on the labeled set, which
reaches 10^5 samples x 2048 dims at ImageNet scale, so everything here is written around one float64 pass over the
rows (two for PED) and small class-level matrices:

* LogME (§1): one eigendecomposition of the min(N, D)-sized Gram matrix serves every class. The class projections
  x = U^T Y come from the class sums F^T Y as V^T (F^T Y) / s, so U (N x k) is never formed when N > D, and the
  MacKay fixed point runs for all classes at once, each class with its own stopping test.
* PED (§2): the motion only translates whole classes, so it needs class means and radii, not the samples. Steps are
  computed on the C x D class means; the pairwise forces are accumulated a block of the C x C pair matrix at a time
  (never a C x C x D tensor), and the samples are moved once at the end.
* LogME-PED never materialises the moved features: their Gram matrix and class sums follow from the unmoved ones
  and the per-class shift S as G + T^T S + S^T T + S^T diag(n) S and T + diag(n) S (T: class sums, n: sizes).

Deviations from the reference code (documented in docs/sections/transfer.md):
labels are remapped to the classes present (pitfall P2; the reference uses C = max(label) + 1, and an absent class
adds a large spurious evidence); the energy of y outside the column space is clipped at 0 (rounding could make it
negative); exactly coincident class means exert no force on each other (the reference divides 0 by 0 and
spreads NaN); near pairs keep the reference's unit direction. The fixed point, its constants, the rank cut and
the evidence formula are the reference's.

This module is the public API and LogME-PED; LogME is in raal/transfer_logme.py, PED in raal/transfer_ped.py and
the shared chunked passes over the samples in raal/transfer_passes.py.
"""
from __future__ import annotations

from raal.transfer_logme import (  # noqa: F401 - the constants: part of the API
    EPSILON,
    MAX_ITER,
    TOLERANCE,
    LogMEResult,
    _check_variant,
    _logme_core,
    _require_two_classes,
    linear_probe_accuracy,
    logme,
    logme_details,
)
from raal.transfer_passes import _as_features, _encode_labels
from raal.transfer_ped import STD_FLOOR, RescaleStats, _ped_shift, ped, ped_steps, reference_stats  # noqa: F401

__all__ = ["LogMEResult", "RescaleStats", "linear_probe_accuracy", "logme", "logme_details", "logme_ped",
           "logme_ped_details", "ped", "reference_stats"]


def logme_ped(features, labels, reference=None, variant: str = "fast", **ped_params) -> tuple[float, int]:
    """LogME of the PED-moved features and the PED step count: (score, steps) (§2.3 final line).

    Equal to `logme(ped(features, labels, reference, **ped_params)[0], labels, variant)` without materialising
    the moved features: one pass for class sums and the Gram matrix, one for the class scatter. One class only
    -> ValueError (see `logme`); other degenerate inputs behave as in `ped` and `logme`. `logme_ped_details`
    returns the whole `LogMEResult` (per-class iterations and the cap flags) instead of the score.
    """
    result, steps = logme_ped_details(features, labels, reference, variant, **ped_params)
    return result.score, steps


def logme_ped_details(features, labels, reference=None, variant: str = "fast",
                      **ped_params) -> tuple[LogMEResult, int]:
    """`logme_ped` with the `LogMEResult` of the moved features (convergence: `.iterations`, `.capped`)."""
    _check_variant(variant)
    unknown = set(ped_params) - {"dt", "nsigma", "exit_ratio", "max_steps"}
    if unknown:
        raise ValueError(f"unknown PED parameters: {sorted(unknown)}")
    params = {"dt": 0.1, "nsigma": 0.6, "exit_ratio": 0.5, "max_steps": 6, **ped_params}
    X = _as_features(features)
    codes, classes, counts = _encode_labels(labels, X.shape[0])
    _require_two_classes(classes)
    n, d = X.shape
    shift, steps, sums = _ped_shift(X, codes, counts, reference, gram=n > d, **params)
    result = _logme_core(X, codes, classes, counts, variant, sums=sums if n > d else None, shift=shift)
    return result, steps
