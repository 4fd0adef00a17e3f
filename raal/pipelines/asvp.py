"""ASVP: SVPp plus a LogME-PED trigger that fine-tunes and refreshes the pre-computed features (decisions.md §1).

After each round's labels (rounds >= 1): PED on the current features of the labeled set; if it needs at most
`asvp.ped_max_steps_for_skip` steps, skip LogME and do not refresh. Otherwise compute LogME-PED; if a previous score
exists and |score - previous| < `asvp.threshold`, fine-tune the backbone on the labeled set (FT recipe) and re-embed
the pool and the test split into a new feature version. `previous` is the last computed score since the last
refresh (kept across skipped rounds, reset by a refresh). LP-FT is the training method until the first refresh, FT
from then on.

The decision state is *derived* from the committed rounds table, never kept beside it: a run killed between a
decision and its commit recomputes the same decision from the same features and labels, and a refresh already
half-done (its fine-tuned checkpoint saved, some feature shards written) resumes rather than restarts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from raal.config import ASVPConfig
from raal.pipelines.base import PhaseTimer, round_seed
from raal.pipelines.svpp import SVPpPipeline


@dataclass(frozen=True)
class Decision:
    ped_steps: int
    score: float  # LogME-PED, NaN when skipped
    diff: float  # |score - previous|, NaN when there is no previous
    refresh: bool


def previous_score(history: list[dict]) -> float | None:
    """The last LogME-PED computed since the last refresh (None right after a refresh or before any score)."""
    prev = None
    for row in history:
        if row.get("refreshed"):
            prev = None
        elif row.get("logme_ped") is not None and math.isfinite(row["logme_ped"]):
            prev = float(row["logme_ped"])
    return prev


def decide(history: list[dict], ped_steps: int, score_fn: Callable[[], float], cfg: ASVPConfig) -> Decision:
    """The refresh rule of decisions.md §1, as a pure function of the committed rounds and this round's numbers."""
    if ped_steps <= cfg.ped_max_steps_for_skip:
        return Decision(ped_steps, math.nan, math.nan, False)
    score = float(score_fn())
    prev = previous_score(history)
    if prev is None:
        return Decision(ped_steps, score, math.nan, False)
    diff = abs(score - prev)
    refreshes = sum(bool(r.get("refreshed")) for r in history)
    allowed = cfg.max_refreshes < 0 or refreshes < cfg.max_refreshes
    return Decision(ped_steps, score, diff, bool(diff < cfg.threshold and allowed))


def training_method(history: list[dict], refreshed_now: bool) -> str:
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
        from raal.features import FeatureStore

        return FeatureStore(self.store)

    def round_eval_method(self, refreshed_now: bool) -> str | None:
        """With fine-tuned evaluation, ASVP evaluates with its own training alignment (LP-FT, then FT)."""
        if self.ctx.cfg.eval.every_round not in ("ft", "lpft"):
            return None
        return training_method(self.state.rounds, refreshed_now)

    def final_method(self) -> str | None:
        """ASVP's training alignment: LP-FT if the features were never refreshed, FT once they were."""
        if self.ctx.cfg.eval.final == "none":
            return None
        return training_method(self.state.rounds, False)

    def reference_stats(self, version: int):
        """Mean/std of the whole pool's current features, PED's rescaling set (computed once per version)."""
        from raal.transfer import reference_stats

        if version not in self._stats:
            pool, _ = self.feature_sets(version)
            self._stats = {version: reference_stats(pool.features)}
        return self._stats[version]

    def check(self, r: int) -> Decision:
        from raal.transfer import logme_ped, ped_steps

        version = self.feature_version()
        x, y = self.labeled_rows(version)
        stats = self.reference_stats(version)
        a = self.ctx.cfg.asvp
        params = {"dt": a.ped.dt, "nsigma": a.ped.nsigma, "exit_ratio": a.ped.exit_ratio, "max_steps": a.ped.max_steps}
        n = ped_steps(x, y, reference=stats, **params)
        return decide(self.state.rounds, n,
                      lambda: logme_ped(x, y, reference=stats, variant=a.logme_variant, **params)[0], a)

    def refresh(self, r: int, timer: PhaseTimer) -> int:
        """Fine-tune on the labeled set (FT), re-embed pool and test into the next version; resumable."""
        from raal.embed import embed_images
        from raal.pipelines.finetune import finetune_labeled

        new = self.feature_version() + 1
        if self.ctx.cfg.train.freeze_blocks != 0:
            return self.refresh_partial(r, new, timer)
        ckpt = f"checkpoints/backbone_v{new}"
        with timer.phase("t_tr_full"):
            finetune_labeled(self, method="ft", name=f"refresh_v{new}", seed=round_seed(self.ctx.cfg.al.seed, r, 2),
                             save_as=ckpt)
        fs = self.feature_store(new)
        with timer.phase("t_pre"):
            for split, images in (("pool", self.ctx.data.pool), ("test", self.ctx.data.test)):
                if not fs.has(new, split):
                    embed_images(images, model_cfg=self.ctx.cfg.model, transform=self.ctx.transform, store=fs,
                                 version=new, split=split, embed_cfg=self.ctx.cfg.embed,
                                 state_dict_path=str(self.store.local_copy(ckpt + ".pt")))
        return new

    def refresh_partial(self, r: int, new: int, timer: PhaseTimer) -> int:
        """The refresh from the evaluator's cached activations: FT of the trainable blocks on the labeled set, then
        their features of pool and test written as version `new` (the same store layout as a full refresh)."""
        import hashlib

        import numpy as np

        from raal.evaluator import Recipe, save_state

        ev, fs = self.ctx.evaluator, self.feature_store(new)
        with timer.phase("t_tr_full"):
            fit = ev.fit(self.positions(self.state.labeled_ids), self.state.labels,
                         seed=round_seed(self.ctx.cfg.al.seed, r, 2), recipe=Recipe.from_config(self.ctx.cfg.eval,
                                                                                              method="ft"))
        state = fit.state_dict()
        save_state(self.store, f"checkpoints/backbone_v{new}.partial.pt", state)
        digest = hashlib.sha256(b"".join(v.numpy().tobytes() for v in state["suffix"].values())).hexdigest()
        with timer.phase("t_pre"):
            for split, ids in (("pool", self.pool_ids), ("test", self.ctx.data.test.ids)):
                feats = ev.features(fit.suffix, split).numpy()
                target = fs.set_for(new, split)
                meta = {"kind": "features", "version": new, "split": split, "arch": self.ctx.cfg.model.arch,
                        "weights_id": f"partial:{ev.freeze_blocks}:{digest[:16]}", "dim": int(feats.shape[1]),
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
        if r >= 1:
            d = self.check(r)
            row.update(ped_steps=d.ped_steps, logme_ped=d.score, score_diff=d.diff)
            if d.refresh:
                version = self.refresh(r, timer)
                refreshed = True
                self._proxy_cache = None
                row["features_version"] = version
        version = row.get("features_version", self.feature_version())
        proxy = self.train_proxy(r, timer, version=version)
        row.update(self.evaluate_round(r, proxy, timer, refreshed_now=refreshed, version=version))
        row.update(refreshed=refreshed, features_version=version,
                   train_method=training_method(self.state.rounds, refreshed))
        return row
