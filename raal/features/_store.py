"""The versioned feature store: the embeddings (and logits) of a run's pool and test split, one set per feature
version, at `features/v{version}/{split}/` of the run store.

Each set is a checksummed shard set (`_shards`: resumable passes, verified shards, read-only memmaps); this
module names the versions and splits and gives readers row views of them (`FeatureSet`: `.features`, `.logits`,
`.ids`, `take`, `positions`).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from raal import layout
from raal.features._shards import ShardedSet
from raal.store import RunStore

SPLITS = ("pool", "test")


# ---------------------------------------------------------------------------------------------------------------
class ArraySet:
    """Row-aligned read-only arrays (memmaps or in-memory) with their int64 ids and the manifest that made them."""

    def __init__(self, ids: np.ndarray, arrays: dict[str, np.ndarray], manifest: dict):
        self.ids = ids
        self.arrays = arrays
        self.manifest = manifest
        self._order: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.arrays:
            raise KeyError(f"no array {name!r}; have {sorted(self.arrays)}")
        return self.arrays[name]

    def __contains__(self, name: str) -> bool:
        return name in self.arrays

    def take(self, positions) -> dict[str, np.ndarray]:
        """Rows at `positions` of every array (and `ids`) as fresh in-memory arrays; reads in sorted order."""
        pos = np.asarray(positions, dtype=np.int64).reshape(-1)
        n = len(self)
        if pos.size and (pos.min() < -n or pos.max() >= n):
            raise ValueError(f"take: positions must lie in [0, {n}), got range [{pos.min()}, {pos.max()}]")
        pos = np.where(pos < 0, pos + n, pos)
        order = np.argsort(pos, kind="stable")
        out = {"ids": np.asarray(self.ids[pos])}
        for name, arr in self.arrays.items():
            rows = np.asarray(arr[pos[order]], dtype=arr.dtype)
            res = np.empty_like(rows)
            res[order] = rows
            out[name] = res
        return out

    def positions(self, ids) -> np.ndarray:
        """Positions of `ids` in this set (ValueError naming the first unknown id)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if self._order is None:
            self._order = np.argsort(self.ids, kind="stable")
        sorted_ids = self.ids[self._order]
        j = np.searchsorted(sorted_ids, ids).clip(0, max(len(sorted_ids) - 1, 0))
        bad = sorted_ids[j] != ids if len(sorted_ids) else np.ones(ids.shape, bool)
        if bad.any():
            raise ValueError(f"id {int(ids[np.argmax(bad)])} is not in this set ({int(bad.sum())} unknown ids)")
        return self._order[j]


class FeatureSet(ArraySet):
    """One feature version of one split: `.features` (N×D) and `.logits` (N×C, or None), aligned with `.ids`."""

    @property
    def version(self) -> int:
        return int(self.manifest["version"])

    @property
    def split(self) -> str:
        return str(self.manifest["split"])

    @property
    def features(self) -> np.ndarray:
        return self.arrays["features"]

    @property
    def logits(self) -> np.ndarray | None:
        return self.arrays.get("logits")

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def __repr__(self) -> str:
        lg = "" if self.logits is None else f", logits {self.logits.shape[1]}"
        return f"FeatureSet(v{self.version}/{self.split}: {len(self)}×{self.dim}{lg})"



# ---------------------------------------------------------------------------------------------------------------
class FeatureStore:
    """Versioned feature sets of a run: `features/v{version}/{split}/`.

    v0 comes from the pre-trained backbone, v1, v2… from each ASVP refresh; readers ask for the version they want.
    """

    def __init__(self, store: RunStore, *, cache_dir: str | os.PathLike | None = None):
        if not isinstance(store, RunStore):
            raise ValueError(f"FeatureStore needs a RunStore, got {type(store).__name__}")
        self.store = store
        self.cache_dir = Path(cache_dir) if cache_dir else None

    def __repr__(self) -> str:
        return f"FeatureStore({self.store.root!r})"

    @staticmethod
    def _check(version: int, split: str) -> None:
        if not isinstance(version, (int, np.integer)) or isinstance(version, bool) or version < 0:
            raise ValueError(f"feature version must be an int >= 0, got {version!r}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")

    def set_for(self, version: int, split: str) -> ShardedSet:
        self._check(version, split)
        return ShardedSet(self.store, layout.feature_set(version, split), self.cache_dir)

    def has(self, version: int, split: str) -> bool:
        return self.set_for(version, split).is_complete()

    def versions(self, split: str | None = None) -> list[int]:
        """Versions with a complete set (for `split`, or for any split), ascending."""
        out = []
        for name in self.store.listdir(layout.FEATURES):
            m = re.fullmatch(r"v(\d+)", name)
            if not m:
                continue
            v = int(m.group(1))
            if any(self.has(v, s) for s in ((split,) if split else SPLITS)):
                out.append(v)
        return sorted(out)

    def latest(self, split: str = "pool") -> int | None:
        vs = self.versions(split)
        return vs[-1] if vs else None

    def open(self, version: int, split: str, *, verify: bool | str = "auto") -> FeatureSet:
        target = self.set_for(version, split)
        ids, arrays, manifest = target.open(verify)
        return FeatureSet(ids, arrays, manifest)
