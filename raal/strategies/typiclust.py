"""TypiClust (Hacohen, Dekel & Weinshall 2022, "Active learning on a budget"): typical items of uncovered clusters."""
from __future__ import annotations

import numpy as np

from raal.index import kmeans, knn, min_sq_dist_to
from raal.strategies.base import Pool, Strategy, check_option, is_flag


def cluster_schedule(sizes: np.ndarray, n_labeled: np.ndarray, n_free: np.ndarray, budget: int,
                     min_size: int) -> np.ndarray:
    """Cluster id of each pick: clusters of more than `min_size` items, fewest labeled first, then largest, visited
    round-robin; a cluster with no unlabeled item left is skipped. All clusters are used when none is big enough."""
    ok = sizes > min_size
    if not (ok & (n_free > 0)).any():
        ok = np.ones_like(ok)
    order = np.lexsort((np.arange(len(sizes)), -sizes, n_labeled))
    order = order[ok[order] & (n_free[order] > 0)]
    left = n_free[order].copy()
    out: list[int] = []
    while len(out) < budget:
        live = np.flatnonzero(left > 0)
        if len(live) == 0:
            raise RuntimeError("typiclust: the clusters ran out of unlabeled items")  # budget <= unlabeled: unreachable
        take = live[:budget - len(out)]
        out.extend(order[take].tolist())
        left[take] -= 1
    return np.asarray(out, dtype=np.int64)


def typical_sequence(x: np.ndarray, members: np.ndarray, picks: int, k_nn: int, normalize: bool) -> np.ndarray:
    """`picks` items of one cluster, one at a time: each the most typical of the members not yet picked.

    Typicality is the inverse mean Euclidean distance to the K = min(k_nn, n // 2) nearest other remaining members
    (n = members remaining). One exact k-NN search with K + picks - 1 neighbours per member serves every pick: a
    removed member drops out of the lists and the next ones move up.
    """
    n = len(members)
    k0 = min(k_nn, n // 2)
    width = min(n - 1, k0 + picks - 1)
    if width <= 0 or k0 == 0:
        return members[:picks]
    d2, nb = knn(x, x, width + 1, query_rows=members, base_rows=members, normalize=normalize)
    local = np.searchsorted(members, nb)
    own = local == np.arange(n)[:, None]
    own[~own.any(axis=1), -1] = True  # exact duplicates can push an item out of its own list: drop the last then
    keep = ~own
    dist = np.sqrt(d2[keep].reshape(n, width))
    local = local[keep].reshape(n, width)
    alive = np.ones(n, dtype=bool)
    out = []
    for _ in range(picks):
        k = max(1, min(k_nn, int(alive.sum()) // 2))
        ok = alive[local]
        use = ok & (np.cumsum(ok, axis=1) <= k)
        mean = np.where(use, dist, 0).sum(axis=1) / k
        mean[~alive] = np.inf
        j = int(np.argmin(mean))
        out.append(members[j])
        alive[j] = False
    return np.asarray(out, dtype=np.int64)


class TypiClust(Strategy):
    """k-means into min(|L| + B, max_clusters) clusters; each pick is the most typical unlabeled item of the next
    cluster, clusters taken largest first among those holding the fewest labeled items, round-robin.

    As in the paper and its reference code: 500 clusters at most, clusters of 5 items or fewer are skipped, K = 20
    nearest neighbours (halved for small clusters), typicality recomputed among the remaining items after each pick.
    Deviations: faiss k-means (random-row init, `niter` steps) instead of scikit-learn's (Mini-Batch) KMeans; the
    paper's Euclidean distance in the typicality, where the reference code averages squared distances; when every
    cluster is small all are used, and an exhausted cluster is skipped (the reference code fails in both cases).
    Deterministic for a seed. Cost: k-means (niter x N x clusters x D) plus one exact k-NN per cluster,
    sum of n_c^2 x D; memory O(N + n_c x (K + picks)).
    """

    name = "typiclust"
    requires = frozenset({"embeddings"})

    def __init__(self, k_nn: int = 20, max_clusters: int = 500, min_cluster_size: int = 5, niter: int = 20,
                 normalize: bool = False):
        for option, value, low in (("k_nn", k_nn, 1), ("max_clusters", max_clusters, 1),
                                   ("min_cluster_size", min_cluster_size, 0), ("niter", niter, 0)):
            check_option(self.name, option, value, int(value) >= low, f"must be >= {low}")
        check_option(self.name, "normalize", normalize, is_flag(normalize), "must be true or false")
        self.k_nn, self.max_clusters, self.min_cluster_size = int(k_nn), int(max_clusters), int(min_cluster_size)
        self.niter, self.normalize = int(niter), bool(normalize)

    def _select(self, budget: int, pool: Pool, *, probs, embeddings, seed: int) -> np.ndarray:
        k = min(pool.n - len(pool.unlabeled) + budget, self.max_clusters, pool.n)
        cent = kmeans(embeddings, k, normalize=self.normalize, niter=self.niter, seed=seed)
        _, lab = min_sq_dist_to(embeddings, cent, normalize=self.normalize, return_index=True, normalize_centres=False)
        sizes = np.bincount(lab, minlength=k)
        n_labeled = np.bincount(lab[pool.labeled], minlength=k)
        sched = cluster_schedule(sizes, n_labeled, sizes - n_labeled, budget, self.min_cluster_size)
        out = np.empty(budget, dtype=np.int64)
        unl_lab = lab[pool.unlabeled]
        for c in np.unique(sched):
            slots = np.flatnonzero(sched == c)
            members = pool.unlabeled[unl_lab == c]
            out[slots] = typical_sequence(embeddings, members, len(slots), self.k_nn, self.normalize)
        return out
