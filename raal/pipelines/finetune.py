"""The shared "fine-tune the backbone on the labeled set" step (standard AL every round, ASVP refreshes, FT evals).

It takes the labeled rows, the test set and the configs, never a pipeline: a finished job leaves its backbone
weights and a small JSON of its numbers in the target store, where a resumed round finds them and does not train
again.
"""
from __future__ import annotations

import io
from dataclasses import replace
from typing import Any

import torch

from raal import layout
from raal.config import LoraConfig, ModelConfig, TrainConfig
from raal.data.sources import ImageSet
from raal.data.transforms import ImageTransform
from raal.features import release_pool
from raal.store import RunStore


def training_storage(store: RunStore) -> RunStore:
    """Where Ray Train keeps a fine-tune's checkpoints: `ray_train/` of the arm's store, on any filesystem (S3 too),
    so a killed job resumes from there and no local scratch folder is left behind."""
    return store.child(layout.RAY_TRAIN)


def recipe(train: TrainConfig, method: str) -> TrainConfig:
    """The FT recipe, or LP-FT's (its own head/backbone lr and weight decay where the config gives them)."""
    if method != "lpft":
        return train
    overrides: dict[str, Any] = {"head_lr": train.lpft_head_lr, "backbone_lr": train.lpft_backbone_lr,
                 "weight_decay": train.lpft_weight_decay}
    return replace(train, **{k: v for k, v in overrides.items() if v is not None})


def saved_result(store: RunStore, save_as: str | None) -> dict | None:
    """The numbers of a finished `finetune_labeled(..., save_as=save_as)` job in `store`, or None."""
    return store.read_json(save_as + ".json") if save_as and store.exists(save_as + ".json") else None


def finetune_labeled(batch: dict, test: ImageSet, *, model_cfg: ModelConfig, train_cfg: TrainConfig,
                     lora_cfg: LoraConfig, transform: ImageTransform, num_classes: int, store: RunStore, method: str,
                     name: str, seed: int, save_as: str | None = None) -> dict:
    """FT, LP-FT or LoRA on a labeled `batch` (id, label, one image column) as a Ray Train job, evaluated on `test`;
    returns {accuracy, lp_accuracy, steps, wall_time, method}. The job keeps its checkpoints under `store`'s
    `ray_train/<name>`.

    With `save_as` (e.g. layout.backbone_checkpoint(1)), the backbone goes to `save_as + ".pt"`, the new head to
    `save_as + ".head.pt"` and the numbers to `save_as + ".json"` in `store`; if they exist already, nothing is
    trained.
    """
    done = saved_result(store, save_as)
    if done is not None:
        return done
    from raal.train import finetune, finetune_lora  # lazy: heavy: torch

    release_pool(gpu_only=True)  # warm GPU embedding actors hand their GPUs to the training workers
    method_key = method.lower().replace("-", "")
    jobs = training_storage(store)
    common: dict[str, Any] = dict(num_classes=num_classes, model_cfg=model_cfg, transform=transform, storage_path=jobs, name=name,
                  seed=seed)
    if method_key == "lora":
        res = finetune_lora(batch, test, lora_cfg=lora_cfg, train_cfg=train_cfg, **common)
    else:
        res = finetune(batch, test, train_cfg=recipe(train_cfg, method_key), method=method_key, **common)
    out = {"accuracy": float(res.accuracy), "lp_accuracy": None if res.lp_accuracy is None else float(res.lp_accuracy),
           "steps": int(res.steps), "wall_time": float(res.wall_time), "method": method}
    if save_as:
        store.write_bytes(save_as + ".pt", jobs.child(name).read_bytes(layout.TRAIN_BACKBONE))
        buf = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in res.head_state.items()}, buf)
        store.write_bytes(save_as + ".head.pt", buf.getvalue())
        store.write_json(save_as + ".json", out)  # last: marks the step done
    return out


def load_head(store: RunStore, save_as: str) -> dict[str, torch.Tensor]:
    return torch.load(io.BytesIO(store.read_bytes(save_as + ".head.pt")), map_location="cpu", weights_only=True)
