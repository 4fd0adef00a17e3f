"""Running a sweep: the shared random baseline, each Tune trial (a whole raal experiment reporting after every
round), and Ray Tune around them (restored when the sweep folder holds an interrupted sweep)."""
from __future__ import annotations

import math
import os
import posixpath
import shutil

import pyarrow.fs as pafs

from raal import layout
from raal.config import RunConfig, to_dict
from raal.metrics import saving_curve
from raal.pipelines.experiment import Experiment, arm_specs, start_driver
from raal.store import RunStore
from raal.tracking import tune_callbacks
from raal.tune.plan import Plan, _join, trial_config
from raal.tune.spec import SweepSpec, fmt_params


def curve_of(rows: list[dict]) -> list[tuple[float, float]]:
    return [(float(r["n_labeled"]), float(r["accuracy"]) if r.get("accuracy") is not None else math.nan)
            for r in rows]


def trial_metrics(rows: list[dict], baseline_curve: list[tuple[float, float]], cfg: RunConfig) -> dict:
    """What a trial reports after each round: the objective and what explains it."""

    exclude = [bool(r.get("random_only")) for r in rows] if cfg.metrics.exclude_random_rounds else None
    res = saving_curve(baseline_curve, curve_of(rows), exclude=exclude)
    last = rows[-1]
    return {"saving_ratio": float(res.mean), "accuracy": float(last.get("accuracy", math.nan)),
            "n_labeled": int(last["n_labeled"]), "round": int(last["round"]),
            "refreshes": int(sum(bool(r.get("refreshed")) for r in rows)),
            "extrapolated": int(res.n_extrapolated),  # counted apart: the mean uses interpolated rounds only
            "t_total_s": float(sum(float(r.get("t_round") or 0.0) for r in rows))}


def share_features(src_dir: str, dst_dir: str) -> int:
    """Give a trial's run store the baseline's v0 feature sets (same data and backbone): hard links on a local
    disk, copies on an object store. Returns the number of files shared; an existing destination is left alone."""

    src, dst = RunStore(src_dir), RunStore(dst_dir)
    v0 = layout.feature_version(0)
    if not src.exists(v0) or dst.exists(v0):
        return 0

    n = 0
    staging = f"{layout.FEATURES}/{dst.tmp_name()}"
    for entry in src.fs.get_file_info(pafs.FileSelector(src.path(v0), recursive=True)):
        if entry.type != pafs.FileType.File or "/.tmp-" in entry.path:
            continue
        rel = entry.path[len(src.path(v0)):].lstrip("/")
        target = dst.path(f"{staging}/{rel}")
        dst.fs.create_dir(posixpath.dirname(target), recursive=True)
        if src.is_local and dst.is_local:
            try:
                os.link(entry.path, target)
            except OSError:
                shutil.copyfile(entry.path, target)
        else:
            src.fs.copy_file(entry.path, target)
        n += 1
    if dst.is_local:  # one rename makes the set appear whole or not at all
        os.replace(dst.path(staging), dst.path(v0))
    else:  # object stores: per-object moves; the manifest's checksums catch a partial copy
        for entry in dst.fs.get_file_info(pafs.FileSelector(dst.path(staging), recursive=True)):
            if entry.type == pafs.FileType.File:
                rel = entry.path[len(dst.path(staging)):].lstrip("/")
                dst.fs.move(entry.path, dst.path(f"{v0}/{rel}"))
    if src.exists(layout.FEATURE_TIMING) and not dst.exists(layout.FEATURE_TIMING):
        dst.write_bytes(layout.FEATURE_TIMING, src.read_bytes(layout.FEATURE_TIMING))
    return n


def run_trial(config: dict, *, base: RunConfig, root: str, baseline_dir: str,
              baseline_curve: list[tuple[float, float]], data=None) -> None:
    """One Tune trial: a whole raal experiment (Experiment API) in trials/trial_NNN, reporting after every round.

    Reserves only `tune.cpu` itself; the experiment's Ray Data and Ray Train work asks Ray for its own resources
    (a trial that holds CPUs itself and then launches Data/Train work waits forever on a small machine).
    """
    from ray import tune


    index, params = int(config["trial"]["index"]), dict(config["trial"]["params"])
    cfg = trial_config(base, params, root, index)
    if to_dict(cfg)["data"] == to_dict(base)["data"] and to_dict(cfg)["model"] == to_dict(base)["model"]:
        share_features(baseline_dir, cfg.run_dir)
    exp = Experiment(cfg, data)  # the data the sweep loaded once (data.* is not sweepable)
    exp.prepare()
    main = exp.arms[0].arm.name
    rows: list[dict] = []
    metrics: dict = {}

    def report(r: int, round_rows: dict[str, dict]) -> None:
        if main in round_rows:
            rows.append(round_rows[main])
            metrics.update(trial_metrics(rows, baseline_curve, cfg), final_accuracy=math.nan)
            tune.report(dict(metrics))

    finals = exp.run(on_round=report)
    if main in finals:
        metrics["final_accuracy"] = float(finals[main]["accuracy"])
        tune.report(dict(metrics))


