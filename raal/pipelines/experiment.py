"""One experiment = several arms (the method, its comparisons, the random baseline) over one pool.

The arms advance round by round in lock-step, so a live run prints one comparable line per round. All state lives
in the run store; `Experiment` can run in the caller's process or inside the driver actor (`DriverActor`), which
Ray restarts (`max_restarts`) and which then continues from the last committed round.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

import numpy as np

from raal import layout, strategies
from raal.config import RunConfig, diff_keys, from_yaml, to_dict, to_yaml, validate_against_pool
from raal.data.sources import Dataset, effective_roots, load_data
from raal.data.transforms import ImageTransform
from raal.data.undecodable import skip_undecodable
from raal.errors import ConfigError
from raal.features import FeatureStore
from raal.labeling.export import export_round
from raal.labeling.oracle import FilesOracle, SimulatedOracle, WaitingForLabels
from raal.pipelines import registry
from raal.pipelines.base import ArmSpec, Context, Pipeline
from raal.pipelines.state import ArmState
from raal.raylocal import quiet_ray_data
from raal.store import RunStore, redact_uri

log = logging.getLogger(__name__)

# Keys that change how a run executes, not what it computes: they may differ on resume.
OPERATIONAL_KEYS = ("run_dir", "report", "ray.", "data.check_images", "embed.num_actors", "embed.batch_size",
                    "embed.device", "proxy.device", "proxy.score_batch_size", "train.num_workers", "train.use_gpu",
                    "train.cpus_per_worker", "train.eval_batch_size", "train.warm", "oracle.allow_partial", "oracle.image_url",
                    "oracle.document_root", "oracle.backend_url", "oracle.annotations", "track.", "log.", "eval.memo_models")


def default_run_dir(cfg: RunConfig) -> str:
    return cfg.run_dir or f"runs/{cfg.name}"


def arm_specs(cfg: RunConfig) -> list[ArmSpec]:
    """The main arm, the comparison arms, then the random baseline (unless the main arm is random already)."""
    arms = [ArmSpec(cfg.al.pipeline, cfg.al.strategy, baseline=cfg.al.strategy == "random")]
    for item in cfg.al.compare:
        p, s = item.split("/")
        arms.append(ArmSpec(p, s, baseline=False))
    if cfg.al.baseline and not any(a.baseline for a in arms):
        arms.append(ArmSpec(cfg.al.baseline_pipeline or "svpp", "random", baseline=True))
    seen, unique = set(), []
    for a in arms:
        if a.name not in seen:
            seen.add(a.name)
            unique.append(a)
    return unique


def validate_arms(specs: list[ArmSpec], classes: dict[str, type[Pipeline]] | None = None) -> None:
    """Each arm's pipeline must exist and supply what its strategy requires (`Pipeline.mismatch`)."""

    classes = registry.classes() if classes is None else classes
    for spec in specs:
        if spec.pipeline not in classes:
            raise ConfigError(f"al.pipeline={spec.pipeline!r} is not available in this build; "
                              f"available: {', '.join(sorted(classes))}")
        pipeline = classes[spec.pipeline]
        problem = pipeline.mismatch(strategies.get(spec.strategy))
        if problem:
            raise ConfigError(f"al.strategy={spec.strategy!r} {problem}; "
                              f"it runs {', '.join(registry.runnable(pipeline))}")


def _operational(key: str) -> bool:
    return any(key.startswith(o) if o.endswith(".") else key == o for o in OPERATIONAL_KEYS)


def check_resume(store: RunStore, cfg: RunConfig) -> bool:
    """True if the store already holds this experiment; refuses a different config, naming the keys."""
    if not store.exists(layout.CONFIG):
        return False
    old = to_dict(from_yaml(store.read_text(layout.CONFIG)))
    new = to_dict(cfg)
    differ = [k for k in diff_keys(old, new) if not _operational(k)]
    if differ:
        raise ConfigError(f"run_dir={redact_uri(store.uri)!r} holds a run with a different config; differing keys: "
                          f"{', '.join(differ)} (use another run_dir, or the same settings to resume)")
    return True


