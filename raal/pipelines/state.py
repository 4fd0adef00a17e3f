"""The durable state of one arm: labeled set, every query, every label, and the rounds table.

Write order inside a round makes a kill at any point safe:
1. `selections/round_K.parquet` (what was asked) is written once; a resumed round reuses it instead of re-selecting;
2. `labels.parquet` gains the answers (id, label, round, source);
3. the round's row is appended to `rounds.parquet` — the commit point. A round is complete iff its row exists.
Labels of a round whose row never landed stay valid (they answer that round's saved query): the resumed round
asks the oracle only for the ids not yet answered, so a label is neither lost nor paid for twice.
Each file is replaced atomically (RunStore), so a reader sees the state before or after a step, never between.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from raal import layout
from raal.errors import LabelImportError, StoreError
from raal.layout import ROUND_DEFAULTS
from raal.store import RunStore

LABEL_SCHEMA = pa.schema([("id", pa.int64()), ("label", pa.int64()), ("round", pa.int64()), ("source", pa.string())])
ROUND_SCHEMA = layout.round_schema()
ROUND_COLUMNS: dict[str, pa.DataType] = {f.name: f.type for f in ROUND_SCHEMA}
QUERY_SCHEMA = pa.schema([("id", pa.int64()), ("score", pa.float64()), ("prediction", pa.int64())])


@dataclass
class ArmState:
    """In-memory view of an arm's store; every mutating call persists before it returns."""

    store: RunStore
    label_ids: list[int] = field(default_factory=list)
    label_values: list[int] = field(default_factory=list)
    label_rounds: list[int] = field(default_factory=list)
    label_sources: list[str] = field(default_factory=list)
    rounds: list[dict] = field(default_factory=list)

    @classmethod
    def open(cls, store: RunStore) -> ArmState:
        st = cls(store)
        if store.exists(layout.LABELS):
            t = store.read_table(layout.LABELS)
            st.label_ids = t.column("id").to_pylist()
            st.label_values = t.column("label").to_pylist()
            st.label_rounds = t.column("round").to_pylist()
            st.label_sources = t.column("source").to_pylist()
            if len(set(st.label_ids)) != len(st.label_ids):
                raise StoreError(f"{store.path(layout.LABELS)}: duplicate ids")
        if store.exists(layout.ROUNDS):
            st.rounds = [{**ROUND_DEFAULTS, **row} for row in store.read_table(layout.ROUNDS).to_pylist()]
        return st

    # -- reads ------------------------------------------------------------------------------------------------------
    @property
    def completed_rounds(self) -> int:
        return len(self.rounds)

    @property
    def labeled_ids(self) -> np.ndarray:
        return np.asarray(self.label_ids, dtype=np.int64)

    @property
    def labels(self) -> np.ndarray:
        return np.asarray(self.label_values, dtype=np.int64)

    def saved_query(self, r: int) -> np.ndarray | None:
        table = self.saved_query_table(r)
        return None if table is None else table.column("id").to_numpy().astype(np.int64)

    def labels_for_round(self, r: int) -> dict[int, int]:
        return {i: v for i, v, rr in zip(self.label_ids, self.label_values, self.label_rounds) if rr == r}

    # -- writes -----------------------------------------------------------------------------------------------------
    def save_query(self, r: int, ids: np.ndarray, score: np.ndarray | None = None,
                   prediction: np.ndarray | None = None) -> None:
        """The round's query with, where the strategy had model outputs, the model's class and the strategy's
        score per item (-1 / NaN otherwise)."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(np.unique(ids)) != len(ids):
            raise StoreError(f"round {r}: the query has duplicate ids")
        clash = set(ids.tolist()) & set(self.label_ids)
        if clash:
            raise StoreError(f"round {r}: the query re-asks labeled ids {sorted(clash)[:10]}")
        sc = np.full(len(ids), np.nan) if score is None else np.asarray(score, dtype=np.float64)
        pred = np.full(len(ids), -1, np.int64) if prediction is None else np.asarray(prediction, dtype=np.int64)
        self.store.write_table(layout.selection(r),
                               pa.table({"id": ids, "score": sc, "prediction": pred}, schema=QUERY_SCHEMA))

    def saved_query_table(self, r: int) -> pa.Table | None:
        for rel in (layout.selection(r), layout.old_selection(r)):  # the old name: a run from before the rename
            if self.store.exists(rel):
                return self.store.read_table(rel)
        return None

    def add_labels(self, r: int, ids: np.ndarray, labels: np.ndarray, source: str) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        labels = np.asarray(labels, dtype=np.int64)
        if ids.shape != labels.shape:
            raise LabelImportError(f"{len(ids)} ids but {len(labels)} labels")
        query = self.saved_query(r)
        if query is None:
            raise LabelImportError(f"round {r} has no saved query; labels can only answer a query")
        asked = set(query.tolist())
        stray = [int(i) for i in ids if int(i) not in asked]
        if stray:
            raise LabelImportError(f"ids {stray[:10]} were never queried in round {r}")
        have = set(self.label_ids)
        again = [int(i) for i in ids if int(i) in have]
        if again:
            raise LabelImportError(f"ids {again[:10]} are already labeled")
        self.label_ids += ids.tolist()
        self.label_values += labels.tolist()
        self.label_rounds += [r] * len(ids)
        self.label_sources += [source] * len(ids)
        self.store.write_table(layout.LABELS, pa.table(
            {"id": self.label_ids, "label": self.label_values, "round": self.label_rounds,
             "source": self.label_sources}, schema=LABEL_SCHEMA))

    def commit_round(self, row: dict) -> None:
        full = dict(ROUND_DEFAULTS)
        full.update(row)
        missing = set(ROUND_COLUMNS) - set(full)
        if missing:
            raise StoreError(f"round row lacks {sorted(missing)}")
        if full["round"] != self.completed_rounds:
            raise StoreError(f"committing round {full['round']} but {self.completed_rounds} rounds are complete")
        self.rounds.append({k: full[k] for k in ROUND_COLUMNS})
        cols = {k: [r[k] for r in self.rounds] for k in ROUND_COLUMNS}
        self.store.write_table(layout.ROUNDS, pa.table(cols, schema=ROUND_SCHEMA))
