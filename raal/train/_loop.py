"""The epoch loop of a fine-tune, one function for both paths: a Ray Train worker (`RayTrainSession`, any number of
ranks) and the warm training actor (raal/train/_warm.py, one rank).

Stages: `lp` trains the head on a frozen backbone in eval mode (BatchNorm statistics untouched), SGD Nesterov with
the cosine-7/16 schedule, or fits it by L-BFGS in one pass; `ft` trains everything with two parameter groups (AdamW
+ warm-up/cosine per step, or SGD + step decay at `milestones` counted from the start of the FT stage); `lora`
trains the LoRA adapters and the head with Adam and a class-balanced sampler. Each epoch every rank takes its slice
of one global permutation (like `DistributedSampler`), so all ranks run the same number of steps and no row is
dropped; the test split is scored with `id % world == rank`. A checkpoint (model, optimizer, scheduler, step, log)
is saved every epoch, and because every draw is seeded by (seed, rank, epoch) a resumed job replays the same batches.
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from raal import faults, logs, progress
from raal.config import LoraConfig, TrainConfig
from raal.data.transforms import IMAGE_COLUMNS, ImageTransform
from raal.recipe import cosine_multiplier, epoch_batches, fit_probe, freeze_batchnorm, lr_multiplier
from raal.train._parts import (
    STATE_FILE,
    _build_classifier,
    _epoch_seed,
    _Rows,
    _Stage,
    _stages,
    _subset,
    random_resized_crop_flip,
    rank_order,
    state_digest,
)

log = logging.getLogger("raal.train")  # the name users see on each epoch's line


class EpochLoop:
    """One rank's side of a fine-tuning job; `session` is where it runs (ranks, device, data, checkpoints)."""

    def __init__(self, config: dict, session, cache: dict | None = None):
        self.cfg, self.session = config, session
        self.rank, self.world, self.device = session.rank, session.world, session.device
        torch.set_num_threads(max(1, int(round(config["cpus_per_worker"]))))
        self.tc: TrainConfig = config["train_cfg"]
        self.lc: LoraConfig | None = config["lora_cfg"]
        self.method = config["method"]
        self.seed = int(config["seed"])
        self.net = _build_classifier(config, cache).to(self.device)
        self.rows = _Rows(session.train_rows(), config["transform"], self.device, config["cache_bytes"])
        bs = self.lc.batch_size if self.method == "lora" else self.tc.batch_size
        self.batch_per_rank = max(2, -(-bs // self.world))
        per_rank = -(-self.rows.n // self.world)
        self.steps_per_epoch = len(epoch_batches(per_rank, self.batch_per_rank, np.random.default_rng(0)))
        self.stages = _stages(self.method, self.tc, self.lc, self.steps_per_epoch)
        self.total_epochs = sum(s.epochs for s in self.stages)
        self.ddp: torch.nn.Module | None = None
        self.opt: torch.optim.Optimizer | None = None
        self.sched: torch.optim.lr_scheduler.LRScheduler | None = None
        self.stage_built: str | None = None
        self.epoch, self.step = 0, 0
        self.log: list[dict] = []
        self.lp_accuracy: float | None = None
        self.accuracy: float | None = None
        self._pending_opt: tuple | None = None  # (stage, optimizer state, scheduler state) from a checkpoint
        self._restore()

    # -- checkpoints -------------------------------------------------------------------------------------------
    def _restore(self) -> None:
        state = self.session.checkpoint()
        if state is None:
            self.log.append({"event": "start", "trunk_digest": state_digest(self.net.trunk.state_dict()),
                             "head_digest": state_digest(self.net.head.state_dict())})
            return
        if state["fingerprint"] != self.cfg["fingerprint"]:
            raise ValueError("the checkpoint in this run folder belongs to a job with other inputs")
        self.net.load_state_dict({k: v for k, v in state["net"].items() if not k.endswith("lora_scale")})
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.log, self.lp_accuracy, self.accuracy = list(state["log"]), state["lp_accuracy"], state["accuracy"]
        self.log.append({"event": "resume", "epoch": self.epoch, "step": self.step})
        self._pending_opt = (state.get("opt_stage"), state.get("opt"), state.get("sched"))

    def state(self, done: bool, optimiser: bool = True) -> dict:
        """What a checkpoint holds (the optimiser and scheduler only to resume from)."""
        state = {"fingerprint": self.cfg["fingerprint"], "epoch": self.epoch, "step": self.step,
                 "net": self.net.state_dict(), "log": self.log, "lp_accuracy": self.lp_accuracy,
                 "accuracy": self.accuracy, "done": done}
        if optimiser:
            state.update({"opt_stage": self.stage_built, "opt": self.opt.state_dict() if self.opt is not None else None,
                          "sched": self.sched.state_dict() if self.sched is not None else None})
        if self.method == "lora":
            from raal.models.lora import lora_state_dict  # lazy: heavy: torch

            state["net"] = lora_state_dict(self.net)
        return state

    def _save(self, metrics: dict, done: bool) -> float:
        t0 = time.perf_counter()
        self.session.save(self.state(done) if self.rank == 0 else None, metrics, self.epoch)
        return time.perf_counter() - t0

    # -- stages ------------------------------------------------------------------------------------------------
    def _build_stage(self, stage: _Stage) -> None:
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
                self.ddp = self.session.prepare_model(net)
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
            from raal.models.lora import lora_parameters  # lazy: heavy: torch

            if self.ddp is None:
                self.ddp = self.session.prepare_model(net)
            params = lora_parameters(net.trunk) + list(net.head.parameters())
            assert self.lc is not None, "a lora job always carries its LoraConfig"
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
        assert self.opt is not None, "run() builds the stage before its first epoch"
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
                assert self.ddp is not None, "the ft and lora stages wrap the model when they are built"
                logits = self.ddp(x)
            loss = F.cross_entropy(logits, y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if stage.name == "lp" and self.world > 1:
                self._allreduce_grads(list(self.net.head.parameters()))
            self.opt.step()
            if self.per_step_sched:
                assert self.sched is not None, "a per-step schedule is always built with its scheduler"
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
        grads = []
        for p in params:
            assert p.grad is not None, "called right after backward on the trainable head"
            grads.append(p.grad)
        flat = torch.cat([g.reshape(-1) for g in grads])
        self._allreduce(flat)
        flat /= self.world
        a = 0
        for p, g in zip(params, grads):
            g.copy_(flat[a:a + p.numel()].view_as(p))
            a += p.numel()

    @torch.no_grad()
    def evaluate(self) -> float:
        """Test accuracy: every rank reads the test stream and scores the ids with id % world == rank."""
        if self.world > 1:  # rank 0's BatchNorm statistics everywhere: the scored model is the saved one
            import torch.distributed as dist

            for buf in self.net.buffers():
                dist.broadcast(buf, 0)
        was = self.net.training
        self.net.eval()
        counts = torch.zeros(2, dtype=torch.float64)
        transform: ImageTransform = self.cfg["transform"]
        for batch in self.session.test_batches(self.tc.eval_batch_size):
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
            self.session.before_crash()
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


class RayTrainSession:
    """A Ray Train worker: its rank, device, dataset shards and checkpoints (Ray's, else the driver's resume state)."""

    def __init__(self, config: dict):
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self.cfg = config

    def train_rows(self) -> dict:
        import ray.train

        batches = list(ray.train.get_dataset_shard("train").iter_batches(batch_size=1024, batch_format="numpy"))
        if not batches:
            return {}
        return {k: np.concatenate([np.asarray(b[k]) for b in batches]) for k in batches[0]}

    def test_batches(self, batch_size: int):
        import ray.train

        return ray.train.get_dataset_shard("test").iter_batches(batch_size=batch_size, batch_format="numpy")

    def checkpoint(self) -> dict | None:
        import ray
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is not None:
            with ckpt.as_directory() as d:
                return torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)
        ref = self.cfg.get("resume_state")  # a damaged or another path's run folder: the driver found it
        return ray.get(ref) if ref is not None else None

    def save(self, state: dict | None, metrics: dict, epoch: int) -> None:
        import ray.train
        from ray.train import Checkpoint

        if state is None:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="raal-ckpt-") as d:
            torch.save(state, Path(d) / STATE_FILE)
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(d))

    def prepare_model(self, net):
        import ray.train.torch

        return ray.train.torch.prepare_model(net)

    def before_crash(self) -> None:
        time.sleep(1.5)  # lets the controller register the last report, so the resume point is predictable


def _worker_loop(config: dict) -> None:
    logs.worker_setup()  # Ray Train's own logging set-up (dictConfig) removed the worker hook's handlers
    EpochLoop(config, RayTrainSession(config)).run()
