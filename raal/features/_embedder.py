"""The embedding UDF that both ways of running a pass share: Ray Data's actor pool (`_embed`) and the run's warm
actors (`_pool`). Its class name is what Ray shows for the actors (`MapBatches(_Embedder)`), so it keeps it."""
from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np

from raal.config import ModelConfig
from raal.data.transforms import ImageTransform

AUTOCAST = {"bf16": "bfloat16", "fp16": "float16", "none": None}


class _Embedder:
    """Ray Data UDF: builds the backbone once per actor, then turns raw image batches into features (+ logits)."""

    def __init__(self, model_cfg: ModelConfig, transform: ImageTransform, state_dict_path: str | None,
                 device: str, autocast: str, with_logits: bool, torch_threads: int):
        import torch

        from raal.models.backbones import build_backbone, load_state_dict  # lazy: heavy: torch

        if torch_threads > 0:  # decode/resize run on CPU threads on every device
            torch.set_num_threads(torch_threads)
        state = load_state_dict(Path(state_dict_path)) if state_dict_path else None
        self.device = torch.device(device)
        model = build_backbone(model_cfg, state)
        self.has_head = model.head is not None
        self.with_logits = with_logits and self.has_head
        self.transform = transform
        self.autocast = AUTOCAST[autocast] if device == "cuda" else None
        if device == "cuda":
            torch.backends.cudnn.benchmark = True
            model = model.to(self.device, memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.model = model.eval()

    def __call__(self, batch: dict) -> dict:
        import torch

        t_start = time.time()
        ids = np.asarray(batch["id"], dtype=np.int64)
        x = torch.from_numpy(self.transform(batch))  # a fresh float32 array: safe to hand to torch
        cuda = self.device.type == "cuda"
        if cuda:
            x = x.pin_memory().to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        ctx = (torch.autocast("cuda", dtype=getattr(torch, self.autocast)) if cuda and self.autocast
               else contextlib.nullcontext())
        with torch.inference_mode(), ctx:
            f = self.model.features(x)
            out = {"id": ids, "features": f.float().cpu().numpy()}
            if self.with_logits and self.model.head is not None:
                out["logits"] = self.model.head(f).float().cpu().numpy()
        # wall-clock span of this batch, for the pass's compute-window rate (actor start-up excluded)
        out["t_start"] = np.full(ids.shape, t_start)
        out["t_end"] = np.full(ids.shape, time.time())
        return out
