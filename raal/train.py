"""Fine-tuning the backbone as Ray Train jobs: FT, LP-FT (algorithms.md §3.4, §10) and LoRA for PEAL (§9).

One `TorchTrainer.fit` per call. The labeled images travel as a Ray Data dataset; every worker reads it whole (AL
labeled sets are small), orders it by id and caches it, transformed when that fits in `CACHE_BYTES`, so an epoch is
pure compute. Each epoch every rank takes its slice of one global permutation (like `DistributedSampler`), so all
ranks run the same number of steps and no row is dropped. The test split is evaluated inside the job, each rank
scoring the ids with `id % world == rank`. A checkpoint (model, optimizer, scheduler, step, log) is reported every
epoch; with `FailureConfig(max_failures)` a dead worker group restarts from it, and because every random draw is
seeded by (seed, rank, epoch) the resumed run replays the same batches.

Stages: `lp` trains the head on a frozen backbone in eval mode (BatchNorm statistics untouched), SGD Nesterov with
the cosine-7/16 schedule; `ft` trains everything with two parameter groups and step decay at `milestones` (counted
from the start of the FT stage); `lora` trains the LoRA adapters and the head with Adam and a class-balanced sampler.
FT alone runs lp_epochs + epochs so that FT and LP-FT take the same number of steps.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from raal import console, faults, layout, progress
from raal.config import LoraConfig, ModelConfig, TrainConfig
from raal.data.transforms import IMAGE_COLUMNS, ImageTransform
from raal.proxy import cosine_multiplier, epoch_batches
from raal.recipe import fit_probe, freeze_batchnorm, lr_multiplier
from raal.store import RunStore, ray_train_storage

log = logging.getLogger(__name__)

METHODS = ("ft", "lpft", "lora")
CACHE_BYTES = 1 << 30  # per worker: above this the raw rows are cached and transformed per batch
CPU_SHARE = 0.9  # of the free CPUs, for the workers; the rest stays for Ray Data and the controller (ray-notes)
CRASH_ENV = "RAAL_TRAIN_CRASH_ONCE"  # "EPOCH:MARKER": rank 0 dies once at that epoch (fault-tolerance tests)
STATE_FILE = layout.TRAIN_STATE


@dataclass
class TrainResult:
    """What a fine-tuning job produced. `backbone_path` loads with `build_backbone(cfg, state_dict=torch.load(p))`."""

    method: str
    accuracy: float
    lp_accuracy: float | None
    backbone_path: str
    head_state: dict[str, torch.Tensor]
    steps: int
    epochs: int
    wall_time: float  # the whole `fit`, worker start-up included
    epoch_times: list[float] = field(default_factory=list)  # per epoch: training + checkpoint, rank 0
    log: list[dict] = field(default_factory=list)
    num_workers: int = 1
    cpus_per_worker: float = 1.0
    restarts: int = 0

    @property
    def startup_time(self) -> float:
        """Fit time not spent in epochs: worker start, process group, data load, evaluation, shutdown."""
        return self.wall_time - sum(self.epoch_times)


# --------------------------------------------------------------------------------------------------------------
# Pieces that run inside the workers (module level: they must be importable there)

class Classifier(nn.Module):
    """Backbone trunk + a fresh linear head."""

    def __init__(self, trunk: nn.Module, head: nn.Linear):
        super().__init__()
        self.trunk = trunk
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


def random_resized_crop_flip(x: torch.Tensor, gen: torch.Generator, *, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                             flip: bool = True) -> torch.Tensor:
    """RandomResizedCrop + horizontal flip for a whole batch in one `grid_sample` (output size = input size).

    Per image: area fraction ~ U(scale), log aspect ~ U(log ratio), crop sides clamped to the image (instead of
    torchvision's 10 rejection tries), centre uniform where the crop fits, flip with probability 1/2.
    """
    n = x.shape[0]
    area = torch.empty(n).uniform_(scale[0], scale[1], generator=gen)
    logr = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=gen)
    r = torch.exp(logr)
    w = torch.sqrt(area * r).clamp(max=1.0)
    h = torch.sqrt(area / r).clamp(max=1.0)
    cx = (torch.rand(n, generator=gen) * 2 - 1) * (1 - w)
    cy = (torch.rand(n, generator=gen) * 2 - 1) * (1 - h)
    sx = torch.where(torch.rand(n, generator=gen) < 0.5, -w, w) if flip else w
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, cx, h, cy
    theta = theta.to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def rank_order(n: int, world: int, rank: int, rng: np.random.Generator,
               labels: np.ndarray | None = None) -> np.ndarray:
    """This rank's rows for one epoch: its slice of one global order, padded by wrap-around to a multiple of world.

    With `labels`, the global order is a class-balanced draw with replacement (weights 1/count of the class).
    """
    if labels is None:
        order = rng.permutation(n)
    else:
        counts = np.bincount(labels)
        w = 1.0 / counts[labels]
        order = rng.choice(n, size=n, replace=True, p=w / w.sum())
    per = -(-n // world)
    order = np.resize(order, per * world)  # wraps around: every rank gets `per` rows
    return order[rank::world]


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over a state dict's names and bytes (bit-identity checks T-LP1/T-LP2)."""
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:20]


