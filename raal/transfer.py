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
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.sparse
from scipy.linalg.blas import dsyrk

__all__ = ["LogMEResult", "RescaleStats", "linear_probe_accuracy", "logme", "logme_details", "logme_ped",
           "logme_ped_details", "ped", "reference_stats"]

log = logging.getLogger(__name__)

#: The fixed point's iteration cap, its ridge epsilon and its stopping tolerance on t = alpha/beta (§1.3).
MAX_ITER = 11
EPSILON = 1e-5
TOLERANCE = 1e-3
#: Standard-deviation floor of the PED rescaling (§2.2).
STD_FLOOR = 1e-3

_VARIANTS = ("fast", "exact")
_CHUNK_BYTES = 64 << 20      # float64 working block of one pass over the rows (or columns) of the features
_PAIR_BLOCK = 1 << 22        # entries of one block of the C x C pair matrix in a PED step
_CLASS_BLOCK = 1 << 22       # entries of one k x classes block of the fixed point
_CLOSE = 1e-4                # squared distance below _CLOSE * (|a|^2 + |b|^2): recompute it from the difference
_LOG_2PI = math.log(2.0 * math.pi)


# ---------------------------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------------------------

def _as_features(features, name: str = "features") -> np.ndarray:
    """A 2-D real array (float32 stays float32: it is converted to float64 one block at a time)."""
    X = features if isinstance(features, np.ndarray) else np.asarray(features)
    if X.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (samples x dims), got shape {X.shape}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {X.shape}")
    if not (np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer) or X.dtype == np.bool_):
        raise ValueError(f"{name} must hold real numbers, got dtype {X.dtype}")
    return X


