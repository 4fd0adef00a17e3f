"""Approximate nearest neighbours of a large pool among itself: IVF with 8-bit codes, candidates re-ranked exactly.

An exact k-NN pass over the whole pool costs N^2 x D (100,000 x 2048: about 45 min on two cores; 1.28M: weeks).
`PoolIndex` cuts it to about N x (nlist + N nprobe / nlist) x D: the rows are filed under nlist = 4 sqrt(N) k-means
cells, and a query scans only its `nprobe` nearest cells. The cells hold 8-bit scalar-quantised codes (a quarter of
the float32 input, so the index's memory stays well below the input's), and every result is re-ranked with exact
float32 distances read from the input, so returned distances are exact and only recall is approximate
(`recall_at_k` measures it against the exact search).
"""
from __future__ import annotations

import faiss
import numpy as np

from raal.index._common import CHUNK_BYTES, chunk_rows, iter_slices, read_rows
from raal.index._kmeans import kmeans

HNSW_QUANTIZER_MIN = 1024  # from this many cells the cell lookup is an HNSW graph instead of a scan of all cells


class PoolIndex:
    """An IVF-SQ8 index over every row of `x` (L2, optionally on L2-normalised rows), searched with exact re-ranking.

    The cells are raal's k-means (two-level when large) on 16 x nlist sampled rows, 10 steps; the codes' ranges
    are trained on the same sample. Rows are added in chunks, so the input is never copied whole.
    """

    def __init__(self, x: np.ndarray, *, normalize: bool = False, nlist: int | None = None, nprobe: int = 16,
                 rerank: float = 1.5, seed: int = 0, chunk_bytes: int = CHUNK_BYTES):
        n, dim = x.shape
        self.x, self.normalize, self.chunk_bytes = x, bool(normalize), int(chunk_bytes)
        self.nlist = int(nlist or max(1, min(n // 16, int(4 * np.sqrt(n)))))
        self.nprobe, self.rerank = int(min(nprobe, self.nlist)), float(rerank)
        rng = np.random.default_rng(seed)
        train_rows = np.sort(rng.choice(n, size=min(n, 16 * self.nlist), replace=False))
        cells = kmeans(x, self.nlist, rows=train_rows, normalize=normalize, niter=10, seed=seed)
        if self.nlist >= HNSW_QUANTIZER_MIN:
            hnsw = faiss.IndexHNSWFlat(dim, 32)
            hnsw.hnsw.efSearch = max(64, 4 * self.nprobe)
            quantizer: faiss.Index = hnsw
        else:
            quantizer = faiss.IndexFlatL2(dim)
        quantizer.add(cells)
        self.index = faiss.IndexIVFScalarQuantizer(quantizer, dim, self.nlist, faiss.ScalarQuantizer.QT_8bit,
                                                   faiss.METRIC_L2, False)
        self.index.train(read_rows(x, 0, len(train_rows), train_rows, normalize=normalize))  # codes only
        self._quantizer = quantizer  # faiss does not own it
        # per row: squared norm of the indexed (normalised) row, and the factor that normalises the raw row, so the
        # re-ranking reads raw candidate rows and never normalises a gathered copy
        self.sqn, self.scale = np.empty(n, dtype=np.float32), np.ones(n, dtype=np.float32)
        for s, e in iter_slices(n, chunk_rows(dim, chunk_bytes)):
            raw = read_rows(x, s, e)
            if normalize:
                nrm = np.sqrt(np.einsum("ij,ij->i", raw, raw))
                self.scale[s:e] = 1.0 / np.maximum(nrm, np.float32(1e-12))
            b = raw * self.scale[s:e, None] if normalize else raw
            self.sqn[s:e] = np.einsum("ij,ij->i", b, b)
            self.index.add(b)
        self.index.nprobe = self.nprobe

    def _exact(self, q: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Exact squared distances of each query row to its candidate rows (inf where the id is -1)."""
        flat = np.maximum(ids, 0).ravel()
        cand = read_rows(self.x, 0, len(flat), flat).reshape(ids.shape[0], ids.shape[1], -1)
        dot = np.matmul(cand, q[:, :, None])[:, :, 0] * self.scale[flat].reshape(ids.shape)  # a GEMV per query
        d = self.sqn[flat].reshape(ids.shape) - 2 * dot + np.einsum("ik,ik->i", q, q)[:, None]
        d = np.maximum(d, 0).astype(np.float32)
        d[ids < 0] = np.inf
        return d

    def knn(self, k: int, query_rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """k approximate nearest rows of each query row (all rows by default): exact squared distances, ids; the
        `rerank` x k candidates of the coded search are re-ranked by their exact distances."""
        n = len(self.x) if query_rows is None else len(query_rows)
        k = int(min(k, len(self.x)))
        kk = int(min(len(self.x), max(k, round(self.rerank * k))))
        dist, ids = np.empty((n, k), dtype=np.float32), np.empty((n, k), dtype=np.int64)
        rows = max(1, chunk_rows(self.x.shape[1], self.chunk_bytes) // max(1, kk))  # candidate block <= a chunk
        for bs, be in iter_slices(n, chunk_rows(self.x.shape[1], self.chunk_bytes)):  # big batches for faiss
            qb = read_rows(self.x, bs, be, query_rows, normalize=self.normalize)
            _, cb = self.index.search(qb, kk)
            for s, e in iter_slices(be - bs, rows):
                cand = cb[s:e]
                d = self._exact(qb[s:e], cand)
                order = np.argsort(d, axis=1, kind="stable")[:, :k]
                dist[bs + s:bs + e] = np.take_along_axis(d, order, axis=1)
                ids[bs + s:bs + e] = np.take_along_axis(cand, order, axis=1)
        ids[~np.isfinite(dist)] = -1
        return dist, ids

    def nearest_among(self, query_rows: np.ndarray, allowed: np.ndarray) -> np.ndarray:
        """Exact squared distance of each query row to the nearest row the search finds among those with
        allowed[row] True (inf when the probed cells hold none)."""
        packed = np.packbits(np.asarray(allowed, dtype=bool), bitorder="little")
        sel = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(packed))
        params = faiss.SearchParametersIVF(sel=sel, nprobe=self.nprobe)  # type: ignore[call-arg]  # .pyi: no kwargs
        out = np.empty(len(query_rows), dtype=np.float32)
        for s, e in iter_slices(len(query_rows), chunk_rows(self.x.shape[1], self.chunk_bytes) // 4):
            q = read_rows(self.x, s, e, query_rows, normalize=self.normalize)
            _, cand = self.index.search(q, 4, params=params)
            out[s:e] = self._exact(q, cand).min(axis=1)
        return out

    def range_search(self, radius_sq: float, query_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows within exact squared distance < `radius_sq` of each query row, among those the coded search finds
        within 1.2 x the radius: CSR (lims int64, ids int32), ids ascending."""
        lims_all, ids_all = [np.zeros(1, np.int64)], []
        for s, e in iter_slices(len(query_rows), max(1, chunk_rows(self.x.shape[1], self.chunk_bytes) // 64)):
            q = read_rows(self.x, s, e, query_rows, normalize=self.normalize)
            lims, _, cand = self.index.range_search(q, float(radius_sq) * 1.2)
            for i in range(e - s):
                c = np.sort(cand[lims[i]:lims[i + 1]])
                keep = c[self._exact(q[i:i + 1], c[None, :])[0] < radius_sq] if len(c) else c
                ids_all.append(keep.astype(np.int32))
                lims_all.append(np.array([len(keep)], np.int64))
        lims = np.cumsum(np.concatenate(lims_all))
        return lims, (np.concatenate(ids_all) if ids_all else np.zeros(0, np.int32))


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Mean share of each row's exact k nearest ids that the approximate list holds."""
    hits = [len(np.intersect1d(a[a >= 0], e[e >= 0])) / max(1, int((e >= 0).sum()))
            for a, e in zip(approx_ids, exact_ids)]
    return float(np.mean(hits)) if hits else 1.0
