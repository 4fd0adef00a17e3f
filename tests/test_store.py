"""The run store: atomic writes, no pickle, pyarrow.fs URIs; the arm state's write order survives a kill."""
import os

import numpy as np
import pyarrow as pa
import pytest

from raal.errors import LabelImportError, StoreError
from raal.pipelines.state import ArmState
from raal.store import RunStore

pytestmark = pytest.mark.timeout(60)


def test_roundtrip_local_and_file_uri(tmp_path):
    for store in (RunStore(tmp_path / "a"), RunStore(f"file://{tmp_path / 'b'}")):
        store.write_json("x/state.json", {"a": 1, "b": [1, 2]})
        store.write_table("t.parquet", pa.table({"id": [1, 2, 3]}))
        assert store.read_json("x/state.json") == {"a": 1, "b": [1, 2]}
        assert store.read_table("t.parquet").column("id").to_pylist() == [1, 2, 3]
        assert store.listdir("") == ["t.parquet", "x"]
    assert (tmp_path / "b" / "x" / "state.json").is_file()


def test_write_is_atomic_when_interrupted(tmp_path, monkeypatch):
    store = RunStore(tmp_path)
    store.write_text("f.txt", "old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        store.write_text("f.txt", "new")
    monkeypatch.undo()
    assert store.read_text("f.txt") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]  # no temporary file left behind


def test_paths_cannot_escape(tmp_path):
    with pytest.raises(StoreError, match="escapes"):
        RunStore(tmp_path).write_text("../evil.txt", "x")


def test_corrupt_parquet_is_one_clear_error(tmp_path):
    store = RunStore(tmp_path)
    store.write_bytes("rounds.parquet", b"not parquet")
    with pytest.raises(StoreError, match="corrupt Parquet"):
        store.read_table("rounds.parquet")


def test_arm_state_order_and_validation(tmp_path):
    st = ArmState.open(RunStore(tmp_path))
    st.save_query(0, np.array([5, 7, 9]))
    with pytest.raises(LabelImportError, match="never queried"):
        st.add_labels(0, np.array([5, 6]), np.array([1, 1]), "simulated")
    st.add_labels(0, np.array([5, 7]), np.array([1, 2]), "simulated")
    with pytest.raises(LabelImportError, match="already labeled"):
        st.add_labels(0, np.array([5]), np.array([1]), "simulated")
    # a "kill" here: the round has a query and partial labels but no row
    again = ArmState.open(RunStore(tmp_path))
    assert again.completed_rounds == 0
    assert again.labels_for_round(0) == {5: 1, 7: 2}
    assert again.saved_query(0).tolist() == [5, 7, 9]
    again.add_labels(0, np.array([9]), np.array([0]), "simulated")
    again.commit_round({"round": 0, "n_labeled": 3, "n_new": 3})
    with pytest.raises(StoreError, match="committing round 5"):
        again.commit_round({"round": 5, "n_labeled": 3, "n_new": 0})
    final = ArmState.open(RunStore(tmp_path))
    assert final.completed_rounds == 1 and sorted(final.label_ids) == [5, 7, 9]
    with pytest.raises(StoreError, match="re-asks labeled"):
        final.save_query(1, np.array([5, 11]))


def test_no_pickle_in_the_store(tmp_path):
    st = ArmState.open(RunStore(tmp_path))
    st.save_query(0, np.array([1, 2]))
    st.add_labels(0, np.array([1, 2]), np.array([0, 1]), "simulated")
    st.commit_round({"round": 0, "n_labeled": 2, "n_new": 2})
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files
    for path in files:  # pickle streams start with the PROTO opcode 0x80; Parquet with PAR1, JSON with {
        assert not path.read_bytes().startswith(b"\x80"), path


def test_remote_run_lease_is_a_best_effort_object():
    import socket

    import pyarrow.fs as pafs

    from raal.store import REMOTE_LEASE, RunDirInUse, RunLease, RunStore

    fs = pafs._MockFileSystem()
    store = RunStore("bucket/run", _fs=fs)
    lease = RunLease(store)
    with pytest.raises(RunDirInUse, match=r"in use by another raal process \(pid \d+ on host .*delete "
                                          r"bucket/run/\.raal\.lease\.json"):
        RunLease(RunStore("bucket/run", _fs=fs))
    lease.release()
    assert not store.exists(REMOTE_LEASE)
    store.write_json(REMOTE_LEASE, {"host": socket.gethostname(), "pid": 2 ** 22 + 12345, "token": "dead"})
    RunLease(store).release()  # a lease of a dead process on this host is taken over


def test_ray_train_storage_stays_on_the_store_filesystem(tmp_path):
    """A non-local store (any pyarrow filesystem other than LocalFileSystem, as S3) gives Ray Train its own
    filesystem object and a path inside it: no local temp dir, and no URI string (credentials) handed to Ray."""
    import pyarrow.fs as pafs
    from ray.train import RunConfig

    from raal.pipelines.finetune import training_storage
    from raal.store import RunStore, ray_train_storage

    fs = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())
    store = RunStore("bucket/run/arms/a", _fs=fs)
    assert not store.is_local
    job, kw = ray_train_storage(training_storage(store), "ft_r0")
    assert kw == {"storage_path": "bucket/run/arms/a/ray_train", "storage_filesystem": fs}
    RunConfig(name="ft_r0", **kw)  # what raal.train passes to Ray Train
    job.write_json("raal_inputs.json", {"fingerprint": "x"})
    assert (tmp_path / "bucket/run/arms/a/ray_train/ft_r0/raal_inputs.json").is_file()
