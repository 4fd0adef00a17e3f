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

This package's front is the public API; LogME is in `_logme`, PED in `_ped`, LogME-PED in `_logme_ped` and the
shared chunked passes over the samples in `_passes`.
"""
from raal.transfer._logme import EPSILON, MAX_ITER, TOLERANCE, LogMEResult, linear_probe_accuracy, logme, logme_details
from raal.transfer._logme_ped import logme_ped, logme_ped_details
from raal.transfer._ped import STD_FLOOR, RescaleStats, ped, ped_steps, reference_stats

__all__ = ["EPSILON", "MAX_ITER", "STD_FLOOR", "TOLERANCE", "LogMEResult", "RescaleStats", "linear_probe_accuracy",
           "logme", "logme_details", "logme_ped", "logme_ped_details", "ped", "ped_steps", "reference_stats"]
