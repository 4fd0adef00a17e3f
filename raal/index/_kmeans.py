"""k-means for raal's strategies: faiss Lloyd steps, k-means++ seeding for small k, two-level k-means for large k.

A flat k-means step costs rows x k x D multiply-adds: at 100,000 x 2048 with k = 10,000 that is 2e12 per step,
about an hour for 20 steps on two cores. Above `TWO_LEVEL_WORK` (1.4e11 per step) with k >= `TWO_LEVEL_MIN_K` (512)
raal clusters in two levels instead: sqrt(k) coarse clusters, then each coarse cluster split into a share of k
proportional to its size, so a step costs about rows x 2 sqrt(k) x D. The result is a k-means local optimum of a restricted kind (no centroid
may take items across coarse borders); bench/cold_strategies.py measures its objective against flat k-means.
"""
from __future__ import annotations

import time
from typing import Any

import faiss
import numpy as np

from raal.index._common import CHUNK_BYTES, _use_gpu, blas_threads, chunk_rows, iter_slices, read_rows
from raal.index._search import min_sq_dist_to

BIG_COPY_BYTES = 256 << 20  # k-means training copies above this are capped at 3/4 of the input's rows
KMEANSPP_MAX_K = 1024  # k-means++ seeding up to this k (it is k sequential passes); faiss's random rows above
KMEANSPP_ROWS_PER_CENTROID = 32  # the seeding runs on a sample of this many rows per centroid
TWO_LEVEL_MIN_K = 512  # two-level k-means only from this k (below it a flat step is cheap enough)...
TWO_LEVEL_WORK = 1 << 37  # ...and when one flat step (training rows x k x D) would pass this many multiply-adds


def _gather(x: np.ndarray, rows: np.ndarray | None, normalize: bool, chunk_bytes: int) -> np.ndarray:
    """(The selected, optionally normalised) rows as one float32 array: a view when `x` already is one."""
    if rows is None and not normalize and x.dtype == np.float32 and x.flags.c_contiguous:
        return x  # a memmap stays a memmap: faiss reads it through the page cache
    n = len(x) if rows is None else len(rows)
    out = np.empty((n, x.shape[1]), dtype=np.float32)
    for s, e in iter_slices(n, chunk_rows(x.shape[1], chunk_bytes)):
        out[s:e] = read_rows(x, s, e, rows, normalize=normalize)
    return out