def run_baseline(cfg: RunConfig) -> list[tuple[float, float]]:
    """Run (or finish, or just read) the shared random baseline in its driver actor; returns its curve."""
    import ray


    driver = start_driver(cfg)  # loads the data itself, so that Ray can restart it
    try:
        info = ray.get(driver.prepare.remote())
        n = ray.get(driver.num_rounds.remote())
        first = info["completed_rounds"]
        todo = "complete" if first >= n else f"rounds {first}..{n - 1} to run"
        print(f"raal.tune: baseline {info['arms'][0]} in {cfg.run_dir}: {todo}", flush=True)
        ray.get(driver.run.remote())  # Experiment.run (its final model is off: eval.final=none)
    finally:
        ray.kill(driver)
    name = arm_specs(cfg)[0].name
    rows = RunStore(cfg.run_dir).child(layout.arm(name)).read_table(layout.ROUNDS).to_pylist()
    return curve_of(rows)


def _printer(plan: Plan):
    """A Tune callback printing one line when a trial ends (Tune's own tables are off by default)."""
    from ray.tune import Callback

    class Printer(Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            res = trial.last_result or {}
            idx = trial.config["trial"]["index"]
            print(f"raal.tune: trial {idx:03d} {fmt_params(plan.params[idx])}: done, "
                  f"{res.get('n_labeled', '-')} labels, accuracy {res.get('accuracy', math.nan):.4f}, "
                  f"saving ratio {res.get('saving_ratio', math.nan):.4f}", flush=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            idx = trial.config["trial"]["index"]
            print(f"raal.tune: trial {idx:03d} {fmt_params(plan.params[idx])}: ERROR (see "
                  f"{_join(plan.root, 'tune')})", flush=True)

    return Printer()


def _concurrency(spec: SweepSpec, n_trials: int) -> int:
    import ray

    if spec.max_concurrent_trials:
        return min(spec.max_concurrent_trials, n_trials)
    return max(1, min(n_trials, int(ray.cluster_resources().get("CPU", 1.0) // 4)))


def run_sweep(plan: Plan, data=None):
    """Baseline, then the trials through Ray Tune (restored when the sweep folder holds an interrupted one)."""
    from ray import tune

    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")  # trials keep the driver's cwd (relative data paths)
    baseline_curve = run_baseline(plan.baseline)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=plan.base, root=plan.root, baseline_dir=plan.baseline.run_dir,
                             baseline_curve=baseline_curve, data=data),
        {"cpu": plan.spec.cpu, "gpu": plan.spec.gpu})
    space = {"trial": tune.grid_search([{"index": i, "params": p} for i, p in enumerate(plan.params)])}
    tune_path = _join(plan.root, layout.TUNE)
    if tune.Tuner.can_restore(tune_path):
        print(f"raal.tune: restoring the interrupted sweep in {tune_path}", flush=True)
        tuner = tune.Tuner.restore(tune_path, trainable, resume_unfinished=True, resume_errored=True)
    else:
        name_of = lambda t: f"trial_{t.config['trial']['index']:03d}"  # noqa: E731
        tuner = tune.Tuner(
            trainable, param_space=space,
            tune_config=tune.TuneConfig(metric=plan.spec.metric, mode=plan.spec.mode,
                                        max_concurrent_trials=_concurrency(plan.spec, len(plan.params)),
                                        trial_name_creator=name_of, trial_dirname_creator=name_of),
            run_config=tune.RunConfig(name=layout.TUNE, storage_path=plan.root, verbose=plan.spec.verbose,
                                      failure_config=tune.FailureConfig(max_failures=plan.spec.max_failures),
                                      callbacks=[_printer(plan), *tune_callbacks(plan.base, plan.root,
                                                                                 plan.spec.name)]))
    grid = tuner.fit()
    status = {}
    for res in grid:
        idx = int(res.config["trial"]["index"])
        status[idx] = ("ERROR", _first_line(res.error)) if res.error is not None else ("TERMINATED", "")
    return baseline_curve, status


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return (lines[-1] if lines else type(err).__name__)[:300]
