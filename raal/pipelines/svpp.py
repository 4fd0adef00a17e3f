"""SVPp: a fresh MLP proxy on pre-computed features picks every round; the backbone never moves.

The proxy trained after round r's labels is evaluated on the test features (the per-round accuracy) and is the
model that scores the pool for round r+1. It is saved as a weights-only checkpoint, so a resumed run reuses it
instead of retraining.
"""
from __future__ import annotations

import io
import time

import numpy as np
import torch

from raal import faults, layout
from raal.config import SHARDED_STRATEGIES
from raal.pipelines.base import Context, PhaseTimer, Pipeline, Query, RowSubset, round_seed, take_rows
from raal.strategies.base import pick_priority
from raal.strategies.scored import ScoreStrategy


class SVPpPipeline(Pipeline):
    name = "svpp"
    supplies = frozenset({"embeddings", "probs", "proxy"})  # the proxy's embeddings and probabilities, the proxy

    def __init__(self, ctx: Context, arm):
        super().__init__(ctx, arm)
        self._sets: dict[int, tuple] = {}
        self._proxy_cache: tuple[int, object] | None = None
        self.last_spread: dict = {}  # the stats of the last selection on workers (raal.pipelines.sharded)

    # -- features -----------------------------------------------------------------------------------------------------
    def feature_version(self) -> int:
        """The feature version the proxy trains on now (SVPp: always the pre-trained v0)."""
        return 0

    def feature_store(self, version: int):
        return self.ctx.features

    def feature_sets(self, version: int | None = None):
        """(pool, test) feature sets of a version, aligned with the pool's and test split's id order."""
        v = self.feature_version() if version is None else version
        if v not in self._sets:
            fs = self.feature_store(v)
            pool, test = fs.open(v, "pool"), fs.open(v, "test")
            if not np.array_equal(np.asarray(pool.ids), self.pool_ids):
                raise RuntimeError(f"feature set v{v} is not aligned with the pool ids")
            self._sets = {v: (pool, test)}
        return self._sets[v]

    # -- the proxy ----------------------------------------------------------------------------------------------------
    def _proxy_path(self, r: int) -> str:
        return layout.proxy_checkpoint(r) + ".pt"

    def labeled_rows(self, version: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Features and labels of the labeled set, gathered in file order (memmap-friendly)."""
        pool, _ = self.feature_sets(version)
        pos = self.positions(self.state.labeled_ids)
        order = np.argsort(pos, kind="stable")
        return np.asarray(pool.features[pos[order]], dtype=np.float32), self.state.labels[order]

    def train_proxy(self, r: int, timer: PhaseTimer, version: int | None = None):
        """Train a fresh proxy on the labeled set after round r's labels and checkpoint it."""
        from raal.train import proxy_state_dict, train_proxy  # lazy: heavy: torch

        x, y = self.labeled_rows(version)
        with timer.phase("t_tr_proxy"):
            proxy = train_proxy(x, y, self.ctx.num_classes, self.ctx.cfg.proxy,
                                seed=round_seed(self.ctx.cfg.al.seed, r, 1))
        buf = io.BytesIO()
        torch.save(proxy_state_dict(proxy), buf)
        self.store.write_bytes(self._proxy_path(r), buf.getvalue())
        self._proxy_cache = (r, proxy)
        return proxy

    def proxy_after(self, r: int, timer: PhaseTimer):
        """The proxy trained after round r: from memory, else its checkpoint, else trained again."""
        if self._proxy_cache and self._proxy_cache[0] == r:
            return self._proxy_cache[1]
        if self.store.exists(self._proxy_path(r)):
            from raal.train import load_proxy  # lazy: heavy: torch

            sd = torch.load(io.BytesIO(self.store.read_bytes(self._proxy_path(r))), map_location="cpu",
                            weights_only=True)
            proxy = load_proxy(sd)
            self._proxy_cache = (r, proxy)
            return proxy
        return self.train_proxy(r, timer)

    # -- hooks ------------------------------------------------------------------------------------------------------
    def strategy_inputs(self, r: int, requires: frozenset, timer: PhaseTimer, *,
                        rows: np.ndarray | None = None) -> dict:
        from raal.train import predict  # lazy: heavy: torch

        pool, _ = self.feature_sets()
        if not requires:
            return {}
        if r == 0:  # nothing labeled yet: only embedding-based choosers (ActiveFT) can run, on the features
            if requires - self.supplies_at_start:
                raise ValueError(f"strategy {self.arm.strategy!r} needs a trained model, which round 0 cannot give")
            return {"embeddings": take_rows(pool.features, rows)}
        proxy = self.proxy_after(r - 1, timer)
        batch = self.ctx.cfg.proxy.score_batch_size
        if "proxy" in requires:  # the strategy runs the proxy itself, on the features it reads (DropQuery)
            return {"embeddings": take_rows(pool.features, rows),
                    "proxy": lambda h: predict(proxy, h, batch_size=batch, want=("logits",))["logits"]}
        want = tuple(k for k in ("probs", "embeddings") if k in requires)
        with timer.phase("t_f_proxy"):  # SEALS: the proxy scores the candidate rows only
            feats = pool.features if rows is None else RowSubset(pool.features, rows)
            out = predict(proxy, feats, batch_size=batch, want=want)
        return {k: out[k] for k in want}

    def select_on_workers(self, r: int, size: int, mask: np.ndarray, timer: PhaseTimer) -> Query | None:
        """With `al.select_workers` > 0, the round's proxy scores the pool's feature shards on that many Ray tasks
        and the driver merges their candidates (raal.pipelines.sharded): score strategies pick exactly what they
        pick here, coreset by composable greedy k-center. The tasks' proxy time (the slowest task's) counts as
        `t_f_proxy`, the rest of the wall time as `t_select`."""
        from raal.pipelines import sharded  # lazy: Ray
        from raal.train import predict, proxy_state_dict  # lazy: heavy: torch

        workers = self.ctx.cfg.al.select_workers
        if workers <= 0 or r == 0 or self.strategy.name not in SHARDED_STRATEGIES:
            return None
        v = self.feature_version()
        self.feature_sets(v)  # the driver's copy: its ids were checked against the pool
        proxy = self.proxy_after(r - 1, timer)
        batch = self.ctx.cfg.proxy.score_batch_size
        t0 = time.perf_counter()
        faults.reach("select")
        target = self.feature_store(v).set_for(v, "pool")
        if self.strategy.name == "coreset":
            x, _ = self.labeled_rows(v)
            centres = predict(proxy, x, batch_size=batch, want=("embeddings",))["embeddings"]
            out = sharded.select_coreset(target, proxy_state_dict(proxy), centres, size, mask, workers=workers,
                                         batch=batch, project_dim=int(getattr(self.strategy, "project_dim", 0)))
        else:
            assert isinstance(self.strategy, ScoreStrategy), "SHARDED_STRATEGIES: coreset and score strategies"
            out = sharded.select_scores(target, proxy_state_dict(proxy), self.strategy, size, mask, workers=workers,
                                        batch=batch)
        wall, proxy_s = time.perf_counter() - t0, float(out.stats["proxy_s"])
        timer.times["t_f_proxy"] = timer.times.get("t_f_proxy", 0.0) + min(proxy_s, wall)
        timer.times["t_select"] = timer.times.get("t_select", 0.0) + max(0.0, wall - proxy_s)
        self.last_spread = out.stats
        return Query(self.pool_ids[out.picks], pick_priority(len(out.picks)), out.prediction, int((~mask).sum()),
                     int(out.stats["workers"]), int(out.stats["bytes_returned"]))

    def evaluate_proxy(self, proxy, timer: PhaseTimer, version: int | None = None) -> float:
        from raal.train import predict  # lazy: heavy: torch

        _, test = self.feature_sets(version)
        with timer.phase("t_eval"):
            probs = predict(proxy, test.features, batch_size=self.ctx.cfg.proxy.score_batch_size,
                            want=("probs",))["probs"]
        return float(np.mean(probs.argmax(1) == self.ctx.data.test.labels))

    def round_eval_method(self, refreshed_now: bool) -> str | None:
        """The model a round is evaluated with: None = the proxy itself (`eval.every_round=proxy`)."""
        mode = self.ctx.cfg.eval.every_round
        return {"ft": "FT", "lpft": "LP-FT"}.get(mode)

    def evaluate_round(self, r: int, proxy, timer: PhaseTimer, refreshed_now: bool = False,
                       version: int | None = None) -> dict:
        """Test accuracy of the round: the proxy's, or (eval.every_round=ft|lpft) a model fine-tuned on the
        labeled set as the paper evaluates every labeled-set size. The fine-tune is evaluation, not AL cost: its
        time goes to `t_eval`."""
        method = self.round_eval_method(refreshed_now)
        if method is None:
            return {"accuracy": self.evaluate_proxy(proxy, timer, version=version), "eval_method": "proxy"}
        with timer.phase("t_eval"):
            res = self.finetune(method=method, name=f"eval_round_{r}", seed=round_seed(self.ctx.cfg.al.seed, r, 5),
                                save_as=layout.eval_checkpoint(r))
        return {"accuracy": res["accuracy"], "eval_method": method}

    def after_labels(self, r: int, timer: PhaseTimer) -> dict:
        proxy = self.train_proxy(r, timer)
        row = self.evaluate_round(r, proxy, timer)
        row.update(features_version=self.feature_version(), train_method="FT")
        return row
