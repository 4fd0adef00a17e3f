"""`python -m raal.tune conf=NAME [key=value …] [tune.key=value …]` — a Ray Tune sweep of raal runs.

A sweep varies config keys (grid and random search over e.g. `asvp.threshold`, `al.schedule`, `al.strategy`,
`proxy.lr`); every trial is a full raal experiment in its own run dir, scored by its mean sample saving ratio
against ONE random baseline that the sweep runs first and shares. Layout of the sweep folder:

    SWEEP/sweep.json           the resolved sweep (spec, base config, trial list): a resume must match it
    SWEEP/baseline/            run store of the random baseline (its v0 features are shared with every trial)
    SWEEP/trials/trial_NNN/    run store of trial NNN
    SWEEP/tune/                Ray Tune's experiment folder (Tuner.restore)
    SWEEP/results.{parquet,csv,md}, SWEEP/best.yaml, SWEEP/best.json

Trial lists are expanded here, not by Tune's samplers: random draws are seeded (`tune.seed`), so trial NNN has
the same parameters and the same run dir however often the sweep is restarted, and an interrupted sweep resumes
through `Tuner.restore` with every trial continuing from its last committed round.

Sweep files (`conf/tune_*.yaml`) hold one `tune:` section (see `SweepSpec`); every other `key=value` on the command
line overrides the run config of all trials, `tune.key=value` the sweep settings, and `tune.grid.KEY=[…]`,
`tune.choice.KEY=[…]`, `tune.uniform.KEY=[lo,hi]`, `tune.loguniform.KEY=[lo,hi]`, `tune.randint.KEY=[lo,hi]`
one swept key (replacing the file's spec of that key).
"""
from __future__ import annotations

import copy
import itertools
import json
import logging
import math
import os
import posixpath
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from raal import layout
from raal.config import RunConfig, conf_dir, diff_keys, load_config, parse_schedule, to_dict, to_yaml, validate
from raal.errors import ConfigError, StoreError
from raal.tracking import tune_callbacks

log = logging.getLogger("raal.tune")

KINDS = ("grid", "choice", "uniform", "loguniform", "randint")
METRICS = {"saving_ratio": "max", "accuracy": "max", "final_accuracy": "max"}
# Managed by the sweep itself, or shared by construction with the baseline: not sweepable.
FORBIDDEN_PREFIXES = ("run_dir", "name", "report", "al.baseline", "al.compare", "ray.", "data.", "model.")
# May change between an interrupted sweep and its resume.
OPERATIONAL = ("cpu", "gpu", "max_concurrent_trials", "max_failures", "dir", "verbose")

USAGE = """usage: python -m raal.tune conf=SWEEP [key=value ...] [tune.key=value ...]

SWEEP is conf/SWEEP.yaml (or a path to a .yaml file) with a `tune:` section. key=value overrides the run config of
every trial; tune.key=value the sweep (tune.num_samples=4, tune.dir=..., tune.cpu=0.01, tune.max_concurrent_trials=1);
tune.grid.KEY=[a,b] / tune.choice.KEY=[a,b] / tune.uniform.KEY=[lo,hi] / tune.loguniform.KEY=[lo,hi] /
tune.randint.KEY=[lo,hi] sweeps KEY. Re-running the same command resumes an interrupted sweep.
"""


@dataclass
class SweepSpec:
    """The `tune:` section of a sweep file."""

    experiment: str = "demo"  # the run config (conf/NAME.yaml) every trial starts from
    overrides: list[str] = field(default_factory=list)  # key=value applied to every trial (and the baseline)
    params: dict[str, Any] = field(default_factory=dict)  # KEY: {grid|choice|uniform|loguniform|randint: [...]}
    num_samples: int = 1  # random draws per grid point
    seed: int = 0  # seeds the random draws
    metric: str = "saving_ratio"  # saving_ratio | accuracy (last round) | final_accuracy (eval.final)
    mode: str = ""  # max | min ("" = max)
    cpu: float = 0.01  # Ray resources each trial reserves for itself; its Ray Data / Ray Train work asks for more
    gpu: float = 0.0
    max_concurrent_trials: int = 0  # 0 = auto: cluster CPUs // 4, at least 1 (1 on a 2-core machine)
    max_failures: int = 1  # retries of a failed trial (it resumes from its run store)
    dir: str = ""  # the sweep folder, local or a pyarrow.fs URI ("" = runs/sweeps/<name>)
    name: str = ""  # "" = the sweep file's name
    verbose: int = 0  # Ray Tune's own console output (0-2); raal prints one line per trial either way


