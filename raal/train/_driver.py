"""Fine-tuning the backbone, driver side: FT, LP-FT and LoRA (PEAL) jobs, on one of two paths.

A job with one worker (every fine-tune on a one-machine CPU run, any single-GPU job) runs on the run's warm training
actor (`_warm`): no start-up after the first job. A job with several workers (DDP across GPUs or nodes)
is a Ray Train `TorchTrainer.fit` with per-epoch checkpoints and `FailureConfig(max_failures)`; `train.warm=off`
sends every job there. Both paths run the same epoch loop (`_loop`), so a seed gives the same weights;
which path a job took and why is logged and kept in its `train_result.json`.

The labeled images travel as object refs (the warm actor) or a Ray Data dataset (Ray Train: every worker reads it
whole, AL labeled sets are small). Every epoch leaves a checkpoint `checkpoint_*/state.pt` in the job's run folder
(`storage_path/name`), and a job whose folder holds one of the same inputs resumes from the newest intact one,
whichever path wrote it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from raal import layout
from raal.config import LoraConfig, ModelConfig, TrainConfig
from raal.data.transforms import IMAGE_COLUMNS, ImageTransform
from raal.store import RunStore, ray_train_storage
from raal.train import _warm
from raal.train._parts import (
    STATE_FILE,
    _stages,
    newest_checkpoint,
    state_digest,
)

log = logging.getLogger("raal.train")  # the name users see in raal.log, as before the package

METHODS = ("ft", "lpft", "lora")
CACHE_BYTES = 1 << 30  # per worker: above this the raw rows are cached and transformed per batch
CPU_SHARE = 0.9  # of the free CPUs, for the workers; the rest stays for Ray Data and Ray Train's controller
CRASH_ENV = "RAAL_TRAIN_CRASH_ONCE"  # "EPOCH:MARKER": rank 0 dies once at that epoch (fault-tolerance tests)


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
    wall_time: float  # the whole job as the caller waited for it, start-up included
    epoch_times: list[float] = field(default_factory=list)  # per epoch: training + checkpoint, rank 0
    log: list[dict] = field(default_factory=list)
    num_workers: int = 1
    cpus_per_worker: float = 1.0
    restarts: int = 0
    path: str = "ray_train"  # warm | ray_train | stored (a finished job found in its run folder)
    path_reason: str = ""


def _arrow_column(values):

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


RESOURCE_KEYS = ("num_workers", "use_gpu", "cpus_per_worker", "max_failures", "eval_batch_size", "warm")


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



def choose_path(train_cfg: TrainConfig, workers: int) -> tuple[str, str]:
    """(path, why): the warm actor for a one-worker job unless `train.warm=off`, Ray Train for DDP."""
    if train_cfg.warm == "off":
        return "ray_train", "train.warm=off"
    if workers > 1:
        return "ray_train", f"{workers} workers: DDP needs Ray Train's worker group"
    return "warm", "one worker: the run's warm training actor"


def _run_job(method: str, train_images: dict, test, *, num_classes: int, model_cfg: ModelConfig,
             train_cfg: TrainConfig, lora_cfg: LoraConfig | None, transform: ImageTransform,
             storage_path: str | RunStore, name: str, seed: int, init_state_dict, backbone_factory) -> TrainResult:
    import ray

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
    workers, cpus = worker_resources(train_cfg, len(batch["id"]))
    path, why = choose_path(train_cfg, workers)
    rescued = None
    local = run_store.local_path()  # None unless the store is local
    if path == "ray_train" and local is not None:
        rescued = rescue_damaged_run(local)
    run_store, _ = ray_train_storage(storage_path, name)  # (re)creates the folder if the damaged one moved aside
    run_store.write_json(layout.TRAIN_INPUTS, {"fingerprint": fp, "method": method, "rows": len(batch["id"])})
    found = (torch.load(Path(rescued) / STATE_FILE, map_location="cpu", weights_only=True) if rescued
             else newest_checkpoint(run_store))
    config = {"method": method, "num_classes": num_classes, "model_cfg": model_cfg, "train_cfg": train_cfg,
              "lora_cfg": lora_cfg, "transform": transform, "seed": seed,
              "init_state": ray.put(init_state_dict) if init_state_dict is not None else None,
              "backbone_factory": backbone_factory, "fingerprint": fp, "crash": _crash_setting(),
              "cache_bytes": CACHE_BYTES, "cpus_per_worker": cpus}
    t0 = time.perf_counter()
    if found is not None and found.get("done") and found["fingerprint"] == fp:
        state, path, why = found, "stored", "a finished job found in its run folder"
        if run_store.exists(layout.TRAIN_RESULT):  # keep saying which path trained it
            prev = run_store.read_json(layout.TRAIN_RESULT)
            why = prev.get("path_reason", why) if prev.get("path") == "stored" else \
                f"{why} (trained on the {prev.get('path', 'ray_train')} path)"
    elif path == "warm":
        log.info("fine-tune %s: warm path (%s)", name, why)

        state, _ = _warm.run_job(config, batch, test_batch, run_store, train_cfg.max_failures, newest_checkpoint)
    else:
        log.info("fine-tune %s: Ray Train path (%s)", name, why)
        resume = found is not None and not run_store.exists("checkpoint_manager_snapshot.json")  # Ray's own resumes
        config["resume_state"] = ray.put(found) if resume else None
        state = _fit_ray_train(config, batch, test_batch, train_cfg, workers, cpus, name, storage)
    wall = time.perf_counter() - t0
    if not state.get("done"):
        raise RuntimeError(f"training job {name} stopped at epoch {state['epoch']} without finishing")
    net_state = state["net"]
    if method == "lora":
        from raal.models.lora import merge_lora_state_dict  # lazy: heavy: torch

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
        restarts=sum(1 for e in state["log"] if e.get("event") == "resume"), path=path, path_reason=why)
    summary = {k: v for k, v in dataclasses.asdict(result_obj).items() if k != "head_state"}
    run_store.write_json(layout.TRAIN_RESULT, summary)
    log.info("%s job %s: test accuracy %.4f (LP %s), %d steps in %.1f s (%s path, %d workers × %.2f CPU)", method,
             name, result_obj.accuracy, result_obj.lp_accuracy, result_obj.steps, wall, path, workers, cpus)
    return result_obj


def _fit_ray_train(config: dict, batch: dict, test_batch: dict, train_cfg: TrainConfig, workers: int, cpus: float,
                   name: str, storage: dict) -> dict:
    """One `TorchTrainer.fit`; returns the state of its last checkpoint."""
    from ray.train import (
        CheckpointConfig,
        DataConfig,
        FailureConfig,
        RunConfig,
        ScalingConfig,
    )
    from ray.train.torch import TorchConfig, TorchTrainer

    from raal.train._loop import _worker_loop  # lazy: heavy: torch

    resources = {"CPU": cpus}
    if train_cfg.use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        _worker_loop, train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=train_cfg.use_gpu, resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if train_cfg.use_gpu else "gloo"),
        datasets={"train": _to_dataset(batch), "test": _to_dataset(test_batch)},
        dataset_config=DataConfig(datasets_to_split=[]),
        run_config=RunConfig(name=name, **storage,
                             failure_config=FailureConfig(max_failures=train_cfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)))
    result = trainer.fit()
    if getattr(result, "error", None) is not None:
        raise result.error
    if result.checkpoint is None:
        raise RuntimeError(f"training job {name} finished without a checkpoint")
    with result.checkpoint.as_directory() as d:
        return torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)


def finetune(train_images: dict, test, *, num_classes: int, model_cfg: ModelConfig, train_cfg: TrainConfig,
             transform: ImageTransform, method: str = "ft", storage_path: str | RunStore, name: str, seed: int = 0,
             init_state_dict: dict | None = None,
             backbone_factory: Callable | None = None) -> TrainResult:
    """FT or LP-FT of the backbone on the labeled images as one job; returns test accuracy and weights.

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
