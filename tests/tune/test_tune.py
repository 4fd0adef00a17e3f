"""raal.tune: sweep files, trial expansion, the shared baseline, the objective, the results table, and a real
2-trial sweep on a tiny pool that is killed mid-sweep and resumed through Tuner.restore."""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from raal import tune as rt
from raal.config import load_config
from raal.errors import ConfigError

pytestmark = pytest.mark.timeout(400)

TINY = ["eval.every_round=proxy", "al.baseline_cap=0", "train.min_steps=0",  # evaluator/extension/step budget off: these
        # tests check other things and keep their old cost
        "al.pipeline=svpp", "data.pool_size=200", "data.test_size=100", "data.image_size=32", "al.initial=20", "al.schedule=[20]*3",
        "embed.batch_size=64"]


def sweep_file(tmp_path: Path, body: str, name: str = "sweep") -> Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(body)
    return p


# ---------------------------------------------------------------------------------------------------------------
# Sweep files and the command line
# ---------------------------------------------------------------------------------------------------------------

def test_shipped_sweeps_expand_into_valid_trial_configs():
    plan = rt.make_plan("tune_demo")
    assert plan.params == [{"asvp.threshold": t} for t in (0.25, 0.5, 1.0, 2.0, 4.0)]
    assert [t.asvp.threshold for t in plan.trials] == [0.25, 0.5, 1.0, 2.0, 4.0]
    assert all(t.al.pipeline == "asvp" and t.al.strategy == "margin" and not t.al.baseline for t in plan.trials)
    assert [Path(t.run_dir).name for t in plan.trials] == [f"trial_{i:03d}" for i in range(5)]
    assert Path(plan.root) == Path.cwd() / "runs" / "sweeps" / "tune_demo"
    b = plan.baseline
    assert (b.al.pipeline, b.al.strategy, b.al.baseline, b.eval.final) == ("svpp", "random", True, "none")
    assert rt.label_points(b) == rt.label_points(plan.trials[0])  # same schedule: the base's own strings kept
    assert (b.al.initial, b.al.schedule) == (plan.base.al.initial, plan.base.al.schedule)

    im = rt.make_plan("tune_imagenet")
    assert im.base.name == "imagenet_asvp" and len(im.trials) == 5 and im.spec.max_concurrent_trials == 2
    assert im.baseline.al.schedule == "[10000]*9+[50000]*6"


def test_command_line_overrides_sweep_settings_and_params(tmp_path):
    f = sweep_file(tmp_path, "tune:\n  experiment: demo\n  params:\n    asvp.threshold: {grid: [1, 2]}\n")
    spec, overrides = rt.load_sweep(str(f), ["al.seed=3", "tune.num_samples=2", "tune.cpu=0.05",
                                             "tune.choice.al.strategy=[margin,entropy]",
                                             "tune.loguniform.proxy.lr=[0.001,0.1]", "tune.dir=/tmp/x"])
    assert overrides == ["al.seed=3"]
    assert (spec.num_samples, spec.cpu, spec.dir, spec.name, spec.mode) == (2, 0.05, "/tmp/x", "sweep", "max")
    assert spec.params == {"asvp.threshold": {"grid": [1, 2]}, "al.strategy": {"choice": ["margin", "entropy"]},
                           "proxy.lr": {"loguniform": [0.001, 0.1]}}
    trials = rt.expand_trials(spec)
    assert len(trials) == 4 and [t["asvp.threshold"] for t in trials] == [1, 1, 2, 2]
    assert trials == rt.expand_trials(spec)  # seeded: the same trials on every restart
    assert all(0.001 <= t["proxy.lr"] <= 0.1 and t["al.strategy"] in ("margin", "entropy") for t in trials)
    spec.seed = 1
    assert trials != rt.expand_trials(spec)
    cfg = rt.apply_params(load_config("demo"), trials[0])
    assert isinstance(cfg.asvp.threshold, float) and cfg.asvp.threshold == 1.0


