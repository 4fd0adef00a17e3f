"""Shared steps of every pipeline: select -> save query -> ask the oracle -> record labels -> train/evaluate -> commit.

A pipeline is a small policy over these steps: which model scores the pool (proxy, fine-tuned backbone, LoRA ViT),
what happens after the labels arrive (ASVP's refresh check), and how a round is evaluated. Everything a round needs
to resume lives in the arm's store (see `state.py`), so a killed run continues from the last committed round.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from raal import faults, layout, progress, strategies
from raal.config import RunConfig, parse_schedule
from raal.data.positions import IdIndex
from raal.data.sources import Dataset
from raal.data.transforms import ImageTransform
from raal.features import embed_images
from raal.index import KnnCandidates, PoolIndex
from raal.labeling.oracle import WaitingForLabels
from raal.pipelines.coldstart import initial_batch
from raal.pipelines.state import ArmState
from raal.stopping import StopRule
from raal.store import RunStore
from raal.strategies.base import pick_priority

if TYPE_CHECKING:  # annotations only: the evaluator pulls in torch
    from raal.evaluator import Evaluator
    from raal.features import FeatureStore
    from raal.labeling.oracle import FilesOracle, SimulatedOracle

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArmSpec:
    """One arm of an experiment: a pipeline with a strategy; the random baseline is an arm too."""

    pipeline: str
    strategy: str
    baseline: bool = False

    @property
    def name(self) -> str:
        return f"{self.pipeline}_{self.strategy}"


@dataclass
class Context:
    """What every arm of one experiment shares: config, stores, data, oracle, and the pre-trained features."""

    cfg: RunConfig
    store: RunStore
    data: Dataset
    oracle: SimulatedOracle | FilesOracle
    transform: ImageTransform
    features: FeatureStore | None = None  # the experiment's (v0 lives here); set by prepare() before any round
    t_pre: float = 0.0  # wall time of the v0 feature pass (pool + test)
    evaluator: Evaluator | None = None  # when eval.every_round == "evaluator"
    stop_after: int | None = None  # al.stop=advice: the round after which the main arm was advised to stop
    pool_index: PoolIndex | None = None  # al.candidates=seals: the k-NN index over the v0 pool features

    @property
    def num_classes(self) -> int:
        return self.data.pool.num_classes

    def sizes(self) -> list[int]:
        sizes = [self.cfg.al.initial] + parse_schedule(self.cfg.al.schedule)
        return sizes if self.stop_after is None else sizes[:self.stop_after + 1]

    def candidate_index(self) -> PoolIndex:
        """The IVF index over the v0 pool features that SEALS' candidates come from: built on first use (the one
        pass over the whole pool), then shared by every arm. Fixed features, as SEALS: the candidates of a label
        never change, so they can be kept instead of recomputed."""
        if self.pool_index is None:
            assert self.features is not None, "prepare() opens the v0 features before any round"
            self.pool_index = PoolIndex(self.features.open(0, "pool").features, seed=self.cfg.al.seed)
        return self.pool_index

    def embed(self, fs, version: int, split: str, *, weights: tuple[RunStore, str] | None = None,
              with_logits: bool = True) -> bool:
        """Feature set `version`/`split` ("pool" or "test") in the FeatureStore `fs`, computed with the run's model
        unless it is complete already; `weights` = (store, path) of a fine-tuned backbone's state dict (copied to
        local disk only when there is work). True if this call computed anything."""
        if fs.has(version, split):
            return False

        images = self.data.pool if split == "pool" else self.data.test
        embed_images(images, model_cfg=self.cfg.model, transform=self.transform, store=fs, version=version,
                     split=split, embed_cfg=self.cfg.embed, with_logits=with_logits,
                     state_dict_path=None if weights is None else str(weights[0].local_copy(weights[1])))
        return True


@dataclass
class PhaseTimer:
    """Accumulates wall time per phase (`t_pre`, `t_tr_proxy`, `t_f_proxy`, `t_tr_full`, `t_f_full`, ...)."""

    times: dict = field(default_factory=dict)

    @contextmanager
    def phase(self, key: str):
        progress.report(progress.PHASE_LABELS.get(key, key), 0)  # the console's "what now" (finer reports follow)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.times[key] = self.times.get(key, 0.0) + time.perf_counter() - t0

    def charge(self, key: str, fitted) -> None:
        """Charge a fit the method needed at its measured cost even when the evaluator's memo answered it (the rule
        of docs/evaluation.md: a method pays for every fit it uses; evaluation pays for each distinct fit once)."""
        if getattr(fitted, "memo_hit", False):
            self.times[key] = self.times.get(key, 0.0) + float(fitted.seconds)


class Query(NamedTuple):
    """A round's picks (pool ids, in pick order) and what annotators see beside each: the pick priority (higher =
    ask sooner) and, where the strategy had model probabilities, the model's class (None otherwise); `rows_scored`:
    the unlabeled rows the selection chose from; `select_workers`, `select_bytes`: the Ray tasks that chose it (0:
    this process) and the bytes they sent back (the rounds table's columns of those names)."""

    ids: np.ndarray
    score: np.ndarray
    prediction: np.ndarray | None = None
    rows_scored: int = -1
    select_workers: int = 0
    select_bytes: int = 0


class RowSubset:
    """Sorted rows of a 2-D array, read one slice at a time: lets `predict` score SEALS' candidates without first
    gathering them into one copy."""

    def __init__(self, x, rows: np.ndarray):
        self.x, self.rows = x, rows
        self.shape, self.ndim, self.dtype = (len(rows), x.shape[1]), 2, x.dtype

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, part: slice) -> np.ndarray:
        return np.asarray(self.x[self.rows[part]])