class Experiment:
    """Builds the context and the arms; runs rounds; knows nothing about printing."""

    def __init__(self, cfg: RunConfig, data: Dataset | None = None):
        """`data`: what `load_data(cfg.data)` returns, when the caller loaded it already (a Tune trial gets the
        sweep's through `tune.with_parameters`); otherwise it is loaded here."""
        self.cfg = cfg
        self.store = RunStore(default_run_dir(cfg))
        self.resumed = check_resume(self.store, cfg)
        data = load_data(cfg.data) if data is None else data
        self.undecodable: list[dict] = []
        if cfg.data.skip_undecodable:

            known = (self.store.read_json(layout.UNDECODABLE)
                     if self.resumed and self.store.exists(layout.UNDECODABLE) else None)
            data, self.undecodable = skip_undecodable(data, effective_roots(cfg.data), known)
        validate_against_pool(cfg, len(data.pool))
        classes = registry.classes()
        specs = arm_specs(cfg)
        validate_arms(specs, classes)
        transform = ImageTransform(cfg.data.image_size, tuple(cfg.data.mean), tuple(cfg.data.std),
                                   effective_roots(cfg.data))
        oracle = (FilesOracle(self.store, cfg.oracle.allow_partial) if cfg.oracle.kind == "files"
                  else SimulatedOracle(data.truth))
        self.ctx = Context(cfg=cfg, store=self.store, data=data, oracle=oracle, transform=transform)
        self.waiting: dict | None = None  # the status while a round waits for people's labels
        self.specs = specs
        self.arms: list[Pipeline] = []
        self._classes = classes

    @property
    def num_rounds(self) -> int:
        return max((len(a.sizes()) for a in self.arms), default=len(self.ctx.sizes()))

    def commit_config(self) -> None:
        """Write config.yaml as the first committed step begins (not before: a run that fails before any work
        leaves the run dir reusable with another config). From then on the run dir holds this experiment."""
        if not self.store.exists(layout.CONFIG):
            if self.cfg.data.skip_undecodable:
                self.store.write_json(layout.UNDECODABLE, self.undecodable)
            self.store.write_text(layout.CONFIG,
                                  to_yaml(dataclasses.replace(self.cfg, run_dir=redact_uri(self.cfg.run_dir))))

    def prepare(self) -> dict:
        """Pre-compute the v0 features of the pool and the test split (once per experiment, resumable)."""

        self.commit_config()
        fs = FeatureStore(self.store)
        self.ctx.features = fs
        timing = self.store.read_json(layout.FEATURE_TIMING) if self.store.exists(layout.FEATURE_TIMING) else {}
        for split in ("pool", "test"):
            t0 = time.perf_counter()
            if self.ctx.embed(fs, 0, split):
                timing[f"v0_{split}"] = time.perf_counter() - t0
                self.store.write_json(layout.FEATURE_TIMING, timing)
        self.ctx.t_pre = float(timing.get("v0_pool", 0.0) + timing.get("v0_test", 0.0))
        if self.cfg.eval.every_round == "evaluator":
            from raal.evaluator import Evaluator, Recipe  # lazy: heavy: torch

            self.ctx.evaluator = Evaluator.build(store=self.store, data=self.ctx.data, model_cfg=self.cfg.model,
                                                 transform=self.ctx.transform,
                                                 freeze_blocks=self.cfg.eval.freeze_blocks,
                                                 recipe=Recipe.from_config(self.cfg.eval))
            self.ctx.evaluator.memo_models = bool(self.cfg.eval.memo_models)

        self.update_stop(ArmState.open(self.store.child(layout.arm(self.specs[0].name))).rounds)  # before the arms size
        self.arms = [self._classes[s.pipeline](self.ctx, s) for s in self.specs]
        self.store.write_json(layout.STATUS, {"state": "running", "round": self.completed_rounds()})
        ev = self.ctx.evaluator
        return {"pool": len(self.ctx.data.pool), "test": len(self.ctx.data.test), "t_pre": self.ctx.t_pre,
                "evaluator": None if ev is None else ev.describe(),
                "arms": [a.arm.name for a in self.arms], "resumed": self.resumed,
                "undecodable": [b["error"] for b in self.undecodable],
                "baseline": next((a.arm.name for a in self.arms if a.arm.baseline), None),
                "completed_rounds": self.completed_rounds()}

    def update_stop(self, main_rounds: list[dict]) -> None:
        """al.stop=advice: every arm's schedule ends after the first round whose advice for the main arm was
        "stop" (derived from the committed rounds, so a resumed run ends at the same round)."""
        if self.cfg.al.stop != "advice":
            return
        self.ctx.stop_after = next((int(r["round"]) for r in main_rounds if r.get("stop_advice") == "stop"), None)

    def completed_rounds(self) -> int:
        return min((a.state.completed_rounds for a in self.arms), default=0)

    def run_round(self, r: int) -> dict[str, dict]:
        """Round r of every arm; with the files oracle it may stop short (`self.waiting` says so, rows are partial)."""
        rows, waiting = {}, {}
        for a in self.arms:
            if r >= len(a.sizes()):
                continue
            try:
                rows[a.arm.name] = a.run_round(r, a.sizes()[r])
            except WaitingForLabels as w:
                waiting[a.arm.name] = (a, w.missing)
        if waiting:

            queries = {name: a.state.saved_query_table(r) for name, (a, _missing) in waiting.items()}
            self.waiting = export_round(self.store, r, queries, self.ctx.data.pool, self.ctx.data.class_names,
                                        oracle_cfg=self.cfg.oracle)
            self.store.write_json(layout.STATUS, self.waiting)
            return rows
        self.waiting = None
        self.update_stop(self.arms[0].state.rounds)
        done = r + 1 == self.num_rounds
        self.store.write_json(layout.STATUS, {"state": "done" if done else "running", "round": r + 1})
        return rows

    def has_round(self, r: int) -> bool:
        """Whether round r is to run: a round of the schedule, or one more round of the random baseline past it
        (`extend_baseline`)."""
        while r >= self.num_rounds:
            if not self.extend_baseline():
                return False
        return True

    def run(self, on_round: Callable[[int, dict[str, dict]], None] | None = None) -> dict[str, dict]:
        """The round loop: every round of every arm (a committed round returns its stored rows, so a resumed run
        passes through them), `on_round(r, rows)` after each, then the final models. A round that waits for people's
        labels ends it early with no final models (`self.waiting` says what is missing)."""
        if not self.arms:
            self.prepare()
        r = 0
        while self.has_round(r):
            rows = self.run_round(r)
            if self.waiting is not None:
                return {}
            if on_round is not None:
                on_round(r, rows)
            r += 1
        return self.finalize()

    def history(self) -> dict[str, list[dict]]:
        return {a.arm.name: list(a.state.rounds) for a in self.arms}

    def baseline_cap(self) -> int:
        """The most labels the random baseline may reach when it is extended past the schedule."""
        cap = self.cfg.al.baseline_cap
        if cap < 0:
            cap = 3 * max((int(r["n_labeled"]) for a in self.arms if not a.arm.baseline for r in a.state.rounds),
                          default=0)
        return min(cap, len(self.ctx.data.pool))

    def extend_baseline(self) -> bool:
        """Once every arm has run its schedule, give the random baseline one more round (of the schedule's last
        size) while its best accuracy does not exceed every other arm's best and the cap allows it. Saving ratios
        are then read off a measured random curve instead of an extrapolated one. Derived from the committed rounds
        only, so a resumed run takes the same decisions."""
        base = [a for a in self.arms if a.arm.baseline]
        others = [a for a in self.arms if not a.arm.baseline]
        if self.cfg.al.baseline_cap == 0 or len(base) != 1 or not others:
            return False
        b = base[0]
        if any(a.state.completed_rounds < len(a.sizes()) for a in self.arms):
            return False
        best = max((float(r["accuracy"]) for a in others for r in a.state.rounds
                    if np.isfinite(r["accuracy"])), default=float("nan"))
        mine = max((float(r["accuracy"]) for r in b.state.rounds if np.isfinite(r["accuracy"])), default=-1.0)
        step = b.sizes()[-1]
        labels = int(b.state.rounds[-1]["n_labeled"]) if b.state.rounds else 0
        if not np.isfinite(best) or mine > best or labels + step > self.baseline_cap():
            return False
        b.extra_rounds += 1
        return True

    def finalize(self) -> dict[str, dict]:
        """Final models (eval.final) of the arms whose rounds are all committed."""
        out = {a.arm.name: a.finalize() for a in self.arms}
        return {k: v for k, v in out.items() if v is not None}


