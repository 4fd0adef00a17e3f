"""The sweep itself: the `tune:` section of a sweep file, the command line over it, and the trial list.

Trial lists are expanded here, not by Tune's samplers: random draws are seeded (`tune.seed`), so trial NNN has the
same parameters (and the same run dir) however often the sweep is restarted.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from raal.config import check_yaml_text, conf_dir
from raal.errors import ConfigError

KINDS = ("grid", "choice", "uniform", "loguniform", "randint")
METRICS = {"saving_ratio": "max", "accuracy": "max", "final_accuracy": "max"}
# Managed by the sweep itself, or shared by construction with the baseline: not sweepable.
FORBIDDEN_PREFIXES = ("run_dir", "name", "report", "al.baseline", "al.compare", "ray.", "data.", "model.")
# May change between an interrupted sweep and its resume.
OPERATIONAL = ("cpu", "gpu", "max_concurrent_trials", "max_failures", "dir", "verbose")


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


def sweep_path(name: str) -> Path:
    p = Path(name)
    if p.suffix in (".yaml", ".yml") or "/" in name:
        return p
    return conf_dir() / f"{name}.yaml"


def _parse_value(text: str) -> Any:
    """A command-line value the way OmegaConf's dotlist reads it (YAML scalars and flow lists)."""

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def load_sweep(name: str, cli: list[str] | None = None) -> tuple[SweepSpec, list[str]]:
    """(sweep spec, run-config overrides) from a sweep file plus command-line arguments; ConfigError on mistakes."""

    path = sweep_path(name)
    if not path.is_file():
        raise ConfigError(f"conf={name}: no sweep file {path}")
    check_yaml_text(path.read_text(encoding="utf-8", errors="replace"), f"conf={name}: {path}")
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
                check_yaml_text(value, key)  # bounded before YAML reads it (aliases, interpolations)
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
        full_key = getattr(err, "full_key", None)
        msg = str(err).strip().splitlines()[0]
        raise ConfigError(f"tune.{full_key}: {msg}" if full_key else f"tune: {msg}") from err
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


def fmt_params(p: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in p.items())
