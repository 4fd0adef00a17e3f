"""Cold start and stopping advice end to end: a tiny real run (Animal-MNIST images, MobileNetV2, local Ray)."""
import math

import numpy as np
import pytest

from raal.config import load_config
from raal.pipelines.experiment import start_driver
from raal.store import RunStore

pytestmark = [pytest.mark.timeout(900), pytest.mark.ray]

TINY = ["eval.every_round=proxy", "al.baseline_cap=0", "data.pool_size=200", "data.test_size=100",
        "data.image_size=32", "al.initial=20", "al.schedule=[20]*3", "embed.batch_size=50", "report=false"]


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One folder for this module's runs: the second run reuses the first one's v0 features (one embedding pass)."""
    return tmp_path_factory.mktemp("coldstop")


def drive(cfg) -> dict:
    """Run rounds as raal.run does: the number of rounds is asked again after every round (advice may end it)."""
    import ray

    driver = start_driver(cfg)
    ray.get(driver.prepare.remote())
    r = 0
    while r < ray.get(driver.num_rounds.remote()):
        ray.get(driver.run_round.remote(r))
        r += 1
    history = ray.get(driver.history.remote())
    ray.kill(driver)
    return history


def test_typiclust_start_is_shared_and_advice_ends_the_run(ray_local, shared):
    run = shared / "cs"
    cfg = load_config("demo", TINY + [
        "al.pipeline=svpp", "al.strategy=margin", "al.compare=[asvp/entropy]", "al.initial_strategy=typiclust",
        "al.stop=advice", "stopping.min_gain=1000",  # any measurable gain counts as a plateau: stop after round 1
        f"run_dir={run}"])
    history = drive(cfg)
    main, other, rnd = history["svpp_margin"], history["asvp_entropy"], history["svpp_random"]
    assert len(main) == len(other) == len(rnd) == 2  # the schedule had 4 rounds; advice ended it after round 1
    assert [r["stop_advice"] for r in main] == ["go", "stop"]
    assert main[1]["stop_reason"].startswith("plateau") and math.isfinite(main[1]["gain_per_100"])
    assert -1 <= main[1]["kappa"] <= 1 and math.isnan(main[0]["kappa"])
    store = RunStore(run)
    assert store.read_json("status.json")["state"] == "done"
    r0 = {a: {x["id"] for x in store.read_table(f"arms/{a}/labels.parquet").to_pylist() if x["round"] == 0}
          for a in history}
    # the AL arms share one typiclust batch; the random baseline keeps its uniformly random start
    assert r0["svpp_margin"] == r0["asvp_entropy"] != r0["svpp_random"]
    assert [r["random_only"] for r in main[:1] + other[:1] + rnd[:1]] == [False, False, True]
    (name,) = store.listdir("initial")
    shared = store.read_table(f"initial/{name}").column("position").to_numpy()
    ids = np.sort(np.asarray(list(r0["svpp_margin"])))
    assert name.startswith("typiclust_20_") and len(shared) == 20 and len(ids) == 20


def test_schedule_mode_records_advice_but_runs_every_round(ray_local, shared, tmp_path):
    import shutil

    if (shared / "cs" / "features").is_dir():  # same data and backbone: skip the embedding pass
        shutil.copytree(shared / "cs" / "features", tmp_path / "s" / "features")
    cfg = load_config("demo", TINY + ["al.pipeline=svpp", "al.strategy=margin", "al.compare=[]",
                                      "al.baseline=false", "stopping.min_gain=1000", f"run_dir={tmp_path / 's'}"])
    rows = drive(cfg)["svpp_margin"]
    assert len(rows) == 4 and [r["stop_advice"] for r in rows] == ["go", "stop", "stop", "stop"]
    assert all(-1 <= r["kappa"] <= 1 for r in rows[1:])
