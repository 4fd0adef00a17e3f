"""ActiveFT(al), ASVP's multi-round ActiveFT: the labeled items are fixed centroids (docs/algorithms.md §5.3)."""
from __future__ import annotations

import numpy as np

from raal.strategies.activeft import ActiveFT, ActiveFTConfig, map_to_items, optimise_centroids
from raal.strategies.base import Pool, Strategy, check_option


def hybrid_selection(x: np.ndarray, labeled_mask: np.ndarray, budget: int, cfg: ActiveFTConfig,
                     seed: int) -> np.ndarray:
    """The ordered list of ASVP's train.py: the labeled items (ascending) followed by `budget` new items.

    Centroids are [normalised features of the labeled items, fixed] + [`budget` new ones seeded on random unlabeled
    items, optimised]; the loss of §5.2 runs over their union on minibatches of the whole pool. In the mapping the
    labeled centroids come first and map to themselves: raal takes them as given instead of searching, so the
    prefix is exactly the labeled set even when exact duplicate features exist. The new centroids then map, in order,
    to their nearest unlabeled item not already taken.
    """
    rng = np.random.default_rng(seed)
    labeled = np.flatnonzero(labeled_mask)
    init = rng.choice(np.flatnonzero(~labeled_mask), size=budget, replace=False)
    theta, _ = optimise_centroids(x, init, cfg, rng, fixed_rows=labeled)
    return np.concatenate([labeled, map_to_items(x, theta, labeled_mask)])


class ActiveFTAL(Strategy):
    """Multi-round ActiveFT: returns only the new items (the part after the labeled prefix), in centroid order.

    Defaults from ASVP's code: 100 steps on random minibatches of 20,000 items (the whole pool when smaller), Adam
    lr 1e-3, tau 0.07, lambda 1. With nothing labeled it is plain `activeft` (300 full-batch steps by default).
    """

    name = "activeft_al"
    requires = frozenset({"embeddings"})
    chooses_first_batch = True

    def __init__(self, iterations: int = 100, batch: int = 20_000, lr: float = 1e-3, tau: float = 0.07,
                 balance: float = 1.0, first_round: ActiveFT | None = None):
        self.cfg = ActiveFTConfig(iterations=int(iterations), batch=int(batch), lr=lr, tau=tau, balance=balance)
        check_option(self.name, "first_round", first_round, first_round is None or isinstance(first_round, ActiveFT),
                     "must be an ActiveFT strategy (or None: ActiveFT with this lr, tau and balance)")
        self.first_round = first_round or ActiveFT(lr=lr, tau=tau, balance=balance)

    def _select(self, budget: int, pool: Pool, *, probs, embeddings, seed: int) -> np.ndarray:
        if len(pool.unlabeled) == pool.n:
            return self.first_round._select(budget, pool, probs=probs, embeddings=embeddings, seed=seed)
        n_lab = pool.n - len(pool.unlabeled)
        return hybrid_selection(embeddings, pool.labeled, budget, self.cfg, seed)[n_lab:]
