"""Embed a pool with a backbone over a Ray Data actor pool, into a versioned feature set of the run store.

The ImageSet's dataset goes through `map_batches` with `_Embedder`, a callable class: each actor builds the backbone
once, then decodes, transforms and embeds its batches (decoding never happens on the driver). The driver iterates
the results as they stream in and hands them to a `ShardAssembler`, which writes each shard of the feature set as
soon as all its rows have arrived, so the pool is never collected in one place. Shards are position ranges of the
ImageSet order, so a killed pass resumes with exactly the shards that are missing or fail their checksum.

Actor layout comes from the cluster's free resources at call time (a fixed layout hangs on 2 CPUs):
one GPU per actor when the cluster has GPUs and the device allows; otherwise CPU actors that together leave one
CPU free for the upstream read/transform tasks, so the pipeline also runs inside a driver actor holding num_cpus=0.

In-memory image sets (`embed.warm`, the default) go through the run's warm actors instead (`_pool`):
the same `_Embedder` in long-lived actors, so only a run's first pass pays their start-up.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from raal.config import DEVICES, EmbedConfig, ModelConfig
from raal.data.sources import ImageSet
from raal.data.transforms import ImageTransform
from raal.features import _pool
from raal.features._embedder import _Embedder
from raal.features._shards import ShardAssembler
from raal.features._store import FeatureSet, FeatureStore
from raal.progress import PassProgress
from raal.raylocal import init_local_ray

log = logging.getLogger("raal.embed")  # the name users see in raal.log, as before the package

MAX_BLOCKS = 4096


@dataclass(frozen=True)
class ActorPlan:
    """How many actors, on which device, with which Ray resources and torch threads each."""

    device: str  # cpu | cuda
    actors: int
    num_cpus: float
    num_gpus: float
    torch_threads: int


def plan_actors(device: str = "auto", num_actors: int = 0, *, max_threads: int = 8) -> ActorPlan:
    """Derive the actor layout from `ray.available_resources()` (Ray must be initialised).

    CPU actors reserve together at most (free CPUs − 1), so one CPU stays free for read tasks and upstream
    operators; when that leaves nothing, actors reserve 0 CPUs (they still run, sharing the cores) instead of
    waiting forever. Torch threads per actor = free CPUs / actors, so 2 actors on 2 cores run 1 thread each.
    """
    import ray
    import ray.data

    if device not in DEVICES:
        raise ValueError(f"embed.device={device!r}; allowed: {', '.join(DEVICES)}")
    if num_actors < 0:
        raise ValueError(f"embed.num_actors must be >= 0 (0 = auto), got {num_actors}")
    cluster = ray.cluster_resources()
    avail = ray.available_resources()
    cpu_free = float(avail.get("CPU", 0.0))
    gpus = float(cluster.get("GPU", 0.0))
    if device == "cuda" and gpus < 1:
        raise ValueError("embed.device=cuda but the Ray cluster has no GPU")
    if device == "cuda" or (device == "auto" and gpus >= 1):
        k = num_actors or max(1, int(avail.get("GPU", 0.0)) or 1)
        share = _cpu_share(cpu_free, k)
        threads = int(min(max_threads, max(1, cpu_free // k)))
        return ActorPlan("cuda", k, share, 1.0, threads)
    k = num_actors or max(1, int(cpu_free))
    threads = int(min(max_threads, max(1, round(max(cpu_free, 1.0) / k))))
    return ActorPlan("cpu", k, _cpu_share(cpu_free, k), 0.0, threads)


def _cpu_share(cpu_free: float, k: int) -> float:
    spare = cpu_free - 1.0
    return 0.0 if spare <= 0 else math.floor(min(1.0, spare / k) * 100) / 100


def _subset(images: ImageSet, pos: np.ndarray) -> ImageSet:
    """The rows at `pos` as an ImageSet (a resumed pass computes only its missing shards)."""
    if len(pos) == len(images):
        return images
    cols = {k: v[pos] if isinstance(v, np.ndarray) else [v[i] for i in pos] for k, v in images.columns.items()}
    return ImageSet(images.name, np.asarray(images.ids)[pos], cols, images.class_names, parquet=images.parquet,
                    meta=dict(images.meta))


def weights_fingerprint(model_cfg: ModelConfig, state_dict_path: str | None) -> tuple[str, int, int | None]:
    """(weights id, feature dim, logits dim or None) of the backbone the actors will build."""
    from raal.models.backbones import build_backbone, file_digest, load_state_dict  # lazy: heavy: torch

    if state_dict_path:
        path = Path(state_dict_path)
        model = build_backbone(model_cfg, load_state_dict(path))
        wid = f"state_dict:{file_digest(path)}"
    else:
        model = build_backbone(model_cfg)
        wid = model.weights_id
    c = int(model.head.out_features) if model.head is not None else None
    return wid, int(model.feature_dim), c


#: Ray Data restarts its map actors forever by default, but an actor restart cannot re-read constructor arguments
#: that went to the object store (Ray logs an error at creation for that). A lost pass is resumed by raal from its
#: committed shards instead (features.py), so the map actors are not restarted.
NO_ACTOR_RESTARTS = {"max_restarts": 0}


def embed_images(images: ImageSet, *, model_cfg: ModelConfig, transform: ImageTransform, store: FeatureStore,
                 version: int, split: str, embed_cfg: EmbedConfig | None = None, state_dict_path: str | None = None,
                 with_logits: bool = True, progress: bool = True,
                 on_shard: Callable[[int], None] | None = None) -> FeatureSet:
    """Compute (or finish) feature set `version`/`split` for `images`, and open it.

    `state_dict_path`: a fine-tuned backbone (torch.save of a state dict, loaded with weights_only=True) for ASVP
    refreshes. Logits are stored when `with_logits` and the model has a head. `on_shard(k)` is called after shard k
    is committed. The returned set's `manifest["last_pass"]` says what this call computed.
    """
    import ray
    import ray.data

    embed_cfg = embed_cfg or EmbedConfig()
    if not isinstance(images, ImageSet):
        raise ValueError(f"embed_images needs an ImageSet, got {type(images).__name__}")
    if not isinstance(store, FeatureStore):
        raise ValueError(f"store must be a FeatureStore, got {type(store).__name__}")
    # embed_cfg's sizes and autocast mode were checked by raal.config.validate, like every config value
    if state_dict_path and not Path(state_dict_path).is_file():
        raise ValueError(f"state_dict_path {state_dict_path!r} does not exist")
    target = store.set_for(version, split)
    weights_id, dim, num_logits = weights_fingerprint(model_cfg, state_dict_path)
    arrays = {"features": dim}
    if with_logits and num_logits:
        arrays["logits"] = num_logits
    meta = {"kind": "features", "version": int(version), "split": split, "arch": model_cfg.arch,
            "weights_id": weights_id, "transform": transform.describe(), "source": images.name, "dim": dim,
            "logits_dim": arrays.get("logits")}
    todo = target.begin(np.asarray(images.ids), arrays, embed_cfg.shard_rows, meta)
    if not todo:
        log.info("features v%d/%s: complete, nothing to compute", version, split)
        if not target.is_complete():
            target.finish({"last_pass": {"computed_shards": [], "items": 0}})
        return store.open(version, split)

    if not ray.is_initialized():

        init_local_ray(quiet=not progress)
    assembler = ShardAssembler(target, todo, on_shard)
    sub = _subset(images, assembler.positions)
    n = len(sub)
    warm = embed_cfg.warm and sub.parquet is None and _pool.single_node()
    if warm:
        pool = _pool.pool_for(embed_cfg.device, embed_cfg.num_actors, plan_actors)
        plan = pool.plan
    else:
        plan = plan_actors(embed_cfg.device, embed_cfg.num_actors)
    num_blocks = int(min(MAX_BLOCKS, max(2 * plan.actors, math.ceil(n / embed_cfg.batch_size))))
    log.info("features v%d/%s: embedding %d images (%d of %d shards) with %d %s %sactor(s) "
             "(num_cpus=%.2f, num_gpus=%g, %d torch threads), batch %d", version, split, n, len(todo),
             target.plan["num_shards"], plan.actors, plan.device, "warm " if warm else "", plan.num_cpus,
             plan.num_gpus, plan.torch_threads, embed_cfg.batch_size)
    spec = {"model_cfg": model_cfg, "transform": transform, "state_dict_path": state_dict_path,
            "autocast": embed_cfg.autocast, "with_logits": "logits" in arrays}
    t0 = time.perf_counter()
    if warm:  # the run's warm actors (`_pool`): no start-up after the first pass
        key = (repr(model_cfg), weights_id, transform.describe(), embed_cfg.autocast, "logits" in arrays)
        results = pool.map(key, spec, _pool.batches(sub, embed_cfg.batch_size))
    else:
        ds = sub.to_dataset(num_blocks=min(num_blocks, n))
        ds.context.execution_options.preserve_order = True  # keeps the driver's partial shards to one or two
        ds = ds.map_batches(
            _Embedder, fn_constructor_kwargs=dict(spec, device=plan.device, torch_threads=plan.torch_threads),
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=plan.actors, initial_size=plan.actors),
            num_cpus=plan.num_cpus, num_gpus=plan.num_gpus or None, batch_size=embed_cfg.batch_size,
            batch_format="numpy", **NO_ACTOR_RESTARTS)
        results = ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2)
    bar = PassProgress(n, f"embed v{version}/{split}", "img", enabled=progress)
    window = [math.inf, -math.inf]
    try:
        for batch in results:
            bar.update(assembler.add(batch["id"], batch))
            window = [min(window[0], float(batch["t_start"].min())), max(window[1], float(batch["t_end"].max()))]
    finally:
        stats = bar.close()
    assembler.check_done()
    span = window[1] - window[0]
    stats.update({"compute_window_s": round(span, 3), "items_per_s_compute": round(n / span, 2) if span > 0 else None})
    log.info("features v%d/%s: %.1f img/s over the actors' compute window of %.1fs", version, split,
             stats["items_per_s_compute"] or 0.0, span)
    stats.update({"computed_shards": sorted(assembler.written), "plan": asdict(plan), "warm": warm,
                  "batch_size": embed_cfg.batch_size, "autocast": embed_cfg.autocast if plan.device == "cuda"
                  else "none", "finished_at": time.time(), "wall_s": round(time.perf_counter() - t0, 3)})
    target.finish({"last_pass": stats})
    return store.open(version, split)