def _epoch_seed(seed: int, stream: int, epoch: int) -> int:
    """A seed per (job seed, stream, epoch); stream 0 is shared by all ranks, rank r uses r + 1."""
    return int(np.random.default_rng([seed, stream, epoch, 7]).integers(0, 2**62))


def _concat_batches(batches: list[dict]) -> dict:
    return {k: np.concatenate([np.asarray(b[k]) for b in batches]) for k in batches[0]}


def _subset(batch: dict, idx) -> dict:
    return {k: v[idx] for k, v in batch.items()}


class _Rows:
    """The labeled rows on one worker, ordered by id; transformed once if they fit in `cache_bytes`."""

    def __init__(self, iterator, transform: ImageTransform, device: torch.device, cache_bytes: int):
        batches = [b for b in iterator.iter_batches(batch_size=1024, batch_format="numpy")]
        if not batches:
            raise ValueError("the training dataset reached the worker empty")
        raw = _concat_batches(batches)
        order = np.argsort(raw["id"], kind="stable")
        self.raw = _subset(raw, order)
        self.n = int(self.raw["id"].shape[0])
        self.labels = np.asarray(self.raw["label"], dtype=np.int64)
        self.y = torch.from_numpy(self.labels).to(device)
        self.transform, self.device = transform, device
        per_item = 3 * transform.size * transform.size * 4
        self.x = None
        if self.n * per_item <= cache_bytes:
            self.x = torch.cat([torch.from_numpy(self._transform(np.arange(a, min(self.n, a + 512))))
                                for a in range(0, self.n, 512)]).to(device)

    def _transform(self, idx: np.ndarray) -> np.ndarray:
        cols = {k: v for k, v in self.raw.items() if k in IMAGE_COLUMNS}
        return self.transform(_subset(cols, idx))

    def batch(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.from_numpy(idx).to(self.device)
        x = self.x.index_select(0, t) if self.x is not None else torch.from_numpy(self._transform(idx)).to(self.device)
        return x, self.y.index_select(0, t)


def _build_classifier(config: dict) -> Classifier:
    """Backbone (pre-trained or the given state) + fresh head (+ LoRA), identical on every rank for a seed."""
    import ray

    from raal.models.backbones import build_backbone

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config["seed"])
        if config["backbone_factory"] is not None:
            backbone = config["backbone_factory"]()
        else:
            ref = config["init_state"]
            state = ray.get(ref) if ref is not None else None
            backbone = build_backbone(config["model_cfg"], state_dict=state)
        trunk = backbone.trunk
        if config["method"] == "lora":
            from raal.models.lora import apply_lora

            lc: LoraConfig = config["lora_cfg"]
            apply_lora(trunk, lc.rank, lc.alpha)
        head = nn.Linear(backbone.feature_dim, config["num_classes"])
    return Classifier(trunk, head)


@dataclass
class _Stage:
    name: str  # lp | ft | lora
    first_epoch: int
    epochs: int


