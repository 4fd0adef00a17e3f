"""Uniform random sampling: the baseline every other strategy is measured against."""
from __future__ import annotations

import numpy as np

from raal.strategies.base import Pool, Strategy


class RandomSampling(Strategy):
    """`budget` unlabeled items drawn uniformly without replacement (numpy Generator seeded by `seed`)."""

    name = "random"
    requires = frozenset()

    def _select(self, budget: int, pool: Pool, *, probs, embeddings, seed: int) -> np.ndarray:
        return np.random.default_rng(seed).choice(pool.unlabeled, size=budget, replace=False)
