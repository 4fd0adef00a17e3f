"""A generic checksummed shard store: row-aligned float32 arrays written in shards inside a run store, read back
as one memory-mapped file per array. Feature sets (`raal.features`) are its user.

Layout of one set (e.g. `features/v{version}/{split}/`):

    plan.json            what the pass computes: rows, shard_rows, array dims, ids checksum, and the caller's meta
    ids.npy              int64 ids in the caller's row order (np.save, no pickle)
    shards/000003.json   the commit record of shard 3: row range and the sha256 of each of its files
    shards/000003.features.f32, .logits.f32, .ids.i64   raw C-order bytes of rows [start, stop)
    manifest.json        plan + every shard record + `complete: true`, written once every shard is in
    features.f32 …       the consolidated copy (local stores only; remote stores keep it in a local cache folder)

Shard k always holds rows [k·shard_rows, (k+1)·shard_rows), so a killed pass resumes by computing exactly the
shards without a valid record: each shard is written once (files first, its record last, every write atomic).
Every shard file is checked against its sha256 before it is trusted, so a corrupt or truncated shard is recomputed
by the next pass, never read.

Readers get `np.memmap`s (mode "r") of one consolidated raw float32 file per array, built from the verified shards:
a 1.28M × 2048 pool (10.5 GB) is paged in by the OS, never held in one process's RAM. The shards stay as the
durable, checksummed record (the consolidated copy doubles the disk use; it can be rebuilt from them at any time).
The copy carries a stamp (size, mtime, shard checksums); on `open` it is re-hashed against the shard checksums
when it is small (`verify="auto"`, ≤ 256 MiB per array) or when asked (`verify=True`), and rebuilt if it fails.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from raal import faults, layout
from raal.errors import StoreError
from raal.store import RunStore, atomic_local_file

log = logging.getLogger("raal.shards")  # the name users see in raal.log, as before the package

FORMAT = 1
DTYPE = np.float32
VERIFY_AUTO_BYTES = 256 << 20  # re-hash consolidated copies up to this size on every open
_HASH_CHUNK = 16 << 20
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def sha256(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def ids_digest(ids: np.ndarray) -> str:
    return sha256(np.ascontiguousarray(ids, dtype=np.int64).tobytes())


def default_cache_dir() -> Path:
    """Where remote stores' sets are consolidated for memory-mapping: $RAAL_CACHE_DIR or ~/.cache/raal."""
    return Path(os.environ.get("RAAL_CACHE_DIR") or Path.home() / ".cache" / "raal").expanduser()


