"""The run's label ledger: every label people gave, written atomically, read by the files oracle and the export."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from raal import layout
from raal.errors import StoreError, short
from raal.store import RunStore

LEDGER, PARTIAL, CLASSES = layout.LEDGER, layout.PARTIAL, layout.CLASSES
LEDGER_SCHEMA = pa.schema([("id", pa.int64()), ("label", pa.int64()), ("round", pa.int64()), ("file", pa.string()),
                           ("sha256", pa.string())])


class Ledger:
    """Every label people gave this run: id -> class index, with the round and the file it came in."""

    def __init__(self, store: RunStore):
        self.store = store

    def table(self) -> pa.Table:
        if not self.store.exists(LEDGER):
            return LEDGER_SCHEMA.empty_table()
        table = self.store.read_table(LEDGER)
        if table.schema.remove_metadata() != LEDGER_SCHEMA or table.column("id").null_count:
            raise StoreError(f"{self.store.path(LEDGER)}: the label ledger is corrupt: its columns are "
                             f"{short(str(table.schema).splitlines(), 200)}, not {LEDGER_SCHEMA.names} (int64 ids)")
        ids = np.asarray(table.column("id").to_numpy(zero_copy_only=False), dtype=np.int64)
        uniq, counts = np.unique(ids, return_counts=True)
        if len(uniq) != len(ids):
            dup = uniq[counts > 1]
            raise StoreError(f"{self.store.path(LEDGER)}: the label ledger is corrupt: id {int(dup[0])} appears "
                             f"{int(counts[counts > 1][0])} times ({len(dup)} duplicated ids); every id is labeled "
                             "once")
        return table

    def load(self) -> dict[int, int]:
        t = self.table()
        return dict(zip(t.column("id").to_pylist(), t.column("label").to_pylist()))

    def append(self, round_: int, ids: list[int], labels: list[int], file: str, digest: str) -> None:
        new = pa.table({"id": ids, "label": labels, "round": [round_] * len(ids), "file": [file] * len(ids),
                        "sha256": [digest] * len(ids)}, schema=LEDGER_SCHEMA)
        self.store.write_table(LEDGER, pa.concat_tables([self.table(), new]))

    def partial_rounds(self) -> set[int]:
        rounds = self.store.read_json(PARTIAL) if self.store.exists(PARTIAL) else []
        if not isinstance(rounds, list) or not all(type(r) is int for r in rounds):
            raise StoreError(f"{self.store.path(PARTIAL)}: corrupt: expected a list of round numbers")
        return set(rounds)

    def mark_partial(self, round_: int) -> None:
        self.store.write_json(PARTIAL, sorted(self.partial_rounds() | {round_}))
