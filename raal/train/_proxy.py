"""The MLP proxy of SVPp/ASVP: a small classifier on pre-computed features.

A fresh proxy is trained every round on the labeled rows of the pool's feature matrix, then scores the whole pool
(probabilities for uncertainty strategies, the post-ReLU hidden vector as the embedding for BADGE/Coreset/ActiveFT).
The feature matrix may be a read-only `np.memmap` of the whole pool: only the rows a step needs are gathered.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from raal import faults, progress
from raal.config import ProxyConfig
from raal.recipe import cosine_multiplier, epoch_batches

PREDICT_OUTPUTS = ("probs", "embeddings", "logits")
_UPLOAD_ROWS = 65536  # rows per host->device copy when features move to a GPU
# `predict` runs every batch with at least this many rows (zero rows pad a shorter one): MKL takes other code paths
# for thin products (and splits them differently across threads), which round differently, so without the padding a
# row's outputs would depend on where the pool was cut into batches or shards (raal.pipelines.sharded relies on it)
MIN_BATCH_ROWS = 256


class ProxyMLP(nn.Module):
    """Linear(D→D) – BatchNorm1d – ReLU – Linear(D→C); `embed` is the post-ReLU hidden vector."""

    def __init__(self, in_dim: int, num_classes: int):
        super().__init__()
        if in_dim < 1 or num_classes < 1:
            raise ValueError(f"ProxyMLP needs in_dim >= 1 and num_classes >= 1, got {in_dim}, {num_classes}")
        self.in_dim = int(in_dim)
        self.num_classes = int(num_classes)
        self.fc1 = nn.Linear(in_dim, in_dim)
        self.bn = nn.BatchNorm1d(in_dim)
        self.fc2 = nn.Linear(in_dim, num_classes)
        self.history: TrainHistory | None = None  # filled by train_proxy; not part of the state dict

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.fc1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.embed(x))


@dataclass
class TrainHistory:
    """What a training call did: steps, the learning rates at the ends of the schedule, the loss per epoch."""

    steps: int
    device: str
    lr_first: float  # lr used by the first step
    lr_last: float  # lr used by the last step
    lr_final: float  # the scheduler's lr after the last step: base · cos(7π/16) = 0.195 × base
    epoch_loss: list[float] = field(default_factory=list)


def resolve_device(name: str) -> torch.device:
    """`auto` -> CUDA when present, else CPU; `cuda` without a GPU is an error rather than a silent slowdown."""
    if name == "cpu":  # one of auto | cpu | cuda: raal.config.validate checked proxy.device
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if name == "cuda":
        raise ValueError("proxy.device=cuda but torch sees no CUDA device")
    return torch.device("cpu")


def _check_inputs(features, labels, num_classes: int, rows) -> tuple[np.ndarray, np.ndarray | None]:
    if getattr(features, "ndim", 0) != 2:
        raise ValueError(f"features must be a 2-D array (N×D), got shape {getattr(features, 'shape', None)}")
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} of shape {labels.shape}")
    if rows is not None:
        rows = np.asarray(rows, dtype=np.int64)
        if rows.ndim != 1 or rows.shape[0] != labels.shape[0]:
            raise ValueError(f"rows ({rows.shape}) and labels ({labels.shape}) must be 1-D of the same length")
        if rows.size and (rows.min() < 0 or rows.max() >= features.shape[0]):
            raise ValueError(f"rows must index the {features.shape[0]} feature rows")
    elif features.shape[0] != labels.shape[0]:
        raise ValueError(f"features has {features.shape[0]} rows but labels has {labels.shape[0]}")
    if labels.shape[0] < 2:
        raise ValueError(f"the proxy needs at least 2 labeled rows (BatchNorm), got {labels.shape[0]}")
    if num_classes < 1 or labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got range [{labels.min()}, {labels.max()}]")
    return labels.astype(np.int64), rows


def _gather(features, idx: np.ndarray) -> np.ndarray:
    """Rows `idx` of a (possibly memmapped, read-only) matrix as a fresh float32 array; reads sorted for locality."""
    order = np.argsort(idx, kind="stable")
    sorted_rows = np.asarray(features[idx[order]], dtype=np.float32)
    out = np.empty_like(sorted_rows)
    out[order] = sorted_rows
    return out


def _upload(features, rows: np.ndarray | None, device: torch.device) -> torch.Tensor:
    """The training rows as one tensor on `device`, copied in chunks (never a host copy of the whole pool)."""
    n = features.shape[0] if rows is None else rows.shape[0]
    out = torch.empty((n, features.shape[1]), dtype=torch.float32, device=device)
    for a in range(0, n, _UPLOAD_ROWS):
        b = min(n, a + _UPLOAD_ROWS)
        chunk = np.array(features[a:b], dtype=np.float32) if rows is None else _gather(features, rows[a:b])
        out[a:b].copy_(torch.from_numpy(chunk))
    return out


def train_proxy(features, labels, num_classes: int, cfg: ProxyConfig | None = None, seed: int = 0, *,
                rows=None) -> ProxyMLP:
    """Train a fresh proxy on `features[rows]` (or all of `features`) with integer `labels`.

    SGD with Nesterov momentum, cross-entropy, shuffled batches, the per-iteration cosine-7/16 multiplier.
    Deterministic for a seed on a given device (the global torch RNG is left untouched). The returned model is in
    eval mode on the training device, with `.history` describing the run.
    """
    cfg = cfg or ProxyConfig()
    # cfg's ranges (epochs, batch_size, lr, ...) were checked by raal.config.validate, like every config value
    y_np, rows = _check_inputs(features, labels, num_classes, rows)
    device = resolve_device(cfg.device)
    n, d = y_np.shape[0], int(features.shape[1])
    on_gpu = device.type == "cuda"
    x_dev = _upload(features, rows, device) if on_gpu else None
    y_all = torch.from_numpy(y_np).to(device)
    rng = np.random.default_rng(seed)
    batches_per_epoch = len(epoch_batches(n, cfg.batch_size, np.random.default_rng(0)))
    total = cfg.epochs * batches_per_epoch

    fork_devices = [device] if on_gpu else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        model = ProxyMLP(d, num_classes).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
                          weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_multiplier(s, total))
    model.train()
    step, lr_first, lr_last, losses = 0, cfg.lr, cfg.lr, []
    for _ in range(cfg.epochs):
        loss_sum = torch.zeros((), device=device)
        for idx in epoch_batches(n, cfg.batch_size, rng):
            if x_dev is not None:  # on the GPU
                t = torch.from_numpy(idx).to(device)
                xb, yb = x_dev.index_select(0, t), y_all.index_select(0, t)
            else:
                src = idx if rows is None else rows[idx]
                xb = torch.from_numpy(_gather(features, src))
                yb = y_all[torch.from_numpy(idx)]
            lr = opt.param_groups[0]["lr"]
            if step == 0:
                lr_first = lr
            lr_last = lr
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.detach() * len(idx)
            step += 1
        losses.append(float(loss_sum) / n)
        progress.report("proxy", len(losses), cfg.epochs, "epoch")
        faults.reach("proxy_train")
    model.eval()
    model.history = TrainHistory(steps=step, device=str(device), lr_first=lr_first, lr_last=lr_last,
                                 lr_final=opt.param_groups[0]["lr"], epoch_loss=losses)
    return model


@torch.no_grad()
def predict(model: ProxyMLP, features, *, batch_size: int = 16384,
            want: tuple[str, ...] = ("probs", "embeddings")) -> dict[str, np.ndarray]:
    """Score every row of `features` in eval mode, in batches: a dict of float32 arrays, one per name in `want`.

    probs: N×C softmax; embeddings: N×D post-ReLU hidden vector; logits: N×C. A short batch is padded to
    MIN_BATCH_ROWS rows, so a row's outputs do not depend on how the rows were cut into batches or shards.
    """
    want = tuple(want)
    bad = [w for w in want if w not in PREDICT_OUTPUTS]
    if bad or not want:
        raise ValueError(f"predict: want={want!r}; allowed: {', '.join(PREDICT_OUTPUTS)}")
    if getattr(features, "ndim", 0) != 2 or features.shape[1] != model.in_dim:
        raise ValueError(f"features must be N×{model.in_dim}, got shape {getattr(features, 'shape', None)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = features.shape[0]
    dims = {"probs": model.num_classes, "logits": model.num_classes, "embeddings": model.in_dim}
    out = {w: np.empty((n, dims[w]), dtype=np.float32) for w in want}
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for a in range(0, n, batch_size):
            b = min(n, a + batch_size)
            x = _batch(features, a, b).to(device)
            h = model.embed(x)
            logits = model.fc2(h)[:b - a]  # the padding rows go through both layers, then are dropped
            h = h[:b - a]
            if "embeddings" in out:
                out["embeddings"][a:b] = h.float().cpu().numpy()
            if "logits" in out:
                out["logits"][a:b] = logits.float().cpu().numpy()
            if "probs" in out:
                out["probs"][a:b] = torch.softmax(logits.float(), dim=1).cpu().numpy()
    finally:
        model.train(was_training)
    return out


def _batch(features, a: int, b: int) -> torch.Tensor:
    """Rows a:b as a float32 tensor of at least MIN_BATCH_ROWS rows (zeros below them), in a buffer torch allocated:
    a copy (memmaps are read-only), with the same alignment whatever array the rows came from."""
    x = torch.empty((max(b - a, MIN_BATCH_ROWS), features.shape[1]), dtype=torch.float32)
    x[b - a:] = 0
    x[:b - a].numpy()[:] = features[a:b]
    return x


def proxy_state_dict(model: ProxyMLP) -> dict:
    """A plain, picklable description of a proxy (CPU tensors + shape), for shipping to Ray actors."""
    return {"in_dim": model.in_dim, "num_classes": model.num_classes,
            "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}


def load_proxy(state: dict, device: str | torch.device = "cpu") -> ProxyMLP:
    """Rebuild a proxy from `proxy_state_dict` output, in eval mode on `device`."""
    try:
        model = ProxyMLP(int(state["in_dim"]), int(state["num_classes"]))
        model.load_state_dict(state["state"], strict=True)
    except (KeyError, TypeError, RuntimeError) as err:
        raise ValueError(f"not a proxy state (from proxy_state_dict): {str(err).splitlines()[0]}") from err
    return model.to(device).eval()


def num_parameters(in_dim: int, num_classes: int) -> int:
    """D·D + D (fc1) + 2D (BatchNorm affine) + D·C + C (fc2): the count T-A2 checks."""
    return in_dim * in_dim + in_dim + 2 * in_dim + in_dim * num_classes + num_classes
