"""The durable state of one arm: labeled set, every query, every label, and the rounds table.

Write order inside a round makes a kill at any point safe:
1. `queries/round_K.parquet` (what was asked) is written once; a resumed round reuses it instead of re-selecting;
2. `labels.parquet` gains the answers (id, label, round, source);
3. the round's row is appended to `rounds.parquet` — the commit point. A round is complete iff its row exists.
Labels of a round whose row never landed stay valid (they answer that round's saved query): the resumed round
asks the oracle only for the ids not yet answered, so a label is neither lost nor paid for twice.
Each file is replaced atomically (RunStore), so a reader sees the state before or after a step, never between.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from raal.errors import LabelImportError, StoreError
from raal.store import RunStore

ROUND_COLUMNS: dict[str, pa.DataType] = {
    "round": pa.int64(), "n_labeled": pa.int64(), "n_new": pa.int64(), "accuracy": pa.float64(),
    "eval_method": pa.string(), "random_only": pa.bool_(), "features_version": pa.int64(),
    "ped_steps": pa.int64(), "logme_ped": pa.float64(), "score_diff": pa.float64(), "refreshed": pa.bool_(),
    "train_method": pa.string(), "t_pre": pa.float64(), "t_tr_proxy": pa.float64(), "t_f_proxy": pa.float64(),
    "t_tr_full": pa.float64(), "t_f_full": pa.float64(), "t_select": pa.float64(), "t_eval": pa.float64(),
    "t_round": pa.float64(), "device": pa.string(), "model_accuracy": pa.float64(), "model_eval": pa.string(),
    "probe_accuracy": pa.float64(), "trigger_signal": pa.float64(), "kappa": pa.float64(),
    "gain_per_100": pa.float64(), "stop_advice": pa.string(), "stop_reason": pa.string(),
}
ROUND_DEFAULTS = {"accuracy": math.nan, "eval_method": "none", "random_only": False, "features_version": 0,
                  "ped_steps": -1, "logme_ped": math.nan, "score_diff": math.nan, "refreshed": False,
                  "train_method": "", "t_pre": 0.0, "t_tr_proxy": 0.0, "t_f_proxy": 0.0, "t_tr_full": 0.0,
                  "t_f_full": 0.0, "t_select": 0.0, "t_eval": 0.0, "t_round": 0.0, "device": "cpu",
                  "model_accuracy": math.nan, "model_eval": "none", "probe_accuracy": math.nan,
                  "trigger_signal": math.nan, "kappa": math.nan, "gain_per_100": math.nan, "stop_advice": "",
                  "stop_reason": ""}
LABEL_SCHEMA = pa.schema([("id", pa.int64()), ("label", pa.int64()), ("round", pa.int64()), ("source", pa.string())])
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
        if store.exists("labels.parquet"):
            t = store.read_table("labels.parquet")
            st.label_ids = t.column("id").to_pylist()
            st.label_values = t.column("label").to_pylist()
            st.label_rounds = t.column("round").to_pylist()
            st.label_sources = t.column("source").to_pylist()
            if len(set(st.label_ids)) != len(st.label_ids):
                raise StoreError(f"{store.path('labels.parquet')}: duplicate ids")
        if store.exists("rounds.parquet"):
            st.rounds = [{**ROUND_DEFAULTS, **row} for row in store.read_table("rounds.parquet").to_pylist()]
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
        self.store.write_table(f"queries/round_{r}.parquet",
                               pa.table({"id": ids, "score": sc, "prediction": pred}, schema=QUERY_SCHEMA))

    def saved_query_table(self, r: int) -> pa.Table | None:
        rel = f"queries/round_{r}.parquet"
        return self.store.read_table(rel) if self.store.exists(rel) else None

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
        self.store.write_table("labels.parquet", pa.table(
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
        self.store.write_table("rounds.parquet", pa.table(cols, schema=pa.schema(list(ROUND_COLUMNS.items()))))
