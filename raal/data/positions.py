"""Pool positions of ids. A pool may list its ids in any order (a shuffled manifest), so the lookup is a sorted
copy plus the permutation back, built once per id array and shared by every lookup on it."""
from __future__ import annotations

import numpy as np


class IdIndex:
    """`positions(ids)`: where each id sits in `pool_ids`; an id that is not there is a ValueError naming it."""

    def __init__(self, pool_ids: np.ndarray):
        self.pool_ids = pool_ids
        self._order = np.argsort(pool_ids, kind="stable")
        self._sorted = np.asarray(pool_ids)[self._order]

    def positions(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        n = len(self._sorted)
        j = np.searchsorted(self._sorted, ids).clip(0, max(n - 1, 0))
        bad = self._sorted[j] != ids if n else np.ones(ids.shape, bool)
        if np.any(bad):
            raise ValueError(f"ids not in the pool (e.g. id {int(ids[np.argmax(bad)])}; {int(bad.sum())} unknown)")
        return self._order[j]
