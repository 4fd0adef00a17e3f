"""The one evaluator: every arm, at every labeled-set size, is scored by the same fine-tune recipe.

A learning curve is only comparable across arms when each point is measured by the same instrument. raal's
evaluator fine-tunes the pre-trained backbone on an arm's labeled set with one fixed recipe (`raal.recipe`) and
scores it on the test split; its seed is derived from (AL seed, labeled-set size), never from the arm, so two arms
with the same number of labels are scored with paired seeds. The selector's own accuracy (the proxy's, or standard
AL's model) stays in the rounds table as a labelled diagnostic (`model_accuracy`), never the headline.

Two regimes. *Partial* (`eval.freeze_blocks` > 0, or -1 = all but the last 2 blocks): the first blocks are frozen,
their activations for the pool and the test split are computed once per run (`PrefixCache`, stored in the run
store), and each evaluation trains the remaining blocks + a head from the cache; cheap, but the features barely
move. *Full* (`eval.freeze_blocks=0`): every block trains, as users fine-tune; the transformed images of pool and
test are held in memory (the input is the "activation"; bounded by RAAL_EVAL_MEMORY_GB) and the augmentation is a
random translation of the images. Methods:
- `lp`: the converged linear probe alone (L-BFGS on the frozen features);
- `lpft` (default): the probe, then `eval.steps` AdamW steps of the trainable blocks and the head from it;
- `ft`: the same steps from a fresh head.
The same `fit` serves standard AL's per-round model and ASVP's refresh when `train.freeze_blocks != 0`.

Fits are memoised: a fit is a function of (labeled set, labels, seed, recipe, backbone, transform) — the labeled
rows are put in pool order first, so the order they were labeled in does not matter — and an identical request
returns the earlier result (`Fitted.memo_hit`) instead of training again: from memory (the last few fits, models
included) or, for `score`, from the record in the run store (`eval_memo/`), so a resumed run and every arm share
them. Round 0 (the same random batch in every arm), ASVP's rounds before its first refresh (SVPp's sets) and
standard AL's per-round model (the evaluator's own fit of that set) are each trained once.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from raal import layout, progress
from raal.errors import ConfigError
from raal.recipe import default_freeze, fit_probe, forward_in_chunks, split_trunk, train_suffix

log = logging.getLogger(__name__)

CACHE_DIR = layout.EVAL_CACHE


def eval_threads() -> int:
    """Every core by default (nothing else runs in the driver meanwhile); RAAL_EVAL_THREADS overrides it, e.g. 1 on a
    machine shared with other jobs, where OpenMP threads spin-wait for each other (measured 2.4x slower)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, int(os.environ.get("RAAL_EVAL_THREADS", cores)))


def eval_seed(al_seed: int, n_labeled: int, salt: int = 7) -> int:
    """The evaluation seed of a labeled-set size: the same for every arm (paired), different across sizes."""
    return int(np.random.SeedSequence([int(al_seed), int(n_labeled), salt]).generate_state(1)[0])


@dataclass(frozen=True)
class Recipe:
    """What one evaluation (or one partial fine-tune) does; built from `EvalConfig` or `TrainConfig`."""

    method: str = "lpft"  # lp | lpft | ft
    steps: int = 300
    batch_size: int = 64
    backbone_lr: float = 1e-4
    head_lr: float = 1e-3
    ft_head_lr: float = 3e-3  # a fresh head (method ft) learns faster than one that starts converged
    weight_decay: float = 1e-4
    warmup_frac: float = 0.1
    probe_l2: float = 1e-3
    augment: bool = True
    bn: str = "frozen"  # frozen | train

    @classmethod
    def from_config(cls, c, method: str | None = None) -> Recipe:
        keys = [k for k in cls.__dataclass_fields__ if hasattr(c, k)]
        out = cls(**{k: getattr(c, k) for k in keys})
        return out if method is None else cls(**{**out.__dict__, "method": method})


