"""ProbCover (Yehuda, Dekel, Hacohen & Weinshall 2022): greedy max coverage of δ-balls, δ from the purity rule."""
from __future__ import annotations

import math

import numpy as np

from raal.index import PoolIndex, kmeans, knn, min_sq_dist_to, range_search
from raal.strategies.base import Pool, Strategy, check_option, is_flag

NEIGHBOURS = 32  # k-NN list per item: it yields both the purity distances and (mostly) the δ-balls
EXACT_MAX_N = 50_000  # above this many items the k-NN lists and balls come from an approximate index (PoolIndex)


def impure_distance(x: np.ndarray, pseudo: np.ndarray, *, normalize: bool, k: int = NEIGHBOURS,
                    quantile_rank: int | None = None, pool_index: PoolIndex | None = None
                    ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Per item, the distance to its nearest item of another pseudo-label (∞ with a single label), and the k-NN
    lists (squared distances, ids) it came from.

    Exact where the answer lies in the k-NN list; elsewhere it is only known to be >= the k-th neighbour's
    distance, and those items are searched exactly (against the other labels) when they could reach
    `quantile_rank` (the rank the purity rule reads), so the rule's value is exact. With `pool_index` the lists
    and that search are approximate (its recall), the distances in them exact.
    """
    n = len(x)
    d2, nb = knn(x, x, min(n, k), normalize=normalize) if pool_index is None else pool_index.knn(min(n, k))
    other = (nb >= 0) & (pseudo[np.maximum(nb, 0)] != pseudo[:, None])
    hit = other.any(axis=1)
    dist = np.full(n, np.inf)
    dist[hit] = np.sqrt(d2[hit, np.argmax(other[hit], axis=1)])
    if quantile_rank is not None and not hit.all() and len(np.unique(pseudo)) > 1:
        upper = np.sort(dist)[quantile_rank]  # the unknown ones can only raise the true value to at most this
        lower = np.sqrt(d2[:, -1])
        todo = np.flatnonzero(~hit & (lower <= upper))
        for c in np.unique(pseudo[todo]):
            q = todo[pseudo[todo] == c]
            if pool_index is not None:
                dist[q] = np.sqrt(pool_index.nearest_among(q, pseudo != c))
                continue
            dist[q] = np.sqrt(min_sq_dist_to(x, x, query_rows=q, centre_rows=np.flatnonzero(pseudo != c),
                                             normalize=normalize))
    return dist, (d2, nb)


def purity_delta(dist: np.ndarray, alpha: float) -> float:
    """The largest δ whose open balls are pure for at least a fraction `alpha` of the items.

    The ball {x' : |x - x'| < δ} is pure iff δ <= dist(x), so δ = the ceil(alpha N)-th largest distance.
    """
    n = len(dist)
    return float(np.sort(dist)[n - math.ceil(alpha * n)])


def ball_graph(x: np.ndarray, delta: float, *, normalize: bool, knn_lists=None,
               pool_index: PoolIndex | None = None) -> tuple[np.ndarray, np.ndarray]:
    """CSR (lims, ids) of every item's open δ-ball (itself included).

    From the k-NN lists where a ball is smaller than the list; otherwise (or without lists) by exact range search,
    or by `pool_index`'s approximate one (lists from it too) when given.
    """
    n = len(x)
    r2 = np.float32(delta) ** 2
    if knn_lists is None and pool_index is not None:
        knn_lists = pool_index.knn(min(n, NEIGHBOURS))
    if knn_lists is None:
        return range_search(x, x, float(r2), normalize=normalize)
    d2, nb = knn_lists
    inside = (d2 < r2) & (nb >= 0)  # lists are sorted by distance: a ball is a prefix of its list
    full = inside[:, -1] & (d2.shape[1] < n)  # ...unless it fills the list and may hold more
    counts = inside.sum(axis=1)
    over = np.flatnonzero(full)
    if len(over):
        over_lims, over_ids = (range_search(x, x, float(r2), query_rows=over, normalize=normalize) if pool_index is None
                               else pool_index.range_search(float(r2), over))
        counts[over] = np.diff(over_lims)
    lims = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    from_list = np.repeat(~full, counts)
    ids = np.empty(lims[-1], dtype=np.int32)
    ids[from_list] = nb[inside & ~full[:, None]]
    if len(over):
        ids[~from_list] = over_ids
    return lims, ids


def greedy_cover(lims: np.ndarray, ids: np.ndarray, labeled: np.ndarray, budget: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Greedy max coverage: each pick is the unlabeled item whose ball holds the most uncovered items (lowest index
    on ties); the balls of labeled items are covered at the start. Once all is covered, the remaining picks are
    uniformly random unlabeled items. Returns (picks, items covered).

    Degrees are kept up to date through the reversed graph: covering y lowers the degree of every x whose ball
    holds y, so the whole run touches each edge a bounded number of times.
    """
    n = len(lims) - 1
    src = np.repeat(np.arange(n, dtype=np.int32), np.diff(lims))
    order = np.argsort(ids, kind="stable")
    rsrc = src[order]  # rows whose ball holds y: rsrc[rlims[y]:rlims[y+1]]
    del order
    rlims = np.concatenate([[0], np.cumsum(np.bincount(ids, minlength=n))]).astype(np.int64)
    covered = np.zeros(n, dtype=bool)
    covered[ids[labeled[src]]] = True
    degree = np.bincount(src, weights=~covered[ids], minlength=n).astype(np.int64)
    del src
    degree[labeled] = -1
    picks: list[int] = []
    while len(picks) < budget:
        j = int(np.argmax(degree))
        if degree[j] <= 0:
            break
        picks.append(j)
        new = ids[lims[j]:lims[j + 1]]
        new = new[~covered[new]]
        covered[new] = True
        if len(new):
            hit = np.concatenate([rsrc[rlims[y]:rlims[y + 1]] for y in new.tolist()])
            u, c = np.unique(hit, return_counts=True)
            degree[u] -= c
        degree[j] = -1
    n_covered = int(covered.sum())
    if len(picks) < budget:
        rest = np.flatnonzero(degree == 0)  # unlabeled, unpicked, nothing left to cover
        picks.extend(rng.permutation(rest)[:budget - len(picks)].tolist())
    return np.asarray(picks, dtype=np.int64), n_covered


class ProbCover(Strategy):
    """Greedy max coverage of open δ-balls on L2-normalised embeddings (Yehuda et al. 2022).

    δ (unless given) follows the paper's purity rule: k-means with k = `num_classes` gives pseudo-labels, and δ is
    the largest radius whose balls hold a single pseudo-label for at least alpha = 0.95 of the items. The paper
    scans a grid of δ values; raal computes that largest δ exactly (a quantile of each item's distance to its
    nearest item of another pseudo-label). Each pick covers its ball; covered items leave every other ball. The
    ball graph comes from one exact k-NN pass (32 neighbours, which also gives the purity distances) plus a range
    search for the items whose ball outgrows their list: never an N x N matrix. Deviations: faiss k-means; after full
    coverage the remaining picks are uniformly random (the reference code repeats item 0). Cost: one exact N x N x D
    search (faiss, chunked), memory O(N x 32 + edges). Above `exact_max_n` items (50,000; at 100,000 x 2048 the
    exact pass is ~45 min on two cores) the lists, the purity search and the large balls come from an approximate
    IVF index (`raal.index.PoolIndex`: 4 sqrt(N) cells, `nprobe` probed, 8-bit codes, exact re-ranking), about
    N x 8 sqrt(N) x D: an item's neighbour outside the probed cells is missed (recall@32 is reported by
    bench/cold_strategies.py), which can only shrink balls and raise the purity distances. `num_classes` defaults
    to 10 when unknown; raal's pipelines pass the dataset's class count.
    """

    name = "probcover"
    requires = frozenset({"embeddings"})

    def __init__(self, num_classes: int = 10, alpha: float = 0.95, delta: float | None = None,
                 normalize: bool = True, niter: int = 20, exact_max_n: int = EXACT_MAX_N, nprobe: int = 16,
                 nlist: int | None = None):
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        for option, value, low in (("num_classes", num_classes, 1), ("niter", niter, 0), ("exact_max_n", exact_max_n, 0),
                                   ("nprobe", nprobe, 1), ("nlist", 1 if nlist is None else nlist, 1)):
            check_option(self.name, option, value, int(value) >= low, f"must be >= {low}")
        # a negative delta used to act as |delta| (the ball test squares it)
        check_option(self.name, "delta", delta, delta is None or float(delta) > 0, "must be > 0 (or None: the purity rule)")
        check_option(self.name, "normalize", normalize, is_flag(normalize), "must be true or false")
        self.num_classes, self.alpha, self.niter = int(num_classes), float(alpha), int(niter)
        self.delta = None if delta is None else float(delta)
        self.normalize = bool(normalize)
        self.exact_max_n, self.nprobe, self.nlist = int(exact_max_n), int(nprobe), nlist
        self.last: dict = {}  # delta, covered, n: what the last call did (for reports and benchmarks)

    def _select(self, budget: int, pool: Pool, *, probs, embeddings, seed: int) -> np.ndarray:
        n = pool.n
        lists = None
        delta = self.delta
        index = None
        if n > self.exact_max_n:
            index = PoolIndex(embeddings, normalize=self.normalize, nlist=self.nlist, nprobe=self.nprobe, seed=seed)
        if delta is None:
            k = min(self.num_classes, n)
            cent = kmeans(embeddings, k, normalize=self.normalize, niter=self.niter, seed=seed)
            _, pseudo = min_sq_dist_to(embeddings, cent, normalize=self.normalize, return_index=True,
                                       normalize_centres=False)
            rank = n - math.ceil(self.alpha * n)
            dist, lists = impure_distance(embeddings, pseudo, normalize=self.normalize, quantile_rank=rank,
                                          pool_index=index)
            delta = purity_delta(dist, self.alpha)
            if not np.isfinite(delta):  # a single pseudo-label: every ball is pure
                delta = float(np.sqrt(lists[0][:, -1].max())) + 1.0
                lists = None
        lims, ids = ball_graph(embeddings, delta, normalize=self.normalize, knn_lists=lists, pool_index=index)
        picks, covered = greedy_cover(lims, ids, pool.labeled, budget, np.random.default_rng(seed))
        self.last = {"delta": delta, "covered": covered, "n": n, "edges": int(lims[-1]),
                     "approx": None if index is None else {"nlist": index.nlist, "nprobe": index.nprobe}}
        return picks
