"""Cluster-Margin (Citovsky et al., NeurIPS 2021): the smallest margins, spread round-robin over pool clusters.

Margin alone fills a large batch with near-duplicates from one confused region. Cluster-Margin clusters the pool
once, takes the k_m x budget smallest-margin items as candidates and picks round-robin over the clusters they fall
in, smallest clusters first, so a batch covers many regions while every pick is still an uncertain one.
"""
from __future__ import annotations

import hashlib
import math

import numpy as np

from raal.index import average_linkage, chunk_rows, cut_tree, iter_slices, kmeans_labels, read_rows
from raal.strategies.base import PROB_SUM_TOL, Pool, Strategy, check_option, is_flag
from raal.strategies.margin import margins

CHUNK_BYTES = 32 << 20
KMEANS_CAP = 4096  # auto k-means cells at most: HAC keeps one k x k float64 matrix (134 MB here)
CELLS_PER_CLUSTER = 8  # auto: k-means cells per final cluster, so HAC has groups of cells to merge
FINGERPRINT_ROWS = 256  # rows hashed to tell one feature version from another
WITHIN = ("margin", "random")


def pool_clusters(x: np.ndarray, n_clusters: int, cells: int, *, niter: int, seed: int = 0) -> np.ndarray:
    """Cluster id (int64) of every row of `x`: k-means into `cells` cells (`raal.index.kmeans_labels`), then
    average-linkage HAC on the cells' centroids weighted by their sizes (`raal.index.average_linkage`), cut into
    `n_clusters` (fewer when fewer cells are non-empty)."""
    cent, lab, _ = kmeans_labels(x, cells, niter=niter, seed=seed)
    sizes = np.bincount(lab, minlength=len(cent))
    used = np.flatnonzero(sizes)
    group = np.zeros(len(cent), dtype=np.int64)
    group[used] = cut_tree(average_linkage(cent[used], sizes[used]), len(used), min(n_clusters, len(used)))
    return group[lab]


def round_robin(clusters: np.ndarray, margin: np.ndarray, within_key: np.ndarray, budget: int) -> np.ndarray:
    """Positions in the candidate arrays of `budget` picks, in pick order.

    Clusters are ordered by their number of candidates (smallest first), then by their smallest margin, then id.
    Pass t takes the t-th candidate (by `within_key`, then position) of every cluster that still has one, in that
    order, until the budget is filled.
    """
    ids, inv, count = np.unique(clusters, return_inverse=True, return_counts=True)
    best = np.full(len(ids), np.inf)
    np.minimum.at(best, inv, margin)
    rank = np.empty(len(ids), dtype=np.int64)
    rank[np.lexsort((ids, best, count))] = np.arange(len(ids))
    m = len(clusters)
    by_cluster = np.lexsort((np.arange(m), within_key, inv))
    start = np.searchsorted(inv[by_cluster], np.arange(len(ids)))
    turn = np.empty(m, dtype=np.int64)
    turn[by_cluster] = np.arange(m) - start[inv[by_cluster]]
    return np.lexsort((rank[inv], turn))[:budget]


def fingerprint(x: np.ndarray) -> tuple:
    """Shape, dtype and a hash of evenly spaced rows: a new feature version, not a new round, changes it."""
    rows = np.unique(np.linspace(0, len(x) - 1, FINGERPRINT_ROWS).astype(np.int64))
    return x.shape, x.dtype.str, hashlib.sha1(np.ascontiguousarray(x[rows]).tobytes()).hexdigest()


def proxy_margins(x: np.ndarray, rows: np.ndarray, proxy) -> np.ndarray:
    """p(1) - p(2) of the proxy's output on each row, read in chunks. The proxy may give probabilities or logits
    (the Strategy contract): a block whose rows are all on the simplex is taken as probabilities, else softmaxed."""
    out = np.empty(len(rows), dtype=np.float64)
    for s, e in iter_slices(len(rows), chunk_rows(x.shape[1], CHUNK_BYTES)):
        z = np.asarray(proxy(read_rows(x, s, e, rows)), dtype=np.float64)
        if z.ndim != 2 or z.shape[0] != e - s or z.shape[1] < 2 or not np.isfinite(z).all():
            raise ValueError(f"strategy 'cluster_margin': proxy must map {e - s} rows to a finite ({e - s}, C >= 2) "
                             f"array, got shape {z.shape}")
        if z.min() < 0 or (np.abs(z.sum(axis=1) - 1.0) > PROB_SUM_TOL).any():
            z = np.exp(z - z.max(axis=1, keepdims=True))
            z /= z.sum(axis=1, keepdims=True)
        out[s:e] = margins(z)
    return out


