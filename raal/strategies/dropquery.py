"""DropQuery (Gupte et al. 2024): items whose proxy prediction flips under feature dropout, spread by k-means."""
from __future__ import annotations

import numpy as np

from raal.index import chunk_rows, iter_slices, kmeans_labels, read_rows
from raal.strategies.base import Pool, Strategy, check_option
from raal.strategies.kmeans_centroid import centroid_items

CHUNK_BYTES = 32 << 20


def dropout_flips(x: np.ndarray, rows: np.ndarray, proxy, *, iterations: int, rate: float,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per row: how many of `iterations` dropout-perturbed predictions differ from the clean argmax, and the clean
    top score. Inverted dropout (kept entries scaled by 1 / (1 - rate)), as torch's nn.Dropout in training mode."""
    flips = np.zeros(len(rows), dtype=np.int64)
    top = np.zeros(len(rows), dtype=np.float64)
    scale = np.float32(1.0 / (1.0 - rate))
    for s, e in iter_slices(len(rows), chunk_rows(x.shape[1], CHUNK_BYTES)):
        h = read_rows(x, s, e, rows)
        clean = _scores(proxy, h)
        y = clean.argmax(axis=1)
        top[s:e] = clean.max(axis=1)
        for _ in range(iterations):
            keep = rng.random(h.shape, dtype=np.float32) >= rate
            flips[s:e] += _scores(proxy, h * keep * scale).argmax(axis=1) != y
    return flips, top


def _scores(proxy, block: np.ndarray) -> np.ndarray:
    out = np.asarray(proxy(block))
    if out.ndim != 2 or out.shape[0] != len(block):
        raise ValueError(f"strategy 'dropquery': proxy must map {len(block)} rows to a ({len(block)}, C) array, "
                         f"got shape {out.shape}")
    return out


class DropQuery(Strategy):
    """Candidates: unlabeled items whose proxy argmax changes in more than M/2 of M dropout-perturbed passes over
    their features (M = 3, dropout 0.75 as in the reference code); k-means with k = budget over the candidates'
    features; each pick is the candidate nearest its centroid, largest clusters first.

    `embeddings` are the features the proxy reads (the pipeline passes both). Fallback when there are fewer
    candidates than the budget (the reference code would fail): all candidates, then the other unlabeled items by
    most flips, then lowest clean top score (least confidence), then index. Deviations: faiss k-means
    (k-means++ seeding up to k = 1024, `niter` = 20 steps instead of 100) on the raw features, where the reference
    clusters its classifier's batch-normalised inputs; large budgets cluster in two levels, as kmeans_centroid
    (`raal.index.two_level_kmeans`). Deterministic for a seed. Cost: (M + 1) proxy passes over the
    unlabeled features, then k-means over the candidates (niter x candidates x budget x D).
    """

    name = "dropquery"
    requires = frozenset({"embeddings", "proxy"})

    def __init__(self, iterations: int = 3, dropout: float = 0.75, niter: int = 20):
        if iterations < 1 or not 0 < dropout < 1:
            raise ValueError(f"dropquery needs iterations >= 1 and 0 < dropout < 1, got {iterations}, {dropout}")
        check_option(self.name, "niter", niter, int(niter) >= 0, "must be >= 0 (Lloyd steps)")
        self.iterations, self.dropout, self.niter = int(iterations), float(dropout), int(niter)
        self.last: dict = {}

    def _select(self, budget: int, pool: Pool, *, probs, embeddings, seed: int) -> np.ndarray:
        unl = pool.unlabeled
        flips, top = dropout_flips(embeddings, unl, pool.proxy, iterations=self.iterations, rate=self.dropout,
                                   rng=np.random.default_rng(seed))
        cand = flips * 2 > self.iterations
        self.last = {"candidates": int(cand.sum())}
        if cand.sum() < budget:
            order = np.lexsort((unl, top, -flips))
            return unl[order[:budget]]
        rows = unl[cand]
        cent, lab, d = kmeans_labels(embeddings, budget, rows=rows, niter=self.niter, seed=seed)
        return centroid_items(embeddings, cent, rows, normalize=False, assigned=(d, lab))