def kmeanspp_seeds(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii 2007) on the rows of the in-memory float32 block `x`: the first row
    uniformly, each next one with probability proportional to its squared distance to the nearest seed so far."""
    sq = np.einsum("ij,ij->i", x, x)
    seeds = [int(rng.integers(len(x)))]
    with blas_threads(1):
        mind = np.maximum(sq - 2.0 * (x @ x[seeds[0]]) + sq[seeds[0]], 0)
        for _ in range(k - 1):
            total = float(mind.sum(dtype=np.float64))
            if total <= 0:  # fewer distinct rows than k: any row not taken yet
                j = int(np.setdiff1d(np.arange(len(x)), seeds)[0])
            else:
                j = int(np.searchsorted(np.cumsum(mind, dtype=np.float64), rng.random() * total, side="right"))
                j = min(j, len(x) - 1)
            seeds.append(j)
            np.minimum(mind, np.maximum(sq - 2.0 * (x @ x[j]) + sq[j], 0), out=mind)
            mind[j] = 0
    return x[np.asarray(seeds)]


def kmeans(x: np.ndarray, k: int, *, rows: np.ndarray | None = None, normalize: bool = False, niter: int = 20,
           seed: int = 0, max_points_per_centroid: int = 256, use_gpu: bool | None = None,
           chunk_bytes: int = CHUNK_BYTES, stats: dict | None = None, two_level: bool | None = None) -> np.ndarray:
    """k-means centroids (k x D float32) of (a row subset of) `x`: Lloyd's steps by `faiss.Kmeans` (squared L2).

    Seeded by k-means++ on a sample of 32 k rows when k <= 1024 (as scikit-learn, which the papers used; random
    seeds split well-separated clusters badly), else by faiss's seeded random rows. Trained on at most
    `max_points_per_centroid` x k rows (a seeded uniform sample), and on at most 3/4 of the input's rows when they
    must be copied (a row subset or normalisation) and the copy would pass 256 MB, so it stays below the input's
    size. The caller assigns all rows afterwards (`min_sq_dist_to(..., return_index=True)`). Rows are read in
    chunks; a float32 array or memmap used whole is not copied. `stats`, when given, receives the seeding time and
    faiss's per-iteration times (for benchmarks). `two_level` (default: `use_two_level`) runs `two_level_kmeans`.
    """
    n = len(x) if rows is None else len(rows)
    k = int(k)
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= k <= {n} (the rows), got k = {k}")
    if two_level is None:
        two_level = use_two_level(n, k, x.shape[1], max_points_per_centroid)
    if two_level:
        return two_level_kmeans(x, k, rows=rows, normalize=normalize, niter=niter, seed=seed,
                                max_points_per_centroid=max_points_per_centroid, use_gpu=use_gpu,
                                chunk_bytes=chunk_bytes, stats=stats)[0]
    rng = np.random.default_rng(seed)
    m = min(n, k * int(max_points_per_centroid))
    copied = rows is not None or normalize or x.dtype != np.float32 or not x.flags.c_contiguous
    if copied and m * x.shape[1] * 4 > BIG_COPY_BYTES:
        m = min(m, max(k, (3 * len(x)) // 4))  # the training copy stays well below the input's size
    if m < n:
        pos = np.sort(rng.choice(n, m, replace=False))
        rows = pos if rows is None else np.asarray(rows)[pos]
    train = _gather(x, rows, normalize, chunk_bytes)
    init = None
    t0 = time.perf_counter()
    if k <= KMEANSPP_MAX_K:
        s = min(m, KMEANSPP_ROWS_PER_CENTROID * k)
        pick = np.sort(rng.choice(m, s, replace=False)) if s < m else None
        init = kmeanspp_seeds(_gather(train, pick, False, chunk_bytes) if pick is not None else
                              np.ascontiguousarray(train), k, rng)
    km = faiss.Kmeans(x.shape[1], k, niter=int(niter), seed=int(seed % 2147483647),
                      max_points_per_centroid=int(max_points_per_centroid), gpu=_use_gpu(use_gpu), verbose=False)
    km.cp.min_points_per_centroid = 1  # small pools are legitimate here: no warning per call
    t1 = time.perf_counter()
    km.train(train, init_centroids=init)
    if stats is not None:
        its = km.iteration_stats
        assert its is not None  # train() has filled it
        done = np.array([its[i]["time"] for i in range(len(its))])  # cumulative s
        stats.update(seed_s=t1 - t0, iteration_s=np.diff(done, prepend=0.0).tolist(),
                     train_s=time.perf_counter() - t1, rows=len(train))
    return np.ascontiguousarray(km.centroids, dtype=np.float32)




def use_two_level(n: int, k: int, dim: int, max_points_per_centroid: int = 256) -> bool:
    """Whether `kmeans` clusters in two levels: k >= TWO_LEVEL_MIN_K and a flat step passes TWO_LEVEL_WORK."""
    return k >= TWO_LEVEL_MIN_K and min(n, k * max_points_per_centroid) * k * dim > TWO_LEVEL_WORK


def split_budget(sizes: np.ndarray, k: int) -> np.ndarray:
    """k shared among clusters of `sizes` items in proportion to their sizes (largest remainders first), each
    share at most its size: the sub-cluster count of each coarse cluster."""
    sizes = np.asarray(sizes, dtype=np.int64)
    exact = k * sizes / max(int(sizes.sum()), 1)
    share = np.minimum(np.floor(exact).astype(np.int64), sizes)
    order = np.lexsort((np.arange(len(sizes)), -(exact - share)))
    while share.sum() < k:  # hand out the rest one by one, largest remainder first, never past a cluster's size
        room = order[share[order] < sizes[order]]
        share[room[:k - int(share.sum())]] += 1
    return share


def two_level_kmeans(x: np.ndarray, k: int, *, rows: np.ndarray | None = None, normalize: bool = False,
                     niter: int = 20, seed: int = 0, max_points_per_centroid: int = 256, use_gpu: bool | None = None,
                     chunk_bytes: int = CHUNK_BYTES, stats: dict | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two-level k-means: (k x D centroids, each row's centroid, its squared distance to it).

    round(sqrt(k)) coarse clusters by flat `kmeans`; every row goes to its nearest coarse centroid; each coarse
    cluster of n_c rows is then split by its own flat k-means into a share of k proportional to n_c. A row's label
    is its nearest centroid among its coarse cluster's sub-centroids (the hierarchical assignment; a centroid of
    another coarse cluster can be nearer, which flat k-means would not allow). Only one coarse cluster's rows are
    copied at a time, so the extra memory is that cluster plus the centroids. Deterministic for a seed.
    """
    n = len(x) if rows is None else len(rows)
    k = int(k)
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= k <= {n} (the rows), got k = {k}")
    rows = np.arange(n, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    kw: dict[str, Any] = dict(normalize=normalize, niter=niter, max_points_per_centroid=max_points_per_centroid,
                              use_gpu=use_gpu, chunk_bytes=chunk_bytes, two_level=False)
    t0 = time.perf_counter()
    k1 = max(1, min(k, int(round(np.sqrt(k)))))
    st: dict = {}
    coarse = kmeans(x, k1, rows=rows, seed=seed, stats=st, **kw)
    _, top = min_sq_dist_to(x, coarse, query_rows=rows, normalize=normalize, return_index=True,
                            normalize_centres=False, use_gpu=use_gpu, chunk_bytes=chunk_bytes)
    t_coarse = time.perf_counter() - t0
    share = split_budget(np.bincount(top, minlength=k1), k)
    cents, labels, dist = [], np.empty(n, dtype=np.int64), np.empty(n, dtype=np.float32)
    seed_s, steps, done = st.get("seed_s", 0.0), np.zeros(int(niter)), 0
    steps[:len(st.get("iteration_s", []))] += st.get("iteration_s", [])
    for c in np.flatnonzero(share):
        pos = np.flatnonzero(top == c)
        fs: dict = {}
        cent = kmeans(x, int(share[c]), rows=rows[pos], seed=seed + 1 + int(c), stats=fs, **kw)
        d, lab = min_sq_dist_to(x, cent, query_rows=rows[pos], normalize=normalize, return_index=True,
                                normalize_centres=False, use_gpu=use_gpu, chunk_bytes=chunk_bytes)
        labels[pos], dist[pos] = lab + done, d
        cents.append(cent)
        done += len(cent)
        seed_s += fs.get("seed_s", 0.0)
        steps[:len(fs.get("iteration_s", []))] += fs.get("iteration_s", [])
    if stats is not None:
        stats.update(seed_s=seed_s, iteration_s=steps.tolist(), train_s=time.perf_counter() - t0, rows=n,
                     two_level={"coarse": k1, "coarse_s": t_coarse, "largest_share": int(share.max())})
    return np.concatenate(cents), labels, dist


def kmeans_labels(x: np.ndarray, k: int, *, rows: np.ndarray | None = None, normalize: bool = False,
                  niter: int = 20, seed: int = 0, max_points_per_centroid: int = 256, use_gpu: bool | None = None,
                  chunk_bytes: int = CHUNK_BYTES, stats: dict | None = None, two_level: bool | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`kmeans` and the assignment of every (selected) row: (centroids, label per row, squared distance).

    Flat: each row's nearest centroid, exact. Two-level (see `kmeans`): the hierarchical assignment, which spares
    the rows x k x D pass that a flat assignment to k = 10,000 centroids would cost.
    """
    n = len(x) if rows is None else len(rows)
    if two_level is None:
        two_level = use_two_level(n, int(k), x.shape[1], max_points_per_centroid)
    kw: dict[str, Any] = dict(rows=rows, normalize=normalize, niter=niter, seed=seed,
                              max_points_per_centroid=max_points_per_centroid, use_gpu=use_gpu,
                              chunk_bytes=chunk_bytes, stats=stats)
    if two_level:
        return two_level_kmeans(x, k, **kw)
    cent = kmeans(x, k, two_level=False, **kw)
    d, lab = min_sq_dist_to(x, cent, query_rows=rows, normalize=normalize, return_index=True, normalize_centres=False,
                            use_gpu=use_gpu, chunk_bytes=chunk_bytes)
    return cent, lab, d
