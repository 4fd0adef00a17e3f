"""The float64 passes over the samples that LogME and PED share, and the checks of their inputs.

Features reach 10^5 samples x 2048 dims at ImageNet scale, so each pass converts one block of rows (or columns) of
about _CHUNK_BYTES to float64 at a time and keeps only class-level sums (or, for N <= D, the N x N kernel).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse
from scipy.linalg.blas import dsyrk

_CHUNK_BYTES = 64 << 20      # float64 working block of one pass over the rows (or columns) of the features


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
