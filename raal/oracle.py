"""Oracles: who answers a query. The simulated one reveals hidden truth only for ids the pipeline asked about.

The truth table lives inside the oracle object alone; the pool, the strategies and the pipelines never hold it,
so a label can only enter the run through `label(ids)`, and only for ids that were queried.
"""
from __future__ import annotations

import numpy as np

from raal.errors import LabelImportError


class SimulatedOracle:
    """Answers queries from ground truth it keeps private; remembers every id it was asked about."""

    source = "simulated"

    def __init__(self, truth: dict[int, int]):
        self.__truth = dict(truth)
        self._asked: set[int] = set()

    def __len__(self) -> int:
        return len(self.__truth)

    @property
    def asked(self) -> frozenset[int]:
        return frozenset(self._asked)

    def label(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        missing = [int(i) for i in ids if int(i) not in self.__truth]
        if missing:
            raise LabelImportError(f"the oracle has no label for ids {missing[:10]} (not in the pool)")
        self._asked.update(int(i) for i in ids)
        return np.asarray([self.__truth[int(i)] for i in ids], dtype=np.int64)
