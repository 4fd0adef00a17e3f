"""Least-confidence sampling: query the items whose most likely class is least probable (docs/algorithms.md §8)."""
from __future__ import annotations

import numpy as np

from raal.strategies.scored import ScoreStrategy


def max_prob(block: np.ndarray) -> np.ndarray:
    return block.max(axis=1).astype(np.float64)


class LeastConfidence(ScoreStrategy):
    """Ascending max_c p_c over the unlabeled items; ties go to the lower index (`balanced`: see ScoreStrategy)."""

    name = "confidence"
    item_score = staticmethod(max_prob)