@dataclass
class Fitted:
    """A fitted suffix + head: its test accuracy, the probe's, and the time it took."""

    suffix: nn.Module
    head: nn.Linear
    accuracy: float
    probe_accuracy: float
    seconds: float  # the measured cost of the fit (also when a later request got it from the memo)
    steps: int
    memo_hit: bool = False  # this request was answered from the memo, not trained again
    class_recall: tuple[float, ...] = ()  # test recall per class (nan: no test item of that class); long tails

    def state_dict(self) -> dict:
        return {"suffix": {k: v.detach().clone() for k, v in self.suffix.state_dict().items()},
                "head": {k: v.detach().clone() for k, v in self.head.state_dict().items()}}


class PrefixCache:
    """Activations of the frozen prefix for one split, computed once and kept in the run store (float32)."""

    def __init__(self, store, split: str, meta: dict):
        self.store, self.split, self.meta = store, split, meta

    @staticmethod
    def _digest(meta: dict) -> str:
        return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]

    def _paths(self) -> tuple[str, str]:
        key = self._digest(self.meta)
        return layout.eval_cache(self.split, key)

    def load(self) -> torch.Tensor | None:
        data_path, meta_path = self._paths()
        if not (self.store.exists(meta_path) and self.store.exists(data_path)):
            return None
        rec = self.store.read_json(meta_path)
        raw = self.store.read_bytes(data_path)
        if hashlib.sha256(raw).hexdigest() != rec["sha256"]:
            log.warning("prefix cache %s is corrupt; recomputing it", data_path)
            return None
        return torch.from_numpy(np.frombuffer(raw, dtype=np.float32).copy().reshape(rec["shape"]))

    def compute(self, images, prefix: nn.Module, transform, chunk: int = 256) -> torch.Tensor:
        """prefix(images) in chunks of `chunk` rows (decoding included), written atomically: data, then record."""
        parts = []
        with torch.no_grad():
            for a in range(0, len(images), chunk):
                x = torch.from_numpy(transform(images.take(np.arange(a, min(len(images), a + chunk)))))
                parts.append(prefix(x))
                progress.report("evaluator cache", min(len(images), a + chunk), len(images), "img")
        acts = torch.cat(parts).contiguous()
        raw = acts.numpy().tobytes()
        data_path, meta_path = self._paths()
        self.store.write_bytes(data_path, raw)
        self.store.write_json(meta_path, {**self.meta, "shape": list(acts.shape),
                                          "sha256": hashlib.sha256(raw).hexdigest()})
        return acts


def memory_limit_bytes() -> int:
    """What full fine-tuning may hold as transformed inputs of pool + test (RAAL_EVAL_MEMORY_GB, default 8)."""
    return int(float(os.environ.get("RAAL_EVAL_MEMORY_GB", "8")) * 2**30)


def hold_inputs(images, transform, chunk: int = 256) -> torch.Tensor:
    """The transformed images of one split as one float32 tensor (full fine-tuning: the input is the activation)."""
    parts = []
    for a in range(0, len(images), chunk):
        parts.append(torch.from_numpy(transform(images.take(np.arange(a, min(len(images), a + chunk))))))
        progress.report("evaluator inputs", min(len(images), a + chunk), len(images), "img")
    return torch.cat(parts).contiguous()


