"""ASVP: SVPp plus a trigger that fine-tunes and refreshes the pre-computed features (docs/algorithms.md §3.2).

After each round's labels (rounds >= 1): PED on the current features of the labeled set; if it needs at most
`asvp.ped_max_steps_for_skip` steps (default -1: never), skip and do not refresh. Otherwise compute LogME-PED (the
`logme_ped` column) and apply `asvp.rule`:

* "gain" (default, docs/asvp_trigger.md): the accuracy gain of LogME's linear probe when its training rows double
  within the labeled set (`gain_signal`, column `trigger_signal`); fire when it is below `asvp.gain_threshold` in
  `asvp.gain_rounds` consecutive scored rounds since the last refresh: the frozen features stopped gaining from
  more labels.
* "delta" (legacy): fire when a previous score exists and |score - previous| < `asvp.threshold`. `previous` is the
  last computed score since the last refresh (kept across skipped rounds, reset by a refresh).
* "at": fire after the rounds whose labeled-set size is in `asvp.refresh_at` (the paper's forced-position
  ablation; round 0's size counts too, i.e. a fine-tune on the initial random batch); "never": SVPp's selection
  with ASVP's bookkeeping (the training-alignment-only ablation). Neither computes PED or LogME.

Firing fine-tunes the backbone on the labeled set (FT recipe) and re-embeds the pool and the test split into a new
feature version: as a Ray Train job and a Ray Data pass (`train.freeze_blocks=0`), or in the driver with the
evaluator (partial from its cached activations, or the whole backbone with `eval.freeze_blocks=0`), then with the
evaluator's seed for that labeled-set size, so the refresh and the round's evaluation are one fit. The training
method of the final model (`asvp.switch`): "rule" = LP-FT until the first refresh, FT from then on (the paper's
alignment); "ft" / "lpft" = always that one; "holdout" = the better of the two on a held-out fifth of the
labeled set (raal/pipelines/switch.py).

The decision state is *derived* from the committed rounds table, never kept beside it: a run killed between a
decision and its commit recomputes the same decision from the same features and labels, and a refresh already
half-done (its fine-tuned checkpoint saved, some feature shards written) resumes rather than restarts.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from raal import layout
from raal.config import ASVPConfig
from raal.features import FeatureStore
from raal.pipelines.base import PhaseTimer, round_seed
from raal.pipelines.svpp import SVPpPipeline
from raal.transfer import linear_probe_accuracy, logme_ped, ped_steps, reference_stats


@dataclass(frozen=True)
class Decision:
    ped_steps: int
    score: float  # LogME-PED, NaN when skipped
    diff: float  # |score - previous|, NaN when there is no previous
    refresh: bool
    signal: float = math.nan  # rule "gain": accuracy gain per doubling of the labels (column trigger_signal)


def _finite(v) -> bool:
    return v is not None and math.isfinite(v)


def previous_score(history: list[dict]) -> float | None:
    """The last LogME-PED computed since the last refresh (None right after a refresh or before any score)."""
    prev = None
    for row in history:
        if row.get("refreshed"):
            prev = None
        elif _finite(row.get("logme_ped")):
            prev = float(row["logme_ped"])
    return prev


def previous_signals(history: list[dict]) -> list[float]:
    """The trigger signals of the scored rounds since the last refresh, oldest first (rounds without one skip)."""
    out: list[float] = []
    for row in history:
        if row.get("refreshed"):
            out = []
        elif _finite(row.get("trigger_signal")):
            out.append(float(row["trigger_signal"]))
    return out


def decide(history: list[dict], ped_steps: int, score_fn: Callable[[], float], cfg: ASVPConfig,
           signal_fn: Callable[[], float] | None = None) -> Decision:
    """The refresh rule, a pure function of the committed rounds and this round's numbers.

    rule "delta" (legacy, docs/algorithms.md §3.2): fire when |LogME-PED - previous| < `threshold`.
    rule "gain" (docs/asvp_trigger.md): `signal_fn()` is the accuracy gain of LogME's linear probe from a quarter
    to a half of the labeled set (see `gain_signal`); fire when it is below `gain_threshold` in this round and in
    the `gain_rounds - 1` previous scored rounds since the last refresh. A NaN signal (too few labels) never fires.
    Both rules: PED's skip limit first, at most `max_refreshes` refreshes (-1 = unlimited).
    """
    if cfg.rule in FIXED_RULES:
        raise ValueError(f"asvp.rule={cfg.rule} does not score the features: use `fixed_decision`")
    if ped_steps <= cfg.ped_max_steps_for_skip:
        return Decision(ped_steps, math.nan, math.nan, False)
    score = float(score_fn())
    prev = previous_score(history)
    diff = math.nan if prev is None else abs(score - prev)
    refreshes = sum(bool(r.get("refreshed")) for r in history)
    allowed = cfg.max_refreshes < 0 or refreshes < cfg.max_refreshes
    if cfg.rule == "delta":
        return Decision(ped_steps, score, diff, bool(prev is not None and diff < cfg.threshold and allowed))
    if cfg.rule != "gain":
        raise ValueError(f"asvp.rule must be gain or delta, got {cfg.rule!r}")
    if signal_fn is None:
        raise ValueError("asvp.rule=gain needs the round's trigger signal (signal_fn)")
    signal = float(signal_fn())
    recent = (previous_signals(history) + [signal])[-cfg.gain_rounds:]
    fire = (len(recent) == cfg.gain_rounds and all(math.isfinite(v) and v < cfg.gain_threshold for v in recent))
    return Decision(ped_steps, score, diff, bool(fire and allowed), signal)


FIXED_RULES = ("at", "never")


def fixed_decision(history: list[dict], n_labeled: int, cfg: ASVPConfig) -> Decision:
    """rule "at": refresh after the round that reaches a labeled-set size listed in `refresh_at` (within
    `max_refreshes`); rule "never": no refresh. No score is computed (PED steps -1)."""
    refreshes = sum(bool(r.get("refreshed")) for r in history)
    allowed = cfg.max_refreshes < 0 or refreshes < cfg.max_refreshes
    fire = cfg.rule == "at" and int(n_labeled) in {int(v) for v in cfg.refresh_at} and allowed
    return Decision(-1, math.nan, math.nan, bool(fire))


def gain_signal(x, y, permutations: int = 5, seed: int = 0, min_per_class: int = 5) -> float:
    """Accuracy gain of LogME's linear probe when its training rows double, on the labeled set itself.

    For each of `permutations` seeded random orders of the N labeled rows: the last N/2 rows are held out, the
    probe (`raal.transfer.linear_probe_accuracy`: LogME's Bayesian ridge, evidence-chosen alpha/beta, no tuned
    hyperparameter) is fitted on the first N/4 and on the first N/2 rows, and the gain is the difference of the
    two held-out accuracies. Returns the mean gain (an accuracy difference, not a function of N/D by
    construction: it is zero when the frozen features have saturated, whatever N and D), or NaN while the
    training quarter is smaller than `min_per_class` labels per class of the labeled set (below that the probe's
    accuracy is mostly noise: 10 classes, N = 100 gave gains of -0.016..+0.05 on features that keep learning) or
    holds fewer than two classes. The permutations depend on N and `seed` only, so a re-run on the same labeled
    rows reproduces the signal.
    """


    x = np.asarray(x)
    y = np.asarray(y)
    n = x.shape[0]
    quarter, half = n // 4, n // 2
    if quarter < max(2, min_per_class * np.unique(y).size):
        return math.nan
    gains = []
    for p in range(permutations):
        order = np.random.default_rng([seed, p, n]).permutation(n)
        a, b, test = order[:quarter], order[:half], order[half:]
        if np.unique(y[a]).size < 2:
            return math.nan
        gains.append(linear_probe_accuracy(x[b], y[b], x[test], y[test])
                     - linear_probe_accuracy(x[a], y[a], x[test], y[test]))
    return float(np.mean(gains))


def training_method(history: list[dict], refreshed_now: bool, switch: str = "rule") -> str:
    """The final model's method: `switch` "ft" / "lpft" fix it; "rule" = LP-FT until a refresh, FT after;
    "holdout" is decided once on the final labeled set (`ASVPPipeline.final_method`): "" until then."""
    if switch == "holdout":
        return ""
    if switch in ("ft", "lpft"):
        return "FT" if switch == "ft" else "LP-FT"
    return "FT" if refreshed_now or any(r.get("refreshed") for r in history) else "LP-FT"


class ASVPPipeline(SVPpPipeline):
    name = "asvp"

    def __init__(self, ctx, arm):
        super().__init__(ctx, arm)
        self._stats: dict[int, object] = {}

    def feature_version(self) -> int:
        return int(self.state.rounds[-1]["features_version"]) if self.state.rounds else 0

    def feature_store(self, version: int):
        """v0 is the experiment's shared pre-trained set; refreshed versions belong to this arm."""
        if version == 0:
            return self.ctx.features

        return FeatureStore(self.store)

    def round_eval_method(self, refreshed_now: bool) -> str | None:
        """With fine-tuned evaluation, ASVP evaluates with its own training alignment (LP-FT, then FT)."""
        if self.ctx.cfg.eval.every_round not in ("ft", "lpft"):
            return None
        return training_method(self.state.rounds, refreshed_now, self.ctx.cfg.asvp.switch) or "FT"

    def final_method(self) -> str | None:
        """ASVP's training alignment: LP-FT if the features were never refreshed, FT once they were."""
        if self.ctx.cfg.eval.final == "none":
            return None
        if self.ctx.cfg.asvp.switch == "holdout":
            return {"ft": "FT", "lpft": "LP-FT"}[self.holdout_switch()["method"]]
        return training_method(self.state.rounds, False, self.ctx.cfg.asvp.switch)

    def holdout_switch(self) -> dict:
        """asvp.switch=holdout on the final labeled set (raal.pipelines.switch), decided once and kept in the
        arm's store (`switch.json`), so a resumed run trains the final model with the same method."""
        from raal.evaluator import eval_seed  # lazy: heavy: torch
        from raal.pipelines.switch import holdout_choice

        if self.store.exists(layout.SWITCH):
            return self.store.read_json(layout.SWITCH)
        assert self.ctx.evaluator is not None, "config validation ties asvp.switch=holdout to the evaluator"
        n = len(self.state.label_ids)
        out = holdout_choice(self.ctx.evaluator, self.positions(self.state.labeled_ids), self.state.labels,
                             seed=eval_seed(self.ctx.cfg.al.seed, n))
        self.store.write_json(layout.SWITCH, {**out, "n_labeled": n})
        return self.store.read_json(layout.SWITCH)

    def reference_stats(self, version: int):
        """Mean/std of the whole pool's current features, PED's rescaling set (computed once per version)."""

        if version not in self._stats:
            pool, _ = self.feature_sets(version)
            self._stats = {version: reference_stats(pool.features)}
        return self._stats[version]

    def check(self, r: int) -> Decision:

        if self.ctx.cfg.asvp.rule in FIXED_RULES:
            return fixed_decision(self.state.rounds, len(self.state.label_ids), self.ctx.cfg.asvp)
        version = self.feature_version()
        x, y = self.labeled_rows(version)
        stats = self.reference_stats(version)
        a = self.ctx.cfg.asvp
        params: dict[str, Any] = {"dt": a.ped.dt, "nsigma": a.ped.nsigma, "exit_ratio": a.ped.exit_ratio, "max_steps": a.ped.max_steps}
        n = ped_steps(x, y, reference=stats, **params)
        return decide(self.state.rounds, n,
                      lambda: logme_ped(x, y, reference=stats, variant=a.logme_variant, **params)[0], a,
                      signal_fn=lambda: gain_signal(x, y, permutations=a.gain_permutations))

    def refresh(self, r: int, timer: PhaseTimer) -> int:
        """Fine-tune on the labeled set (FT), re-embed pool and test into the next version; resumable."""
        new = self.feature_version() + 1
        if self.ctx.cfg.train.freeze_blocks != 0:
            return self.refresh_in_driver(new, timer)
        ckpt = layout.backbone_checkpoint(new)
        with timer.phase("t_tr_full"):
            self.finetune(method="ft", name=f"refresh_v{new}", seed=round_seed(self.ctx.cfg.al.seed, r, 2),
                          save_as=ckpt)
        fs = self.feature_store(new)
        with timer.phase("t_pre"):
            for split in ("pool", "test"):
                self.ctx.embed(fs, new, split, weights=(self.store, ckpt + ".pt"))
        return new

    def refresh_in_driver(self, new: int, timer: PhaseTimer) -> int:
        """The refresh with the evaluator: FT on the labeled set (its trainable blocks, or the whole backbone with
        eval.freeze_blocks=0) at the evaluator's seed for this size, then the features of pool and test written as
        version `new` (the same store layout as a Ray refresh). A fit the evaluator already made is reused and
        charged at its measured cost."""
        from raal.evaluator import Recipe, eval_seed, save_state  # lazy: heavy: torch

        ev, fs = self.ctx.evaluator, self.feature_store(new)
        assert ev is not None, "config validation ties train.freeze_blocks != 0 to the evaluator"
        with timer.phase("t_tr_full"):
            fit = ev.fit(self.positions(self.state.labeled_ids), self.state.labels,
                         seed=eval_seed(self.ctx.cfg.al.seed, len(self.state.label_ids)),
                         recipe=Recipe.from_config(self.ctx.cfg.eval, method="ft"))
        timer.charge("t_tr_full", fit)
        state = fit.state_dict()
        save_state(self.store, layout.backbone_checkpoint(new) + ".partial.pt", state)
        digest = hashlib.sha256(b"".join(v.numpy().tobytes() for v in state["suffix"].values())).hexdigest()
        with timer.phase("t_pre"):
            for split, ids in (("pool", self.pool_ids), ("test", self.ctx.data.test.ids)):
                feats = ev.features(fit.suffix, split).numpy()
                target = fs.set_for(new, split)
                meta = {"kind": "features", "version": new, "split": split, "arch": self.ctx.cfg.model.arch,
                        "weights_id": f"evaluator:{ev.freeze_blocks}:{digest[:16]}", "dim": int(feats.shape[1]),
                        "transform": self.ctx.transform.describe(), "logits_dim": None}
                todo = target.begin(np.asarray(ids, dtype=np.int64), {"features": int(feats.shape[1])},
                                    self.ctx.cfg.embed.shard_rows, meta, replace=True)
                for k in todo:
                    a, b = target.shard_range(k)
                    target.write_shard(k, np.asarray(ids[a:b], dtype=np.int64), {"features": feats[a:b]})
                target.finish({"last_pass": {"partial": True, "items": len(ids)}})
        return new

    def after_labels(self, r: int, timer: PhaseTimer) -> dict:
        row: dict = {}
        refreshed = False
        if r >= 1 or self.ctx.cfg.asvp.rule == "at":  # a forced refresh may follow round 0's random batch too
            d = self.check(r)
            row.update(ped_steps=d.ped_steps, logme_ped=d.score, score_diff=d.diff, trigger_signal=d.signal)
            if d.refresh:
                version = self.refresh(r, timer)
                refreshed = True
                self._proxy_cache = None
                row["features_version"] = version
        version = row.get("features_version", self.feature_version())
        proxy = self.train_proxy(r, timer, version=version)
        row.update(self.evaluate_round(r, proxy, timer, refreshed_now=refreshed, version=version))
        row.update(refreshed=refreshed, features_version=version,
                   train_method=training_method(self.state.rounds, refreshed, self.ctx.cfg.asvp.switch))
        return row