class DriverActor:
    """The per-run driver: holds the experiment and its state machine inside a Ray actor (num_cpus=0).

    Wrapped with `ray.remote(num_cpus=0, max_restarts=…, max_task_retries=…)` by `start_driver`; a restarted
    actor rebuilds itself from the run store and the retried call continues from the last committed round.
    """

    def __init__(self, cfg: RunConfig):

        quiet_ray_data()  # raal's progress line (raal/progress.py) shows the passes; Ray Data's bars would repeat it
        # The data is loaded here from the config, not handed in: a restarted actor re-runs this constructor, and
        # Ray warns that an actor whose constructor arguments live in the object store cannot restart once they are
        # lost (ray-project/ray#53727). Loading is cheap (Animal-MNIST: 0.16 s; folders and manifests: a listing).
        self.exp = Experiment(cfg)

    def prepare(self) -> dict:
        return self.exp.prepare()

    def num_rounds(self) -> int:
        return self.exp.num_rounds

    def run_round(self, r: int) -> dict[str, dict]:
        if not self.exp.arms:
            self.exp.prepare()
        return self.exp.run_round(r)

    def extend_baseline(self) -> bool:
        if not self.exp.arms:
            self.exp.prepare()
        return self.exp.extend_baseline()

    def has_round(self, r: int) -> bool:
        if not self.exp.arms:
            self.exp.prepare()
        return self.exp.has_round(r)

    def run(self) -> dict[str, dict]:
        """The whole loop in one call (`Experiment.run`): for a caller that prints nothing per round."""
        return self.exp.run()

    def waiting(self) -> dict | None:
        """The waiting-for-labels status of the last round run, or None (read from the store, so that an actor
        restarted between `run_round` and this call still answers right)."""
        if self.exp.waiting is not None or not self.exp.store.exists(layout.STATUS):
            return self.exp.waiting
        status = self.exp.store.read_json(layout.STATUS)
        return status if status.get("state") == "waiting_for_labels" else None

    def history(self) -> dict[str, list[dict]]:
        if not self.exp.arms:
            self.exp.prepare()
        return self.exp.history()

    def finalize(self) -> dict[str, dict]:
        if not self.exp.arms:
            self.exp.prepare()
        return self.exp.finalize()


def start_driver(cfg: RunConfig, max_restarts: int = 3):
    import ray

    actor_cls = ray.remote(num_cpus=0, max_restarts=max_restarts, max_task_retries=max_restarts)(DriverActor)
    return actor_cls.remote(cfg)