# ---------------------------------------------------------------------------------------------------------------
class ShardedSet:
    """One directory of sharded, checksummed, row-aligned float32 arrays in a run store (see the module doc)."""

    def __init__(self, store: RunStore, rel: str, cache_root: Path | None = None):
        self.store = store
        self.rel = rel.strip("/")
        self.cache_root = Path(cache_root) if cache_root else default_cache_dir()
        self.plan: dict[str, Any] = {}  # set by begin()
        self.ids: np.ndarray = np.empty(0, np.int64)
        self.records: dict[int, dict] = {}

    def __repr__(self) -> str:
        return f"ShardedSet({self.store.path(self.rel)!r})"

    def p(self, name: str) -> str:
        return f"{self.rel}/{name}"

    @staticmethod
    def shard_file(k: int, name: str) -> str:
        return layout.shard_file(k, name)

    # -- status ----------------------------------------------------------------------------------------------
    def manifest(self) -> dict | None:
        if not self.store.exists(self.p(layout.SET_MANIFEST)):
            return None
        return self.store.read_json(self.p(layout.SET_MANIFEST))

    def is_complete(self) -> bool:
        try:
            m = self.manifest()
        except StoreError:
            return False
        return bool(m and m.get("complete"))

    def delete(self) -> None:
        self.store.delete(self.rel)
        local = self._consolidated_dir()
        if not self.store.is_local and local.is_dir():
            for f in local.iterdir():
                f.unlink()

    # -- writing ---------------------------------------------------------------------------------------------
    def begin(self, ids: np.ndarray, arrays: dict[str, int], shard_rows: int, meta: dict, *,
              replace: bool = False) -> list[int]:
        """Start or resume a pass; return the shard indices still to compute.

        An existing plan must describe the same pass (rows, ids, array dims, `meta`): otherwise StoreError, or the
        old set is deleted when `replace` (for sets that a newer pass supersedes). A differing
        `shard_rows` alone is not a conflict: the existing layout is kept so that its shards stay usable.
        """
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if ids.ndim != 1 or ids.size == 0:
            raise ValueError(f"{self.rel}: ids must be a non-empty 1-D array, got shape {ids.shape}")
        if np.unique(ids).size != ids.size:
            raise ValueError(f"{self.rel}: ids are not unique")
        if shard_rows < 1:
            raise ValueError(f"shard_rows must be >= 1, got {shard_rows}")
        for name, dim in arrays.items():
            if not _NAME.match(name) or name == "ids" or int(dim) < 1:
                raise ValueError(f"{self.rel}: bad array {name!r} of dim {dim}")
        n = int(ids.size)
        plan: dict[str, Any] = {"format": FORMAT, "rows": n, "shard_rows": int(shard_rows),
                "num_shards": -(-n // int(shard_rows)), "arrays": {k: int(v) for k, v in arrays.items()},
                "dtype": np.dtype(DTYPE).name, "ids_file": layout.SET_IDS, "ids_sha256": ids_digest(ids)}
        clash = sorted(set(plan) & set(meta))
        if clash:
            raise ValueError(f"{self.rel}: meta keys {clash} are reserved by the store")
        plan.update(json.loads(json.dumps(meta)))
        old = None
        if self.store.exists(self.p(layout.SET_PLAN)):
            try:
                old = self.store.read_json(self.p(layout.SET_PLAN))
            except StoreError:
                if not replace:  # plans are written atomically: an unreadable one was damaged from outside
                    raise
                self.delete()
        elif self.store.exists(self.p("shards")):  # shards without a plan: nothing says what made them
            log.warning("%s: shards without a plan.json; discarding them", self.rel)
            self.delete()
        if old is not None:
            differ = sorted(k for k in set(plan) | set(old)
                            if k not in ("shard_rows", "num_shards") and plan.get(k) != old.get(k))
            if differ and not replace:
                raise StoreError(f"{self.store.path(self.rel)} holds a different pass (differs in {differ}); "
                                 "use another version, or delete that folder to recompute it")
            if differ:
                log.info("%s: replacing an older set (differs in %s)", self.rel, differ)
                self.delete()
                old = None
            elif old.get("shard_rows") != plan["shard_rows"]:
                log.info("%s: resuming with the existing shard_rows=%s", self.rel, old["shard_rows"])
                plan["shard_rows"], plan["num_shards"] = old["shard_rows"], old["num_shards"]
        if old is None or not self.store.exists(self.p(layout.SET_IDS)):
            buf = io.BytesIO()
            np.save(buf, ids, allow_pickle=False)
            self.store.write_bytes(self.p(layout.SET_IDS), buf.getvalue())
            self.store.write_json(self.p(layout.SET_PLAN), plan)
        self.plan, self.ids = plan, ids
        self.records = {}
        todo = []
        for k in range(plan["num_shards"]):
            rec = self._verified_record(k)
            if rec is None:
                todo.append(k)
            else:
                self.records[k] = rec
        if todo and self.store.exists(self.p(layout.SET_MANIFEST)):
            log.warning("%s: %d shard(s) missing or corrupt in a set marked complete; recomputing them",
                        self.rel, len(todo))
            self.store.delete(self.p(layout.SET_MANIFEST))
        return todo

    def shard_range(self, k: int) -> tuple[int, int]:
        s = self.plan["shard_rows"]
        return k * s, min(self.plan["rows"], (k + 1) * s)

    def _verified_record(self, k: int) -> dict | None:
        """The shard's record if it and every file it names check out, else None (and the bad record is removed)."""
        rel = self.p(self.shard_file(k, "json"))
        if not self.store.exists(rel):
            return None
        start, stop = self.shard_range(k)
        problem = None
        try:
            rec = self.store.read_json(rel)
            if (rec.get("start"), rec.get("stop")) != (start, stop):
                problem = f"row range {rec.get('start')}..{rec.get('stop')} != {start}..{stop}"
            elif rec["sha256"].get("ids") != ids_digest(self.ids[start:stop]):
                problem = "ids differ from the plan"
            else:
                for name in list(self.plan["arrays"]) + ["ids"]:
                    fname = self.shard_file(k, "ids.i64" if name == "ids" else f"{name}.f32")
                    if not self.store.exists(self.p(fname)):
                        problem = f"{fname} is missing"
                        break
                    if sha256(self.store.read_bytes(self.p(fname))) != rec["sha256"].get(name):
                        problem = f"{fname} fails its sha256 (corrupt or truncated)"
                        break
        except (StoreError, KeyError, TypeError, AttributeError) as err:
            problem = f"unreadable record ({err})"
        if problem is None:
            return rec
        log.warning("%s: shard %d is not usable (%s); it will be recomputed", self.rel, k, problem)
        self.store.delete(rel)
        return None

    def write_shard(self, k: int, ids: np.ndarray, arrays: dict[str, np.ndarray]) -> dict:
        """Write shard k (files first, the commit record last); each write is atomic."""
        if not self.plan:
            raise StoreError(f"{self.rel}: begin() a pass before writing shards")
        start, stop = self.shard_range(k)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if not np.array_equal(ids, self.ids[start:stop]):
            raise StoreError(f"{self.rel}: shard {k} rows do not carry ids {start}..{stop} of the plan")
        shas = {"ids": sha256(ids.tobytes())}
        for name, dim in self.plan["arrays"].items():
            arr = np.ascontiguousarray(arrays[name], dtype=DTYPE)
            if arr.shape != (stop - start, dim):
                raise ValueError(f"{self.rel}: shard {k} {name} has shape {arr.shape}, expected {(stop - start, dim)}")
            data = arr.tobytes()
            self.store.write_bytes(self.p(self.shard_file(k, f"{name}.f32")), data)
            shas[name] = sha256(data)
        self.store.write_bytes(self.p(self.shard_file(k, "ids.i64")), ids.tobytes())
        rec = {"index": k, "start": start, "stop": stop, "sha256": shas}
        self.store.write_json(self.p(self.shard_file(k, "json")), rec)
        self.records[k] = rec
        return rec

    def finish(self, extra: dict | None = None) -> dict:
        """Write the manifest (complete) once every shard has a record."""
        missing = [k for k in range(self.plan["num_shards"]) if k not in self.records]
        if missing:
            raise StoreError(f"{self.rel}: cannot finish, shards {missing[:10]} were never written")
        manifest = dict(self.plan)
        manifest.update(extra or {})
        manifest["shards"] = [self.records[k] for k in range(self.plan["num_shards"])]
        manifest["complete"] = True
        self.store.write_json(self.p(layout.SET_MANIFEST), manifest)
        return manifest

    # -- reading ---------------------------------------------------------------------------------------------
    def _consolidated_dir(self) -> Path:
        local = self.store.local_path(self.rel)
        if local is not None:
            return local
        key = hashlib.sha256(f"{type(self.store.fs).__name__}:{self.store.root}".encode()).hexdigest()[:16]
        return self.cache_root / layout.FEATURES / key / self.rel

    def open(self, verify: bool | str = "auto") -> tuple[np.ndarray, dict[str, np.ndarray], dict]:
        """(ids, {name: read-only memmap}, manifest) of a complete set; consolidates (or re-verifies) first."""
        if verify not in (True, False, "auto"):
            raise ValueError(f"verify must be True, False or 'auto', got {verify!r}")
        manifest = self.manifest()
        if not manifest or not manifest.get("complete"):
            raise StoreError(f"{self.store.path(self.rel)}: no complete set here (run the pass to finish it)")
        raw = self.store.read_bytes(self.p(manifest.get("ids_file", layout.SET_IDS)))
        try:
            ids = np.load(io.BytesIO(raw), allow_pickle=False)
        except ValueError as err:
            raise StoreError(f"{self.store.path(self.rel)}: ids.npy is corrupt ({err})") from err
        if ids.dtype != np.int64 or ids.shape != (manifest["rows"],) or ids_digest(ids) != manifest["ids_sha256"]:
            raise StoreError(f"{self.store.path(self.rel)}: ids.npy does not match the manifest (corrupt)")
        ids.setflags(write=False)
        folder = self._consolidated_dir()
        folder.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {}
        for name, dim in manifest["arrays"].items():
            path = folder / f"{name}.f32"
            nbytes = manifest["rows"] * dim * np.dtype(DTYPE).itemsize
            deep = verify is True or (verify == "auto" and nbytes <= VERIFY_AUTO_BYTES)
            if not self._consolidated_ok(path, name, dim, manifest, deep):
                self._consolidate(path, name, dim, manifest)
            arrays[name] = np.memmap(path, dtype=DTYPE, mode="r", shape=(manifest["rows"], dim))
        return ids, arrays, manifest

    def read_shard(self, rec: dict, name: str, dim: int) -> np.ndarray:
        """Array `name` of the shard with manifest record `rec`, (stop - start) × dim, read-only, from the shard's
        own file and checked against its sha256: what a worker next to the store reads (the consolidated copy lives
        on the driver's disk only)."""
        fname = self.shard_file(int(rec["index"]), f"{name}.f32")
        try:
            data = self.store.read_bytes(self.p(fname))
        except StoreError as err:
            raise StoreError(f"{self.store.path(self.rel)}: shard {rec['index']} is missing ({fname})") from err
        rows = int(rec["stop"]) - int(rec["start"])
        if len(data) != rows * dim * np.dtype(DTYPE).itemsize or sha256(data) != rec["sha256"][name]:
            raise StoreError(f"{self.store.path(self.rel)}: shard {rec['index']} ({fname}) is corrupt or truncated; "
                             "rerun the pass to recompute it")
        return np.frombuffer(data, dtype=DTYPE).reshape(rows, dim)

    @staticmethod
    def _stamp_path(path: Path) -> Path:
        return path.with_name(path.name + ".stamp.json")

    @staticmethod
    def _digest(manifest: dict, name: str) -> str:
        return sha256("".join(r["sha256"][name] for r in manifest["shards"]).encode())

    def _consolidated_ok(self, path: Path, name: str, dim: int, manifest: dict, deep: bool) -> bool:
        try:
            st = path.stat()
            stamp = json.loads(self._stamp_path(path).read_text())
        except (OSError, ValueError):
            return False
        row_bytes = dim * np.dtype(DTYPE).itemsize
        if (st.st_size != manifest["rows"] * row_bytes or stamp.get("size") != st.st_size
                or stamp.get("mtime_ns") != st.st_mtime_ns or stamp.get("digest") != self._digest(manifest, name)):
            return False
        if not deep:
            return True
        with open(path, "rb") as f:
            for rec in manifest["shards"]:
                f.seek(rec["start"] * row_bytes)
                if _hash_stream(f, (rec["stop"] - rec["start"]) * row_bytes) != rec["sha256"][name]:
                    log.warning("%s: consolidated %s fails the checksum of shard %d; rebuilding it from the shards",
                                self.rel, name, rec["index"])
                    return False
        return True

    def _consolidate(self, path: Path, name: str, dim: int, manifest: dict) -> None:
        """Concatenate the verified shards into one raw file (tmp + rename), then stamp it."""
        t0 = time.perf_counter()
        row_bytes = dim * np.dtype(DTYPE).itemsize
        with atomic_local_file(path) as out:
            for rec in manifest["shards"]:
                fname = self.shard_file(rec["index"], f"{name}.f32")
                try:
                    data = self.store.read_bytes(self.p(fname))
                except StoreError as err:
                    raise StoreError(f"{self.store.path(self.rel)}: shard {rec['index']} is missing ({fname}); "
                                     "rerun the pass to recompute it") from err
                if len(data) != (rec["stop"] - rec["start"]) * row_bytes or sha256(data) != rec["sha256"][name]:
                    raise StoreError(f"{self.store.path(self.rel)}: shard {rec['index']} ({fname}) is corrupt "
                                     "or truncated; rerun the pass to recompute it")
                out.write(data)
        st = path.stat()
        self._stamp_path(path).write_text(json.dumps({"size": st.st_size, "mtime_ns": st.st_mtime_ns,
                                                      "digest": self._digest(manifest, name)}))
        log.info("%s: consolidated %s (%.1f MB) in %.1fs", self.rel, name, st.st_size / 1e6,
                 time.perf_counter() - t0)


def _hash_stream(f, nbytes: int) -> str:
    h = hashlib.sha256()
    left = nbytes
    while left > 0:
        chunk = f.read(min(_HASH_CHUNK, left))
        if not chunk:
            break
        h.update(chunk)
        left -= len(chunk)
    return h.hexdigest() if left == 0 else "truncated"


# ---------------------------------------------------------------------------------------------------------------
class ShardAssembler:
    """Collect rows that arrive in any order (Ray Data batches) into whole shards, and write each shard once full.

    Memory holds only the shards that are partly filled; with ordered delivery that is one or two.
    """

    def __init__(self, target: ShardedSet, todo: list[int], on_shard: Callable[[int], None] | None = None):
        self.target = target
        self.todo = set(todo)
        self.on_shard = on_shard
        self.pending: dict[int, dict] = {}
        self.written: list[int] = []
        plan = target.plan
        pos = np.concatenate([np.arange(*target.shard_range(k)) for k in sorted(todo)]) if todo else \
            np.empty(0, np.int64)
        self.positions = pos  # the rows to compute, in set order
        sub_ids = target.ids[pos]
        self._order = np.argsort(sub_ids, kind="stable")
        self._sorted = sub_ids[self._order]
        self.dims = plan["arrays"]

    @property
    def done(self) -> bool:
        return not self.todo

    def add(self, ids: np.ndarray, arrays: dict[str, np.ndarray]) -> int:
        """Place a batch; write the shards it completes. Returns the number of rows placed."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size == 0:
            return 0
        j = np.searchsorted(self._sorted, ids).clip(0, len(self._sorted) - 1)
        if (self._sorted[j] != ids).any():
            bad = ids[self._sorted[j] != ids][0]
            raise StoreError(f"{self.target.rel}: a batch carries id {int(bad)}, which this pass does not compute")
        pos = self.positions[self._order[j]]
        rows = self.target.plan["shard_rows"]
        shard_of = pos // rows
        for k in np.unique(shard_of):
            k = int(k)
            sel = shard_of == k
            start, stop = self.target.shard_range(k)
            buf = self.pending.get(k)
            if buf is None:
                buf = {"filled": np.zeros(stop - start, bool),
                       "arrays": {n: np.empty((stop - start, d), DTYPE) for n, d in self.dims.items()}}
                self.pending[k] = buf
            local = pos[sel] - start
            for name in self.dims:
                buf["arrays"][name][local] = arrays[name][sel]
            buf["filled"][local] = True
            if buf["filled"].all():
                self.target.write_shard(k, self.target.ids[start:stop], buf["arrays"])
                del self.pending[k]
                self.todo.discard(k)
                self.written.append(k)
                if self.on_shard is not None:
                    self.on_shard(k)
                faults.reach("embed")
        return int(ids.size)

    def check_done(self) -> None:
        if self.todo:
            missing = sorted(self.todo)
            raise StoreError(f"{self.target.rel}: the pass ended with shards {missing[:10]} incomplete "
                             f"({sum(int((~b['filled']).sum()) for b in self.pending.values())} rows never arrived)")