# ---------------------------------------------------------------------------------------------------------------
# The sweep file and the command line
# ---------------------------------------------------------------------------------------------------------------

def sweep_path(name: str) -> Path:
    p = Path(name)
    if p.suffix in (".yaml", ".yml") or "/" in name:
        return p
    return conf_dir() / f"{name}.yaml"


def _parse_value(text: str) -> Any:
    """A command-line value the way OmegaConf's dotlist reads it (YAML scalars and flow lists)."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def load_sweep(name: str, cli: list[str] | None = None) -> tuple[SweepSpec, list[str]]:
    """(sweep spec, run-config overrides) from a sweep file plus command-line arguments; ConfigError on mistakes."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    path = sweep_path(name)
    if not path.is_file():
        raise ConfigError(f"conf={name}: no sweep file {path}")
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as err:
        raise ConfigError(f"conf={name}: {path} is not valid YAML: {str(err).splitlines()[0]}") from err
    if not isinstance(raw, dict) or set(raw) != {"tune"} or not isinstance(raw["tune"], dict):
        raise ConfigError(f"conf={name}: a sweep file holds exactly one `tune:` mapping (found keys "
                          f"{sorted(raw) if isinstance(raw, dict) else type(raw).__name__}); run configs go "
                          "to python -m raal.run")
    section = dict(raw["tune"])
    params = dict(section.pop("params", None) or {})
    run_overrides: list[str] = []
    tune_dotlist: list[str] = []
    for item in cli or []:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"{item!r}: arguments look like key=value (or conf=NAME)")
        key, value = item.split("=", 1)
        if key.startswith("tune."):
            rest = key[len("tune."):]
            kind, _, pkey = rest.partition(".")
            if kind in KINDS and pkey:
                params[pkey] = {kind: _parse_value(value)}
            elif kind == "params":
                raise ConfigError(f"{item!r}: sweep a key with tune.grid.KEY=[…] (or choice/uniform/loguniform/"
                                  "randint)")
            else:
                tune_dotlist.append(f"{rest}={value}")
        else:
            run_overrides.append(item)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(SweepSpec), OmegaConf.create(section),
                                 OmegaConf.from_dotlist(tune_dotlist))
        spec: SweepSpec = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        msg = str(err).strip().splitlines()[0]
        raise ConfigError(f"tune.{key}: {msg}" if key else f"tune: {msg}") from err
    spec.params = params
    spec.name = spec.name or path.stem
    spec.overrides = [str(o) for o in spec.overrides] + run_overrides
    check_spec(spec)
    return spec, spec.overrides