class ClusterMargin(Strategy):
    """The ceil(margin_factor x budget) unlabeled items with the smallest proxy margin, picked round-robin over the
    pool's clusters (see `round_robin`); within a cluster by ascending margin (`within="random"`: uniformly, as the
    paper). The clusters: k-means into `kmeans_k` cells, then average-linkage HAC on the cells' centroids weighted by
    their sizes, cut into `clusters` (paper: HAC with average linkage on the items, cut at a distance).

    The pool (labeled items too) is clustered once per feature version: the result is kept, keyed by `fingerprint`,
    and the clustering seed is fixed (0), so every round and a resumed run see the same clusters. `embeddings` are
    the features the proxy reads (the pipeline passes both, as for dropquery). Defaults: margin_factor 10,
    clusters ceil(sqrt N), kmeans_k min(N, max(clusters, min(8 clusters, 4096))), niter 20.
    Cost: one proxy pass over the unlabeled rows and a sort per round; once per feature version k-means (two-level
    when large, `raal.index.kmeans_labels`) and HAC, O(kmeans_k^2) time and memory.
    """

    name = "cluster_margin"
    requires = frozenset({"embeddings", "proxy"})

    def __init__(self, margin_factor: float = 10.0, clusters: int | None = None, kmeans_k: int | None = None,
                 within: str = "margin", niter: int = 20):
        number = isinstance(margin_factor, (int, float, np.integer, np.floating)) and not is_flag(margin_factor)
        check_option(self.name, "margin_factor", margin_factor,
                     number and math.isfinite(margin_factor) and margin_factor >= 1,
                     "must be a number >= 1 (candidates per pick)")
        for option, value in (("clusters", clusters), ("kmeans_k", kmeans_k)):
            whole = isinstance(value, (int, np.integer)) and not is_flag(value)
            check_option(self.name, option, value, value is None or (whole and value >= 1),
                         "must be None (auto) or an integer >= 1")
        check_option(self.name, "within", within, within in WITHIN, f"allowed: {', '.join(WITHIN)}")
        check_option(self.name, "niter", niter, int(niter) >= 0, "must be >= 0 (Lloyd steps)")
        self.margin_factor = float(margin_factor)
        self.clusters = None if clusters is None else int(clusters)
        self.kmeans_k = None if kmeans_k is None else int(kmeans_k)
        self.within, self.niter = within, int(niter)
        self._cache: tuple[tuple, np.ndarray] | None = None
        self.last: dict = {}

    def sizes(self, n: int) -> tuple[int, int]:
        """(final clusters, k-means cells) for a pool of n items."""
        clusters = min(n, self.clusters or math.ceil(math.sqrt(n)))
        cells = self.kmeans_k or max(clusters, min(CELLS_PER_CLUSTER * clusters, KMEANS_CAP))
        return clusters, min(n, cells)

    def pool_clusters(self, x: np.ndarray) -> np.ndarray:
        """Every row's cluster, computed once per feature version."""
        key = (fingerprint(x), self.sizes(len(x)), self.niter)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, pool_clusters(x, *self.sizes(len(x)), niter=self.niter, seed=0))
            self.last["clusterings"] = self.last.get("clusterings", 0) + 1
        return self._cache[1]

    def _select(self, budget: int, pool: Pool, *, probs, embeddings, seed: int) -> np.ndarray:
        unl = pool.unlabeled
        margin = proxy_margins(embeddings, unl, pool.proxy)
        m = min(len(unl), math.ceil(self.margin_factor * budget))
        cand = np.argsort(margin, kind="stable")[:m]  # smallest margin first, ties to the lower index
        clusters = self.pool_clusters(embeddings)[unl[cand]]
        key = margin[cand] if self.within == "margin" else np.random.default_rng(seed).random(m)
        picks = cand[round_robin(clusters, margin[cand], key, budget)]
        self.last.update(candidates=m, clusters_hit=len(np.unique(clusters)))
        return unl[picks]
