"""Average-linkage agglomerative clustering (HAC) of weighted points, for clustering k-means centroids.

HAC on N items needs the N x N distances (1.28M items: 13 TB). raal runs it on k-means centroids instead, each
weighted by its cell's size: the linkage of two groups is then the size-weighted mean distance between their
centroids, i.e. average linkage with every item moved to its centroid. The nearest-neighbour chain (Murtagh 1983)
finds the textbook loop's merges for any reducible linkage (average is one) in O(k^2) time and one k x k matrix.
"""
from __future__ import annotations

import numpy as np

from raal.index._common import blas_threads


def average_linkage(points: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """The merges of average-linkage HAC on Euclidean distances: (k - 1, 3) float64 rows (a, b, height), lowest first.

    a < b are one point of each merged side (a cluster is named by any of its points, see `cut_tree`); `weights`
    (default 1 each, all > 0) count the items a point stands for, so d(A u B, C) = (w_A d(A, C) + w_B d(B, C)) /
    (w_A + w_B). Equal heights keep the order the chain found them in, which puts every merge after its parts'.
    """
    p = np.asarray(points, dtype=np.float64)
    k = len(p)
    w = np.ones(k) if weights is None else np.asarray(weights, dtype=np.float64).copy()
    if p.ndim != 2 or w.shape != (k,) or not (w > 0).all():
        raise ValueError(f"average_linkage needs (k, D) points and k weights > 0, got {p.shape} and {w.shape}")
    sq = np.einsum("ij,ij->i", p, p)
    with blas_threads(1):
        d = p @ p.T
    d *= -2.0
    d += sq[:, None]
    d += sq[None, :]
    np.maximum(d, 0.0, out=d)
    np.sqrt(d, out=d)
    np.fill_diagonal(d, np.inf)
    alive = np.ones(k, dtype=bool)
    merges = np.empty((max(k - 1, 0), 3))
    chain: list[int] = []
    for m in range(k - 1):
        while True:
            if not chain:
                chain.append(int(np.argmax(alive)))
            a = chain[-1]
            b = int(np.argmin(d[a]))
            if len(chain) > 1 and d[a, chain[-2]] <= d[a, b]:
                b = chain[-2]  # ties go back down the chain, so it always ends in a reciprocal pair
            if len(chain) > 1 and b == chain[-2]:
                break
            chain.append(b)
        chain.pop()
        chain.pop()
        s, t = min(a, b), max(a, b)
        merges[m] = s, t, d[a, b]
        row = (w[a] * d[a] + w[b] * d[b]) / (w[a] + w[b])  # Lance-Williams for (weighted) average linkage
        d[s, :] = row
        d[:, s] = row
        d[t, :] = np.inf
        d[:, t] = np.inf
        d[s, s] = np.inf
        w[s] += w[t]
        alive[t] = False
    return merges[np.argsort(merges[:, 2], kind="stable")]


def cut_tree(merges: np.ndarray, k: int, n_clusters: int) -> np.ndarray:
    """Cluster id (int64) of each of the k points when the dendrogram `merges` (from `average_linkage`) is cut into
    `n_clusters`: the k - n_clusters lowest merges are applied. Ids are numbered by each cluster's lowest point."""
    if not 1 <= n_clusters <= k or len(merges) != k - 1:
        raise ValueError(f"cut_tree: {len(merges)} merges of {k} points cannot be cut into {n_clusters} clusters")
    parent = np.arange(k)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    for a, b, _ in merges[:k - n_clusters]:
        ra, rb = root(int(a)), root(int(b))
        parent[max(ra, rb)] = min(ra, rb)  # a cluster's root stays its lowest point
    roots = np.fromiter((root(i) for i in range(k)), dtype=np.int64, count=k)
    return np.unique(roots, return_inverse=True)[1].astype(np.int64)
