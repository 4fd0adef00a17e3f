"""The faiss layer: every nearest-neighbour search and k-center pass of raal's strategies goes through here.

Exact search (squared L2 or inner product) is the default; an IVF index is an opt-in for very large bases. When faiss
sees a GPU the searches run there, otherwise on the CPU (logged once). Inputs may be numpy arrays or memmaps of any
floating dtype and are read in row chunks, optionally through a row-index subset, so memory is bounded by the chunk
size: it never grows with N x |L| or N^2, and no big input is ever copied whole. k-means (flat and two-level) is in
`_kmeans`, the approximate pool index in `_ann`, the chunk, BLAS and device helpers they share in `_common`.
"""
from __future__ import annotations

import heapq

import faiss
import numpy as np

from raal.index._common import (
    CHUNK_BYTES,
    _gpu_resources,
    _use_gpu,
    blas_threads,
    chunk_rows,
    iter_slices,
    mean_row,
    read_rows,
)

METRICS = ("l2", "ip")
# below this many multiply-adds a block is searched in numpy: faiss's OpenMP start-up (and its spinning threads on
# a busy 2-core machine) costs more than the product itself
SMALL_WORK = 1 << 26


# -- search ----------------------------------------------------------------------------------------------------------
def _metric(metric: str) -> int:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    return faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT


