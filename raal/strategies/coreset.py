"""CoreSet: greedy k-center on the embeddings, with the labeled set as the initial centres (docs/algorithms.md §7)."""
from __future__ import annotations

import numpy as np

from raal.index import kcenter_greedy
from raal.strategies.base import Pool, Strategy, check_option


class CoreSet(Strategy):
    """Farthest-first traversal on Euclidean distance (Sener & Savarese 2018).

    Each pick is the unlabeled item farthest from its nearest centre (labeled items and earlier picks); the first
    index wins exact ties. With nothing labeled the first pick is the item farthest from the pool mean
    (docs/algorithms.md §7). Deterministic (`seed` is unused). The search is `raal.index.kcenter_greedy` (exact, lazy).
    """

    name = "coreset"
    requires = frozenset({"embeddings"})

    def __init__(self, block_rows: int = 256):
        check_option(self.name, "block_rows", block_rows, int(block_rows) >= 1, "must be >= 1")
        self.block_rows = int(block_rows)

    def _select(self, budget: int, pool: Pool, *, probs, embeddings, seed: int) -> np.ndarray:
        return kcenter_greedy(embeddings, budget, labeled_mask=pool.labeled, block_rows=self.block_rows)
