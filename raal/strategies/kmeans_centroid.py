"""k-means centroid selection (Gupte et al. 2024): the item nearest each of `budget` k-means centroids."""
from __future__ import annotations

import numpy as np

from raal.index import kmeans_labels, knn, min_sq_dist_to
from raal.strategies.base import Pool, Strategy, check_option


def centroid_items(x: np.ndarray, centroids: np.ndarray, rows: np.ndarray, *, normalize: bool,
                   assigned: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """One distinct row of `rows` per centroid: the member of its cluster nearest to it, largest clusters first.

    `assigned` = (squared distance, label) per row of `rows` when k-means already has it; else each row goes to
    its nearest centroid. A cluster left empty by the final assignment (faiss trains on a sample) takes the nearest row to its centroid
    that no other cluster took. Returns positions in `x`, in the order described.
    """
    k = len(centroids)
    if assigned is None:
        assigned = min_sq_dist_to(x, centroids, query_rows=rows, normalize=normalize, return_index=True,
                                  normalize_centres=False)
    d, lab = assigned
    order = np.lexsort((d, lab))  # by cluster, then nearest first
    first = np.ones(len(order), dtype=bool)
    first[1:] = lab[order][1:] != lab[order][:-1]
    best = np.full(k, -1, dtype=np.int64)
    best[lab[order][first]] = rows[order][first]
    sizes = np.bincount(lab, minlength=k)
    empty = np.flatnonzero(best < 0)
    if len(empty):
        taken = set(best[best >= 0].tolist())
        _, near = knn(centroids, x, min(len(rows), k), query_rows=empty, base_rows=rows, normalize=False,
                      normalize_base=normalize)
        for c, cand in zip(empty, near):
            pick = next(int(i) for i in cand if i >= 0 and int(i) not in taken)
            best[c] = pick
            taken.add(pick)
    return best[np.lexsort((np.arange(k), -sizes))]


class KMeansCentroid(Strategy):
    """k-means with k = budget on the L2-normalised embeddings of the unlabeled items; each pick is the item nearest
    its centroid (within its cluster), largest clusters first.

    Gupte et al. (2024) use this for the initial pool. Deviations: faiss k-means (k-means++ seeding up to k = 1024,
    faiss's random rows above) and `niter` (default 20) Lloyd steps instead of the reference's k-means++ and 100
    steps; labeled items are left out of the clustering (round 0 has none, as in the paper). Large budgets (k >= 512
    and a flat step above 1.4e11 multiply-adds) use two-level k-means (`raal.index.two_level_kmeans`): sqrt(k) coarse
    clusters split in proportion to their sizes, clusters and picks within a coarse cluster; its objective (mean
    squared distance to the nearest centroid) was within 0.1% of flat k-means' on the bench's pools and 0.3-1.5%
    above it on the tests' data (bench/results/cold_strategies.md). Deterministic for a seed. Cost: flat,
    niter x N x budget x D multiply-adds; two-level, about niter x N x 2 sqrt(budget) x D; memory O(N + budget x D).
    """

    name = "kmeans_centroid"
    requires = frozenset({"embeddings"})

    def __init__(self, niter: int = 20, max_points_per_centroid: int = 256):
        check_option(self.name, "niter", niter, int(niter) >= 0, "must be >= 0 (Lloyd steps)")
        check_option(self.name, "max_points_per_centroid", max_points_per_centroid, int(max_points_per_centroid) >= 1,
                     "must be >= 1")
        self.niter = int(niter)
        self.max_points_per_centroid = int(max_points_per_centroid)

    def _select(self, budget: int, pool: Pool, *, probs, embeddings, seed: int) -> np.ndarray:
        cent, lab, d = kmeans_labels(embeddings, budget, rows=pool.unlabeled, normalize=True, niter=self.niter,
                                     seed=seed, max_points_per_centroid=self.max_points_per_centroid)
        return centroid_items(embeddings, cent, pool.unlabeled, normalize=True, assigned=(d, lab))