@pytest.mark.parametrize("body, args, needle", [
    ("tune:\n  params: {asvp.threshold: {grid: [1]}}\n  bogus: 1\n", [], "tune.bogus"),
    ("tune:\n  params: {asvp.threshold: {grdi: [1]}}\n", [], "expected one of"),
    ("tune:\n  params: {}\n", [], "nothing to sweep"),
    ("tune:\n  params: {data.pool_size: {grid: [100, 200]}}\n", [], "not sweepable"),
    ("tune:\n  params: {run_dir: {grid: [a, b]}}\n", [], "not sweepable"),
    ("tune:\n  params: {proxy.lr: {uniform: [0.1, 0.01]}}\n", [], "low < high"),
    ("tune:\n  params: {al.schedule: {uniform: [1, 2]}}\n", [], "use grid or choice"),
    ("tune:\n  params: {asvp.threshold: {grid: [1, 2]}}\n  num_samples: 3\n", [], "repeats identical trials"),
    ("tune:\n  params: {asvp.threshold: {grid: [1]}}\n  metric: loss\n", [], "tune.metric='loss'"),
    ("name: demo\n", [], "exactly one `tune:` mapping"),
    ("tune:\n  params: {asvp.threshold: {grid: [1]}}\n", ["tune.params.x=1"], "tune.grid.KEY"),
])
def test_bad_sweep_files_are_refused_with_one_line(tmp_path, body, args, needle):
    with pytest.raises(ConfigError) as err:
        rt.load_sweep(str(sweep_file(tmp_path, body)), args)
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("params, needle", [
    ({"asvp.thresh": 1.0}, "tune.params.asvp.thresh: no such config key"),
    ({"asvp.ped": 1.0}, "names a whole section"),
    ({"asvp.threshold": "high"}, "tune.params.asvp.threshold='high'"),
    ({"al.strategy": "nope"}, "al.strategy='nope' is not allowed"),
])
def test_bad_param_values_fail_before_any_work(params, needle):
    with pytest.raises(ConfigError, match=None) as err:
        rt.apply_params(load_config("demo"), params)
    assert needle in str(err.value)


def test_baseline_covers_every_trials_label_counts(tmp_path):
    f = sweep_file(tmp_path, 'tune:\n  params:\n    al.schedule: {grid: ["[100]*4", "[200]*2", "[150,250]"]}\n')
    plan = rt.make_plan(str(f))
    assert [rt.label_points(t) for t in plan.trials] == [[100, 200, 300, 400, 500], [100, 300, 500], [100, 250, 500]]
    assert rt.label_points(plan.baseline) == [100, 200, 250, 300, 400, 500]
    assert plan.baseline.al.schedule == "[100,50,50,100,100]"


def test_trial_objective_is_the_mean_saving_ratio_against_the_baseline():
    cfg = load_config("demo")
    baseline = [(100.0, 0.5), (200.0, 0.6), (300.0, 0.7)]
    rows = [{"round": 0, "n_labeled": 100, "accuracy": 0.5, "random_only": True, "t_round": 1.0},
            {"round": 1, "n_labeled": 200, "accuracy": 0.7, "random_only": False, "t_round": 2.0, "refreshed": True}]
    m = rt.trial_metrics(rows, baseline, cfg)
    # round 0 (random) is left out of the mean; round 1 reaches with 200 labels what random needs 300 for
    assert m["saving_ratio"] == pytest.approx((300 - 200) / 300)
    assert (m["n_labeled"], m["round"], m["refreshes"], m["extrapolated"]) == (200, 1, 1, 0)
    assert m["t_total_s"] == 3.0
    cfg.metrics.exclude_random_rounds = False
    assert rt.trial_metrics(rows, baseline, cfg)["saving_ratio"] == pytest.approx((0 + 1 / 3) / 2)


