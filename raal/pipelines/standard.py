"""Standard AL: fine-tune the whole model every round (FT or LP-FT) and select with the fine-tuned model.

Round r's job trains on the labels so far and is the round's evaluation; for round r+1 the pool is embedded with
that backbone (a Ray Data pass into the arm's feature version r+1) and its new head turns the features into
probabilities. The embedding is the backbone feature, the input of the linear head (docs/algorithms.md §3.6).
"""
from __future__ import annotations

import numpy as np
import torch

from raal import layout
from raal.features import FeatureStore
from raal.pipelines.base import PhaseTimer, Pipeline, round_seed, take_rows
from raal.pipelines.finetune import load_head


def head_probs(features, head: dict[str, torch.Tensor], chunk: int = 65536) -> np.ndarray:
    """softmax(F Wᵀ + b) in row chunks (F may be a memmap of the whole pool)."""
    w, b = head["weight"].float(), head["bias"].float()
    out = np.empty((features.shape[0], w.shape[0]), dtype=np.float32)
    with torch.no_grad():
        for a in range(0, features.shape[0], chunk):
            x = torch.from_numpy(np.asarray(features[a:a + chunk], dtype=np.float32))
            out[a:a + chunk] = torch.softmax(x @ w.T + b, dim=1).numpy()
    return out


def head_proxy(head: dict[str, torch.Tensor]):
    """The linear head as the `proxy` input of a strategy: embedding rows -> class probabilities."""
    return lambda block: head_probs(block, head)


class StandardPipeline(Pipeline):
    name = "standard"
    supplies = frozenset({"embeddings", "probs", "proxy"})  # the fine-tuned backbone's features, its head
    uses_precomputed_features = False  # it re-embeds the pool with its own fine-tuned model each round

    def method(self) -> str:
        return "LP-FT" if self.ctx.cfg.train.method == "lpft" else "FT"

    def final_method(self) -> str | None:
        return None  # every round already trains the real model: the last round is the final model

    def checkpoint(self, r: int) -> str:
        return layout.model_checkpoint(r)

    def partial(self) -> bool:
        """Fine-tuning in the driver with the evaluator (`train.freeze_blocks != 0`): partial from its cached
        activations, or of the whole backbone when `eval.freeze_blocks=0`."""
        return self.ctx.cfg.train.freeze_blocks != 0

    def _partial_recipe(self):
        from raal.evaluator import Recipe  # lazy: heavy: torch

        return Recipe.from_config(self.ctx.cfg.eval, method="lpft" if self.method() == "LP-FT" else "ft")

    def strategy_inputs(self, r: int, requires: frozenset, timer: PhaseTimer, *,
                        rows: np.ndarray | None = None) -> dict:
        """The fine-tuned model's features and head over the pool. With SEALS' `rows` the head scores those rows
        only; the backbone still re-embeds the whole pool (each round is a new feature version)."""
        if not requires:
            return {}
        if r == 0:  # nothing trained yet: embedding-based choosers use the pre-trained features
            if requires - self.supplies_at_start:
                raise ValueError(f"strategy {self.arm.strategy!r} needs a trained model, which round 0 cannot give")
            assert self.ctx.features is not None, "prepare() opens the v0 features before any round"
            return {"embeddings": take_rows(self.ctx.features.open(0, "pool").features, rows)}
        if self.partial():  # the last round's suffix re-embeds the whole pool from the cached activations
            from raal.evaluator import load_state  # lazy: heavy: torch

            ev = self.ctx.evaluator
            assert ev is not None, "config validation ties train.freeze_blocks != 0 to the evaluator"
            suffix, head = ev.load_fitted(load_state(self.store, self.checkpoint(r - 1) + ".partial.pt"))
            with timer.phase("t_f_full"):
                feats, probs = ev.probs(suffix, head)
            out = {"embeddings": take_rows(feats, rows), "probs": take_rows(probs, rows),
                   "proxy": head_proxy(head.state_dict())}
            return {k: v for k, v in out.items() if k in requires}

        fs = FeatureStore(self.store)
        ckpt = self.checkpoint(r - 1)
        with timer.phase("t_f_full"):
            self.ctx.embed(fs, r, "pool", weights=(self.store, ckpt + ".pt"), with_logits=False)
            feats = take_rows(fs.open(r, "pool").features, rows)
            out = {"embeddings": feats}
            if "probs" in requires or "proxy" in requires:
                head_state = load_head(self.store, ckpt)
                out["proxy"] = head_proxy(head_state)
                if "probs" in requires:
                    out["probs"] = head_probs(feats, head_state)
        return {k: v for k, v in out.items() if k in requires}

    def after_labels(self, r: int, timer: PhaseTimer) -> dict:
        if self.partial():
            from raal.evaluator import eval_seed, save_state  # lazy: heavy: torch

            rel = self.checkpoint(r) + ".partial.pt"
            assert self.ctx.evaluator is not None, "config validation ties train.freeze_blocks != 0 to the evaluator"
            # the evaluator's seed for this labeled-set size: with train.method == eval.method the round's model and
            # its evaluation are one fit (memoised), trained once
            with timer.phase("t_tr_full"):
                fit = self.ctx.evaluator.fit(self.positions(self.state.labeled_ids), self.state.labels,
                                             seed=eval_seed(self.ctx.cfg.al.seed, len(self.state.label_ids)),
                                             recipe=self._partial_recipe())
            timer.charge("t_tr_full", fit)
            save_state(self.store, rel, fit.state_dict())
            return {"accuracy": fit.accuracy, "eval_method": f"partial {self.method()}",
                    "train_method": self.method(), "features_version": r}
        with timer.phase("t_tr_full"):
            res = self.finetune(method=self.method(), name=f"round_{r}", seed=round_seed(self.ctx.cfg.al.seed, r, 3),
                                save_as=self.checkpoint(r))
        return {"accuracy": res["accuracy"], "eval_method": self.method(), "train_method": self.method(),
                "features_version": r}
