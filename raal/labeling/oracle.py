"""Oracles: who answers a query. `label(ids)` is the only way a label enters a run, and only for queried ids.

The simulated oracle reveals hidden truth (benchmarks, tests); the files oracle answers from the labels people
imported with `python -m raal.run label` (`raal.labeling.imports`) and says which ids are still waiting.
"""
from __future__ import annotations

import numpy as np

from raal.errors import LabelImportError, RaalError
from raal.labeling.ledger import Ledger


class WaitingForLabels(RaalError):
    """A round cannot go on before people answer its query; the run stops cleanly and says so."""

    def __init__(self, arm: str, round_: int, missing: list[int]):
        super().__init__(f"{arm}: round {round_} waits for {len(missing)} labels")
        self.arm, self.round, self.missing = arm, round_, list(missing)


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

    def answer(self, ids: np.ndarray, round_: int) -> tuple[np.ndarray, np.ndarray]:
        """(answered ids, their labels): the simulated oracle answers everything at once."""
        ids = np.asarray(ids, dtype=np.int64)
        return ids, self.label(ids)

    def accepts_partial(self, round_: int) -> bool:
        return False


class FilesOracle:
    """Answers from the run's label ledger (`oracle/labels.parquet`), filled by `raal.labeling.imports`.

    A label imported once serves every arm that asked for that id, so no item is paid for twice.
    """

    source = "files"

    def __init__(self, store, allow_partial: bool = False):
        self.ledger = Ledger(store)
        self.allow_partial = allow_partial

    def answer(self, ids: np.ndarray, round_: int) -> tuple[np.ndarray, np.ndarray]:
        known = self.ledger.load()
        ids = np.asarray(ids, dtype=np.int64)
        got = np.asarray([i for i in ids.tolist() if i in known], dtype=np.int64)
        return got, np.asarray([known[i] for i in got.tolist()], dtype=np.int64)

    def accepts_partial(self, round_: int) -> bool:
        """True when `oracle.allow_partial` is set or the import of this round said `allow_partial=true`."""
        return self.allow_partial or round_ in self.ledger.partial_rounds()
