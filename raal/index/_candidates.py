"""SEALS' candidate pool (Coleman et al., AAAI 2022): the nearest neighbours of the labeled set, grown as labels arrive.

A full scan scores every unlabeled row each round: at 1.28M rows that is 1.28M model passes plus the strategy's
work over all of them. SEALS lets the strategy choose among the k nearest neighbours of the labeled rows only. The
neighbours come from one approximate index over fixed embeddings (`PoolIndex`: built once, the only pass over the
whole pool), and each update searches only the rows labeled since the last one, so the pool of candidates grows by
at most k rows per new label and no later round reads every row.
"""
from __future__ import annotations

import numpy as np

from raal.index._ann import PoolIndex


class KnnCandidates:
    """The union of the k nearest neighbours (itself excluded: k + 1 rows are searched) of every labeled row.

    `update(labeled_mask)` searches the labeled rows not searched before and returns the unlabeled members, sorted.
    `searched` counts the rows searched by the last update, `searched_total` by all of them.
    """

    def __init__(self, index: PoolIndex, k: int):
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"KnnCandidates needs k >= 1 neighbours per labeled row, got {k!r}")
        self.index, self.k = index, int(k)
        n = len(index.x)
        self.member = np.zeros(n, dtype=bool)  # in some searched row's neighbour list
        self.done = np.zeros(n, dtype=bool)  # labeled rows whose neighbours are in `member`
        self.searched = self.searched_total = 0

    def update(self, labeled_mask: np.ndarray) -> np.ndarray:
        """Add the neighbours of the newly labeled rows; the sorted int64 rows that are members and unlabeled."""
        mask = np.asarray(labeled_mask)
        if mask.dtype != np.bool_ or mask.shape != self.member.shape:
            raise ValueError(f"labeled_mask must be a bool array of the index's {len(self.member)} rows, "
                             f"got {mask.dtype} {mask.shape}")
        new = np.flatnonzero(mask & ~self.done)
        if len(new):
            _, ids = self.index.knn(self.k + 1, query_rows=new)
            self.member[ids[ids >= 0]] = True
            self.done[new] = True
        self.searched = len(new)
        self.searched_total += len(new)
        return np.flatnonzero(self.member & ~mask).astype(np.int64)
