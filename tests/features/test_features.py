"""The versioned feature store (no Ray): layout, alignment, checksums, resume bookkeeping, versions, remote cache."""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.fs as pafs
import pytest

from raal.errors import StoreError
from raal.features import FeatureStore, ShardAssembler
from raal.store import RunStore

pytestmark = pytest.mark.timeout(60)

N, D, C, ROWS = 103, 8, 3, 16  # 7 shards, the last one partial


def make_data(seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.permutation(10_000)[:N].astype(np.int64)  # not sorted: the set keeps this order
    feats = rng.normal(size=(N, D)).astype(np.float32)
    logits = rng.normal(size=(N, C)).astype(np.float32)
    return ids, feats, logits


def write_set(fs: FeatureStore, version=0, split="pool", seed=0, shuffle=True, meta=None):
    """Fill a set through the assembler with rows arriving in a random order and uneven batches."""
    ids, feats, logits = make_data(seed)
    target = fs.set_for(version, split)
    todo = target.begin(ids, {"features": D, "logits": C}, ROWS,
                        meta or {"kind": "features", "version": version, "split": split, "weights_id": "w"})
    asm = ShardAssembler(target, todo)
    order = np.random.default_rng(seed + 1).permutation(N) if shuffle else np.arange(N)
    for chunk in np.array_split(order, 9):
        asm.add(ids[chunk], {"features": feats[chunk], "logits": logits[chunk]})
    asm.check_done()
    target.finish()
    return ids, feats, logits, target


def test_roundtrip_alignment_memmap_and_take(tmp_path):
    fs = FeatureStore(RunStore(tmp_path / "run"))
    ids, feats, logits, _ = write_set(fs)
    s = fs.open(0, "pool")
    assert s.version == 0 and s.split == "pool" and len(s) == N and s.dim == D
    np.testing.assert_array_equal(s.ids, ids)  # the order given, not sorted
    assert isinstance(s.features, np.memmap) and s.features.mode == "r" and not s.features.flags.writeable
    assert not s.ids.flags.writeable
    np.testing.assert_array_equal(np.asarray(s.features), feats)
    np.testing.assert_array_equal(np.asarray(s.logits), logits)
    pos = np.array([50, 3, 102, 3, 0])
    got = s.take(pos)
    np.testing.assert_array_equal(got["ids"], ids[pos])
    np.testing.assert_array_equal(got["features"], feats[pos])
    np.testing.assert_array_equal(got["logits"], logits[pos])
    np.testing.assert_array_equal(s.positions(ids[[7, 1]]), [7, 1])
    with pytest.raises(ValueError, match="not in this set"):
        s.positions([10_001])
    m = s.manifest
    assert m["complete"] is True and m["rows"] == N and m["num_shards"] == 7 and m["dtype"] == "float32"
    assert m["arrays"] == {"features": D, "logits": C} and m["weights_id"] == "w"
    assert [r["stop"] - r["start"] for r in m["shards"]] == [16] * 6 + [7]
    assert all(len(r["sha256"]) == 3 for r in m["shards"])  # features, logits, ids
    # the consolidated file is the raw concatenation: exactly N·D float32
    assert os.path.getsize(tmp_path / "run/features/v0/pool/features.f32") == N * D * 4
    # ids are stored without pickle
    np.load(tmp_path / "run/features/v0/pool/ids.npy", allow_pickle=False)


def test_versions_has_latest_and_bad_input(tmp_path):
    fs = FeatureStore(RunStore(tmp_path / "run"))
    assert fs.versions() == [] and fs.latest() is None and not fs.has(0, "pool")
    write_set(fs, 0, "pool", seed=0)
    write_set(fs, 1, "pool", seed=5)
    write_set(fs, 1, "test", seed=6)
    assert fs.versions() == [0, 1] and fs.versions("test") == [1] and fs.latest("pool") == 1
    np.testing.assert_array_equal(np.asarray(fs.open(0, "pool").features), make_data(0)[1])
    np.testing.assert_array_equal(np.asarray(fs.open(1, "pool").features), make_data(5)[1])
    with pytest.raises(ValueError, match="split"):
        fs.open(0, "train")
    with pytest.raises(ValueError, match="version"):
        fs.has(-1, "pool")
    with pytest.raises(StoreError, match="no complete set"):
        fs.open(2, "pool")
    with pytest.raises(ValueError, match="not unique"):
        fs.set_for(3, "pool").begin(np.array([1, 1]), {"features": 2}, 4, {})


def test_resume_keeps_committed_shards_and_redoes_the_rest(tmp_path):
    fs = FeatureStore(RunStore(tmp_path / "run"))
    ids, feats, logits = make_data()
    target = fs.set_for(0, "pool")
    meta = {"weights_id": "w"}
    todo = target.begin(ids, {"features": D, "logits": C}, ROWS, meta)
    assert todo == list(range(7))
    asm = ShardAssembler(target, todo)
    asm.add(ids[:40], {"features": feats[:40], "logits": logits[:40]})  # shards 0, 1 complete; 2 partial
    assert sorted(asm.written) == [0, 1]
    stat = os.stat(tmp_path / "run/features/v0/pool/shards/000001.features.f32")
    # "killed" here: a fresh writer sees shards 0 and 1 and nothing of shard 2
    again = fs.set_for(0, "pool")
    todo = again.begin(ids, {"features": D, "logits": C}, 999, meta)  # a different shard_rows keeps the layout
    assert todo == [2, 3, 4, 5, 6] and again.plan["shard_rows"] == ROWS
    asm = ShardAssembler(again, todo)
    asm.add(ids[32:], {"features": feats[32:], "logits": logits[32:]})
    asm.check_done()
    again.finish()
    after = os.stat(tmp_path / "run/features/v0/pool/shards/000001.features.f32")
    assert (after.st_ino, after.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)  # written once
    np.testing.assert_array_equal(np.asarray(fs.open(0, "pool").features), feats)
    with pytest.raises(StoreError, match="different pass"):
        fs.set_for(0, "pool").begin(ids, {"features": D, "logits": C}, ROWS, {"weights_id": "other"})
    with pytest.raises(StoreError, match="does not compute"):
        ShardAssembler(again, [0]).add(np.array([ids[40]]), {"features": feats[:1], "logits": logits[:1]})


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_corrupt_shard_is_detected_never_read(tmp_path, damage):
    fs = FeatureStore(RunStore(tmp_path / "run"))
    ids, feats, logits, _ = write_set(fs)
    fs.open(0, "pool")  # builds the consolidated copy
    base = tmp_path / "run/features/v0/pool"
    shard = base / "shards/000003.features.f32"
    if damage == "flip":
        raw = bytearray(shard.read_bytes())
        raw[17] ^= 0xFF
        shard.write_bytes(bytes(raw))
    elif damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:-4])
    else:
        shard.unlink()
    # the consolidated copy is intact and verified against the shard checksums: still readable
    np.testing.assert_array_equal(np.asarray(fs.open(0, "pool").features), feats)
    # without it, the corrupt shard is refused rather than read
    (base / "features.f32").unlink()
    with pytest.raises(StoreError, match="shard 3"):
        fs.open(0, "pool")
    # a new pass finds exactly that shard to recompute, and the set is no longer complete until it is
    target = fs.set_for(0, "pool")
    todo = target.begin(ids, {"features": D, "logits": C}, ROWS,
                        {"kind": "features", "version": 0, "split": "pool", "weights_id": "w"})
    assert todo == [3] and not fs.has(0, "pool")
    asm = ShardAssembler(target, todo)
    asm.add(ids[48:64], {"features": feats[48:64], "logits": logits[48:64]})
    target.finish()
    np.testing.assert_array_equal(np.asarray(fs.open(0, "pool").features), feats)


