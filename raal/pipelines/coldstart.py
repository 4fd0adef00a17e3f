"""Round 0 without a model: the initial batch chosen on the pre-computed v0 features (`al.initial_strategy`).

Every arm that starts the same way gets the *same* batch: the first arm to need it computes it with the round-0
seed and writes it to the experiment's store (`initial/`), every other arm (and a resumed run) reads it back. So
arms stay comparable from their first label, exactly as when round 0 was one shared uniformly random draw, and a
strategy whose result could differ between calls (threaded k-means) is still run once.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from raal import layout, strategies

INITIAL_DIR = layout.INITIAL


def initial_batch(store, name: str, size: int, *, labeled_mask: np.ndarray, seed: int, features,
                  num_classes: int) -> np.ndarray:
    """Pool positions of the round-0 batch of strategy `name` (random, or one that needs only embeddings),
    computed once per experiment and kept in `store` (the experiment's RunStore)."""
    rel = layout.initial_batch(name, size, seed)
    if store.exists(rel):
        return store.read_table(rel).column("position").to_numpy().astype(np.int64)
    strategy = strategies.for_run(name, num_classes=num_classes)  # probcover's purity rule needs the class count
    if not strategy.requires <= {"embeddings"}:
        raise ValueError(f"al.initial_strategy={name!r} needs {sorted(strategy.requires)}; round 0 has only the "
                         "pre-computed features")
    inputs = {"embeddings": features} if "embeddings" in strategy.requires else {}
    pos = np.sort(np.asarray(strategy.select(size, labeled_mask=labeled_mask, seed=seed, **inputs), dtype=np.int64))
    store.write_table(rel, pa.table({"position": pos}))
    return pos
