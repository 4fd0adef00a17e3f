"""The shared "fine-tune the backbone on the labeled set" step (standard AL every round, ASVP refreshes, FT evals).

A finished job leaves its backbone weights and a small JSON of its numbers in the arm's store; a resumed round
finds them and does not train again.
"""
from __future__ import annotations

import io
from dataclasses import replace

import torch

from raal import layout
from raal.config import TrainConfig
from raal.store import RunStore


def labeled_images(pipe) -> dict:
    """The labeled rows as a numpy batch (id, image column, label) in the order of the labels table."""
    batch = pipe.ctx.data.pool.take(pipe.positions(pipe.state.labeled_ids))
    batch["label"] = pipe.state.labels
    return batch


def training_storage(store: RunStore) -> RunStore:
    """Where Ray Train keeps a fine-tune's checkpoints: `ray_train/` of the arm's store, on any filesystem (S3 too),
    so a killed job resumes from there and no local scratch folder is left behind."""
    return store.child(layout.RAY_TRAIN)


def recipe(train: TrainConfig, method: str) -> TrainConfig:
    """The FT recipe, or LP-FT's (its own head/backbone lr and weight decay where the config gives them)."""
    if method != "lpft":
        return train
    overrides = {"head_lr": train.lpft_head_lr, "backbone_lr": train.lpft_backbone_lr,
                 "weight_decay": train.lpft_weight_decay}
    return replace(train, **{k: v for k, v in overrides.items() if v is not None})


def finetune_labeled(pipe, *, method: str, name: str, seed: int, save_as: str | None = None) -> dict:
    """FT, LP-FT or LoRA on the labeled set as a Ray Train job; returns {accuracy, lp_accuracy, steps, wall_time}.

    With `save_as` (e.g. layout.backbone_checkpoint(1)), the backbone goes to `save_as + ".pt"`, the new head to
    `save_as + ".head.pt"` and the numbers to `save_as + ".json"`; if they exist already, nothing is trained.
    """
    if save_as and pipe.store.exists(save_as + ".json"):
        return pipe.store.read_json(save_as + ".json")
    from raal.embed_pool import release
    from raal.train import finetune, finetune_lora

    release(gpu_only=True)  # warm GPU embedding actors hand their GPUs to the training workers
    cfg = pipe.ctx.cfg
    method_key = method.lower().replace("-", "")
    jobs = training_storage(pipe.store)
    common = dict(num_classes=pipe.ctx.num_classes, model_cfg=cfg.model, transform=pipe.ctx.transform,
                  storage_path=jobs, name=name, seed=seed)
    if method_key == "lora":
        res = finetune_lora(labeled_images(pipe), pipe.ctx.data.test, lora_cfg=cfg.lora, train_cfg=cfg.train, **common)
    else:
        res = finetune(labeled_images(pipe), pipe.ctx.data.test, train_cfg=recipe(cfg.train, method_key),
                       method=method_key, **common)
    out = {"accuracy": float(res.accuracy), "lp_accuracy": None if res.lp_accuracy is None else float(res.lp_accuracy),
           "steps": int(res.steps), "wall_time": float(res.wall_time), "method": method}
    if save_as:
        pipe.store.write_bytes(save_as + ".pt", jobs.child(name).read_bytes(layout.TRAIN_BACKBONE))
        buf = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in res.head_state.items()}, buf)
        pipe.store.write_bytes(save_as + ".head.pt", buf.getvalue())
        pipe.store.write_json(save_as + ".json", out)  # last: marks the step done
    return out


def load_head(store: RunStore, save_as: str) -> dict[str, torch.Tensor]:
    return torch.load(io.BytesIO(store.read_bytes(save_as + ".head.pt")), map_location="cpu", weights_only=True)