def check_spec(spec: SweepSpec) -> None:
    """Shape of every parameter spec and setting; the values themselves are checked against the run config."""
    if spec.metric not in METRICS:
        raise ConfigError(f"tune.metric={spec.metric!r} is not allowed; allowed: {', '.join(METRICS)}")
    spec.mode = spec.mode or METRICS[spec.metric]
    if spec.mode not in ("max", "min"):
        raise ConfigError(f"tune.mode={spec.mode!r} is not allowed; allowed: max, min")
    if spec.num_samples < 1:
        raise ConfigError(f"tune.num_samples={spec.num_samples} must be >= 1")
    if not spec.cpu > 0 or spec.gpu < 0:
        raise ConfigError(f"tune.cpu={spec.cpu} must be > 0 (Ray rejects 0; use 0.01) and tune.gpu={spec.gpu} >= 0")
    if spec.max_concurrent_trials < 0 or spec.max_failures < 0:
        raise ConfigError("tune.max_concurrent_trials and tune.max_failures must be >= 0")
    if not spec.params:
        raise ConfigError("tune.params is empty: nothing to sweep (e.g. tune.grid.asvp.threshold=[0.5,1,2])")
    for key, p in spec.params.items():
        if any(key == f or key.startswith(f if f.endswith(".") else f + ".") for f in FORBIDDEN_PREFIXES):
            raise ConfigError(f"tune.params.{key}: not sweepable (the sweep manages run dirs and the shared "
                              f"baseline, so {', '.join(FORBIDDEN_PREFIXES)} stay fixed)")
        if not isinstance(p, dict) or len(p) != 1 or next(iter(p)) not in KINDS:
            raise ConfigError(f"tune.params.{key}={p!r}: expected one of {{{': …, '.join(KINDS)}: …}}")
        kind, values = next(iter(p.items()))
        if not isinstance(values, list) or not values:
            raise ConfigError(f"tune.params.{key}.{kind}={values!r}: expected a non-empty list")
        if kind in ("uniform", "loguniform", "randint"):
            ok = len(values) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
            if not ok or not values[0] < values[1] or (kind == "loguniform" and values[0] <= 0):
                raise ConfigError(f"tune.params.{key}.{kind}={values!r}: expected [low, high] with low < high"
                                  f"{' and low > 0' if kind == 'loguniform' else ''}")
            if key in ("al.schedule", "al.initial", "al.strategy", "al.pipeline"):
                raise ConfigError(f"tune.params.{key}: use grid or choice for this key")
    if spec.num_samples > 1 and all(next(iter(p)) == "grid" for p in spec.params.values()):
        raise ConfigError("tune.num_samples > 1 with only grid params repeats identical trials; add a random "
                          "param (choice/uniform/…) or grid over al.seed")


