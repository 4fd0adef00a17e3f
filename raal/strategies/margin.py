"""Margin sampling: query the items whose top-2 softmax probabilities are closest (docs/algorithms.md §8)."""
from __future__ import annotations

import numpy as np

from raal.strategies.scored import ScoreStrategy


def margins(block: np.ndarray) -> np.ndarray:
    """p(1) - p(2) per row: the two largest entries found by a partial sort (no full sort of C columns)."""
    c = block.shape[1]
    top2 = np.partition(block, c - 2, axis=1)[:, c - 2:].astype(np.float64)
    return np.abs(top2[:, 1] - top2[:, 0])


class Margin(ScoreStrategy):
    """Ascending p(1) - p(2) over the unlabeled items; ties go to the lower index (`balanced`: see ScoreStrategy)."""

    name = "margin"
    min_classes = 2
    item_score = staticmethod(margins)
