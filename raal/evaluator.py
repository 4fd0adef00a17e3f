"""The one evaluator: every arm, at every labeled-set size, is scored by the same fine-tune recipe.

A learning curve is only comparable across arms when each point is measured by the same instrument. raal's
evaluator fine-tunes the pre-trained backbone on an arm's labeled set with one fixed recipe (`raal.recipe`) and
scores it on the test split; its seed is derived from (AL seed, labeled-set size), never from the arm, so two arms
with the same number of labels are scored with paired seeds. The selector's own accuracy (the proxy's, or standard
AL's model) stays in the rounds table as a labelled diagnostic (`model_accuracy`), never the headline.

On a CPU the evaluator fine-tunes *partially*: the first `eval.freeze_blocks` blocks of the backbone are frozen,
their activations for the pool and the test split are computed once per run (`PrefixCache`, stored in the run
store), and each evaluation trains the remaining blocks + a head from the cache. Methods:
- `lp`: the converged linear probe alone (L-BFGS on the frozen features);
- `lpft` (default): the probe, then `eval.steps` AdamW steps of the trainable blocks and the head from it;
- `ft`: the same steps from a fresh head.
The same `fit` serves standard AL's per-round model and ASVP's refresh when `train.freeze_blocks > 0`.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from raal import layout, progress
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
    seconds: float
    steps: int

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


class Evaluator:
    """Holds the frozen prefix, the cached activations of pool and test, and the recipe; scores labeled sets."""

    def __init__(self, *, model_cfg, transform, freeze_blocks: int, recipe: Recipe, num_classes: int,
                 test_labels: np.ndarray, pool_acts: torch.Tensor, test_acts: torch.Tensor, base_trunk: nn.Module):
        self.model_cfg, self.transform = model_cfg, transform
        self.freeze_blocks, self.recipe, self.num_classes = freeze_blocks, recipe, num_classes
        self.test_labels = torch.as_tensor(np.asarray(test_labels, dtype=np.int64))
        self.pool_acts, self.test_acts = pool_acts, test_acts
        self._base_trunk = base_trunk
        self.setup_seconds = 0.0
        self.threads = eval_threads()

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
        acts = {}
        for split, images in (("pool", data.pool), ("test", data.test)):
            ids = np.asarray(images.ids, dtype=np.int64)
            cache = PrefixCache(store, split, {**meta, "ids": hashlib.sha256(ids.tobytes()).hexdigest()})
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
                 test_acts=acts["test"], base_trunk=trunk)
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

    def _accuracy(self, suffix: nn.Module, head: nn.Linear) -> float:
        with torch.no_grad():
            pred = head(self.features(suffix, "test")).argmax(1)
        return float((pred == self.test_labels).float().mean())

    def fit(self, positions: np.ndarray, labels: np.ndarray, *, seed: int, recipe: Recipe | None = None) -> Fitted:
        """Fit the recipe on pool rows `positions` with `labels`; test accuracy of the probe and of the result."""
        rc = recipe or self.recipe
        t0 = time.perf_counter()
        threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)  # the driver runs nothing else meanwhile; Ray gave it 1 thread
        try:
            return self._fit(positions, labels, seed=seed, rc=rc, t0=t0)
        finally:
            torch.set_num_threads(threads)

    def _fit(self, positions, labels, *, seed: int, rc: Recipe, t0: float) -> Fitted:
        pos = np.asarray(positions, dtype=np.int64)
        y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
        if len(pos) != len(y) or len(pos) < 2:
            raise ValueError(f"the evaluator needs >= 2 labeled rows with one label each, got {len(pos)}/{len(y)}")
        x = self.pool_acts[torch.as_tensor(pos)]
        suffix = self.new_suffix()
        torch.manual_seed(int(seed) % (2**31))
        if rc.method in ("lp", "lpft"):
            feats = forward_in_chunks(suffix, x)
            assert feats is not None, "x has >= 2 rows (checked above)"
            head = fit_probe(feats, y, self.num_classes, l2=rc.probe_l2)
            probe_acc = self._accuracy(suffix, head)
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
                         bn=rc.bn)
            acc = self._accuracy(suffix, head)
        else:
            acc = probe_acc
        return Fitted(suffix=suffix, head=head, accuracy=acc, probe_accuracy=probe_acc,
                      seconds=time.perf_counter() - t0, steps=steps)

    def score(self, positions: np.ndarray, labels: np.ndarray, *, seed: int) -> dict:
        """The evaluation of one labeled set: accuracy (the headline), probe accuracy, steps, seconds."""
        f = self.fit(positions, labels, seed=seed)
        return {"accuracy": f.accuracy, "probe_accuracy": f.probe_accuracy, "eval_steps": f.steps,
                "eval_seconds": f.seconds}

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
