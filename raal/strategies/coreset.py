"""CoreSet: greedy k-center on the embeddings, with the labeled set as the initial centres (docs/algorithms.md §7)."""
from __future__ import annotations

import numpy as np

from raal.index import kcenter_greedy, projected_width, random_projection
from raal.strategies.base import Pool, Strategy, check_option


class CoreSet(Strategy):
    """Farthest-first traversal on Euclidean distance (Sener & Savarese 2018).

    Each pick is the unlabeled item farthest from its nearest centre (labeled items and earlier picks); the first
    index wins exact ties. With nothing labeled the first pick is the item farthest from the pool mean
    (docs/algorithms.md §7). Deterministic (`seed` is unused). The search is `raal.index.kcenter_greedy` (exact, lazy).

    `project_dim` (0 = off, the default): with 0 < project_dim < D, greedy runs on the embeddings times a fixed
    Gaussian random projection to that many dimensions (`raal.index.random_projection`, the same matrix in every
    round and process): D / project_dim times less work per distance and an in-memory N x project_dim copy instead
    of re-reading the input. Distances are kept within about sqrt(2 / project_dim) relative error each, so the
    k-center objective in the original space stays close to exact greedy's (bench/scale_million.py measures it);
    exactness is given up, determinism is not.
    """

    name = "coreset"
    requires = frozenset({"embeddings"})

    def __init__(self, block_rows: int = 256, project_dim: int = 0):
        check_option(self.name, "block_rows", block_rows, int(block_rows) >= 1, "must be >= 1")
        check_option(self.name, "project_dim", project_dim,
                     isinstance(project_dim, (int, np.integer)) and not isinstance(project_dim, bool)
                     and project_dim >= 0, "must be an integer >= 0 (0 = the exact search)")
        self.block_rows, self.project_dim = int(block_rows), int(project_dim)

    def _select(self, budget: int, pool: Pool, *, probs, embeddings, seed: int) -> np.ndarray:
        x = embeddings
        if projected_width(self.project_dim, x.shape[1]) < x.shape[1]:
            x = random_projection(x, self.project_dim)
        return kcenter_greedy(x, budget, labeled_mask=pool.labeled, block_rows=self.block_rows)
