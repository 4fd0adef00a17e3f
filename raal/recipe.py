"""The fine-tuning recipe that is sound at every labeled-set size, as plain torch pieces.

Why a recipe of its own: at 100-200 labels an epoch-based FT of MobileNetV2 took 30-50 SGD steps, started from a
random head and let BatchNorm re-estimate its statistics from tiny batches of 64 px images (far from ImageNet's),
so it scored *below* a linear probe on the frozen features (0.09-0.26 vs 0.58-0.66) and swung by 0.17 with the job
seed. The pieces here fix each cause:

- `fit_probe`: the linear probe trained to convergence (full-batch L-BFGS on the frozen features, L2-regularised
  multinomial logistic regression: deterministic, seconds). LP-FT starts its FT stage from it.
- `lr_multiplier`: linear warm-up, then cosine to zero, over a fixed *step* budget (not epochs × N): a small set
  gets as many optimiser steps as a large one. (`cosine_multiplier` and `epoch_batches`: the proxy's schedule
  and batching, which the epoch-based FT loop shares.)
- `freeze_batchnorm`: BatchNorm layers keep their pre-trained statistics (eval mode) while their affine
  parameters still train; small batches no longer overwrite the running estimates.
- `split_trunk`: the first k blocks of a backbone frozen, the rest trainable, so that on a CPU the frozen
  prefix's activations are computed once and fine-tuning runs on the cached activations (partial fine-tuning).
"""
from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

COSINE_FRACTION = 7.0 / 16.0  # the schedule ends at cos(7π/16) = 0.195× the base lr, not at 0


def lr_multiplier(step: int, total: int, warmup: int) -> float:
    """Linear warm-up over `warmup` steps (from 1/warmup), then cosine from 1 to 0 at `total`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / span)))


def cosine_multiplier(step: int, total: int) -> float:
    """lr multiplier of iteration `step` (0-based) out of `total`: cos(π·7/16·step/total)."""
    return math.cos(math.pi * COSINE_FRACTION * step / max(1, total))


def epoch_batches(n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A shuffled partition of range(n) into batches (no drop_last).

    A final batch of one row would make BatchNorm fail in training mode, so it is folded into the batch before it.
    """
    perm = rng.permutation(n)
    cuts = list(range(batch_size, n, batch_size))
    if cuts and n - cuts[-1] == 1:
        cuts.pop()
    return np.split(perm, cuts)