def test_features_are_shared_by_hard_links(tmp_path):
    src = tmp_path / "baseline"
    for rel in ("features/v0/pool/manifest.json", "features/v0/pool/shards/000000.f32", "features/v0/test/ids.npy"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(os.urandom(64))
    (src / "features" / "timing.json").write_text('{"v0_pool": 1.5}')
    dst = tmp_path / "trial"
    assert rt.share_features(str(src), str(dst)) == 3
    for rel in ("features/v0/pool/manifest.json", "features/v0/pool/shards/000000.f32", "features/v0/test/ids.npy"):
        assert os.stat(src / rel).st_ino == os.stat(dst / rel).st_ino
    assert (dst / "features" / "timing.json").read_text() == '{"v0_pool": 1.5}'
    assert not [p for p in (dst / "features").iterdir() if p.name.startswith(".tmp-")]
    assert rt.share_features(str(src), str(dst)) == 0  # already there: left alone


def test_results_table_and_best_config(tmp_path):
    f = sweep_file(tmp_path, "tune:\n  overrides: [al.pipeline=svpp]\n  params:\n    proxy.lr: {grid: [0.01, 0.1, 1.0]}\n")
    plan = rt.make_plan(str(f), [f"tune.dir={tmp_path / 'sw'}"])
    import pyarrow as pa

    from raal.store import RunStore

    baseline = [(100.0, 0.5), (200.0, 0.6), (300.0, 0.7)]
    for i, acc in enumerate([0.6, 0.7]):  # trial 2 never ran
        st = RunStore(plan.trials[i].run_dir).child("arms", "svpp_margin")
        st.write_table("rounds.parquet", pa.table({"round": [0, 1], "n_labeled": [100, 200], "accuracy": [0.5, acc],
                                                   "random_only": [True, False], "t_round": [1.0, 1.0]}))
    rows = rt.collect_results(plan, baseline, {0: ("TERMINATED", ""), 1: ("TERMINATED", ""),
                                               2: ("ERROR", "boom")})
    assert [r["trial"] for r in rows] == [1, 0, 2]
    assert rows[0]["saving_ratio"] == pytest.approx(1 / 3) and rows[1]["saving_ratio"] == pytest.approx(0.0)
    assert rows[2]["status"] == "ERROR" and math.isnan(rows[2]["saving_ratio"]) and rows[2]["error"] == "boom"
    best = rt.write_results(plan, rows, baseline)
    assert best["trial"] == 1 and best["params"] == {"proxy.lr": 0.1}
    root = Path(plan.root)
    assert pq.read_table(root / "results.parquet").column("trial").to_pylist() == [1, 0, 2]
    assert (root / "results.csv").read_text().splitlines()[0].startswith('"trial","param:proxy.lr","status"')
    md = (root / "results.md").read_text()
    assert "| trial | proxy.lr | status |" in md and "| 1 | 0.1 | TERMINATED |" in md
    assert load_config_from(root / "best.yaml").proxy.lr == 0.1


def load_config_from(path: Path):
    from raal.config import from_yaml

    return from_yaml(path.read_text())


def test_the_pool_check_loads_the_data_the_trials_are_handed():
    plan = rt.make_plan("tune_demo")
    data = rt.check_pool(plan)  # loaded once, before Ray starts; every trial gets it through tune.with_parameters
    assert len(data.pool) == 8000 and len(data.test) == 2000


def test_cli_config_errors_exit_2(tmp_path, capsys):
    assert rt.main(["conf=nope_sweep"]) == 2
    assert "no sweep file" in capsys.readouterr().err
    f = sweep_file(tmp_path, "tune:\n  params: {asvp.threshold: {grid: [1]}}\n")
    assert rt.main([f"conf={f}", "al.initial=9000", f"tune.dir={tmp_path / 'sw'}"]) == 2  # 8,000-image pool
    assert "larger than the pool" in capsys.readouterr().err
    assert not (tmp_path / "sw").exists()  # refused before anything was written


# ---------------------------------------------------------------------------------------------------------------
# A real sweep, interrupted and resumed
# ---------------------------------------------------------------------------------------------------------------

def _rows(path: Path) -> int:
    return pq.read_metadata(path).num_rows if path.exists() else 0


@pytest.mark.slow
@pytest.mark.ray
def test_two_trial_sweep_resumes_after_kill_and_writes_its_table(tmp_path):
    f = sweep_file(tmp_path, "tune:\n  experiment: demo\n  overrides: [" + ", ".join(f'"{o}"' for o in TINY) + "]\n"
                   "  params:\n    al.strategy: {grid: [margin, entropy]}\n  max_concurrent_trials: 1\n")
    out = tmp_path / "sw"
    env = dict(os.environ, RAY_AUTH_MODE="disabled", TQDM_DISABLE="1", RAAL_LOG="WARNING")
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "raal.tune", f"conf={f}", f"tune.dir={out}"]
    log1 = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log1, stderr=subprocess.STDOUT, start_new_session=True)
    t0_rounds = out / "trials" / "trial_000" / "arms" / "svpp_margin" / "rounds.parquet"
    t1_rounds = out / "trials" / "trial_001" / "arms" / "svpp_entropy" / "rounds.parquet"
    deadline = time.time() + 300
    while time.time() < deadline:  # kill once trial 0 is complete and Tune has written its state
        if _rows(t0_rounds) == 4 and list((out / "tune").glob("experiment_state-*.json")) and _rows(t1_rounds) < 4:
            time.sleep(1.0)
            break
        if proc.poll() is not None:
            pytest.fail("the sweep ended before it could be interrupted: "
                        + (tmp_path / "first.log").read_text()[-3000:])
        time.sleep(0.2)
    else:
        pytest.fail("trial 0 did not finish in time: " + (tmp_path / "first.log").read_text()[-3000:])
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    baseline_rounds = out / "baseline" / "arms" / "svpp_random" / "rounds.parquet"
    before = {p: p.stat().st_mtime_ns for p in (baseline_rounds, t0_rounds)}
    assert _rows(baseline_rounds) == 4

    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "(resuming)" in again.stdout and "restoring the interrupted sweep" in again.stdout
    assert "baseline svpp_random" in again.stdout and "complete" in again.stdout
    # the baseline ran once, and the finished trial was not run again
    assert {p: p.stat().st_mtime_ns for p in before} == before

    table = pq.read_table(out / "results.parquet").to_pylist()
    assert sorted(r["param:al.strategy"] for r in table) == ["entropy", "margin"]
    assert all(r["status"] == "TERMINATED" and r["rounds"] == 4 and r["n_labeled"] == 80 for r in table)
    assert all(math.isfinite(r["saving_ratio"]) and -1.0 < r["saving_ratio"] < 1.0 for r in table)
    assert table[0]["saving_ratio"] >= table[1]["saving_ratio"]
    assert (out / "results.md").read_text().count("| TERMINATED |") == 2
    best = (out / "best.json").read_text()
    assert f'"trial": {table[0]["trial"]}' in best
    # Ray Tune's MLflow callback: every trial is a run of one experiment in the sweep's file store
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(out / "mlruns").as_uri())
    [exp] = [e for e in client.search_experiments() if e.name.startswith("raal-tune-")]
    runs = client.search_runs([exp.experiment_id])
    assert {"trial_000", "trial_001"} <= {r.info.run_name for r in runs}
    assert all("saving_ratio" in r.data.metrics for r in runs if r.info.run_name == "trial_001")
    # each trial read the baseline's features instead of embedding the pool again
    for t in ("trial_000", "trial_001"):
        manifest = out / "trials" / t / "features" / "v0" / "pool" / "manifest.json"
        assert os.stat(manifest).st_ino == os.stat(out / "baseline" / "features" / "v0" / "pool" / "manifest.json").st_ino
