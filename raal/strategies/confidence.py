"""Least-confidence sampling: query the items whose most likely class is least probable (algorithms.md §8)."""
from __future__ import annotations

import numpy as np

from raal.strategies.base import Pool, Strategy, row_scores, top_by_score


def max_prob(block: np.ndarray) -> np.ndarray:
    return block.max(axis=1).astype(np.float64)


class LeastConfidence(Strategy):
    """Ascending max_c p_c over the unlabeled items; ties go to the lower index."""

    name = "confidence"
    requires = frozenset({"probs"})

    def _select(self, budget: int, pool: Pool, *, probs, embeddings, seed: int) -> np.ndarray:
        return top_by_score(row_scores(probs, pool.unlabeled, max_prob), pool.unlabeled, budget, largest=False)
