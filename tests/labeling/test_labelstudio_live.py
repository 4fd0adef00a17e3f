"""End to end against a real Label Studio: raal.serve (Ray Serve) is connected as the project's ML backend, pushes
round 0, people's annotations (submitted through Label Studio's API: the ground truth of a small real pool) come back
through Label Studio's webhook (the last one of round 0 while the backend is down: the restarted backend pulls it
and pushes nothing twice), raal commits the round and pushes round 1 with its predictions, and the run ends with
the same labeled set as the simulated oracle with the same seed. Label Studio's three exports round-trip."""
import json
import os
import signal
import subprocess
import sys
import time

import lstudio
import numpy as np
import pyarrow.parquet as pq
import pytest
import requests

from raal.data.sources import ANIMAL_MNIST_CLASSES, animal_mnist_arrays
from raal.labeling import labelstudio as ls

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]

ARGS = ["conf=demo", "eval.every_round=proxy", "al.baseline_cap=0", "train.min_steps=0", "al.pipeline=svpp",
        "al.strategy=margin", "al.compare=[]", "data.pool_size=200", "data.test_size=100", "data.image_size=32",
        "al.initial=20", "al.schedule=[20]", "embed.batch_size=50", "report=false", "eval.final=none",
        "al.baseline=false"]
ENV = dict(os.environ, RAY_AUTH_MODE="disabled", TQDM_DISABLE="1", OMP_NUM_THREADS="1", RAAL_EVAL_THREADS="1")


def labeled_sets(run_dir):
    out = {}
    for arm in sorted(os.listdir(run_dir / "arms")):
        t = pq.read_table(run_dir / "arms" / arm / "labels.parquet").to_pydict()
        out[arm] = sorted(zip(t["id"], t["label"]))
    return out


def test_live_labeling_with_a_real_label_studio(tmp_path):
    reason = lstudio.skip_reason()
    if reason:
        pytest.skip(reason)
    truth = animal_mnist_arrays()[1]
    run_dir, sim_dir = tmp_path / "run", tmp_path / "sim"
    (tmp_path / "ls").mkdir()
    # the simulated oracle's run, meanwhile: the reference labeled set
    sim = subprocess.Popen([sys.executable, "-m", "raal.run", *ARGS, f"run_dir={sim_dir}"], env=ENV,
                           stdout=open(tmp_path / "sim.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        exports = label_in_studio(tmp_path, run_dir, truth)
        assert sim.wait(300) == 0, (tmp_path / "sim.log").read_text()[-3000:]
    finally:
        if sim.poll() is None:  # its own session: the run and its private Ray
            os.killpg(sim.pid, signal.SIGKILL)
    ledger = pq.read_table(run_dir / "oracle" / "labels.parquet").to_pydict()
    assert len(ledger["id"]) == 40 and np.array_equal(ledger["label"], truth[ledger["id"]])
    for fmt, raw in exports.items():  # every export format gives back exactly the ledger's labels
        answers, report = ls.resolve(ls.parse(raw.decode("utf-8"), fmt), "majority")
        assert sorted((a.id, ANIMAL_MNIST_CLASSES.index(a.label)) for a in answers) == \
            sorted(zip(ledger["id"], ledger["label"])), fmt
    assert labeled_sets(run_dir) == labeled_sets(sim_dir)


def label_in_studio(tmp_path, run_dir, truth) -> dict[str, bytes]:
    """Label Studio up, raal.serve connected, two rounds annotated through Label Studio; returns its exports."""
    with lstudio.Server(str(tmp_path / "ls"), document_root=str(tmp_path)) as studio:
        project = studio.create_project("raal", ls.labeling_config(list(ANIMAL_MNIST_CLASSES)))
        args = [*ARGS, "oracle.kind=files", "oracle.image_url=local-files", f"oracle.document_root={tmp_path}",
                f"run_dir={run_dir}", f"ls_url={studio.url}", f"project={project}"]
        backend = lstudio.Backend(args, str(tmp_path / "serve.log"), ENV)
        try:
            assert backend.wait_up()["status"] == "UP"
            lstudio.connect(studio, project, backend, str(run_dir / "queries" / "images"))
            tasks = studio.tasks(project)
            assert len(tasks) == 20 and {t["data"]["raal_round"] for t in tasks} == {0}
            img = studio.http.get(studio.url + tasks[0]["data"]["image"], timeout=30)
            assert img.status_code == 200 and img.content[:4] == b"\x89PNG"  # the image displays
            assert "raal" in str(studio.api("GET", f"/api/ml?project={project}"))
            assert str(run_dir) not in json.dumps(tasks)  # no filesystem path leaks into Label Studio

            for t in tasks[:19]:
                studio.annotate(t["id"], ANIMAL_MNIST_CLASSES[truth[t["data"]["raal_id"]]])
            time.sleep(3)
            assert backend.status()["round"] == 0  # 19 of 20: the round waits
            # restart: the last answer comes while no backend listens; the restarted one pulls it from Label Studio
            backend.stop()
            studio.annotate(tasks[19]["id"], ANIMAL_MNIST_CLASSES[truth[tasks[19]["data"]["raal_id"]]])
            backend = lstudio.Backend(args, str(tmp_path / "serve2.log"), ENV, port=backend.port)
            backend.wait_up()
            lstudio.wait_for("round 1 in Label Studio", lambda: len(studio.tasks(project)) == 40, 300)
            status = backend.status()
            assert status["state"] == "waiting_for_labels" and status["round"] == 1, status
            ids = [t["data"]["raal_id"] for t in studio.tasks(project)]
            assert len(set(ids)) == len(ids) == 40  # nothing pushed twice across the restart
            round1 = [t for t in studio.tasks(project) if t["data"]["raal_round"] == 1]
            for t in round1:  # pushed with raal's pre-annotation and its ask-sooner score
                (pred,) = t["predictions"]
                assert pred["model_version"] == "raal-round-1" and 0 < pred["score"] <= 1
                assert pred["result"][0]["value"]["choices"][0] in ANIMAL_MNIST_CLASSES
            answered = requests.post(backend.url + "/predict", json={"tasks": round1[:3]}, timeout=30).json()
            assert [r["result"] for r in answered["results"]] == [t["predictions"][0]["result"] for t in round1[:3]]

            for t in round1:
                studio.annotate(t["id"], ANIMAL_MNIST_CLASSES[truth[t["data"]["raal_id"]]])
            lstudio.wait_for("the run to finish", lambda: backend.status().get("state") == "done", 300)
            return {fmt: studio.export(project, fmt) for fmt in ("JSON", "JSON_MIN", "CSV")}
        finally:
            backend.stop()