def _stages(method: str, tc: TrainConfig, lc: LoraConfig | None, steps_per_epoch: int = 1) -> list[_Stage]:
    """The stages and their epochs. With `lp_solver=lbfgs` LP is one pass (the probe is fitted to convergence);
    the FT stage gets enough epochs for `min_steps` optimiser steps, whatever the labeled-set size."""
    lp_epochs = min(1, tc.lp_epochs) if tc.lp_solver == "lbfgs" else tc.lp_epochs
    ft_min = -(-tc.min_steps // max(1, steps_per_epoch)) if tc.min_steps else 0
    if method == "lpft":
        ft_epochs = max(tc.epochs, ft_min) if tc.epochs > 0 else 0  # epochs 0 = linear probing alone
        out = [_Stage("lp", 0, lp_epochs), _Stage("ft", lp_epochs, ft_epochs)]
    elif method == "ft":
        out = [_Stage("ft", 0, max(tc.lp_epochs + tc.epochs, ft_min))]
    else:
        out = [_Stage("lora", 0, lc.epochs)]
    return [s for s in out if s.epochs > 0]


class _Job:
    """One worker's side of the fine-tuning job."""

    def __init__(self, config: dict):
        import ray.train
        import ray.train.torch

        self.cfg = config
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        torch.set_num_threads(max(1, int(round(config["cpus_per_worker"]))))
        self.tc: TrainConfig = config["train_cfg"]
        self.lc: LoraConfig | None = config["lora_cfg"]
        self.method = config["method"]
        self.seed = int(config["seed"])
        self.net = _build_classifier(config).to(self.device)
        self.rows = _Rows(ray.train.get_dataset_shard("train"), config["transform"], self.device,
                          config["cache_bytes"])
        bs = self.lc.batch_size if self.method == "lora" else self.tc.batch_size
        self.batch_per_rank = max(2, -(-bs // self.world))
        per_rank = -(-self.rows.n // self.world)
        self.steps_per_epoch = len(epoch_batches(per_rank, self.batch_per_rank, np.random.default_rng(0)))
        self.stages = _stages(self.method, self.tc, self.lc, self.steps_per_epoch)
        self.total_epochs = sum(s.epochs for s in self.stages)
        self.ddp = None
        self.opt = self.sched = None
        self.stage_built = None
        self.epoch, self.step = 0, 0
        self.log: list[dict] = []
        self.lp_accuracy: float | None = None
        self.accuracy: float | None = None
        self._pending_opt: tuple | None = None  # (stage, optimizer state, scheduler state) from a checkpoint
        self._restore()

    # -- checkpoints -------------------------------------------------------------------------------------------
    def _restore(self) -> None:
        import ray.train

        ckpt = ray.train.get_checkpoint()
        rescued = self.cfg.get("rescued_checkpoint")
        if ckpt is None and rescued:  # the run folder lost its newest checkpoint: go on from the newest intact one
            state = torch.load(Path(rescued) / STATE_FILE, map_location="cpu", weights_only=True)
        elif ckpt is None:
            self.log.append({"event": "start", "trunk_digest": state_digest(self.net.trunk.state_dict()),
                             "head_digest": state_digest(self.net.head.state_dict())})
            return
        else:
            with ckpt.as_directory() as d:
                state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)
        if state["fingerprint"] != self.cfg["fingerprint"]:
            raise ValueError("the checkpoint in this run folder belongs to a job with other inputs")
        self.net.load_state_dict({k: v for k, v in state["net"].items() if not k.endswith("lora_scale")})
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.log, self.lp_accuracy, self.accuracy = list(state["log"]), state["lp_accuracy"], state["accuracy"]
        self.log.append({"event": "resume", "epoch": self.epoch, "step": self.step})
        self._pending_opt = (state.get("opt_stage"), state.get("opt"), state.get("sched"))

    def _save(self, metrics: dict, done: bool) -> float:
        import ray.train
        from ray.train import Checkpoint

        t0 = time.perf_counter()
        if self.rank != 0:
            ray.train.report(metrics)
            return time.perf_counter() - t0
        state = {"fingerprint": self.cfg["fingerprint"], "epoch": self.epoch, "step": self.step,
                 "net": self.net.state_dict(), "opt_stage": self.stage_built,
                 "opt": self.opt.state_dict() if self.opt is not None else None,
                 "sched": self.sched.state_dict() if self.sched is not None else None,
                 "log": self.log, "lp_accuracy": self.lp_accuracy, "accuracy": self.accuracy, "done": done}
        if self.method == "lora":
            from raal.models.lora import lora_state_dict

            state["net"] = lora_state_dict(self.net)
        with tempfile.TemporaryDirectory(prefix="raal-ckpt-") as d:
            torch.save(state, Path(d) / STATE_FILE)
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(d))
        return time.perf_counter() - t0

    # -- stages ------------------------------------------------------------------------------------------------
    def _build_stage(self, stage: _Stage) -> None:
        import ray.train.torch

        tc, net = self.tc, self.net
        if stage.name == "lp":
            net.trunk.requires_grad_(False)
            self.opt = torch.optim.SGD(net.head.parameters(), lr=tc.lp_lr, momentum=tc.momentum,
                                       nesterov=tc.momentum > 0, weight_decay=tc.weight_decay)
            total = stage.epochs * self.steps_per_epoch
            self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, partial(cosine_multiplier, total=total))
            self.per_step_sched = True
        elif stage.name == "ft":
            net.trunk.requires_grad_(True)
            if self.ddp is None:
                self.ddp = ray.train.torch.prepare_model(net)
            groups = [{"params": list(net.trunk.parameters()), "lr": tc.backbone_lr},
                      {"params": list(net.head.parameters()), "lr": tc.head_lr}]
            if tc.optimizer == "adamw":
                self.opt = torch.optim.AdamW(groups, lr=tc.head_lr, weight_decay=tc.weight_decay)
            else:
                self.opt = torch.optim.SGD(groups, lr=tc.head_lr, momentum=tc.momentum, nesterov=tc.momentum > 0,
                                           weight_decay=tc.weight_decay)
            if tc.schedule == "cosine":  # per step: linear warm-up, then cosine to 0 at the stage's last step
                total = stage.epochs * self.steps_per_epoch
                self.sched = torch.optim.lr_scheduler.LambdaLR(
                    self.opt, partial(lr_multiplier, total=total, warmup=int(round(tc.warmup_frac * total))))
                self.per_step_sched = True
            else:
                self.sched = torch.optim.lr_scheduler.MultiStepLR(self.opt, milestones=list(tc.milestones),
                                                                  gamma=tc.gamma)
                self.per_step_sched = False
        else:  # lora: the adapters were made trainable by apply_lora, the rest of the trunk is frozen
            from raal.models.lora import lora_parameters

            if self.ddp is None:
                self.ddp = ray.train.torch.prepare_model(net)
            params = lora_parameters(net.trunk) + list(net.head.parameters())
            self.opt = torch.optim.Adam(params, lr=self.lc.lr)
            self.sched = None
            self.per_step_sched = False
        self.stage_built = stage.name
        pending = self._pending_opt
        if pending and pending[0] == stage.name and pending[1] is not None:
            self.opt.load_state_dict(pending[1])
            if self.sched is not None and pending[2] is not None:
                self.sched.load_state_dict(pending[2])
        self._pending_opt = None
        if stage.name == "ft" and self.method == "lpft":
            self.log.append({"event": "ft_start", "head_digest": state_digest(net.head.state_dict())})

    def _set_modes(self, stage: _Stage) -> None:
        self.net.train()
        if stage.name == "lp":
            self.net.trunk.eval()  # BatchNorm statistics and dropout frozen
        elif stage.name == "ft" and self.tc.bn == "frozen":
            freeze_batchnorm(self.net.trunk)  # pre-trained statistics kept; small batches would overwrite them

    @torch.no_grad()
    def _fit_probe_epoch(self) -> dict:
        """LP by L-BFGS: the probe trained to convergence on the frozen features of the whole labeled set (no
        augmentation). Every rank computes the same fit; rank 0's result is broadcast so the heads are identical."""
        self.net.trunk.eval()
        idx = np.arange(self.rows.n)
        feats, labels = [], []
        for a in range(0, self.rows.n, 256):
            x, y = self.rows.batch(idx[a:a + 256])
            feats.append(self.net.trunk(x))
            labels.append(y)
        f, y = torch.cat(feats).float().cpu(), torch.cat(labels).cpu()
        probe = fit_probe(f, y, self.net.head.out_features, l2=self.tc.probe_l2)
        self.net.head.load_state_dict({k: v.to(self.device) for k, v in probe.state_dict().items()})
        if self.world > 1:
            import torch.distributed as dist

            for p in self.net.head.parameters():
                dist.broadcast(p.data, 0)
        logits = probe(f)
        return {"loss": float(F.cross_entropy(logits, y)), "train_acc": float((logits.argmax(1) == y).float().mean()),
                "lr": [0.0]}

    def _run_epoch(self, stage: _Stage) -> dict:
        if stage.name == "lp" and self.tc.lp_solver == "lbfgs":
            return self._fit_probe_epoch()
        self._set_modes(stage)
        own = _epoch_seed(self.seed, self.rank + 1, self.epoch)
        rng = np.random.default_rng(own)
        shared = np.random.default_rng(_epoch_seed(self.seed, 0, self.epoch))  # the same on every rank
        gen = torch.Generator().manual_seed(own)
        torch.manual_seed(own)  # dropout
        labels = self.rows.labels if stage.name == "lora" else None
        order = rank_order(self.rows.n, self.world, self.rank, shared, labels)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device)
        seen = 0
        lrs = [g["lr"] for g in self.opt.param_groups]
        for pos in epoch_batches(len(order), self.batch_per_rank, rng):
            x, y = self.rows.batch(order[pos])
            if self.tc.augment:
                x = random_resized_crop_flip(x, gen, scale=(self.tc.crop_scale_min, 1.0))
            if stage.name == "lp":
                with torch.no_grad():
                    f = self.net.trunk(x)
                logits = self.net.head(f)
            else:
                logits = self.ddp(x)
            loss = F.cross_entropy(logits, y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if stage.name == "lp" and self.world > 1:
                self._allreduce_grads(list(self.net.head.parameters()))
            self.opt.step()
            if self.per_step_sched:
                self.sched.step()
            loss_sum += loss.detach() * len(pos)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(pos)
            self.step += 1
        if self.sched is not None and not self.per_step_sched:
            self.sched.step()
        totals = self._allreduce(torch.stack([loss_sum, correct.float(), torch.tensor(float(seen),
                                                                                     device=self.device)]))
        return {"loss": float(totals[0] / totals[2]), "train_acc": float(totals[1] / totals[2]), "lr": lrs}

    def _allreduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(t)
        return t

    def _allreduce_grads(self, params: list[torch.Tensor]) -> None:
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        self._allreduce(flat)
        flat /= self.world
        a = 0
        for p in params:
            p.grad.copy_(flat[a:a + p.numel()].view_as(p))
            a += p.numel()

    @torch.no_grad()
    def evaluate(self) -> float:
        """Test accuracy: every rank reads the test stream and scores the ids with id % world == rank."""
        import ray.train

        if self.world > 1:  # rank 0's BatchNorm statistics everywhere: the scored model is the saved one
            import torch.distributed as dist

            for buf in self.net.buffers():
                dist.broadcast(buf, 0)
        was = self.net.training
        self.net.eval()
        counts = torch.zeros(2, dtype=torch.float64)
        transform: ImageTransform = self.cfg["transform"]
        it = ray.train.get_dataset_shard("test")
        for batch in it.iter_batches(batch_size=self.tc.eval_batch_size, batch_format="numpy"):
            keep = np.asarray(batch["id"]) % self.world == self.rank
            if not keep.any():
                continue
            sub = _subset(batch, keep)
            x = torch.from_numpy(transform({k: v for k, v in sub.items() if k in IMAGE_COLUMNS})).to(self.device)
            pred = self.net(x).argmax(1).cpu().numpy()
            counts[0] += float((pred == np.asarray(sub["label"])).sum())
            counts[1] += float(keep.sum())
        self.net.train(was)
        counts = self._allreduce(counts.to(self.device)).cpu()
        return float(counts[0] / max(1.0, float(counts[1])))

    def _maybe_crash(self) -> None:
        crash = self.cfg.get("crash")
        if crash and self.rank == 0 and self.epoch == crash[0] and not os.path.exists(crash[1]):
            Path(crash[1]).write_text(f"rank 0 exited at epoch {self.epoch}\n")
            time.sleep(1.5)  # lets the controller register the last report, so the resume point is predictable
            os._exit(1)

    def run(self) -> None:
        if self.epoch >= self.total_epochs and self.accuracy is not None:
            return  # a finished run found in storage: its last checkpoint is the result
        for stage in self.stages:
            end = stage.first_epoch + stage.epochs
            if self.epoch >= end:
                continue
            self._build_stage(stage)
            while self.epoch < end:
                self._maybe_crash()
                t0 = time.perf_counter()
                stats = self._run_epoch(stage)
                train_time = time.perf_counter() - t0
                self.epoch += 1
                entry = {"epoch": self.epoch, "stage": stage.name, "step": self.step, **stats,
                         "train_time": round(train_time, 4)}
                if stage.name == "lp" and self.epoch == end:
                    self.lp_accuracy = self.evaluate()
                    entry["lp_accuracy"] = self.lp_accuracy
                    entry["trunk_digest"] = state_digest(self.net.trunk.state_dict())
                    entry["head_digest"] = state_digest(self.net.head.state_dict())
                done = self.epoch == self.total_epochs
                if done:  # an LP-only job has just scored the same model
                    self.accuracy = entry["lp_accuracy"] if "lp_accuracy" in entry else self.evaluate()
                    entry["accuracy"] = self.accuracy
                self.log.append(entry)
                metrics = {k: v for k, v in entry.items() if isinstance(v, (int, float))}
                ckpt_time = self._save(metrics, done)
                if self.rank == 0 and not done and self.epoch >= 2:
                    faults.reach("finetune")  # two checkpoints are on disk: one can be removed
                entry["epoch_time"] = round(train_time + ckpt_time, 4)
                if self.rank == 0:  # a log record (raal.log), not a print: Ray Train echoes prints as records too
                    progress.report("fine-tune", self.epoch, self.total_epochs, "epoch")
                    log.info("%s epoch %d/%d stage=%s loss=%.4f train_acc=%.3f lr=%s time=%.2fs%s", self.method,
                             self.epoch, self.total_epochs, stage.name, stats["loss"], stats["train_acc"], stats["lr"],
                             train_time, f" test_acc={self.accuracy:.4f}" if done else "")


def _worker_loop(config: dict) -> None:
    console.worker_setup()  # Ray Train's own logging set-up (dictConfig) removed the worker hook's handlers
    _Job(config).run()


# --------------------------------------------------------------------------------------------------------------
# Driver side

def _arrow_column(values):
    import pyarrow as pa

    if isinstance(values, np.ndarray) and values.ndim > 1:
        from ray.data.extensions import ArrowTensorArray

        return ArrowTensorArray.from_numpy(np.ascontiguousarray(values))
    values = list(values) if isinstance(values, np.ndarray) and values.dtype == object else values
    if isinstance(values, list) and values and isinstance(values[0], np.ndarray):
        from ray.data.extensions import ArrowTensorArray

        return ArrowTensorArray.from_numpy(values)
    return pa.array(values)


def _to_dataset(batch: dict, rows_per_block: int = 2048):
    """A numpy batch (id, label, one image column) -> an in-memory Ray dataset (no read tasks, so no CPU needed)."""
    import pyarrow as pa
    import ray.data

    n = len(batch["id"])
    tables = []
    for a in range(0, n, rows_per_block):
        b = min(n, a + rows_per_block)
        tables.append(pa.table({k: _arrow_column(v[a:b]) for k, v in batch.items()}))
    return ray.data.from_arrow(tables)


def _image_column(batch: dict, what: str) -> str:
    cols = [c for c in IMAGE_COLUMNS if c in batch]
    if len(cols) != 1:
        raise ValueError(f"{what} needs exactly one image column of {IMAGE_COLUMNS}; got {sorted(batch)}")
    return cols[0]


def check_train_images(train_images: dict, num_classes: int) -> dict:
    """Validate the labeled batch: ids, int labels in [0, C), one image column, all the same length."""
    if not isinstance(train_images, dict) or "id" not in train_images or "label" not in train_images:
        raise ValueError("train_images must be a dict with 'id', 'label' and one image column")
    col = _image_column(train_images, "train_images")
    ids = np.asarray(train_images["id"])
    labels = np.asarray(train_images["label"])
    n = len(ids)
    if labels.shape != (n,) or len(train_images[col]) != n:
        raise ValueError(f"train_images columns differ in length: id {n}, label {labels.shape}, "
                         f"{col} {len(train_images[col])}")
    if not np.issubdtype(ids.dtype, np.integer) or len(np.unique(ids)) != n:
        raise ValueError("train_images['id'] must be unique integers")
    if not np.issubdtype(labels.dtype, np.integer) or (n and (labels.min() < 0 or labels.max() >= num_classes)):
        raise ValueError(f"train_images['label'] must be integers in [0, {num_classes})")
    if n < 2:
        raise ValueError(f"fine-tuning needs at least 2 labeled images (BatchNorm), got {n}")
    return {"id": ids.astype(np.int64), "label": labels.astype(np.int64), col: train_images[col]}


def _test_batch(test) -> dict:
    """The whole labelled test split as one numpy batch (paths or bytes for big sets), read on the driver."""
    if test.labels is None:
        raise ValueError(f"{test.name}: the test split has no labels")
    if test.parquet is not None and not test.columns:
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        path, col = test.parquet
        table = pq.read_table(path, columns=["id", col])
        table = table.filter(pc.is_in(table.column("id"), value_set=__import__("pyarrow").array(test.ids)))
        ids = table.column("id").to_numpy().astype(np.int64)
        order = np.argsort(ids)
        pos = np.searchsorted(np.asarray(test.ids), ids[order])
        return {"id": ids[order], "label": np.asarray(test.labels)[pos],
                ("bytes" if col == "image" else col): np.asarray(table.column(col).to_pylist(), dtype=object)[order]}
    batch = test.take(np.arange(len(test)))
    batch["label"] = np.asarray(test.labels, dtype=np.int64)
    return batch


def worker_resources(train_cfg: TrainConfig, n_rows: int) -> tuple[int, float]:
    """(workers, CPUs per worker) that fit what Ray has free now, so the job cannot wait forever on 2 CPUs.

    At most n_rows // 2 workers (each rank needs a batch of >= 2 for BatchNorm); each worker asks for at most
    `cpus_per_worker` and at most 0.9 × free CPUs / workers, leaving room for Ray Data and the controller. From an
    actor holding num_cpus=0 (the pipeline driver) the free CPUs are the whole cluster's.
    """
    import ray

    workers = max(1, min(train_cfg.num_workers, n_rows // 2))
    if train_cfg.use_gpu:
        gpus = ray.cluster_resources().get("GPU", 0.0)
        if gpus < 1:
            raise ValueError("train.use_gpu=true but the Ray cluster has no GPU")
        workers = min(workers, int(gpus))
    free = ray.available_resources().get("CPU", 0.0)
    share = CPU_SHARE * free / workers
    cpus = min(float(train_cfg.cpus_per_worker), share)
    if cpus < 0.05:
        log.warning("only %.2f CPUs free for %d training workers; asking for 0.05 each and waiting", free, workers)
        cpus = 0.05
    return workers, math.floor(cpus * 100) / 100


RESOURCE_KEYS = ("num_workers", "use_gpu", "cpus_per_worker", "max_failures", "eval_batch_size")


def _describe_callable(f) -> str:
    """A process-independent name for a backbone factory (repr would include memory addresses)."""
    if f is None:
        return "none"
    if isinstance(f, partial):
        return f"{_describe_callable(f.func)}{f.args!r}{sorted(f.keywords.items())!r}"
    return f"{getattr(f, '__module__', '?')}.{getattr(f, '__qualname__', type(f).__name__)}"


def _fingerprint(method: str, batch: dict, num_classes: int, model_cfg, train_cfg, lora_cfg, transform, seed,
                 init_state, factory) -> str:
    """What makes two jobs the same job (resources excluded: a resumed job may run on other workers)."""
    recipe = {k: v for k, v in dataclasses.asdict(train_cfg).items() if k not in RESOURCE_KEYS}
    h = hashlib.sha256()
    for part in (method, num_classes, seed, repr(model_cfg), json.dumps(recipe, sort_keys=True), repr(lora_cfg),
                 json.dumps(transform.describe(), sort_keys=True), _describe_callable(factory)):
        h.update(str(part).encode())
    h.update(batch["id"].tobytes())
    h.update(batch["label"].tobytes())
    if init_state is not None:
        h.update(state_digest(init_state).encode())
    return h.hexdigest()[:24]


def _crash_setting() -> tuple[int, str] | None:
    value = os.environ.get(CRASH_ENV, "")
    if not value:
        return None
    epoch, _, marker = value.partition(":")
    if not epoch.isdigit() or not marker:
        raise ValueError(f"{CRASH_ENV}={value!r}; expected EPOCH:MARKER_PATH")
    return int(epoch), marker


def rescue_damaged_run(run_dir: Path) -> str | None:
    """If Ray Train's checkpoint snapshot names a checkpoint that is gone or lacks its state file, Ray cannot
    resume the run folder. Move the folder aside (`NAME.damaged-TIME`, kept for inspection) and return the newest
    intact checkpoint in it (None if none is left), from which the job then starts again in a fresh folder."""
    snap = run_dir / "checkpoint_manager_snapshot.json"
    if not snap.is_file():
        return None
    try:
        results = json.loads(snap.read_text()).get("checkpoint_results", [])
        names = [r["checkpoint_dir_name"] for r in results]
    except (ValueError, KeyError, TypeError, AttributeError):
        names = None  # an unreadable snapshot is damage too
    if names is not None and all((run_dir / n / STATE_FILE).is_file() for n in names):
        return None
    aside = run_dir.with_name(f"{run_dir.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**9}")
    run_dir.rename(aside)
    intact = [n for n in (names or []) if (aside / n / STATE_FILE).is_file()]
    log.warning("Ray Train run %s: checkpoint(s) %s missing; moved to %s, resuming from %s", run_dir,
                sorted(set(names or []) - set(intact)) or "snapshot", aside.name, intact[-1] if intact else "scratch")
    return str(aside / intact[-1]) if intact else None


def _run_job(method: str, train_images: dict, test, *, num_classes: int, model_cfg: ModelConfig,
             train_cfg: TrainConfig, lora_cfg: LoraConfig | None, transform: ImageTransform,
             storage_path: str | RunStore, name: str, seed: int, init_state_dict, backbone_factory) -> TrainResult:
    import ray
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    if method not in METHODS:
        raise ValueError(f"train method {method!r}; allowed: {', '.join(METHODS)}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if not name or "/" in name:
        raise ValueError(f"name={name!r} must be a non-empty folder name")
    if not isinstance(transform, ImageTransform):
        raise ValueError(f"transform must be an ImageTransform, got {type(transform).__name__}")
    stages = _stages(method, train_cfg, lora_cfg)
    if not stages:
        raise ValueError(f"{method}: zero epochs to train (train.lp_epochs + train.epochs or lora.epochs)")
    batch = check_train_images(train_images, num_classes)
    test_batch = _test_batch(test)
    run_store, storage = ray_train_storage(storage_path, name)  # Ray Train writes through the store's filesystem
    fp = _fingerprint(method, batch, num_classes, model_cfg, train_cfg, lora_cfg, transform, seed, init_state_dict,
                      backbone_factory)
    if run_store.exists(layout.TRAIN_INPUTS) and run_store.read_json(layout.TRAIN_INPUTS).get("fingerprint") != fp:
        raise ValueError(f"{run_store.path()} holds a training run with other inputs; pick another name")
    rescued = rescue_damaged_run(run_store.local_path()) if run_store.is_local else None
    run_store, _ = ray_train_storage(storage_path, name)  # (re)creates the folder if the damaged one moved aside
    run_store.write_json(layout.TRAIN_INPUTS, {"fingerprint": fp, "method": method, "rows": len(batch["id"])})

    workers, cpus = worker_resources(train_cfg, len(batch["id"]))
    resources = {"CPU": cpus}
    if train_cfg.use_gpu:
        resources["GPU"] = 1
    config = {"method": method, "num_classes": num_classes, "model_cfg": model_cfg, "train_cfg": train_cfg,
              "lora_cfg": lora_cfg, "transform": transform, "seed": seed,
              "init_state": ray.put(init_state_dict) if init_state_dict is not None else None,
              "rescued_checkpoint": rescued,
              "backbone_factory": backbone_factory, "fingerprint": fp, "crash": _crash_setting(),
              "cache_bytes": CACHE_BYTES, "cpus_per_worker": cpus}
    trainer = TorchTrainer(
        _worker_loop, train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=train_cfg.use_gpu, resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if train_cfg.use_gpu else "gloo"),
        datasets={"train": _to_dataset(batch), "test": _to_dataset(test_batch)},
        dataset_config=DataConfig(datasets_to_split=[]),
        run_config=RunConfig(name=name, **storage,
                             failure_config=FailureConfig(max_failures=train_cfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)))
    t0 = time.perf_counter()
    result = trainer.fit()
    wall = time.perf_counter() - t0
    if getattr(result, "error", None) is not None:
        raise result.error
    if result.checkpoint is None:
        raise RuntimeError(f"training job {name} finished without a checkpoint")
    with result.checkpoint.as_directory() as d:
        state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)
    if not state.get("done"):
        raise RuntimeError(f"training job {name} stopped at epoch {state['epoch']} without finishing")
    net_state = state["net"]
    if method == "lora":
        from raal.models.lora import merge_lora_state_dict

        net_state = merge_lora_state_dict(net_state)
    trunk = {k[len("trunk."):]: v for k, v in net_state.items() if k.startswith("trunk.")}
    head = {k[len("head."):]: v for k, v in net_state.items() if k.startswith("head.")}
    buf = io.BytesIO()
    torch.save(trunk, buf)
    run_store.write_bytes(layout.TRAIN_BACKBONE, buf.getvalue())
    epoch_log = [e for e in state["log"] if "epoch" in e and "stage" in e]
    result_obj = TrainResult(
        method=method, accuracy=float(state["accuracy"]), lp_accuracy=state["lp_accuracy"],
        backbone_path=run_store.path(layout.TRAIN_BACKBONE), head_state=head, steps=int(state["step"]),
        epochs=int(state["epoch"]), wall_time=wall,
        epoch_times=[float(e.get("epoch_time", e.get("train_time", 0.0))) for e in epoch_log],
        log=list(state["log"]), num_workers=workers, cpus_per_worker=cpus,
        restarts=sum(1 for e in state["log"] if e.get("event") == "resume"))
    summary = {k: v for k, v in dataclasses.asdict(result_obj).items() if k != "head_state"}
    run_store.write_json(layout.TRAIN_RESULT, summary)
    log.info("%s job %s: test accuracy %.4f (LP %s), %d steps in %.1f s (%d workers × %.2f CPU)", method, name,
             result_obj.accuracy, result_obj.lp_accuracy, result_obj.steps, wall, workers, cpus)
    return result_obj


def finetune(train_images: dict, test, *, num_classes: int, model_cfg: ModelConfig, train_cfg: TrainConfig,
             transform: ImageTransform, method: str = "ft", storage_path: str | RunStore, name: str, seed: int = 0,
             init_state_dict: dict | None = None,
             backbone_factory: Callable | None = None) -> TrainResult:
    """FT or LP-FT of the backbone on the labeled images as one Ray Train job; returns test accuracy and weights.

    `train_images`: a numpy batch with `id`, `label` and one image column. `test`: the labelled test ImageSet.
    The backbone starts from `init_state_dict` if given, else from `model_cfg`'s weights (or `backbone_factory()`).
    A job whose `storage_path/name` (a folder, a pyarrow.fs URI or a RunStore) already holds a checkpoint of the same
    inputs resumes from it.
    """
    if method not in ("ft", "lpft"):
        raise ValueError(f"train.method={method!r}; allowed: ft, lpft")
    return _run_job(method, train_images, test, num_classes=num_classes, model_cfg=model_cfg, train_cfg=train_cfg,
                    lora_cfg=None, transform=transform, storage_path=storage_path, name=name, seed=seed,
                    init_state_dict=init_state_dict, backbone_factory=backbone_factory)


def finetune_lora(train_images: dict, test, *, num_classes: int, model_cfg: ModelConfig, lora_cfg: LoraConfig,
                  train_cfg: TrainConfig, transform: ImageTransform, storage_path: str | RunStore, name: str,
                  seed: int = 0, init_state_dict: dict | None = None,
                  backbone_factory: Callable | None = None) -> TrainResult:
    """PEAL: LoRA adapters on every block's fused qkv + a linear head, Adam, class-balanced sampling, as one job.

    `train_cfg` supplies the workers, augmentation and evaluation batch; `lora_cfg` the rank, alpha, lr, epochs and
    batch size. `backbone_path` holds the merged (plain) weights.
    """
    if lora_cfg.epochs < 1 or lora_cfg.batch_size < 1 or lora_cfg.lr <= 0 or lora_cfg.rank < 1:
        raise ValueError(f"lora: epochs, batch_size, rank and lr must be > 0, got {lora_cfg}")
    return _run_job("lora", train_images, test, num_classes=num_classes, model_cfg=model_cfg, train_cfg=train_cfg,
                    lora_cfg=lora_cfg, transform=transform, storage_path=storage_path, name=name, seed=seed,
                    init_state_dict=init_state_dict, backbone_factory=backbone_factory)
