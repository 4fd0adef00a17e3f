"""LoRA on the fused qkv projection of torchvision ViTs (PEAL, docs/algorithms.md §9).

torchvision's `EncoderBlock.self_attention` is an `nn.MultiheadAttention` whose `in_proj_weight` (3d×d) is the fused
qkv projection. `LoraQKV` wraps that module and runs it with W + (α/r)·B·A in place of W, through the module's own
forward (`torch.func.functional_call`), so the same attention kernel runs as in the frozen model: with B = 0 the
outputs are bit-identical. `peft` is not used: its MultiheadAttention support adapts out_proj as well and drags in
transformers/accelerate; this is ~100 lines with no extra dependency.
`merge_lora` folds the adapters back into plain weights, so embedding actors load an ordinary state dict.
"""
from __future__ import annotations

import math
from typing import cast

import torch
from torch import nn

from raal.models.backbones import Backbone, last_linear_name

LORA_KEYS = ("lora_A", "lora_B")


class LoraQKV(nn.Module):
    """An `nn.MultiheadAttention` (frozen) plus a rank-r update of its fused in-projection."""

    def __init__(self, mha: nn.MultiheadAttention, rank: int = 16, alpha: float = 16.0):
        super().__init__()
        if rank < 1:
            raise ValueError(f"lora.rank must be >= 1, got {rank}")
        if not getattr(mha, "_qkv_same_embed_dim", False) or mha.in_proj_weight is None:
            raise ValueError("LoRA needs self-attention with a fused in_proj_weight (q, k, v of the same size)")
        self.mha = mha
        d = mha.embed_dim
        self.rank, self.alpha, self.scale = int(rank), float(alpha), float(alpha) / int(rank)
        self.lora_A = nn.Parameter(torch.empty(rank, d, dtype=mha.in_proj_weight.dtype,
                                               device=mha.in_proj_weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear (and the LoRA reference code)
        self.lora_B = nn.Parameter(torch.zeros(3 * d, rank, dtype=mha.in_proj_weight.dtype,
                                               device=mha.in_proj_weight.device))
        for p in mha.parameters():
            p.requires_grad_(False)

    def merged_weight(self) -> torch.Tensor:
        return self.mha.in_proj_weight + self.scale * (self.lora_B @ self.lora_A)

    def forward(self, *args, **kwargs):
        return torch.func.functional_call(self.mha, {"in_proj_weight": self.merged_weight()}, args, kwargs)


def apply_lora(model: nn.Module, rank: int = 16, alpha: float = 16.0) -> nn.Module:
    """Wrap every `nn.MultiheadAttention` of `model` in `LoraQKV` (in place); freeze everything but the adapters."""
    targets = [n for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    if not targets:
        raise ValueError(f"{type(model).__name__} has no nn.MultiheadAttention: LoRA (PEAL) needs a transformer "
                         "backbone such as a torchvision ViT")
    model.requires_grad_(False)
    for name in targets:
        _set_module(model, name, LoraQKV(cast(nn.MultiheadAttention, model.get_submodule(name)), rank, alpha))
    return model


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for m in model.modules() if isinstance(m, LoraQKV) for p in (m.lora_A, m.lora_B)]


def num_lora_parameters(n_blocks: int, rank: int, dim: int) -> int:
    """n_blocks · r · (d + 3d): A is r×d, B is 3d×r (T-E2)."""
    return n_blocks * rank * (dim + 3 * dim)


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its attention's in_proj_weight and unwrap it (in place): a plain torchvision model."""
    for name, m in list(model.named_modules()):
        if isinstance(m, LoraQKV):
            m.mha.in_proj_weight.copy_(m.merged_weight())
            _set_module(model, name, m.mha)
    return model


@torch.no_grad()
def merge_lora_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same fold on a state dict (a checkpoint of a LoRA model) -> the plain model's keys and weights.

    The scale α/r is recovered from the shapes and a stored `lora_scale` entry when present, else α = r.
    """
    out: dict[str, torch.Tensor] = {}
    prefixes = {k[: -len("lora_A")] for k in state if k.endswith("lora_A")}
    for k, v in state.items():
        p = next((p for p in prefixes if k.startswith(p)), None)
        if p is None:
            out[k] = v
        elif k.startswith(p + "mha."):
            out[p + k[len(p) + 4:]] = v
    for p in prefixes:
        scale = float(state[p + "lora_scale"]) if p + "lora_scale" in state else 1.0
        w = state[p + "mha.in_proj_weight"]
        out[p + "in_proj_weight"] = w + scale * (state[p + "lora_B"].to(w.dtype) @ state[p + "lora_A"].to(w.dtype))
    return out


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """`model.state_dict()` plus each adapter's scale, so `merge_lora_state_dict` needs no config."""
    sd = dict(model.state_dict())
    for name, m in model.named_modules():
        if isinstance(m, LoraQKV):
            sd[(name + "." if name else "") + "lora_scale"] = torch.tensor(m.scale, dtype=torch.float64)
    return sd


def _set_module(model: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def small_vit_backbone(image_size: int = 32, patch_size: int = 8, num_layers: int = 2, num_heads: int = 2,
                       hidden_dim: int = 32, mlp_dim: int = 64, seed: int = 0) -> Backbone:
    """A tiny randomly initialised torchvision ViT split like `build_backbone` does (tests, benchmarks).

    Module-level so it can travel to Ray Train workers as a `backbone_factory` (via functools.partial).
    """
    from torchvision.models import VisionTransformer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VisionTransformer(image_size=image_size, patch_size=patch_size, num_layers=num_layers,
                                  num_heads=num_heads, hidden_dim=hidden_dim, mlp_dim=mlp_dim, num_classes=10)
    head_name = last_linear_name(model)
    head = model.get_submodule(head_name)  # kept so feature_dim comes from it (probing at 64 px would not fit)
    _set_module(model, head_name, nn.Identity())
    model.eval()
    return Backbone(model, head, "vit_small_test", f"random-init:{seed}")