def _encode_labels(labels, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes 0..C'-1, the label value of each code, class sizes): classes absent from the labels do not exist."""
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be a 1-D array, got shape {y.shape}")
    if y.shape[0] != n:
        raise ValueError(f"labels has {y.shape[0]} entries but features has {n} rows")
    if y.dtype == np.bool_:
        y = y.astype(np.int64)
    elif not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must have an integer dtype, got {y.dtype} (cast whole-number labels with "
                         f".astype(int))")
    classes, codes = np.unique(y, return_inverse=True)
    counts = np.bincount(codes, minlength=classes.size)
    return codes.astype(np.intp, copy=False), classes, counts


def _check_variant(variant: str) -> None:
    if variant not in _VARIANTS:
        raise ValueError(f"variant must be one of {_VARIANTS}, got {variant!r}")


def _require_two_classes(classes: np.ndarray) -> None:
    if classes.size < 2:
        raise ValueError(f"LogME needs at least two classes in the labels, got only {classes.tolist()}: with one "
                         f"class the one-vs-rest target is constant and the score carries no information")


def _raise_not_finite(X: np.ndarray, name: str = "features") -> None:
    """Called when a sum over X came out non-finite: name the first bad row, or say that squaring overflowed."""
    for a, b in _row_chunks(X):
        bad = ~np.isfinite(np.asarray(X[a:b], dtype=np.float64)).all(axis=1)
        if bad.any():
            raise ValueError(f"{name} contain NaN or inf (first at row {a + int(np.argmax(bad))})")
    raise ValueError(f"{name} are too large: their sums or squares overflow float64")


# ---------------------------------------------------------------------------------------------------------------
# Passes over the samples
# ---------------------------------------------------------------------------------------------------------------

def _row_chunks(X: np.ndarray):
    """(start, stop) of row blocks whose float64 copy is about _CHUNK_BYTES."""
    n, d = X.shape
    step = max(1, _CHUNK_BYTES // (8 * d))
    for a in range(0, n, step):
        yield a, min(n, a + step)


def _onehot_t(codes: np.ndarray, n_classes: int) -> scipy.sparse.csc_array:
    """Y^T (classes x samples) as a sparse matrix: Y^T @ block gives class sums in O(samples x dims)."""
    n = codes.shape[0]
    return scipy.sparse.csc_array((np.ones(n), codes, np.arange(n + 1)), shape=(n_classes, n))


def _class_sums(X: np.ndarray, codes: np.ndarray, n_classes: int, gram: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """T = Y^T X (class sums, C x D) and, if asked, G = X^T X, in one pass; no second N x D float64 copy."""
    d = X.shape[1]
    T = np.zeros((n_classes, d))
    G = np.zeros((d, d), order="F") if gram else None
    for a, b in _row_chunks(X):
        blk = np.asarray(X[a:b], dtype=np.float64)
        T += _onehot_t(codes[a:b], n_classes) @ blk
        if gram:
            # blk.T is Fortran-ordered, so SYRK reads it in place and accumulates the upper triangle into G.
            G = dsyrk(1.0, blk.T, beta=1.0, c=G, trans=0, lower=0, overwrite_c=1)
    if G is not None:  # gram
        G = np.triu(G) + np.triu(G, 1).T
    return T, G


def _class_scatter(X: np.ndarray, codes: np.ndarray, means: np.ndarray) -> np.ndarray:
    """V[c, d] = sum over class c of (x_d - mean_c,d)^2: a second pass, so no E[x^2] - E[x]^2 cancellation."""
    V = np.zeros_like(means)
    for a, b in _row_chunks(X):
        blk = np.array(X[a:b], dtype=np.float64)
        blk -= means[codes[a:b]]
        with np.errstate(over="ignore"):          # overflow shows up as inf in V, which the caller reports
            np.square(blk, out=blk)
        V += _onehot_t(codes[a:b], means.shape[0]) @ blk
    return V


def _kernel(X: np.ndarray, codes: np.ndarray, shift: np.ndarray | None) -> np.ndarray:
    """K = X' X'^T (N x N, for N <= D) with X' = X + shift[codes], built over blocks of columns."""
    n, d = X.shape
    K = np.zeros((n, n), order="F")
    step = max(1, _CHUNK_BYTES // (8 * n))
    for a in range(0, d, step):
        blk = np.array(X[:, a:a + step], dtype=np.float64, order="F")
        if shift is not None:
            blk += shift[codes, a:a + step]
        K = dsyrk(1.0, blk, beta=1.0, c=K, trans=0, lower=0, overwrite_c=1)
    return np.triu(K) + np.triu(K, 1).T


# ---------------------------------------------------------------------------------------------------------------
# LogME
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LogMEResult:
    """LogME with its per-class parts (entries follow `classes`, the label values present, in sorted order).

    `capped[c]` is True where class c stopped at the MAX_ITER cap without meeting the 1e-3 test (T-L5);
    `rank` is k, the number of eigenvalues kept; `variant` is "fast" or "exact".
    """

    score: float
    evidence: np.ndarray
    classes: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray
    iterations: np.ndarray
    capped: np.ndarray
    rank: int
    variant: str


def _spectrum_from_gram(G: np.ndarray, T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sigma, x) for N > D: eigenpairs of F^T F, rank-cut, and x = V^T (F^T Y) / s (k x C), U never formed."""
    lam, V = scipy.linalg.eigh(G, overwrite_a=True, check_finite=False, driver="evd")
    lam, V = lam[::-1], V[:, ::-1]
    np.maximum(lam, 0.0, out=lam)
    k = int(np.count_nonzero(lam > 1e-20))        # the reference's rank cut s > 1e-10, with s = sqrt(lambda)
    if k == 0:
        raise ValueError("features are all zero (rank 0): LogME is undefined")
    s = np.sqrt(lam[:k])
    x = (V[:, :k].T @ T.T) / s[:, None]
    return lam[:k], x


def _spectrum_from_kernel(K: np.ndarray, codes: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(sigma, x) for N <= D: eigenpairs of F F^T; all N values are kept, zeros included, as the reference does."""
    lam, U = scipy.linalg.eigh(K, overwrite_a=True, check_finite=False, driver="evd")
    lam, U = lam[::-1], U[:, ::-1]
    np.maximum(lam, 0.0, out=lam)
    if lam[0] == 0.0:
        raise ValueError("features are all zero (rank 0): LogME is undefined")
    x = (_onehot_t(codes, n_classes) @ U).T          # U^T Y, k x C
    return lam, np.ascontiguousarray(x)


def _fixed_point(sigma: np.ndarray, x2: np.ndarray, r0: np.ndarray, n: int):
    """MacKay's fixed point (§1.3) for a block of classes at once; each class stops on its own test.

    Returns alpha, beta, the |m|^2 and |res|^2 of each class's last iteration (without epsilon, at the t taken
    at the start of that iteration, as the reference evaluates them), iteration counts and the capped mask.
    """
    c = x2.shape[1]
    alpha, beta = np.ones(c), np.ones(c)
    m2, res2 = np.zeros(c), np.zeros(c)
    iters = np.zeros(c, dtype=np.int64)
    active = np.arange(c)
    sig = sigma[:, None]
    for it in range(1, MAX_ITER + 1):
        t = alpha[active] / beta[active]
        q = 1.0 / (sig + t)                               # k x active
        gamma = sigma @ q
        xq2 = x2[:, active] * q * q
        m2_a = sigma @ xq2
        res2_a = t * t * xq2.sum(axis=0) + r0[active]
        alpha_a = gamma / (m2_a + EPSILON)
        beta_a = (n - gamma) / (res2_a + EPSILON)
        alpha[active], beta[active], m2[active], res2[active] = alpha_a, beta_a, m2_a, res2_a
        iters[active] = it
        active = active[np.abs(alpha_a / beta_a - t) / t > TOLERANCE]
        if active.size == 0:
            break
    capped = np.zeros(c, dtype=bool)
    capped[active] = True
    return alpha, beta, m2, res2, iters, capped


def _logme_from_spectrum(sigma: np.ndarray, x: np.ndarray, counts: np.ndarray, classes: np.ndarray, n: int, d: int,
                         variant: str) -> LogMEResult:
    """Evidence per class from the shared spectrum: x (k x C) are the class projections U^T y_c."""
    k, n_classes = x.shape
    r0 = np.maximum(counts - np.einsum("ij,ij->j", x, x), 0.0)    # |y|^2 = class size; energy outside col(F)
    out = {name: np.empty(n_classes) for name in ("alpha", "beta", "evidence")}
    iters = np.empty(n_classes, dtype=np.int64)
    capped = np.empty(n_classes, dtype=bool)
    step = max(1, _CLASS_BLOCK // k)
    for a in range(0, n_classes, step):
        b = min(n_classes, a + step)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):    # non-finite results raise below
            alpha, beta, m2, res2, it, cap = _fixed_point(sigma, x[:, a:b] ** 2, r0[a:b], n)
            logdet = np.log(alpha[None, :] + beta[None, :] * sigma[:, None]).sum(axis=0)
            ev = (0.5 * d * np.log(alpha) + 0.5 * n * np.log(beta) - 0.5 * logdet
                  - 0.5 * beta * res2 - 0.5 * alpha * m2 - 0.5 * n * _LOG_2PI)
            if variant == "exact":
                ev -= 0.5 * (d - k) * np.log(alpha)     # the D - k zero eigenvalues of F^T F inside ln|A|
        out["alpha"][a:b], out["beta"][a:b], out["evidence"][a:b] = alpha, beta, ev / n
        iters[a:b], capped[a:b] = it, cap
    if not np.all(np.isfinite(out["evidence"])):
        bad = classes[~np.isfinite(out["evidence"])]
        raise ValueError(f"LogME evidence is not finite for classes {bad[:10].tolist()}: the features are "
                         f"numerically degenerate")
    if capped.any():
        # Normal on real features (the cap is the reference's; it is reported in `capped`/`iterations`, so a log
        # line per call would only repeat it every ASVP round).
        log.debug("LogME: the fixed point hit the %d-iteration cap for %d of %d classes (first: %s)", MAX_ITER,
                  int(capped.sum()), n_classes, classes[capped][:5].tolist())
    return LogMEResult(score=float(out["evidence"].mean()), evidence=out["evidence"], classes=classes,
                       alpha=out["alpha"], beta=out["beta"], iterations=iters, capped=capped, rank=k,
                       variant=variant)


def _logme_core(X: np.ndarray, codes: np.ndarray, classes: np.ndarray, counts: np.ndarray, variant: str,
                sums: tuple[np.ndarray, np.ndarray] | None = None, shift: np.ndarray | None = None) -> LogMEResult:
    """LogME of X + shift[codes] (shift: C x D, or None). `sums` = (T, G) of the unshifted X when already known."""
    n, d = X.shape
    n_classes = classes.size
    if n > d:
        T, G = sums if sums is not None else _class_sums(X, codes, n_classes, gram=True)
        assert G is not None  # gram=True
        if not (np.all(np.isfinite(T)) and np.all(np.isfinite(np.diagonal(G)))):
            _raise_not_finite(X)
        if shift is not None:
            # G + T'S + S'T + S' diag(n) S = G + P'S + S'P with P = T + diag(n) S / 2: one D x C x D product
            PS = (T + 0.5 * counts[:, None] * shift).T @ shift
            G = G + PS + PS.T
            T = T + counts[:, None] * shift
        sigma, x = _spectrum_from_gram(G, T)
    else:
        K = _kernel(X, codes, shift)
        if not np.all(np.isfinite(np.diagonal(K))):
            _raise_not_finite(X)
        sigma, x = _spectrum_from_kernel(K, codes, n_classes)
    return _logme_from_spectrum(sigma, x, counts.astype(np.float64), classes, n, d, variant)


def logme_details(features, labels, variant: str = "fast") -> LogMEResult:
    """LogME with per-class alpha, beta, evidence, iteration counts and the cap flags; see `logme`."""
    _check_variant(variant)
    X = _as_features(features)
    codes, classes, counts = _encode_labels(labels, X.shape[0])
    _require_two_classes(classes)
    return _logme_core(X, codes, classes, counts, variant)


def logme(features, labels, variant: str = "fast") -> float:
    """LogME (You et al.): the mean over classes of the one-vs-rest maximum log evidence, divided by N.

    variant="fast" is the fixed-point form of the LogME and PED reference code (§1.3), against which ASVP's
    threshold of 1 was set: for N <= D it drops the (D - k) ln(alpha) / 2N term of the zero eigenvalues (pitfall
    P1), so it is not the true evidence there. variant="exact" runs the same fixed point and keeps all D eigenvalues
    in ln|A|: exact = fast - (D - k) ln(alpha) / 2N, equal to fast when F has full column rank.

    Computed in float64 from features of any real dtype; labels are remapped to the classes present (P2).
    Degenerate inputs: one class only -> ValueError (a constant target carries no information); singleton
    classes, N < D, constant or duplicated features are scored normally; all-zero features -> ValueError (rank 0);
    NaN/inf, non-integer labels, mismatched lengths -> ValueError. When a class hits the 11-iteration cap it is
    reported in `logme_details(...).capped` / `.iterations` (and logged at DEBUG only: on real features the cap is
    the rule rather than the exception, and the converged score differs little, see docs/asvp_trigger.md).
    """
    return logme_details(features, labels, variant).score


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


def linear_probe_accuracy(train_features, train_labels, test_features, test_labels) -> float:
    """Test accuracy of LogME's Bayesian linear model fitted on the training rows (ASVP's `gain` trigger).

    The model is LogME's: one ridge regression per class on the one-hot target (features centred on the training
    mean), each with the evidence-maximising ratio t = alpha / beta of `logme_details(..., "exact")`, so there is
    no tuned hyperparameter; a test row is assigned the class of the largest posterior-mean output. Only classes
    present in the training labels can be predicted (at least two are needed). One eigendecomposition of the
    min(N, D)-sized Gram matrix serves every class.
    """
    A = np.asarray(_as_features(train_features), dtype=np.float64)
    B = np.asarray(_as_features(test_features, "test_features"), dtype=np.float64)
    if B.shape[1] != A.shape[1]:
        raise ValueError(f"test_features has {B.shape[1]} dims but train_features has {A.shape[1]}")
    y = np.asarray(train_labels)
    yt = np.asarray(test_labels)
    if yt.shape != (B.shape[0],):
        raise ValueError(f"test_labels has shape {yt.shape} but test_features has {B.shape[0]} rows")
    mu = A.mean(axis=0)
    A = A - mu
    B = B - mu
    res = logme_details(A, y, variant="exact")
    t = res.alpha / res.beta
    Y = (y[:, None] == res.classes[None, :]).astype(np.float64)
    n, d = A.shape
    if n <= d:
        lam, U = scipy.linalg.eigh(A @ A.T, check_finite=False, driver="evd")
        coef = U @ ((U.T @ Y) / (np.maximum(lam, 0.0)[:, None] + t[None, :]))      # (K + t)^-1 y per class
        out = (B @ A.T) @ coef
    else:
        lam, V = scipy.linalg.eigh(A.T @ A, check_finite=False, driver="evd")
        w = V @ ((V.T @ (A.T @ Y)) / (np.maximum(lam, 0.0)[:, None] + t[None, :]))  # (F'F + t)^-1 F'y per class
        out = B @ w
    return float(np.mean(res.classes[np.argmax(out, axis=1)] == yt))
