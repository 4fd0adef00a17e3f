"""The human labeling round trip (oracle.kind=files): export, import from CSV and Label Studio, validation that
writes nothing on bad input, partial batches, a shared ledger across arms, and a crash in the middle of an import."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from raal import labeling, layout
from raal.config import load_config
from raal.data.sources import ANIMAL_MNIST_CLASSES, animal_mnist_arrays
from raal.errors import LabelImportError
from raal.labeling import labelstudio as ls
from raal.pipelines.experiment import Experiment
from raal.run import label_main

pytestmark = [pytest.mark.timeout(600)]

FILES = ["conf=demo",
         "eval.every_round=proxy", "al.baseline_cap=0", "train.min_steps=0",  # evaluator/extension/step budget off: these
         # tests check other things and keep their old cost
          "al.pipeline=svpp", "al.strategy=margin", "al.compare=[]", "data.pool_size=200",
         "data.test_size=100", "data.image_size=32", "al.initial=20", "al.schedule=[20]*2", "embed.batch_size=50",
         "report=false", "oracle.kind=files"]
TRUTH = animal_mnist_arrays()[1]


def experiment(run_dir, *overrides):
    cfg = load_config("demo", FILES[1:] + list(overrides) + [f"run_dir={run_dir}"])
    exp = Experiment(cfg)
    exp.prepare()
    return exp


def export_rows(run_dir, r):
    with open(run_dir / "queries" / f"round_{r}.csv") as f:
        return list(csv.DictReader(f))


def write_csv(path, rows, label_of=lambda i: ANIMAL_MNIST_CLASSES[TRUTH[i]]):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "path", "label"])
        w.writeheader()
        for row in rows:
            w.writerow({"id": row["id"], "path": row.get("path", ""), "label": label_of(int(row["id"]))})
    return str(path)


def label(run_dir, file, *extra):
    return label_main([f"run_dir={run_dir}", f"file={file}", *extra])


def ledger_bytes(run_dir):
    p = run_dir / "oracle" / "labels.parquet"
    return p.read_bytes() if p.exists() else b""


@pytest.mark.ray
def test_files_oracle_round_trip(ray_local, tmp_path, capsys):
    run_dir = tmp_path / "run"
    exp = experiment(run_dir)
    assert [a.arm.name for a in exp.arms] == ["svpp_margin", "svpp_random"]

    # round 0: both arms ask the same random batch; the run stops and says so
    assert exp.run_round(0) == {}
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "waiting_for_labels" and status["round"] == 0 and status["queried"] == 20
    rows = export_rows(run_dir, 0)
    assert len(rows) == 20 and all(r["arms"] == "svpp_margin,svpp_random" and r["label"] == "" for r in rows)
    img = Image.open(rows[0]["path"])
    assert img.size == (28, 28)  # the real Animal-MNIST image, written for the annotators
    assert np.array_equal(np.asarray(img), animal_mnist_arrays()[0][int(rows[0]["id"])])
    tasks = json.loads((run_dir / "queries" / "round_0.labelstudio.json").read_text())
    assert sorted(t["data"]["raal_id"] for t in tasks) == sorted(int(r["id"]) for r in rows)
    assert "<Choice value=\"cat\"/>" in (run_dir / "queries" / "labelstudio_config.xml").read_text()

    # half of the batch: accepted, the round keeps waiting
    assert label(run_dir, write_csv(tmp_path / "half.csv", rows[:10])) == 0
    assert "10 still waiting" in capsys.readouterr().out
    exp = experiment(run_dir)
    assert exp.run_round(0) == {} and exp.waiting["round"] == 0
    for arm in exp.arms:  # answered ids are recorded per arm; nothing is committed
        assert len(arm.state.label_ids) == 10 and arm.state.completed_rounds == 0

    # the rest from a Label Studio export (the majority of three annotations wins, a cancelled one is ignored)
    for t in tasks:
        i = t["data"]["raal_id"]
        truth = {"value": {"choices": [ANIMAL_MNIST_CLASSES[TRUTH[i]]]}}
        t["annotations"] = [
            {"created_at": "2026-01-01", "result": [{"value": {"choices": [ANIMAL_MNIST_CLASSES[(TRUTH[i] + 1) % 10]]}}]},
            {"created_at": "2026-01-02", "result": [truth]}, {"created_at": "2026-01-04", "result": [truth]},
            {"created_at": "2026-01-03", "was_cancelled": True, "result": [{"value": {"choices": ["camel"]}}]}]
    (tmp_path / "ls.json").write_text(json.dumps(tasks))
    assert label(run_dir, tmp_path / "ls.json") == 0
    assert "10 new labels imported (10 identical ones were imported before); 20 of 20" in capsys.readouterr().out
    exp = experiment(run_dir)
    rows0 = exp.run_round(0)
    assert set(rows0) == {"svpp_margin", "svpp_random"} and all(r["n_new"] == 20 for r in rows0.values())
    assert exp.run_round(1) == {}
    rows = export_rows(run_dir, 1)
    ids1 = [int(r["id"]) for r in rows]
    assert 20 <= len(rows) <= 40 and len(set(ids1)) == len(rows)  # one row per id, whichever arms asked it
    margin_rows = [r for r in rows if "svpp_margin" in r["arms"]]
    assert len(margin_rows) == 20 and all(r["prediction"] in ANIMAL_MNIST_CLASSES for r in margin_rows)
    margin_scores = [float(r["score"]) for r in sorted(margin_rows, key=lambda r: -float(r["score"]))]
    assert margin_scores == [1 - k / 20 for k in range(20)]  # higher = ask sooner: the pick order

    # bad input: one clear error, exit 2, nothing written
    before = ledger_bytes(run_dir)
    round0_id = int(export_rows(run_dir, 0)[0]["id"])
    bad = {
        "unknown.csv": ([rows[0]], lambda i: "unicorn", "not in the class list"),
        "stray.csv": ([{"id": round0_id}], None, "not in round 1's open query"),
        "escape.csv": ([{**rows[0], "path": "../../etc/passwd"}], None, "outside the data roots"),
        "absolute.csv": ([{**rows[0], "path": "/etc/passwd"}], None, "outside the data roots"),
        "moved.csv": ([{**rows[0], "path": export_rows(run_dir, 0)[0]["path"]}], None, "not the exported path"),
    }
    for name, (subset, fn, message) in bad.items():
        path = write_csv(tmp_path / name, subset, fn) if fn else write_csv(tmp_path / name, subset)
        assert label(run_dir, path) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    (tmp_path / "dup.csv").write_text(f"id,label\n{ids1[0]},cat\n{ids1[0]},dog\n")
    (tmp_path / "noid.csv").write_text("id,label\nseven,cat\n")
    (tmp_path / "cols.csv").write_text("item,class\n1,cat\n")
    (tmp_path / "pickle.csv").write_bytes(b"\x80\x04\x95\x00\xff\xfe")
    for name, message in [("dup.csv", "conflicting labels"), ("noid.csv", "is not an integer"),
                          ("cols.csv", "needs the columns id and label"), ("pickle.csv", "not UTF-8")]:
        assert label(run_dir, tmp_path / name) == 2
        assert message in capsys.readouterr().err
    assert ledger_bytes(run_dir) == before
    assert json.loads((run_dir / "status.json").read_text())["round"] == 1

    # a crash inside the import (after the ledger write, before the status): re-running it adds nothing twice
    half = write_csv(tmp_path / "r1.csv", rows[: len(rows) // 2])
    env = dict(os.environ, RAAL_FAULT=f"label_import:exit:{tmp_path / 'marker'}")
    proc = subprocess.run([sys.executable, "-m", "raal.run", "label", f"run_dir={run_dir}", f"file={half}",
                           "allow_partial=true"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and (tmp_path / "marker").exists()
    n_ledger = pq.read_metadata(run_dir / "oracle" / "labels.parquet").num_rows
    assert n_ledger == 20 + len(rows) // 2
    assert label(run_dir, half, "allow_partial=true") == 0
    assert f"0 new labels imported ({len(rows) // 2} identical" in capsys.readouterr().out
    assert pq.read_metadata(run_dir / "oracle" / "labels.parquet").num_rows == n_ledger

    # allow_partial: round 1 commits with what was answered; the unanswered ids go back to the pool
    exp = experiment(run_dir)
    rows1 = exp.run_round(1)
    answered = set(ids1[: len(rows) // 2])
    for arm in exp.arms:
        asked = set(pq.read_table(run_dir / layout.arm(arm.arm.name) / layout.selection(1))
                    .column("id").to_pylist())
        assert rows1[arm.arm.name]["n_new"] == len(asked & answered)
    assert exp.run_round(2) == {}
    assert label(run_dir, write_csv(tmp_path / "r2.csv", export_rows(run_dir, 2))) == 0
    exp = experiment(run_dir)
    exp.run_round(2)
    assert json.loads((run_dir / "status.json").read_text())["state"] == "done"

    ledger = pq.read_table(run_dir / "oracle" / "labels.parquet").to_pylist()
    assert len({r["id"] for r in ledger}) == len(ledger)  # no label paid for twice
    for arm in exp.arms:
        labels = arm.state
        ids = labels.labeled_ids
        assert len(np.unique(ids)) == len(ids) and np.array_equal(labels.labels, TRUTH[ids])
        assert set(labels.label_sources) == {"files"}
        assert [r["round"] for r in labels.rounds] == [0, 1, 2]
        assert labels.rounds[-1]["n_labeled"] == len(ids) == sum(r["n_new"] for r in labels.rounds)


def test_label_studio_parser_and_usage_errors(tmp_path, capsys):
    text = json.dumps([{"data": {"raal_id": 7, "image": "/x/7.png"}, "annotations": []},
                       {"data": {"raal_id": "8"}, "annotations": [{"result": [{"value": {"choices": ["dog"]}}]}]}])
    assert [(a.id, a.label, a.path) for a in ls.parse(text, "x.json")] == [(8, "dog", "")]
    with pytest.raises(LabelImportError, match="no data.raal_id"):
        ls.parse(json.dumps([{"data": {"image": "a.png"}}]), "x.json")
    with pytest.raises(LabelImportError, match="not valid JSON"):
        ls.parse("[{", "x.json")
    assert ls.parse("id,label\n3,\n4,cat\n", "a.csv") == [ls.Answer(4, "cat", "")]  # blank = unanswered
    assert label_main(["run_dir=/nonexistent/raal", "file=a.csv"]) == 2
    assert "holds no run" in capsys.readouterr().err
    assert label_main(["file=a.csv"]) == 2 and "label needs run_dir=" in capsys.readouterr().err
    assert label_main(["run_dir=x", "file=y", "allow_partial=maybe"]) == 2


def test_validate_is_all_or_nothing():
    query = {1: "/d/1.png", 2: "/d/2.png"}
    ok = labeling.validate([(1, "cat", ""), (1, "cat", ""), (2, "dog", "/d/2.png")], name="f", round_=0,
                           query=query, classes=["cat", "dog"], ledger={}, roots=["/d"])
    assert ok == ([1, 2], [0, 1], 0)
    assert labeling.validate([(1, "cat", "")], name="f", round_=0, query=query, classes=["cat", "dog"],
                             ledger={1: 0}, roots=["/d"]) == ([], [], 1)
    with pytest.raises(LabelImportError, match="cannot be changed"):
        labeling.validate([(1, "dog", "")], name="f", round_=0, query=query, classes=["cat", "dog"],
                          ledger={1: 0}, roots=["/d"])


@pytest.mark.ray
def test_cli_stops_cleanly_and_says_what_to_label(tmp_path):
    run_dir = tmp_path / "cli"
    env = dict(os.environ, RAY_AUTH_MODE="disabled", TQDM_DISABLE="1", RAAL_LOG="WARNING")
    args = [a for a in FILES if not a.startswith(("data.pool_size", "data.test_size"))]
    proc = subprocess.run([sys.executable, "-m", "raal.run", *args, "data.pool_size=100", "data.test_size=50",
                           f"run_dir={run_dir}"], env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "round 0 waits for 20 of 20 labels" in proc.stdout
    assert f"python -m raal.run label run_dir={run_dir}" in proc.stdout
    assert json.loads((run_dir / "status.json").read_text())["state"] == "waiting_for_labels"
    assert not (run_dir / "arms" / "svpp_margin" / "rounds.parquet").exists()  # nothing committed without labels


# -- one writer per run dir (issue #16) --------------------------------------------------------------------------------
def _listing(path):
    return sorted((str(p.relative_to(path)), p.stat().st_size) for p in path.rglob("*"))


def test_run_lease_is_exclusive_and_released(tmp_path):
    from raal.store import LEASE, RunDirInUse, RunLease

    first = RunLease(str(tmp_path / "run"))
    with pytest.raises(RunDirInUse, match=rf"in use by another raal process \(pid {os.getpid()}\)"):
        RunLease(str(tmp_path / "run"))
    with pytest.raises(RunDirInUse):
        RunLease(f"file://{tmp_path / 'run'}")  # file:// is the same local folder
    first.release()
    assert not (tmp_path / "run" / LEASE).exists()
    with RunLease(str(tmp_path / "run")):
        pass


def test_label_import_refused_while_another_process_holds_the_run_dir(tmp_path):
    from raal.store import RunLease

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("name: demo\n")
    labels = tmp_path / "labels.csv"
    labels.write_text("id,label\n609,cat\n")
    with RunLease(str(run_dir)):
        before = _listing(run_dir)
        proc = subprocess.run([sys.executable, "-m", "raal.run", "label", f"run_dir={run_dir}", f"file={labels}"],
                              capture_output=True, text=True, timeout=100)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and f"is in use by another raal process (pid {os.getpid()})" in lines[0], proc.stderr
        assert _listing(run_dir) == before


def test_run_refused_while_another_process_holds_the_run_dir(tmp_path, monkeypatch, capsys):
    import raal.run
    from raal.store import RunLease

    ran = []
    monkeypatch.setattr(raal.run, "run", lambda cfg: ran.append(cfg) or 0)  # never start Ray here
    args = ["conf=demo", "eval.every_round=proxy", "al.baseline_cap=0", "train.min_steps=0", "data.pool_size=200", "data.test_size=100", "al.initial=20", "al.schedule=[20]",
            f"run_dir={tmp_path / 'run'}"]
    with RunLease(str(tmp_path / "run")):
        assert raal.run.main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "in use by another raal process" in err[0]
        assert not ran
    assert raal.run.main(args) == 0 and len(ran) == 1  # free again: the run goes ahead
    assert RunLease(str(tmp_path / "run")).release() is None  # and its lease was given back


def test_ledger_with_duplicate_ids_is_refused(tmp_path):
    import pyarrow as pa

    from raal.errors import StoreError
    from raal.store import RunStore

    store = RunStore(str(tmp_path / "run"))
    store.write_table(labeling.LEDGER, pa.table({"id": [609, 7, 609], "label": [0, 1, 2], "round": [0, 0, 0],
                                                 "file": ["a.csv"] * 3, "sha256": ["x"] * 3},
                                                schema=labeling.LEDGER_SCHEMA))
    with pytest.raises(StoreError, match="id 609 appears 2 times") as err:
        labeling.Ledger(store).load()
    assert "\n" not in str(err.value)
