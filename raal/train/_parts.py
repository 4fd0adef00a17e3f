"""The pieces of a fine-tune that run where the model trains (a Ray Train worker or the warm training actor).

The model (backbone trunk + fresh head), the batch augmentation, each rank's slice of an epoch's order, the
labeled rows cached on the device, the stages of a method, state digests, and finding a run folder's newest intact
epoch checkpoint (whoever wrote it). Every random draw is seeded by (seed, rank, epoch), so a resumed job replays
the same batches and both training paths compute the same numbers for a seed.
"""
from __future__ import annotations

import copy
import hashlib
import io
import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from raal import layout
from raal.config import LoraConfig, TrainConfig
from raal.data.transforms import IMAGE_COLUMNS, ImageTransform

log = logging.getLogger("raal.train_parts")  # the name users see in raal.log, as before the package

STATE_FILE = layout.TRAIN_STATE
CHECKPOINT_PREFIX = "checkpoint_"  # Ray Train's checkpoint folders and the warm actor's both start so


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


def _subset(batch: dict, idx) -> dict:
    return {k: v[idx] for k, v in batch.items()}


class _Rows:
    """The labeled rows on one worker, ordered by id; transformed once if they fit in `cache_bytes`."""

    def __init__(self, raw: dict, transform: ImageTransform, device: torch.device, cache_bytes: int):
        if not len(raw.get("id", ())):
            raise ValueError("the training dataset reached the worker empty")
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


def _build_classifier(config: dict, cache: dict | None = None) -> Classifier:
    """Backbone (pre-trained or the given state) + fresh head (+ LoRA), identical on every rank for a seed.

    The head and the adapters are drawn from the seed alone, not from what building the backbone consumed, so the
    warm actor (which builds the backbone once, `cache`, and loads each job's weights into it) gets them too.
    """
    import ray

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config["seed"])
        if config["backbone_factory"] is not None:
            backbone = config["backbone_factory"]()
        else:
            ref = config["init_state"]
            state = ray.get(ref) if isinstance(ref, ray.ObjectRef) else ref
            backbone = _backbone(config["model_cfg"], state, cache)
        trunk = backbone.trunk
        torch.manual_seed(config["seed"])
        if config["method"] == "lora":
            from raal.models.lora import apply_lora  # lazy: heavy: torch

            lc: LoraConfig = config["lora_cfg"]
            trunk = copy.deepcopy(trunk) if cache is not None else trunk  # the adapters change the module
            apply_lora(trunk, lc.rank, lc.alpha)
        head = nn.Linear(backbone.feature_dim, config["num_classes"])
    return Classifier(trunk, head)


def _backbone(model_cfg, state: dict | None, cache: dict | None):
    """`build_backbone`, or with `cache` the backbone built once per model config with `state` (or its pre-trained
    weights, kept on the host) loaded in place: the same tensors, without building the model again."""
    from raal.models.backbones import build_backbone  # lazy: heavy: torch

    if cache is None or (state is None and model_cfg.weights == "none"):  # a random init is the seed's own
        return build_backbone(model_cfg, state_dict=state)
    key = repr(model_cfg)
    if key not in cache:
        cache.clear()  # one backbone at a time
        built = build_backbone(model_cfg)
        cache[key] = (built, {k: v.detach().clone() for k, v in built.trunk.state_dict().items()})
    backbone, pretrained = cache[key]
    own = backbone.trunk.state_dict()
    load = pretrained if state is None else {k: v for k, v in state.items() if k in own}
    if len(load) != len(own) or any(tuple(load[k].shape) != tuple(own[k].shape) for k in own):
        return build_backbone(model_cfg, state_dict=state)  # not a trunk state: the full check and its error
    backbone.trunk.load_state_dict(load, strict=True)
    for p in backbone.trunk.parameters():
        p.grad = None
        p.requires_grad_(True)
    return backbone


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
        assert lc is not None, "a lora job always carries its LoraConfig"
        out = [_Stage("lora", 0, lc.epochs)]
    return [s for s in out if s.epochs > 0]


def newest_checkpoint(store) -> dict | None:
    """The state of the newest intact epoch checkpoint in a job's run folder (a RunStore), None if there is none.

    Both paths write `checkpoint_*/state.pt` (Ray Train through its storage filesystem, the warm actor atomically
    through the store), so a job resumes from whichever path ran it last; an unreadable one (removed, cut short) is
    skipped and the older one is used.
    """
    best = None
    for name in store.listdir():
        rel = f"{name}/{STATE_FILE}"
        if not name.startswith(CHECKPOINT_PREFIX) or not store.exists(rel):
            continue
        try:
            state = torch.load(io.BytesIO(store.read_bytes(rel)), map_location="cpu", weights_only=True)
            key = (int(state["epoch"]), bool(state.get("done")))
        except Exception as e:  # noqa: BLE001 - any damage means: not this one
            log.warning("fine-tune checkpoint %s unreadable (%s); skipped", store.path(rel), e)
            continue
        if best is None or key > best[0]:
            best = (key, state)
    return None if best is None else best[1]
