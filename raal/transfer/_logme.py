"""LogME (You et al.): the one-vs-rest maximum log evidence of a Bayesian linear model on fixed features.

One eigendecomposition of the min(N, D)-sized Gram matrix serves every class, and the MacKay fixed point runs for
all classes at once (see raal/transfer/__init__.py for the overview and the deviations from the reference code).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from raal.transfer._passes import (
    _as_features,
    _class_sums,
    _encode_labels,
    _kernel,
    _onehot_t,
    _raise_not_finite,
)

# One logger for the whole transfer API (raal.transfer re-exports this module), as before the split.
log = logging.getLogger("raal.transfer")

#: The fixed point's iteration cap, its ridge epsilon and its stopping tolerance on t = alpha/beta (§1.3).
MAX_ITER = 11
EPSILON = 1e-5
TOLERANCE = 1e-3

_VARIANTS = ("fast", "exact")
_CLASS_BLOCK = 1 << 22       # entries of one k x classes block of the fixed point
_LOG_2PI = math.log(2.0 * math.pi)


def _check_variant(variant: str) -> None:
    if variant not in _VARIANTS:
        raise ValueError(f"variant must be one of {_VARIANTS}, got {variant!r}")


def _require_two_classes(classes: np.ndarray) -> None:
    if classes.size < 2:
        raise ValueError(f"LogME needs at least two classes in the labels, got only {classes.tolist()}: with one "
                         f"class the one-vs-rest target is constant and the score carries no information")


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