def expand_trials(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every trial's parameters: the grid's cross product × num_samples seeded random draws, in a fixed order."""
    grid = [(k, next(iter(p.values()))) for k, p in spec.params.items() if next(iter(p)) == "grid"]
    rand = [(k, *next(iter(p.items()))) for k, p in spec.params.items() if next(iter(p)) != "grid"]
    rng = np.random.default_rng(spec.seed)
    trials = []
    for point in itertools.product(*[v for _, v in grid]):
        for _ in range(spec.num_samples):
            params = {k: _native(v) for (k, _), v in zip(grid, point)}
            for key, kind, values in rand:
                if kind == "choice":
                    params[key] = _native(values[int(rng.integers(len(values)))])
                elif kind == "uniform":
                    params[key] = float(rng.uniform(values[0], values[1]))
                elif kind == "loguniform":
                    params[key] = float(math.exp(rng.uniform(math.log(values[0]), math.log(values[1]))))
                else:
                    params[key] = int(rng.integers(int(values[0]), int(values[1])))
            trials.append(params)
    return trials


def _native(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, (list, tuple)):
        return [_native(x) for x in v]
    return v


def apply_params(base: RunConfig, params: dict[str, Any]) -> RunConfig:
    """The base config with each dotted key set to its value, typed by the schema and validated."""
    from omegaconf import DictConfig, ListConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    dc = OmegaConf.structured(base)
    for key, value in params.items():
        try:
            node = OmegaConf.select(dc, key, throw_on_missing=False)
        except OmegaConfBaseException:
            node = None
        parent_key, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(dc, parent_key) if parent_key else dc
        if not isinstance(parent, DictConfig) or leaf not in parent:
            raise ConfigError(f"tune.params.{key}: no such config key")
        if isinstance(node, DictConfig):
            raise ConfigError(f"tune.params.{key}: names a whole section; sweep its keys")
        try:
            OmegaConf.update(dc, key, ListConfig(value) if isinstance(value, list) else value, merge=False)
        except OmegaConfBaseException as err:
            raise ConfigError(f"tune.params.{key}={value!r}: {str(err).strip().splitlines()[0]}") from err
    try:
        cfg: RunConfig = OmegaConf.to_object(dc)  # type: ignore[assignment]
    except OmegaConfBaseException as err:
        raise ConfigError(f"tune.params: {str(err).strip().splitlines()[0]}") from err
    validate(cfg)
    return cfg


# ---------------------------------------------------------------------------------------------------------------
# The plan: base, baseline and trial configs
# ---------------------------------------------------------------------------------------------------------------

def _join(root: str, *parts: str) -> str:
    return posixpath.join(root, *parts) if "://" in root else os.path.join(root, *parts)


def sweep_dir(spec: SweepSpec) -> str:
    d = spec.dir or os.path.join("runs", "sweeps", spec.name)
    return d if "://" in d else os.path.abspath(os.path.expanduser(d))


def label_points(cfg: RunConfig) -> list[int]:
    """Cumulative labeled-set sizes after each round."""
    return np.cumsum([cfg.al.initial] + parse_schedule(cfg.al.schedule)).astype(int).tolist()


def trial_config(base: RunConfig, params: dict[str, Any], root: str, index: int) -> RunConfig:
    cfg = apply_params(base, params)
    cfg.al.baseline = False  # the sweep's shared baseline replaces each trial's own
    cfg.al.compare = []
    cfg.report = False
    cfg.name = f"{base.name}-trial{index:03d}"
    cfg.run_dir = _join(root, "trials", f"trial_{index:03d}")
    return cfg


def baseline_config(base: RunConfig, trials: list[RunConfig], root: str) -> RunConfig:
    """The random arm alone, on label counts that cover every trial's (so no trial reads its curve by extrapolation
    only because its schedule differs)."""
    cfg = copy.deepcopy(base)
    cfg.al.pipeline = base.al.baseline_pipeline or "svpp"
    cfg.al.strategy = "random"
    cfg.al.compare = []
    cfg.al.baseline = True
    cfg.eval.final = "none"
    cfg.report = False
    cfg.name = f"{base.name}-baseline"
    cfg.run_dir = _join(root, "baseline")
    points = sorted({n for t in trials for n in label_points(t)})
    if points != label_points(base):
        steps = np.diff(points).astype(int).tolist()
        cfg.al.initial = int(points[0])
        cfg.al.schedule = f"[{','.join(str(s) for s in steps)}]" if steps else ""
    validate(cfg)
    return cfg


@dataclass
class Plan:
    spec: SweepSpec
    root: str
    base: RunConfig
    baseline: RunConfig
    params: list[dict[str, Any]]
    trials: list[RunConfig]

    def identity(self) -> dict:
        """What a resume must match (operational settings excluded)."""
        spec = {k: v for k, v in asdict(self.spec).items() if k not in OPERATIONAL}
        return {"spec": spec, "base": to_dict(self.base), "trials": self.params}


def make_plan(name: str, cli: list[str] | None = None) -> Plan:
    """The sweep file, the base config, each trial's config and the baseline's, all validated (no data loaded)."""
    spec, overrides = load_sweep(name, cli)
    base = load_config(spec.experiment, overrides)
    if base.eval.every_round == "none":
        raise ConfigError("eval.every_round=none: a sweep needs per-round accuracies to compute saving ratios")
    root = sweep_dir(spec)
    params = expand_trials(spec)
    trials = [trial_config(base, p, root, i) for i, p in enumerate(params)]
    baseline = baseline_config(base, trials, root)
    return Plan(spec, root, base, baseline, params, trials)


def check_pool(plan: Plan) -> None:
    """Every trial's budget (and the baseline's) fits in the pool: loads the data source, before Ray starts."""
    from raal.config import validate_against_pool
    from raal.data.sources import load_data

    pool = len(load_data(plan.base.data).pool)
    for cfg in plan.trials + [plan.baseline]:
        validate_against_pool(cfg, pool)


def check_sweep_folder(plan: Plan) -> bool:
    """True if the sweep folder holds this sweep already (a resume); refuses another sweep, naming the keys."""
    from raal.store import RunStore

    store = RunStore(plan.root)
    ident = json.loads(json.dumps(plan.identity(), default=str))
    if store.exists(layout.SWEEP):
        old = store.read_json(layout.SWEEP)
        differ = diff_keys(_flat(old), _flat(ident))
        if differ:
            raise ConfigError(f"tune.dir={plan.root!r} holds a different sweep; differing keys: "
                              f"{', '.join(differ[:8])}{' …' if len(differ) > 8 else ''} (use another tune.dir)")
        return True
    store.write_json(layout.SWEEP, ident)
    return False


def _flat(d: dict) -> dict:
    """Trial lists compared as a dict (index -> params) so diff_keys names the trial."""
    out = dict(d)
    out["trials"] = {str(i): p for i, p in enumerate(d.get("trials", []))}
    return out


# ---------------------------------------------------------------------------------------------------------------
# Inside a trial
# ---------------------------------------------------------------------------------------------------------------

def curve_of(rows: list[dict]) -> list[tuple[float, float]]:
    return [(float(r["n_labeled"]), float(r["accuracy"]) if r.get("accuracy") is not None else math.nan)
            for r in rows]


def trial_metrics(rows: list[dict], baseline_curve: list[tuple[float, float]], cfg: RunConfig) -> dict:
    """What a trial reports after each round: the objective and what explains it."""
    from raal.metrics import saving_curve

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
    from raal.store import RunStore

    src, dst = RunStore(src_dir), RunStore(dst_dir)
    v0 = layout.feature_version(0)
    if not src.exists(v0) or dst.exists(v0):
        return 0
    import pyarrow.fs as pafs

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
              baseline_curve: list[tuple[float, float]]) -> None:
    """One Tune trial: a whole raal experiment (Experiment API) in trials/trial_NNN, reporting after every round.

    Reserves only `tune.cpu` itself; the experiment's Ray Data and Ray Train work asks Ray for its own resources
    (ray-notes: a trial holding CPUs that launches Data/Train work hangs on small machines).
    """
    from ray import tune

    from raal.pipelines.experiment import Experiment

    index, params = int(config["trial"]["index"]), dict(config["trial"]["params"])
    cfg = trial_config(base, params, root, index)
    if to_dict(cfg)["data"] == to_dict(base)["data"] and to_dict(cfg)["model"] == to_dict(base)["model"]:
        share_features(baseline_dir, cfg.run_dir)
    exp = Experiment(cfg)
    exp.prepare()
    main = exp.arms[0].arm.name
    rows: list[dict] = []
    metrics: dict = {}
    for r in range(exp.num_rounds):
        row = exp.run_round(r).get(main)
        if row is None:
            continue
        rows.append(row)
        metrics = trial_metrics(rows, baseline_curve, cfg)
        metrics["final_accuracy"] = math.nan
        tune.report(metrics)
    finals = exp.finalize()
    if main in finals:
        metrics["final_accuracy"] = float(finals[main]["accuracy"])
        tune.report(metrics)


# ---------------------------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------------------------

def run_baseline(cfg: RunConfig) -> list[tuple[float, float]]:
    """Run (or finish, or just read) the shared random baseline in its driver actor; returns its curve."""
    import ray

    from raal.pipelines.experiment import arm_specs, start_driver
    from raal.store import RunStore

    driver = start_driver(cfg)
    try:
        info = ray.get(driver.prepare.remote())
        n = ray.get(driver.num_rounds.remote())
        first = info["completed_rounds"]
        todo = "complete" if first >= n else f"rounds {first}..{n - 1} to run"
        print(f"raal.tune: baseline {info['arms'][0]} in {cfg.run_dir}: {todo}", flush=True)
        for r in range(n):
            ray.get(driver.run_round.remote(r))
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
            print(f"raal.tune: trial {idx:03d} {_fmt_params(plan.params[idx])}: done, "
                  f"{res.get('n_labeled', '-')} labels, accuracy {res.get('accuracy', math.nan):.4f}, "
                  f"saving ratio {res.get('saving_ratio', math.nan):.4f}", flush=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            idx = trial.config["trial"]["index"]
            print(f"raal.tune: trial {idx:03d} {_fmt_params(plan.params[idx])}: ERROR (see "
                  f"{_join(plan.root, 'tune')})", flush=True)

    return Printer()


def _fmt_params(p: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in p.items())


def _concurrency(spec: SweepSpec, n_trials: int) -> int:
    import ray

    if spec.max_concurrent_trials:
        return min(spec.max_concurrent_trials, n_trials)
    return max(1, min(n_trials, int(ray.cluster_resources().get("CPU", 1.0) // 4)))


def run_sweep(plan: Plan):
    """Baseline, then the trials through Ray Tune (restored when the sweep folder holds an interrupted one)."""
    from ray import tune

    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")  # trials keep the driver's cwd (relative data paths)
    baseline_curve = run_baseline(plan.baseline)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=plan.base, root=plan.root, baseline_dir=plan.baseline.run_dir,
                             baseline_curve=baseline_curve),
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


# ---------------------------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------------------------

def collect_results(plan: Plan, baseline_curve: list[tuple[float, float]],
                    status: dict[int, tuple[str, str]]) -> list[dict]:
    """One row per trial, read from the trial run stores (the durable record), sorted best first."""
    from raal.pipelines.experiment import arm_specs
    from raal.store import RunStore

    rows = []
    for i, (params, cfg) in enumerate(zip(plan.params, plan.trials)):
        arm = arm_specs(cfg)[0].name
        store = RunStore(cfg.run_dir).child(layout.arm(arm))
        rounds = store.read_table(layout.ROUNDS).to_pylist() if store.exists(layout.ROUNDS) else []
        state, error = status.get(i, ("NOT_RUN", ""))
        row = {"trial": i, **{f"param:{k}": _cell(v) for k, v in params.items()}, "status": state,
               "arm": arm, "rounds": len(rounds)}
        m = trial_metrics(rounds, baseline_curve, cfg) if rounds else {}
        for key in ("saving_ratio", "accuracy", "n_labeled", "refreshes", "extrapolated", "t_total_s"):
            row[key] = m.get(key, math.nan)
        final = store.read_json(layout.FINAL)["accuracy"] if store.exists(layout.FINAL) else math.nan
        row["final_accuracy"] = float(final)
        row["run_dir"] = cfg.run_dir
        row["error"] = error
        rows.append(row)
    metric, sign = plan.spec.metric, (-1.0 if plan.spec.mode == "max" else 1.0)
    rows.sort(key=lambda r: (r["status"] != "TERMINATED", not np.isfinite(r[metric]),
                             sign * r[metric] if np.isfinite(r[metric]) else 0.0, r["trial"]))
    return rows


def _cell(v: Any) -> Any:
    return json.dumps(v) if isinstance(v, (list, dict)) else v


def markdown_table(rows: list[dict], metric: str) -> str:
    if not rows:
        return "(no trials)\n"
    cols = [c for c in rows[0] if c not in ("run_dir", "arm")]

    def fmt(c: str, v: Any) -> str:
        if isinstance(v, float):
            if not np.isfinite(v):
                return "–"
            if c.startswith("param:"):
                return f"{v:g}"
            return f"{v:.1f}" if c == "t_total_s" else f"{v:.0f}" if c in ("n_labeled", "refreshes",
                                                                          "extrapolated") else f"{v:.4f}"
        return str(v).replace("|", "\\|")

    head = "| " + " | ".join(c.removeprefix("param:") if c != metric else f"**{c}**" for c in cols) + " |"
    sep = "|" + "|".join("---:" if isinstance(rows[0][c], (int, float)) else "---" for c in cols) + "|"
    body = ["| " + " | ".join(fmt(c, r[c]) for c in cols) + " |" for r in rows]
    return "\n".join([head, sep, *body]) + "\n"


def write_results(plan: Plan, rows: list[dict], baseline_curve: list[tuple[float, float]]) -> dict | None:
    """results.parquet / .csv / .md and, if a trial finished with a finite objective, best.yaml + best.json."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    from raal.store import RunStore

    store = RunStore(plan.root)
    cols = list(rows[0]) if rows else []
    table = pa.table({c: [r[c] for r in rows] for c in cols})
    store.write_table(layout.results("parquet"), table)
    buf = pa.BufferOutputStream()
    pacsv.write_csv(table, buf)
    store.write_bytes(layout.results("csv"), buf.getvalue().to_pybytes())
    metric = plan.spec.metric
    best = next((r for r in rows if r["status"] == "TERMINATED" and np.isfinite(r[metric])), None)
    md = [f"# Sweep {plan.spec.name}", "",
          f"Base config `{plan.spec.experiment}` with {', '.join(plan.spec.overrides) or 'no overrides'}; "
          f"objective `{metric}` ({plan.spec.mode}); {len(rows)} trials; random baseline "
          f"`{plan.baseline.al.pipeline}_random` in `{plan.baseline.run_dir}` "
          f"({len(baseline_curve)} points, shared by every trial).", "", markdown_table(rows, metric)]
    if best is not None:
        md.append(f"Best: trial {best['trial']:03d} ({_fmt_params(plan.params[best['trial']])}), "
                  f"{metric} = {best[metric]:.4f}; its full config is best.yaml.\n")
    store.write_text(layout.results("md"), "\n".join(md))
    if best is None:
        return None
    info = {"trial": best["trial"], "params": plan.params[best["trial"]], "metric": metric,
            "value": best[metric], "run_dir": best["run_dir"], "sweep": plan.spec.name}
    store.write_json(layout.best("json"), info)
    store.write_text(layout.best("yaml"), to_yaml(plan.trials[best["trial"]]))
    return info


