"""Entropy sampling: query the items with the most uncertain softmax (docs/algorithms.md §8)."""
from __future__ import annotations

import numpy as np

from raal.strategies.scored import ScoreStrategy

P_MIN = 1e-12  # p is clamped here inside the log, so 0 * ln 0 counts as 0 instead of NaN (ASVP's code has no clamp)


def entropies(block: np.ndarray) -> np.ndarray:
    p = block.astype(np.float64)
    logp = np.maximum(p, P_MIN)
    np.log(logp, out=logp)
    return -np.einsum("ij,ij->i", p, logp)


class Entropy(ScoreStrategy):
    """Descending -sum_c p_c ln max(p_c, 1e-12) over the unlabeled items; ties go to the lower index
    (`balanced`: see ScoreStrategy)."""

    name = "entropy"
    item_score = staticmethod(entropies)
    largest = True
