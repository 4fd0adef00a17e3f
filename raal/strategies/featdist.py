"""PEAL's feature-distance strategy: greedy k-center on L2-normalised embeddings (docs/algorithms.md §9)."""
from __future__ import annotations

import numpy as np

from raal.index import kcenter_greedy
from raal.strategies.base import Pool, Strategy, check_option


class FeatDist(Strategy):
    """Farthest-first traversal from the labeled set on L2-normalised embeddings.

    PEAL publishes no rule for "Featdist"; raal adopts k-center on cosine geometry (on the unit sphere the Euclidean
    distance is sqrt(2 - 2 cos)), searched through faiss. The rows are normalised chunk by chunk, never copied whole.
    Deterministic: `seed` is not used.
    """

    name = "featdist"
    requires = frozenset({"embeddings"})

    def __init__(self, block_rows: int = 256):
        check_option(self.name, "block_rows", block_rows, int(block_rows) >= 1, "must be >= 1")
        self.block_rows = int(block_rows)

    def _select(self, budget: int, pool: Pool, *, probs, embeddings, seed: int) -> np.ndarray:
        return kcenter_greedy(embeddings, budget, labeled_mask=pool.labeled, normalize=True,
                              block_rows=self.block_rows)