def test_corrupt_consolidated_copy_is_rebuilt(tmp_path):
    fs = FeatureStore(RunStore(tmp_path / "run"))
    ids, feats, _, _ = write_set(fs)
    fs.open(0, "pool")
    path = tmp_path / "run/features/v0/pool/features.f32"
    st = os.stat(path)
    with open(path, "r+b") as f:  # same size, same mtime: only the checksum can tell
        f.seek(100)
        f.write(b"\x00\x01\x02\x03")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    s = fs.open(0, "pool", verify="auto")  # small: re-hashed against the shard checksums, then rebuilt
    np.testing.assert_array_equal(np.asarray(s.features), feats)
    assert os.stat(path).st_ino != st.st_ino  # a new file replaced the damaged one


def test_remote_store_is_cached_locally(tmp_path):
    mock = pafs._MockFileSystem()
    store = RunStore("bucket/run", _fs=mock)
    assert not store.is_local and store.local_path("x") is None
    fs = FeatureStore(store, cache_dir=tmp_path / "cache")
    ids, feats, logits, _ = write_set(fs)
    s = fs.open(0, "pool")
    assert isinstance(s.features, np.memmap) and str(tmp_path / "cache") in str(s.features.filename)
    np.testing.assert_array_equal(np.asarray(s.features), feats)
    np.testing.assert_array_equal(s.ids, ids)
    assert fs.versions() == [0]
    # the manifest and shards live in the (remote) store, not the cache
    m = json.loads(store.read_text("features/v0/pool/manifest.json"))
    assert m["complete"] and store.exists("features/v0/pool/shards/000000.features.f32")
