"""The plan of a sweep: the base config, every trial's config and the shared random baseline's, all validated
before any work (no data loaded but the pool's size), and the sweep folder's identity for a resume."""
from __future__ import annotations

import json
import os
import posixpath
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from raal import layout
from raal.config import (
    RunConfig,
    apply_overrides,
    diff_keys,
    load_config,
    parse_schedule,
    to_dict,
    validate_against_pool,
)
from raal.data.sources import load_data
from raal.errors import ConfigError
from raal.store import RunStore
from raal.tune.spec import OPERATIONAL, SweepSpec, expand_trials, load_sweep


def apply_params(base: RunConfig, params: dict[str, Any]) -> RunConfig:
    """The base config with each dotted key set to its value, typed by the schema and validated (the same
    `apply_overrides` as a resume with changed settings)."""
    return apply_overrides(base, params, where="tune.params.")


def _join(root: str, *parts: str) -> str:
    return posixpath.join(root, *parts) if "://" in root else os.path.join(root, *parts)


def sweep_dir(spec: SweepSpec) -> str:
    d = spec.dir or os.path.join("runs", "sweeps", spec.name)
    return d if "://" in d else os.path.abspath(os.path.expanduser(d))


def label_points(cfg: RunConfig) -> list[int]:
    """Cumulative labeled-set sizes after each round."""
    return np.cumsum([cfg.al.initial] + parse_schedule(cfg.al.schedule)).astype(int).tolist()


def trial_config(base: RunConfig, params: dict[str, Any], root: str, index: int) -> RunConfig:
    managed = {"al.baseline": False, "al.compare": [],  # the sweep's shared baseline replaces each trial's own
               "report": False, "name": f"{base.name}-trial{index:03d}",
               "run_dir": _join(root, "trials", f"trial_{index:03d}")}
    return apply_overrides(apply_params(base, params), managed)


def baseline_config(base: RunConfig, trials: list[RunConfig], root: str) -> RunConfig:
    """The random arm alone, on label counts that cover every trial's (so no trial reads its curve by extrapolation
    only because its schedule differs)."""
    changes: dict[str, Any] = {
        "al.pipeline": base.al.baseline_pipeline or "svpp", "al.strategy": "random", "al.compare": [],
        "al.baseline": True, "eval.final": "none", "report": False, "name": f"{base.name}-baseline",
        "run_dir": _join(root, "baseline")}
    points = sorted({n for t in trials for n in label_points(t)})
    if points != label_points(base):
        steps = np.diff(points).astype(int).tolist()
        changes["al.initial"] = int(points[0])
        changes["al.schedule"] = f"[{','.join(str(s) for s in steps)}]" if steps else ""
    return apply_overrides(base, changes)


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
    root = sweep_dir(spec)
    params = expand_trials(spec)
    trials = [trial_config(base, p, root, i) for i, p in enumerate(params)]
    baseline = baseline_config(base, trials, root)
    return Plan(spec, root, base, baseline, params, trials)


def check_pool(plan: Plan):
    """Every trial's budget (and the baseline's) fits in the pool: loads the data source, before Ray starts.
    Returns the loaded data, which the baseline and every trial then use instead of loading it again (`data.*`
    is not sweepable, so it is the same for all of them)."""

    data = load_data(plan.base.data)
    for cfg in plan.trials + [plan.baseline]:
        validate_against_pool(cfg, len(data.pool))
    return data


def check_sweep_folder(plan: Plan) -> bool:
    """True if the sweep folder holds this sweep already (a resume); refuses another sweep, naming the keys."""

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
