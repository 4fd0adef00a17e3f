"""A fixed Gaussian random projection of a pool's rows to fewer dimensions, for k-center on large pools.

Greedy k-center (`kcenter_greedy`) costs about N x budget x D multiply-adds in its worst case, and its lazy blocks
re-read the input: at 1.28M x 2048 with a budget of 10,000 that is well over ten minutes on a few cores. A
Johnson-Lindenstrauss projection to m dimensions (m x D Gaussian entries of variance 1/m) keeps every squared
distance in expectation, and a given distance within a relative error of about sqrt(2/m) (one standard deviation:
12.5% at m = 128), whatever the data. If every distance that decides the objective (each row to its nearest centre)
is kept within 1 ± eps, greedy on the projected rows, a 2-approximation there, is a 2(1 + eps)/(1 - eps)
approximation of the objective in the original space. The matrix depends only on (seed, D, m), so every process that
projects (the driver, each Ray worker) applies the same one. The projected rows are held in memory: N x m float32
(655 MB at 1.28M x 128), read from the input once, in chunks.
"""
from __future__ import annotations

import numpy as np

from raal.index._common import CHUNK_BYTES, chunk_rows, iter_slices, read_rows

PROJECTION_SEED = 0  # the default matrix: the same one in every process and every round


def projected_width(dim: int, width: int) -> int:
    """The width k-center runs at when asked to project rows of `width` columns to `dim`: `dim` when it is set
    (> 0) and below `width`, else `width` (0, or no fewer dimensions: the rows as they are)."""
    return int(dim) if 0 < int(dim) < int(width) else int(width)


def projection_matrix(in_dim: int, dim: int, seed: int = PROJECTION_SEED) -> np.ndarray:
    """The (in_dim x dim) float32 matrix of independent N(0, 1/dim) entries for (seed, in_dim, dim)."""
    if int(dim) < 1 or int(in_dim) < 1:
        raise ValueError(f"a projection needs in_dim >= 1 and dim >= 1, got {in_dim} -> {dim}")
    rng = np.random.default_rng([int(seed), int(in_dim), int(dim)])
    return (rng.standard_normal((int(in_dim), int(dim))) / np.sqrt(int(dim))).astype(np.float32)


def random_projection(x: np.ndarray, dim: int, *, rows: np.ndarray | None = None, seed: int = PROJECTION_SEED,
                      chunk_bytes: int = CHUNK_BYTES) -> np.ndarray:
    """The rows of `x` (or its `rows`) times `projection_matrix(D, dim, seed)`: an in-memory (n x dim) float32 array.
    Read in chunks, so a memmap is never copied whole."""
    r = projection_matrix(x.shape[1], dim, seed)
    n = len(x) if rows is None else len(rows)
    out = np.empty((n, int(dim)), dtype=np.float32)
    for s, e in iter_slices(n, chunk_rows(x.shape[1], chunk_bytes)):
        np.matmul(read_rows(x, s, e, rows), r, out=out[s:e])
    return out