def take_rows(x, rows: np.ndarray | None):
    """x itself (rows None: the whole pool), else its `rows` gathered into one array."""
    return x if rows is None else np.asarray(x[rows])


def round_seed(seed: int, r: int, salt: int = 0) -> int:
    """A per-round seed: the same (seed, round) always draws the same, wherever the run resumes."""
    return int(np.random.SeedSequence([seed, r, salt]).generate_state(1)[0])


class Pipeline:
    """Base policy. Subclasses implement `strategy_inputs` (score the pool) and `after_labels` (train/evaluate).

    What a pipeline can give a strategy is declared, so that an arm's fit is a set comparison (`mismatch`):
    `supplies` the strategy inputs from round 1 on, `supplies_at_start` those of round 0 (no model yet: the
    pre-trained features), `only_strategies` the only strategies the method is defined with (None = any that fits).
    """

    name = "base"
    supplies: frozenset = frozenset()
    supplies_at_start: frozenset = frozenset({"embeddings"})
    only_strategies: frozenset | None = None
    #: the pipeline's only round is chosen by the arm's strategy itself (ActiveFT's single shot)
    single_shot = False
    #: whether the arm works on the experiment's pre-computed v0 features (its T_pre is then charged to round 0)
    uses_precomputed_features = True
    #: one line on what the pipeline is, for messages
    about = ""

    @classmethod
    def mismatch(cls, strategy) -> str | None:
        """Why this pipeline cannot run `strategy` (a `raal.strategies.Strategy`), or None when it can."""
        if cls.only_strategies is not None and strategy.name not in cls.only_strategies:
            return f"is not a {cls.name.upper()} strategy"
        missing = strategy.requires - cls.supplies
        if cls.single_shot or strategy.chooses_first_batch:  # it picks round 0, before any model exists
            missing |= strategy.requires - cls.supplies_at_start
        if missing:
            return (f"needs {', '.join(sorted(missing))}, which the {cls.name} pipeline does not supply"
                    + (f" ({cls.about})" if cls.about else ""))
        return None

    def __init__(self, ctx: Context, arm: ArmSpec):
        self.ctx = ctx
        self.arm = arm
        self.store = ctx.store.child(layout.arm(arm.name))
        self.state = ArmState.open(self.store)
        self.strategy = strategies.for_run(arm.strategy, num_classes=ctx.num_classes, balanced=ctx.cfg.al.balanced,
                                           project_dim=ctx.cfg.al.coreset_dim)
        self.pool_ids = ctx.data.pool.ids
        self.extra_rounds = max(0, self.state.completed_rounds - len(ctx.sizes())) if arm.baseline else 0
        self.candidates: KnnCandidates | None = None  # al.candidates=seals: this arm's candidate pool, grown per round
        if not self.store.exists(layout.ARM_META):
            self.store.write_json(layout.ARM_META, {"name": arm.name, "pipeline": arm.pipeline,
                                               "strategy": arm.strategy, "baseline": arm.baseline,
                                               "seed": ctx.cfg.al.seed})

    # -- helpers ----------------------------------------------------------------------------------------------------
    def positions(self, ids: np.ndarray) -> np.ndarray:
        """Pool positions of ids; pool ids may come in any order (the index is built once per pool)."""
        index = getattr(self, "_index", None)
        if index is None or index.pool_ids is not self.pool_ids:
            index = self._index = IdIndex(self.pool_ids)
        return index.positions(ids)

    def labeled_mask(self) -> np.ndarray:
        mask = np.zeros(len(self.pool_ids), dtype=bool)
        if self.state.label_ids:
            mask[self.positions(self.state.labeled_ids)] = True
        return mask

    def sizes(self) -> list[int]:
        """Per-round query sizes of this arm (ActiveFT's single shot overrides this); a random baseline that was
        extended past the schedule repeats the last size (`Experiment.extend_baseline`)."""
        base = self.ctx.sizes()
        return base + [base[-1]] * self.extra_rounds

    def initial_strategy(self) -> str:
        """Who picks round 0: the arm's own strategy (ActiveFT's single shot, or a strategy that chooses its first
        batch), `random` for the random baseline, otherwise `al.initial_strategy` on the v0 features."""
        if self.chooses_initial():
            return self.arm.strategy
        return "random" if self.arm.baseline else self.ctx.cfg.al.initial_strategy

    def random_only(self, r: int) -> bool:
        return (r == 0 and self.initial_strategy() == "random") or self.arm.strategy == "random"

    # -- the round --------------------------------------------------------------------------------------------------
    def select(self, r: int, size: int, timer: PhaseTimer) -> Query:
        """Round 0 is the shared initial batch (`coldstart.initial_batch`); later rounds ask the strategy with the
        pipeline's inputs, on SEALS' candidates with `al.candidates=seals` (`candidate_rows`). The score beside each
        pick is one sign for every strategy: higher = ask sooner."""
        seed = round_seed(self.ctx.cfg.al.seed, r)
        mask = self.labeled_mask()
        if r == 0 and not self.chooses_initial():

            name = self.initial_strategy()
            with timer.phase("t_select"):
                if name == "random":  # as before: one seeded draw, the same in every arm
                    pos = np.sort(strategies.get("random").select(size, labeled_mask=mask, seed=seed))
                else:
                    assert self.ctx.features is not None, "prepare() opens the v0 features before any round"
                    pos = initial_batch(self.ctx.store, name, size, labeled_mask=mask, seed=seed,
                                        features=self.ctx.features.open(0, "pool").features,
                                        num_classes=self.ctx.num_classes)
            return Query(self.pool_ids[pos], pick_priority(len(pos)), rows_scored=int((~mask).sum()))
        spread = self.select_on_workers(r, size, mask, timer)
        if spread is not None:
            return spread
        with timer.phase("t_select"):
            rows = self.candidate_rows(mask, size)
        inputs = self.strategy_inputs(r, self.strategy.requires, timer, rows=rows)
        sub = mask if rows is None else mask[rows]
        with timer.phase("t_select"):
            faults.reach("select")
            local = np.asarray(self.strategy.select(size, labeled_mask=sub, seed=seed, **inputs), dtype=np.int64)
        pos = local if rows is None else rows[local]
        probs = inputs.get("probs")
        prediction = None if probs is None else np.asarray(probs[local], dtype=np.float32).argmax(1).astype(np.int64)
        return Query(self.pool_ids[pos], pick_priority(len(pos)), prediction, int((~sub).sum()))

    def candidate_rows(self, mask: np.ndarray, size: int) -> np.ndarray | None:
        """The sorted pool rows this round's strategy sees with `al.candidates=seals`: SEALS' candidates (the
        `al.candidates_k` nearest neighbours of each labeled row, only the newly labeled rows searched) and the
        labeled rows (the centres, counts or context of the strategies that use them; never picked). None = the
        whole pool: `al.candidates=all`, random arms (a uniform draw over fewer rows is another strategy), nothing
        labeled yet, or fewer candidates than the round asks for (logged)."""
        al = self.ctx.cfg.al
        if al.candidates != "seals" or self.arm.strategy == "random" or not mask.any():
            return None
        if self.candidates is None:
            self.candidates = KnnCandidates(self.ctx.candidate_index(), al.candidates_k)
        cand = self.candidates.update(mask)
        if len(cand) < size:
            log.warning("%s: SEALS has %d candidates for a round of %d (al.candidates_k=%d): this round chooses from "
                        "the whole pool", self.arm.name, len(cand), size, al.candidates_k)
            return None
        return np.union1d(cand, np.flatnonzero(mask))

    def select_on_workers(self, r: int, size: int, mask: np.ndarray, timer: PhaseTimer) -> Query | None:
        """Round r's query chosen on Ray workers next to the feature shards (`al.select_workers`), or None: select
        in this process (every pipeline but svpp/asvp, and their arms whose strategy has no merge)."""
        return None

    def chooses_initial(self) -> bool:
        """Whether the arm's strategy picks round 0 itself (declared by the pipeline or the strategy)."""
        return self.single_shot or self.strategy.chooses_first_batch

    def run_round(self, r: int, size: int) -> dict:
        """Run round r to its commit; resumes a half-done round from its saved query and labels."""
        if r < self.state.completed_rounds:
            return self.state.rounds[r]
        if r != self.state.completed_rounds:
            raise RuntimeError(f"{self.arm.name}: round {r} asked before round {self.state.completed_rounds}")
        t0 = time.perf_counter()
        progress.set_context(round=r, arm=self.arm.name)
        timer = PhaseTimer()
        ids = self.state.saved_query(r)
        chosen = {"rows_scored": -1}  # unknown when the query was chosen before a restart
        if ids is None:
            query = self.select(r, size, timer)
            ids = query.ids
            chosen = {"rows_scored": query.rows_scored, "select_workers": query.select_workers,
                      "select_bytes": query.select_bytes}
            self.state.save_query(r, ids, score=query.score, prediction=query.prediction)
        answered = self.state.labels_for_round(r)
        todo = np.asarray([i for i in ids.tolist() if i not in answered], dtype=np.int64)
        if len(todo):
            got, labels = self.ctx.oracle.answer(todo, r)
            if len(got):
                self.state.add_labels(r, got, labels, self.ctx.oracle.source)
            answered = self.state.labels_for_round(r)
            missing = [i for i in ids.tolist() if i not in answered]
            if missing and not (answered and self.ctx.oracle.accepts_partial(r)):
                raise WaitingForLabels(self.arm.name, r, missing)
        row: dict = {"round": r, "n_labeled": len(self.state.label_ids), "n_new": len(answered),
                     "random_only": self.random_only(r), **chosen}
        row.update(self.after_labels(r, timer))
        row.update(self.evaluate_labeled(timer, row))
        with timer.phase("t_eval"):  # judging the round: counted with its evaluation
            row.update(self.stop_advice(r, row))
        if r == 0 and self.uses_precomputed_features:
            timer.times["t_pre"] = timer.times.get("t_pre", 0.0) + self.ctx.t_pre
        row.update(timer.times)
        row["t_round"] = time.perf_counter() - t0
        faults.reach("before_commit")
        self.state.commit_round(row)
        return self.state.rounds[r]

    def final_method(self) -> str | None:
        """How the final model is trained after the last round (`eval.final`); None = no final job."""
        final = self.ctx.cfg.eval.final
        return None if final == "none" else ("LP-FT" if final == "lpft" else "FT")

    def finalize(self) -> dict | None:
        """Train the final model on the whole labeled set once all rounds are committed (`final.json`)."""
        method = self.final_method()
        if method is None or self.state.completed_rounds < len(self.sizes()):
            return None
        if self.store.exists(layout.FINAL):
            return self.store.read_json(layout.FINAL)
        res = self.finetune(method=method, name="final", seed=round_seed(self.ctx.cfg.al.seed, 0, 4),
                            save_as=layout.FINAL_CHECKPOINT)
        out = {"method": method, "accuracy": res["accuracy"], "lp_accuracy": res["lp_accuracy"],
               "n_labeled": len(self.state.label_ids), "t_tr_full": res["wall_time"]}
        self.store.write_json(layout.FINAL, out)
        return out

    def finetune(self, *, method: str, name: str, seed: int, save_as: str | None = None) -> dict:
        """`finetune_labeled` on this arm's labeled set, the test split and the run's configs, into the arm's store
        (a job already saved as `save_as` is read back without loading the labeled images)."""
        from raal.pipelines.finetune import finetune_labeled, saved_result  # lazy: heavy: torch

        done = saved_result(self.store, save_as)
        if done is not None:
            return done
        batch = self.ctx.data.pool.take(self.positions(self.state.labeled_ids))
        batch["label"] = self.state.labels
        cfg = self.ctx.cfg
        return finetune_labeled(batch, self.ctx.data.test, model_cfg=cfg.model, train_cfg=cfg.train,
                                lora_cfg=cfg.lora, transform=self.ctx.transform, num_classes=self.ctx.num_classes,
                                store=self.store, method=method, name=name, seed=seed, save_as=save_as)

    def evaluate_labeled(self, timer: PhaseTimer, row: dict) -> dict:
        """With the one evaluator, the round's `accuracy` is the evaluator's on this labeled set (seed paired by
        labeled-set size, the same for every arm); the pipeline's own accuracy becomes the `model_accuracy`
        diagnostic (the proxy grading its own picks, or standard AL's model)."""
        ev = self.ctx.evaluator
        out = {"model_accuracy": row.get("accuracy"), "model_eval": row.get("eval_method")}
        if ev is None:
            return out
        from raal.evaluator import eval_seed  # lazy: heavy: torch

        n = len(self.state.label_ids)
        with timer.phase("t_eval"):
            res = ev.score(self.positions(self.state.labeled_ids), self.state.labels,
                           seed=eval_seed(self.ctx.cfg.al.seed, n))
        return {**out, "accuracy": res["accuracy"], "probe_accuracy": res["probe_accuracy"],
                "eval_method": f"evaluator:{ev.recipe.method}", "eval_fit_s": res["eval_seconds"],
                "eval_memo": bool(res["eval_memo"])}

    def stop_advice(self, r: int, row: dict) -> dict:
        """The round's stopping signals and advice (`raal.pipelines.advice`); the kappa model is the converged
        probe on the v0 features, whatever the pipeline."""
        from raal.pipelines.advice import probe_predictions, round_advice, stop_sample  # lazy: heavy: torch

        cfg = self.ctx.cfg
        sample = stop_sample(len(self.pool_ids), cfg.stopping.sample, cfg.al.seed)
        assert self.ctx.features is not None, "prepare() opens the v0 features before any round"
        pred = probe_predictions(self.ctx.features.open(0, "pool").features, self.positions(self.state.labeled_ids),
                                 self.state.labels, sample, self.ctx.num_classes)
        sizes = self.sizes()
        return round_advice(self.store, r, self.state.rounds, row, predictions=pred,
                            next_size=sizes[r + 1] if r + 1 < len(sizes) else sizes[-1],
                            rule=StopRule.from_config(cfg.stopping, cfg.cost.label_price))

    # -- policy hooks -----------------------------------------------------------------------------------------------
    def strategy_inputs(self, r: int, requires: frozenset, timer: PhaseTimer, *,
                        rows: np.ndarray | None = None) -> dict:
        """The inputs in `requires` for round r's strategy, for the pool rows `rows` only (sorted; None = all): an
        array input then has len(rows) rows."""
        raise NotImplementedError

    def after_labels(self, r: int, timer: PhaseTimer) -> dict:
        raise NotImplementedError