class Evaluator:
    """Holds the frozen prefix, the cached activations of pool and test, and the recipe; scores labeled sets."""

    MEMO_MODELS = 6  # fits kept in memory with their models (a full MobileNetV2 is ~9 MB)

    def __init__(self, *, model_cfg, transform, freeze_blocks: int, recipe: Recipe, num_classes: int,
                 test_labels: np.ndarray, pool_acts: torch.Tensor, test_acts: torch.Tensor, base_trunk: nn.Module,
                 store=None, identity: dict | None = None):
        self.model_cfg, self.transform = model_cfg, transform
        self.freeze_blocks, self.recipe, self.num_classes = freeze_blocks, recipe, num_classes
        self.test_labels = torch.as_tensor(np.asarray(test_labels, dtype=np.int64))
        self.pool_acts, self.test_acts = pool_acts, test_acts
        self._base_trunk = base_trunk
        self.setup_seconds = 0.0
        self.threads = eval_threads()
        self.store = store  # where score records are memoised (None: memory only)
        self.memo_models = False  # also keep each fit's model there (EvalConfig.memo_models)
        self.identity = identity or {}  # backbone, transform, frozen blocks, pool/test ids: part of every memo key
        self._memo: OrderedDict[str, Fitted] = OrderedDict()

    @property
    def full(self) -> bool:
        """Full fine-tuning: every block trains (`freeze_blocks=0`)."""
        return self.freeze_blocks == 0

    def describe(self) -> str:
        method = {"lpft": "LP-FT", "ft": "FT", "lp": "LP"}[self.recipe.method]
        if self.full:
            return f"{method} of the whole backbone (inputs held in memory), {self.recipe.steps} steps"
        return (f"{method} of the blocks after the first {self.freeze_blocks} (frozen, cached), {self.recipe.steps} "
                "steps: a partial fine-tune, where features barely move and ASVP cannot differ from SVPp; full "
                "fine-tune figures: bench/results/asvp_full/ (eval.freeze_blocks=0)")

    @classmethod
    def build(cls, *, store, data, model_cfg, transform, freeze_blocks: int, recipe: Recipe) -> Evaluator:
        """Load (or compute once) the prefix activations of pool and test for this backbone and transform."""
        from raal.models.backbones import build_backbone  # lazy: heavy: torch

        t0 = time.perf_counter()
        trunk = build_backbone(model_cfg).trunk.eval()
        freeze_blocks = default_freeze(trunk) if freeze_blocks < 0 else freeze_blocks
        prefix, _ = split_trunk(trunk, freeze_blocks)
        meta = {"arch": model_cfg.arch, "weights": str(model_cfg.weights), "freeze_blocks": freeze_blocks,
                "transform": transform.describe()}
        if freeze_blocks == 0:
            need = 4 * 3 * transform.size ** 2 * (len(data.pool) + len(data.test))
            if need > memory_limit_bytes():
                raise ConfigError(f"eval.freeze_blocks=0 holds pool and test as float32 images in memory: "
                                  f"{need / 2**30:.1f} GiB > RAAL_EVAL_MEMORY_GB={memory_limit_bytes() / 2**30:g}; "
                                  f"use eval.freeze_blocks=-1 (partial) or a smaller data.image_size")
        acts = {}
        identity = dict(meta)
        for split, images in (("pool", data.pool), ("test", data.test)):
            ids = np.asarray(images.ids, dtype=np.int64)
            identity[f"{split}_ids"] = hashlib.sha256(ids.tobytes()).hexdigest()
            if freeze_blocks == 0:
                acts[split] = hold_inputs(images, transform)
                continue
            cache = PrefixCache(store, split, {**meta, "ids": identity[f"{split}_ids"]})
            got = cache.load()
            if got is None:
                threads = torch.get_num_threads()
                torch.set_num_threads(eval_threads())
                try:
                    got = cache.compute(images, prefix, transform)
                finally:
                    torch.set_num_threads(threads)
            acts[split] = got
        ev = cls(model_cfg=model_cfg, transform=transform, freeze_blocks=freeze_blocks, recipe=recipe,
                 num_classes=data.pool.num_classes, test_labels=data.test.labels, pool_acts=acts["pool"],
                 test_acts=acts["test"], base_trunk=trunk, store=store, identity=identity)
        ev.setup_seconds = time.perf_counter() - t0
        return ev

    def new_suffix(self) -> nn.Module:
        return split_trunk(self._base_trunk, self.freeze_blocks)[1]

    def features(self, suffix: nn.Module, split: str, rows: np.ndarray | None = None) -> torch.Tensor:
        acts = self.pool_acts if split == "pool" else self.test_acts
        x = acts if rows is None else acts[torch.as_tensor(np.asarray(rows, dtype=np.int64))]
        out = forward_in_chunks(suffix, x)
        assert out is not None, "the pool and test splits are never empty (checked when the data loads)"
        return out

    def accuracy_on(self, fitted: Fitted, positions: np.ndarray, labels: np.ndarray) -> float:
        """Accuracy of a fit on pool rows (e.g. labeled rows it did not train on)."""
        with torch.no_grad():
            pred = fitted.head(self.features(fitted.suffix, "pool", positions)).argmax(1)
        return float((pred == torch.as_tensor(np.asarray(labels, dtype=np.int64))).float().mean())

    def _test_scores(self, suffix: nn.Module, head: nn.Linear) -> tuple[float, tuple[float, ...]]:
        """Test accuracy and recall per class: on a long-tailed pool the headline hides the rare classes."""
        with torch.no_grad():
            pred = head(self.features(suffix, "test")).argmax(1)
        hit = (pred == self.test_labels).double()
        k = self.num_classes
        per = torch.bincount(self.test_labels, weights=hit, minlength=k)[:k]
        count = torch.bincount(self.test_labels, minlength=k)[:k].double()
        recall = torch.where(count > 0, per / count.clamp(min=1), torch.full_like(per, float("nan")))
        return float(hit.mean()), tuple(float(r) for r in recall)

    @staticmethod
    def _canonical(positions, labels) -> tuple[np.ndarray, np.ndarray]:
        pos = np.asarray(positions, dtype=np.int64)
        y = np.asarray(labels, dtype=np.int64)
        if len(pos) != len(y) or len(pos) < 2:
            raise ValueError(f"the evaluator needs >= 2 labeled rows with one label each, got {len(pos)}/{len(y)}")
        order = np.argsort(pos, kind="stable")
        return pos[order], y[order]

    def memo_key(self, positions, labels, *, seed: int, recipe: Recipe | None = None) -> str:
        """The identity of a fit: labeled set and labels (in pool order), seed, recipe, backbone, transform, data."""
        pos, y = self._canonical(positions, labels)
        h = hashlib.sha256(pos.tobytes())
        h.update(y.tobytes())
        h.update(json.dumps({"seed": int(seed), "recipe": (recipe or self.recipe).__dict__, **self.identity},
                            sort_keys=True, default=str).encode())
        return h.hexdigest()[:32]

    def fit(self, positions: np.ndarray, labels: np.ndarray, *, seed: int, recipe: Recipe | None = None) -> Fitted:
        """Fit the recipe on pool rows `positions` with `labels`; test accuracy of the probe and of the result.

        An identical earlier fit still in memory is returned as it is (`memo_hit`; treat its model as read-only)."""
        rc = recipe or self.recipe
        key = self.memo_key(positions, labels, seed=seed, recipe=rc)
        if key in self._memo:
            self._memo.move_to_end(key)
            f = self._memo[key]
            return Fitted(f.suffix, f.head, f.accuracy, f.probe_accuracy, f.seconds, f.steps, memo_hit=True,
                          class_recall=f.class_recall)
        kept = self._recall(key)
        if kept is not None:
            self._memo[key] = kept
            return kept
        t0 = time.perf_counter()
        threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)  # the driver runs nothing else meanwhile; Ray gave it 1 thread
        try:
            out = self._fit(*self._canonical(positions, labels), seed=seed, rc=rc, t0=t0)
        finally:
            torch.set_num_threads(threads)
        self._memo[key] = out
        while len(self._memo) > self.MEMO_MODELS:
            self._memo.popitem(last=False)
        self._remember(key, out)
        return out

    def _remember(self, key: str, f: Fitted) -> None:
        """The fit's record (and, with `memo_models`, its model first) in the run store, for resumed runs."""
        if self.store is None or self.store.exists(layout.eval_memo(key)):
            return
        if self.memo_models:
            save_state(self.store, layout.eval_memo_model(key), f.state_dict())
        self.store.write_json(layout.eval_memo(key), {"accuracy": f.accuracy, "probe_accuracy": f.probe_accuracy,
                                                      "seconds": f.seconds, "steps": f.steps,
                                                      "class_recall": list(f.class_recall)})

    def _recall(self, key: str) -> Fitted | None:
        """A fit whose model was kept in the run store (`memo_models`), rebuilt without training."""
        if self.store is None or not (self.store.exists(layout.eval_memo(key))
                                      and self.store.exists(layout.eval_memo_model(key))):
            return None
        rec = self.store.read_json(layout.eval_memo(key))
        suffix, head = self.load_fitted(load_state(self.store, layout.eval_memo_model(key)))
        return Fitted(suffix, head, rec["accuracy"], rec["probe_accuracy"], rec["seconds"], rec["steps"], memo_hit=True,
                      class_recall=tuple(rec.get("class_recall", ())))

    def _fit(self, pos: np.ndarray, labels: np.ndarray, *, seed: int, rc: Recipe, t0: float) -> Fitted:
        y = torch.as_tensor(labels)
        x = self.pool_acts[torch.as_tensor(pos)]
        suffix = self.new_suffix()
        torch.manual_seed(int(seed) % (2**31))
        recall: tuple[float, ...] = ()
        if rc.method in ("lp", "lpft"):
            feats = forward_in_chunks(suffix, x)
            assert feats is not None, "x has >= 2 rows (checked above)"
            head = fit_probe(feats, y, self.num_classes, l2=rc.probe_l2)
            probe_acc, recall = self._test_scores(suffix, head)
        else:
            first = forward_in_chunks(suffix, x[:1])
            assert first is not None, "x has >= 2 rows (checked above)"
            head = nn.Linear(first.shape[1], self.num_classes)
            probe_acc = float("nan")
        steps = 0 if rc.method == "lp" else rc.steps
        if steps:
            train_suffix(suffix, head, x, y, steps=steps, batch_size=rc.batch_size, backbone_lr=rc.backbone_lr,
                         head_lr=rc.head_lr if rc.method == "lpft" else rc.ft_head_lr,
                         weight_decay=rc.weight_decay, warmup_frac=rc.warmup_frac, augment=rc.augment, seed=seed,
                         bn=rc.bn, shift=self.transform.size // 16 if self.full else 0)
            acc, recall = self._test_scores(suffix, head)
        else:
            acc = probe_acc
        return Fitted(suffix=suffix, head=head, accuracy=acc, probe_accuracy=probe_acc,
                      seconds=time.perf_counter() - t0, steps=steps, class_recall=recall)

    def score(self, positions: np.ndarray, labels: np.ndarray, *, seed: int) -> dict:
        """The evaluation of one labeled set: accuracy (the headline), probe accuracy, steps, the fit's measured
        seconds, whether it came from the memo (memory, or the record an earlier identical fit left) and the test
        recall per class (empty from a record written before it was kept)."""
        key = self.memo_key(positions, labels, seed=seed)
        if key not in self._memo and self.store is not None and self.store.exists(layout.eval_memo(key)):
            rec = self.store.read_json(layout.eval_memo(key))
            return {"accuracy": rec["accuracy"], "probe_accuracy": rec["probe_accuracy"], "eval_steps": rec["steps"],
                    "eval_seconds": rec["seconds"], "eval_memo": True,
                    "class_recall": tuple(rec.get("class_recall", ()))}
        f = self.fit(positions, labels, seed=seed)
        return {"accuracy": f.accuracy, "probe_accuracy": f.probe_accuracy, "eval_steps": f.steps,
                "eval_seconds": f.seconds, "eval_memo": f.memo_hit, "class_recall": f.class_recall}

    def load_fitted(self, state: dict) -> tuple[nn.Module, nn.Linear]:
        suffix = self.new_suffix()
        suffix.load_state_dict(state["suffix"])
        w = state["head"]["weight"]
        head = nn.Linear(w.shape[1], w.shape[0])
        head.load_state_dict(state["head"])
        return suffix.eval(), head

    def probs(self, suffix: nn.Module, head: nn.Linear) -> tuple[np.ndarray, np.ndarray]:
        """Pool features (post-pooling) and softmax probabilities of a fitted suffix + head."""
        with torch.no_grad():
            f = self.features(suffix, "pool")
            p = torch.softmax(head(f), dim=1)
        return f.numpy(), p.numpy()


def save_state(store, rel: str, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    store.write_bytes(rel, buf.getvalue())


def load_state(store, rel: str) -> dict:
    return torch.load(io.BytesIO(store.read_bytes(rel)), map_location="cpu", weights_only=True)