def freeze_batchnorm(module: nn.Module) -> None:
    """Put every BatchNorm layer in eval mode: pre-trained running statistics are used and kept."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def fit_probe(features: torch.Tensor, labels: torch.Tensor, num_classes: int, *, l2: float = 1e-3,
              max_iter: int = 500) -> nn.Linear:
    """A linear head trained to convergence: mean cross-entropy + l2/2·|W|² by full-batch L-BFGS (strong Wolfe).

    Starts from zero weights, so the result is deterministic for given inputs. `l2` is per-sample (it does not
    grow with N); features are used as they are (the backbone's own scale).
    """
    x = features.detach().float()
    y = labels.detach().long()
    head = nn.Linear(x.shape[1], num_classes)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=max_iter, history_size=20, tolerance_grad=1e-6,
                            tolerance_change=1e-10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(head(x), y) + 0.5 * l2 * head.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return head


class _PoolFlatten(nn.Module):
    """Global average pooling + flatten: what torchvision's CNNs do between their blocks and their classifier."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def trunk_blocks(trunk: nn.Module) -> list[nn.Module]:
    """The trunk as an ordered list of blocks whose composition (then pooling) gives the trunk's features.

    Supported: models with a `features` Sequential (MobileNet, EfficientNet, ConvNeXt, VGG-style) and ResNets.
    """
    features = getattr(trunk, "features", None)
    if isinstance(features, nn.Sequential):
        return list(features)
    if all(hasattr(trunk, k) for k in ("conv1", "bn1", "layer1", "layer4")):
        t: Any = trunk  # a torchvision ResNet
        return [nn.Sequential(t.conv1, t.bn1, t.relu, t.maxpool), t.layer1, t.layer2, t.layer3, t.layer4]
    raise ValueError(f"partial fine-tuning needs a block-structured CNN (MobileNet, EfficientNet, ResNet, ...); "
                     f"{type(trunk).__name__} is not one: use freeze_blocks=0")


def default_freeze(trunk: nn.Module) -> int:
    """Frozen blocks when none are configured: all but the last 2 (`features` models: for MobileNetV2 the last
    inverted-residual block and the 1x1 conv to 1280), or all but layer4 (ResNet). Chosen by bench/recipe.py: it
    beats the converged probe at 100-1,300 labels and costs ~30 ms a step on 2 cores (the last 3: ~50 ms)."""
    blocks = trunk_blocks(trunk)
    return len(blocks) - 1 if len(blocks) <= 5 else len(blocks) - 2


def split_trunk(trunk: nn.Module, freeze_blocks: int) -> tuple[nn.Module, nn.Module]:
    """(prefix, suffix): prefix = the first `freeze_blocks` blocks (frozen), suffix = the rest + pooling.

    `freeze_blocks=0` is full fine-tuning: the prefix is the identity and the suffix the whole trunk.

    suffix(prefix(x)) equals trunk(x) in eval mode (tested). The suffix is a deep copy, so training it never
    changes the caller's trunk.
    """
    blocks = trunk_blocks(trunk)
    if not 0 <= freeze_blocks < len(blocks):
        raise ValueError(f"freeze_blocks must be in 0..{len(blocks) - 1} for {type(trunk).__name__} "
                         f"({len(blocks)} blocks), got {freeze_blocks}")
    prefix = nn.Sequential(*blocks[:freeze_blocks]).eval().requires_grad_(False)
    suffix = nn.Sequential(copy.deepcopy(nn.Sequential(*blocks[freeze_blocks:])), _PoolFlatten())
    return prefix, suffix


@torch.no_grad()
def forward_in_chunks(module: nn.Module, x: torch.Tensor, chunk: int = 1024) -> torch.Tensor | None:
    """module(x) in eval mode, chunk by chunk (x may be a large cached activation tensor); None for an empty x."""
    was = module.training
    module.eval()
    out = torch.cat([module(x[a:a + chunk]) for a in range(0, len(x), chunk)]) if len(x) else None
    module.train(was)
    return out


def random_shift(x: torch.Tensor, shift: int, gen: torch.Generator) -> torch.Tensor:
    """Each image of x (N×C×H×W) translated by its own offset in [-shift, shift]² (edges replicated)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (shift, shift, shift, shift), mode="replicate")
    dy = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(n, x.shape[1], h, w + 2 * shift)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(n, x.shape[1], h, w)
    return out.gather(3, cols)


def train_suffix(suffix: nn.Module, head: nn.Linear, x: torch.Tensor, y: torch.Tensor, *, steps: int,
                 batch_size: int, backbone_lr: float, head_lr: float, weight_decay: float, warmup_frac: float,
                 augment: bool, seed: int, bn: str = "frozen", shift: int = 0) -> dict:
    """Fine-tune `suffix` + `head` in place on inputs x (cached prefix activations) for exactly `steps` steps.

    AdamW with two parameter groups, warm-up + cosine, batches drawn with replacement from a seeded generator
    (the same seed gives the same run), frozen BatchNorm statistics unless bn == "train". Augmentation: with
    `shift` > 0 (x holds images: full fine-tuning) a random translation by up to `shift` pixels each way, which keeps
    the label of a digit as well as of an animal (a flip would not); otherwise a horizontal flip of the activation
    maps (a mild, cheap stand-in for flipping the image; the cache holds one view).
    Returns the loss of the first and last steps.
    """
    gen = torch.Generator().manual_seed(int(seed))
    params = [{"params": [p for p in suffix.parameters() if p.requires_grad], "lr": backbone_lr},
              {"params": list(head.parameters()), "lr": head_lr}]
    opt = torch.optim.AdamW(params, weight_decay=weight_decay)
    base = [backbone_lr, head_lr]
    warmup = int(round(warmup_frac * steps))
    n = len(x)
    first = last = float("nan")
    suffix.train()
    if bn == "frozen":
        freeze_batchnorm(suffix)
    for step in range(steps):
        mult = lr_multiplier(step, steps, warmup)
        for group, lr in zip(opt.param_groups, base):
            group["lr"] = lr * mult
        idx = torch.randint(0, n, (min(batch_size, n),), generator=gen)
        xb = x[idx]
        if augment and xb.dim() == 4 and shift > 0:
            xb = random_shift(xb, shift, gen)
        elif augment and xb.dim() == 4:
            flip = torch.rand(len(idx), generator=gen) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
        loss = F.cross_entropy(head(suffix(xb)), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step == 0:
            first = float(loss.detach())
        last = float(loss.detach())
    suffix.eval()
    return {"first_loss": first, "last_loss": last}