# ---------------------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE)
        return 0
    logging.basicConfig(level=os.environ.get("RAAL_LOG", "INFO"), format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    names = [a.split("=", 1)[1] for a in argv if a.startswith("conf=")]
    rest = [a for a in argv if not a.startswith("conf=")]
    try:
        if not names:
            raise ConfigError("conf=SWEEP is required (e.g. conf=tune_demo); see --help")
        bad = [a for a in rest if a.startswith("-")]
        if bad:
            raise ConfigError(f"{bad[0]}: unknown option; use --help, conf=SWEEP, key=value or tune.key=value")
        plan = make_plan(names[-1], rest)
        check_pool(plan)
        resumed = check_sweep_folder(plan)
    except (ConfigError, StoreError) as err:
        print(f"raal.tune: error: {err}", file=sys.stderr)
        return 2
    import ray

    from raal.raylocal import init_local_ray

    print(f"raal.tune: sweep {plan.spec.name} in {plan.root}: {len(plan.params)} trials"
          f"{' (resuming)' if resumed else ''}", flush=True)
    t0 = time.perf_counter()
    started_here = not ray.is_initialized()
    init_local_ray(plan.base.ray.num_cpus or None, address=plan.base.ray.address or None)
    try:
        baseline_curve, status = run_sweep(plan)
    finally:
        if started_here:
            ray.shutdown()
    rows = collect_results(plan, baseline_curve, status)
    best = write_results(plan, rows, baseline_curve)
    print()
    print(markdown_table(rows, plan.spec.metric))
    if best:
        print(f"raal.tune: best trial {best['trial']:03d} ({_fmt_params(best['params'])}): {best['metric']} = "
              f"{best['value']:.4f} -> {_join(plan.root, layout.best('yaml'))}")
    print(f"raal.tune: results in {_join(plan.root, layout.results('md'))} ({time.perf_counter() - t0:.0f} s)")
    failed = [r for r in rows if r["status"] != "TERMINATED"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