def ivf_index(base: np.ndarray, metric: str = "l2", *, rows: np.ndarray | None = None, nlist: int | None = None,
              nprobe: int = 16, normalize: bool = False, seed: int = 0, use_gpu: bool | None = None,
              chunk_bytes: int = CHUNK_BYTES) -> faiss.Index:
    """An IVF-Flat index over (a row subset of) `base`: approximate, for bases too big to scan per query.

    Trained on at most 64 x nlist random rows; the vectors are then added in chunks. The index holds a float32 copy
    of the base, so use it when that copy fits and many queries will reuse it.
    """
    n = len(base) if rows is None else len(rows)
    nlist = int(nlist or max(1, min(n // 39, int(4 * np.sqrt(n)))))
    rng = np.random.default_rng(seed)
    train_pos = np.sort(rng.choice(n, size=min(n, 64 * nlist), replace=False))
    train_rows = train_pos if rows is None else np.asarray(rows)[train_pos]
    train = read_rows(base, 0, len(train_rows), train_rows, normalize=normalize)
    quantizer = faiss.IndexFlatL2(base.shape[1]) if metric == "l2" else faiss.IndexFlatIP(base.shape[1])
    index = faiss.IndexIVFFlat(quantizer, base.shape[1], nlist, _metric(metric))
    index.train(train)
    for s, e in iter_slices(n, chunk_rows(base.shape[1], chunk_bytes)):
        index.add(read_rows(base, s, e, rows, normalize=normalize))
    index.nprobe = int(nprobe)
    if _use_gpu(use_gpu):
        return faiss.index_cpu_to_gpu(_gpu_resources(), 0, index)
    return index


def _knn_small(q: np.ndarray, b: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Exact k-NN of a small block in numpy: best first, lower index first on exact ties."""
    s = q @ b.T
    if metric == "l2":
        s = np.einsum("ij,ij->i", q, q)[:, None] - 2.0 * s + np.einsum("ij,ij->i", b, b)[None, :]
        key = s
    else:
        key = -s
    if k == 1:
        i = np.argmin(key, axis=1)[:, None]
    else:
        i = np.sort(np.argpartition(key, k - 1, axis=1)[:, :k], axis=1)
        i = np.take_along_axis(i, np.argsort(np.take_along_axis(key, i, axis=1), axis=1, kind="stable"), axis=1)
    return np.take_along_axis(s, i, axis=1).astype(np.float32, copy=False), i.astype(np.int64)


def _knn_block(q: np.ndarray, b: np.ndarray, k: int, metric: str, gpu: bool) -> tuple[np.ndarray, np.ndarray]:
    if gpu:
        return faiss.knn_gpu(_gpu_resources(), q, b, k, metric=_metric(metric))
    if q.shape[0] * b.shape[0] * q.shape[1] < SMALL_WORK:
        with blas_threads(1):
            return _knn_small(q, b, k, metric)
    return faiss.knn(q, b, k, metric=_metric(metric))


def knn(queries: np.ndarray, base: np.ndarray, k: int, *, metric: str = "l2", query_rows: np.ndarray | None = None,
        base_rows: np.ndarray | None = None, normalize: bool = False, kind: str = "flat", nlist: int | None = None,
        nprobe: int = 16, use_gpu: bool | None = None, chunk_bytes: int = CHUNK_BYTES,
        normalize_base: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """k nearest rows of `base` for every row of `queries`: (scores float32, ids int64), best first.

    Scores are squared L2 distances (metric "l2", ascending) or inner products ("ip", descending). `query_rows` /
    `base_rows` select rows without copying the inputs; returned ids are row numbers of `base` itself (-1 where the
    base has fewer than k rows). `normalize` L2-normalises both sides chunk by chunk (then "ip" is the cosine).
    kind="flat" is exact: queries and base are both read in chunks and per-chunk results merged in a heap, so the
    memory is a few chunks whatever the sizes. kind="ivf" builds an approximate IVF-Flat index (see `ivf_index`).
    `normalize_base` (default: as `normalize`) says separately whether the base rows are normalised (k-means
    centroids of normalised rows are searched as they are).
    """
    nb_norm = normalize if normalize_base is None else bool(normalize_base)
    _metric(metric)
    if kind not in ("flat", "ivf"):
        raise ValueError(f"kind must be 'flat' or 'ivf', got {kind!r}")
    nq = len(queries) if query_rows is None else len(query_rows)
    nb = len(base) if base_rows is None else len(base_rows)
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    dist = np.full((nq, k), np.inf if metric == "l2" else -np.inf, dtype=np.float32)
    ids = np.full((nq, k), -1, dtype=np.int64)
    if nq == 0 or nb == 0:
        return dist, ids
    base_ids = None if base_rows is None else np.asarray(base_rows, dtype=np.int64)
    qrows = chunk_rows(queries.shape[1], chunk_bytes)
    gpu = _use_gpu(use_gpu)
    if kind == "ivf":
        index = ivf_index(base, metric, rows=base_ids, nlist=nlist, nprobe=nprobe, normalize=nb_norm,
                          use_gpu=gpu, chunk_bytes=chunk_bytes)
        for s, e in iter_slices(nq, qrows):
            d, i = index.search(read_rows(queries, s, e, query_rows, normalize=normalize), k)
            ids[s:e] = np.where(i >= 0, i if base_ids is None else base_ids[np.maximum(i, 0)], -1)
            dist[s:e] = d
        return dist, ids
    brows = chunk_rows(base.shape[1], chunk_bytes)
    one_chunk = nb <= brows
    heap = None if one_chunk else faiss.ResultHeap(nq, k, keep_max=(metric == "ip"))
    for bs, be in iter_slices(nb, brows):
        b = read_rows(base, bs, be, base_ids, normalize=nb_norm)
        kk = min(k, be - bs)
        for s, e in iter_slices(nq, qrows):
            d, i = _knn_block(read_rows(queries, s, e, query_rows, normalize=normalize), b, kk, metric, gpu)
            i = i + bs if base_ids is None else base_ids[bs:be][i]
            if heap is None:  # one_chunk
                dist[s:e, :kk], ids[s:e, :kk] = d, i
            else:
                heap.add_result_subset(np.arange(s, e, dtype=np.int64), d, i)
    if heap is not None:
        heap.finalize()
        dist, ids = heap.D, heap.I
        dist[ids < 0] = np.inf if metric == "l2" else -np.inf  # unfilled slots hold +-FLT_MAX
    if metric == "l2":
        np.maximum(dist, 0, out=dist)  # ||x||^2 - 2x.y + ||y||^2 can round below zero
    return dist, ids


def min_sq_dist_to(queries: np.ndarray, centres: np.ndarray, *, query_rows: np.ndarray | None = None,
                   centre_rows: np.ndarray | None = None, normalize: bool = False, return_index: bool = False,
                   use_gpu: bool | None = None, chunk_bytes: int = CHUNK_BYTES, normalize_centres: bool | None = None):
    """Squared Euclidean distance of every query to its nearest centre (float32; +inf when there are no centres).

    A chunked exact k=1 search (see `knn`): memory stays a few chunks however large N and the centre set are.
    With `return_index` also returns the nearest centre's row number in `centres`.
    """
    d, i = knn(queries, centres, 1, metric="l2", query_rows=query_rows, base_rows=centre_rows, normalize=normalize,
               use_gpu=use_gpu, chunk_bytes=chunk_bytes, normalize_base=normalize_centres)
    return (d[:, 0], i[:, 0]) if return_index else d[:, 0]


# -- greedy k-center -------------------------------------------------------------------------------------------------
def kcenter_greedy(x: np.ndarray, budget: int, *, labeled_mask: np.ndarray | None = None, normalize: bool = False,
                   block_rows: int = 256, chunk_bytes: int = CHUNK_BYTES, use_gpu: bool | None = None,
                   origin: np.ndarray | None = None) -> np.ndarray:
    """Greedy k-center (farthest-first traversal) on Euclidean distance; returns `budget` row numbers in pick order.

    The labeled rows are the initial centres and are never picked; with nothing labeled the first pick is the row
    farthest from `origin` (default: the mean of the rows; a merge of parts passes the whole pool's). Each pick is
    the unlabeled row whose distance to its nearest centre is largest (first index on exact ties). `normalize` runs
    on L2-normalised rows (PEAL's feature distance) without copying `x`.

    Exact, but lazy: the running min-distance vector is kept per block of `block_rows` rows together with the
    block's maximum and the number of centres it has seen. A max-heap of those maxima (upper bounds, since distances
    only shrink) tells which block can hold the farthest point; only that block is brought up to date, with one
    GEMM against all the centres it missed. Blocks far from every new centre are touched rarely, and when they are,
    many centres are applied at once (matrix-matrix instead of matrix-vector work), so the 10k picks of a large pool
    do not cost 10k full passes over it.
    """
    n, dim = x.shape
    budget = int(budget)
    labeled = np.zeros(n, dtype=bool) if labeled_mask is None else np.asarray(labeled_mask, dtype=bool)
    unl = np.flatnonzero(~labeled)
    if not 0 < budget <= len(unl):
        raise ValueError(f"budget must be in 1..{len(unl)} (the unlabeled rows), got {budget}")
    crow = chunk_rows(dim, chunk_bytes)

    # per-row squared norms of the (possibly normalised) rows; with normalize the rows are scaled by inv on the fly
    sqn = np.empty(n, dtype=np.float32)
    inv = np.empty(n, dtype=np.float32) if normalize else None
    for s, e in iter_slices(n, crow):
        b = read_rows(x, s, e)
        sq = np.einsum("ij,ij->i", b, b)
        if inv is not None:  # normalize
            nrm = np.sqrt(sq)
            inv[s:e] = 1.0 / np.maximum(nrm, np.float32(1e-12))
            sq = (nrm * inv[s:e]) ** 2  # 1, or 0 for an all-zero row
        sqn[s:e] = sq

    centres = np.empty((budget, dim), dtype=np.float32)
    csq = np.empty(budget, dtype=np.float32)
    picks: list[int] = []
    mind = np.full(n, -np.inf, dtype=np.float32)  # -inf: labeled or picked, never a candidate

    def add_centre(row: int) -> None:
        c = read_rows(x, row, row + 1, normalize=normalize)[0]
        centres[len(picks)] = c
        csq[len(picks)] = sqn[row]
        mind[row] = -np.inf
        picks.append(row)

    def dist_block(s: int, e: int, c: np.ndarray, c_sq: np.ndarray) -> np.ndarray:
        """Squared distances of rows s:e to the centres `c` (rows), shape (e-s, len(c))."""
        g = read_rows(x, s, e) @ c.T
        if inv is not None:  # normalize
            g *= inv[s:e, None]
        d = sqn[s:e, None] - 2.0 * g + c_sq[None, :]
        return np.maximum(d, 0, out=d)

    nblocks = -(-n // block_rows)
    synced = np.zeros(nblocks, dtype=np.int64)  # centres already applied to each block
    if labeled.any():
        mind[unl] = min_sq_dist_to(x, x, query_rows=unl, centre_rows=np.flatnonzero(labeled),
                                   normalize=normalize, use_gpu=use_gpu, chunk_bytes=chunk_bytes)
    else:
        mean = mean_row(x, normalize=normalize, chunk_bytes=chunk_bytes) if origin is None else \
            np.asarray(origin, dtype=np.float32).reshape(dim)
        msq = np.array([mean @ mean], dtype=np.float32)
        far = np.concatenate([dist_block(s, e, mean[None, :], msq)[:, 0] for s, e in iter_slices(n, crow)])
        add_centre(int(np.argmax(far)))
        mind[unl] = np.inf
        mind[picks[0]] = -np.inf

    heap: list[tuple[float, int]] = []
    for blk in range(nblocks):
        s, e = blk * block_rows, min(n, (blk + 1) * block_rows)
        heap.append((-float(mind[s:e].max()), blk))
    heapq.heapify(heap)
    max_centres = max(1, chunk_rows(block_rows, chunk_bytes // 4))  # bound the (block x centres) product
    with blas_threads(1):
        _lazy_picks(heap, synced, mind, picks, budget, block_rows, n, centres, csq, dist_block, add_centre,
                    max_centres)
    return np.asarray(picks, dtype=np.int64)


def _lazy_picks(heap, synced, mind, picks, budget, block_rows, n, centres, csq, dist_block, add_centre,
                max_centres) -> None:
    """The pick loop of `kcenter_greedy` (see there): bring the top block up to date until it is fresh, pick."""
    while len(picks) < budget:
        neg_ub, b = heapq.heappop(heap)
        s, e = b * block_rows, min(n, (b + 1) * block_rows)
        k = len(picks)
        if synced[b] < k:  # stale bound: apply the centres this block has missed, then re-queue it
            for cs in range(int(synced[b]), k, max_centres):
                ce = min(k, cs + max_centres)
                np.minimum(mind[s:e], dist_block(s, e, centres[cs:ce], csq[cs:ce]).min(axis=1), out=mind[s:e])
            synced[b] = k
            heapq.heappush(heap, (-float(mind[s:e].max()), b))
            continue
        # fresh block on top of the heap: its maximum is exact and no other block can beat it
        add_centre(s + int(np.argmax(mind[s:e])))
        heapq.heappush(heap, (-float(mind[s:e].max()), b))


# -- range search ---------------------------------------------------------------------------------------------------------
def range_search(queries: np.ndarray, base: np.ndarray, radius_sq: float, *, query_rows: np.ndarray | None = None,
                 normalize: bool = False, chunk_bytes: int = CHUNK_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """Every base row within squared L2 distance < `radius_sq` of each query row, as CSR (lims int64, ids int32).

    Row i's neighbours are ids[lims[i]:lims[i+1]], ascending. The base is read in chunks, each held by a temporary
    exact IndexFlatL2, and the queries in chunks against it, so memory is a few chunks plus the result (which is
    the caller's graph): never an N x N matrix.
    """
    nq = len(queries) if query_rows is None else len(query_rows)
    nb = len(base)
    qrows, brows = chunk_rows(queries.shape[1], chunk_bytes), chunk_rows(base.shape[1], chunk_bytes)
    src_parts: list[np.ndarray] = []
    dst_parts: list[np.ndarray] = []
    for bs, be in iter_slices(nb, brows):
        index = faiss.IndexFlatL2(base.shape[1])
        index.add(read_rows(base, bs, be, normalize=normalize))
        for s, e in iter_slices(nq, qrows):
            lims, _, hits = index.range_search(read_rows(queries, s, e, query_rows, normalize=normalize),
                                               float(radius_sq))
            per_query = np.diff(lims.astype(np.int64))
            # numpy 2.4's stubs type the diff of an int64 array as timedelta64
            src_parts.append(np.repeat(np.arange(s, e, dtype=np.int32), per_query))  # type: ignore[arg-type]
            dst_parts.append((hits + bs).astype(np.int32))
        del index
    src = np.concatenate(src_parts) if src_parts else np.zeros(0, np.int32)
    dst = np.concatenate(dst_parts) if dst_parts else np.zeros(0, np.int32)
    counts = np.bincount(src, minlength=nq)
    ids = dst[np.lexsort((dst, src))]
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), ids

