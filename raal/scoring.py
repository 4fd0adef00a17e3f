"""Score a whole pool with the proxy: class probabilities and hidden embeddings for every pool item.

Small pools (fewer than `in_process_below` rows) are scored in this process with `raal.proxy.predict`, batch by
batch over the (memory-mapped) features. Larger pools go through the same actor mechanism as the embedding pass: a
Ray Data dataset over the feature set's shards, an actor pool in which each actor loads the proxy once, reads one
verified feature shard at a time from the run store and scores it; the driver writes the results as the shards of a
score set (`scores/{key}/`), which strategies read back as read-only memmaps, exactly like a feature set.
"""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import asdict

import numpy as np

from raal import layout
from raal.embed import NO_ACTOR_RESTARTS
from raal.features import DTYPE, FeatureSet, FeatureStore, PassProgress, ScoreSet, ShardAssembler, sha256
from raal.proxy import PREDICT_OUTPUTS, ProxyMLP, load_proxy, predict, proxy_state_dict

log = logging.getLogger(__name__)


def proxy_digest(state: dict) -> str:
    """A content hash of a proxy state (names, shapes and bytes of every tensor)."""
    h = hashlib.sha256(f"{state['in_dim']}:{state['num_classes']}".encode())
    for name in sorted(state["state"]):
        t = state["state"][name].detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


class _Scorer:
    """Ray Data UDF: loads the proxy once per actor; each call scores one feature shard read from the run store."""

    def __init__(self, state: dict, source_store, source_rel: str, records: dict, dim: int, want: tuple,
                 batch_size: int, device: str, torch_threads: int):
        import torch

        if torch_threads > 0:
            torch.set_num_threads(torch_threads)
        self.model = load_proxy(state, device)
        self.store, self.rel, self.records, self.dim = source_store, source_rel, records, dim
        self.want, self.batch_size = tuple(want), batch_size

    def __call__(self, batch: dict) -> dict:
        outs: dict[str, list] = {"id": []}
        for k in np.asarray(batch["shard"]).tolist():
            rec = self.records[int(k)]
            feats = self._read(rec, "features", "f32", DTYPE, (rec["stop"] - rec["start"], self.dim))
            ids = self._read(rec, "ids", "i64", np.int64, (rec["stop"] - rec["start"],))
            res = predict(self.model, feats, batch_size=self.batch_size, want=self.want)
            outs["id"].append(ids)
            for name, arr in res.items():
                outs.setdefault(name, []).append(arr)
        return {name: np.concatenate(parts) for name, parts in outs.items()}

    def _read(self, rec: dict, name: str, ext: str, dtype, shape) -> np.ndarray:
        fname = f"{self.rel}/{layout.shard_file(rec['index'], f'{name}.{ext}')}"
        data = self.store.read_bytes(fname)
        if sha256(data) != rec["sha256"][name]:
            raise ValueError(f"{fname} fails its sha256: the feature set is corrupt; re-run the embedding pass")
        return np.frombuffer(data, dtype=dtype).reshape(shape)


def _as_state(proxy) -> dict:
    if isinstance(proxy, ProxyMLP):
        return proxy_state_dict(proxy)
    if isinstance(proxy, dict) and {"in_dim", "num_classes", "state"} <= set(proxy):
        return proxy
    raise ValueError(f"proxy must be a ProxyMLP or a proxy_state_dict() dict, got {type(proxy).__name__}")


def score_pool(proxy, features: FeatureSet | np.ndarray, *, store: FeatureStore | None = None,
               key: str | None = None, want: tuple[str, ...] = ("probs", "embeddings"), batch_size: int = 16384,
               in_process_below: int = 200_000, device: str = "auto", num_actors: int = 0,
               progress: bool = True) -> ScoreSet:
    """The proxy's outputs (`want` ⊆ probs, embeddings, logits) for every row of `features`, aligned with its ids.

    Below `in_process_below` rows, or for a plain array, this process scores in memory. Otherwise (a FeatureSet
    read from a store) an actor pool scores shard by shard into the score set `scores/{key}` of `store` (default:
    the store the features came from; key default `v{version}-{split}`), which is replaced whenever the proxy
    changes and resumed when the same proxy is scored again.
    """
    want = tuple(want)
    if not want or any(w not in PREDICT_OUTPUTS for w in want):
        raise ValueError(f"want={want!r}; allowed: {', '.join(PREDICT_OUTPUTS)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    state = _as_state(proxy)
    is_set = isinstance(features, FeatureSet)
    matrix = features.features if is_set else features
    if getattr(matrix, "ndim", 0) != 2 or matrix.shape[1] != int(state["in_dim"]):
        raise ValueError(f"features must be N×{state['in_dim']} (the proxy's input), got "
                         f"{getattr(matrix, 'shape', None)}")
    n = int(matrix.shape[0])
    ids = np.asarray(features.ids) if is_set else np.arange(n, dtype=np.int64)
    if n < in_process_below or not is_set or features.source is None:
        if n >= in_process_below:
            log.warning("score_pool: %d rows given as a plain array are scored in this process; pass a FeatureSet "
                        "from a FeatureStore to score through the actor pool", n)
        return _score_in_process(state, matrix, ids, want, batch_size, device, progress)
    return _score_with_actors(state, features, store, key, want, batch_size, device, num_actors, progress)


def _score_in_process(state, matrix, ids, want, batch_size, device, progress) -> ScoreSet:
    from raal.proxy import resolve_device

    t0 = time.perf_counter()
    model = load_proxy(state, resolve_device(device))
    out = predict(model, matrix, batch_size=batch_size, want=want)
    for arr in out.values():
        arr.setflags(write=False)
    secs = time.perf_counter() - t0
    log.info("score_pool: %d rows in process in %.2fs (%.0f rows/s)", len(ids), secs, len(ids) / max(secs, 1e-9))
    return ScoreSet(ids, out, {"kind": "scores", "in_process": True, "rows": len(ids),
                               "last_pass": {"items": len(ids), "seconds": round(secs, 3)}})


def _score_with_actors(state, features: FeatureSet, store, key, want, batch_size, device, num_actors,
                       progress) -> ScoreSet:
    import ray
    import ray.data

    from raal.embed import plan_actors

    src = features.source
    store = store or FeatureStore(src.store, cache_dir=src.cache_root)
    key = key or f"v{features.version}-{features.split}"
    target = store.scores_set(key)
    dims = {"probs": int(state["num_classes"]), "logits": int(state["num_classes"]),
            "embeddings": int(state["in_dim"])}
    arrays = {w: dims[w] for w in want}
    m = features.manifest
    meta = {"kind": "scores", "proxy_sha256": proxy_digest(state),
            "features": {"rel": src.rel, "ids_sha256": m["ids_sha256"],
                         "digest": sha256("".join(r["sha256"]["features"] for r in m["shards"]).encode())}}
    todo = target.begin(features.ids, arrays, m["shard_rows"], meta, replace=True)
    if todo:
        if target.plan["shard_rows"] != m["shard_rows"]:  # cannot happen after replace=True; kept as a guard
            raise ValueError("score shards must align with feature shards")
        if not ray.is_initialized():
            from raal.raylocal import init_local_ray

            init_local_ray(quiet=not progress)
        plan = plan_actors(device, num_actors)
        records = {int(r["index"]): r for r in m["shards"]}
        assembler = ShardAssembler(target, todo)
        ds = ray.data.from_items([{"shard": k} for k in todo], override_num_blocks=len(todo))
        ds.context.execution_options.preserve_order = True
        ds = ds.map_batches(
            _Scorer,
            fn_constructor_kwargs={"state": state, "source_store": src.store, "source_rel": src.rel,
                                   "records": records, "dim": int(m["arrays"]["features"]), "want": want,
                                   "batch_size": batch_size, "device": plan.device,
                                   "torch_threads": plan.torch_threads},
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=plan.actors, initial_size=plan.actors),
            num_cpus=plan.num_cpus, num_gpus=plan.num_gpus or None, batch_size=1, batch_format="numpy",
            **NO_ACTOR_RESTARTS)
        log.info("score_pool: %d rows (%d shards) on %d %s actor(s) into %s", len(assembler.positions), len(todo),
                 plan.actors, plan.device, target.rel)
        bar = PassProgress(len(assembler.positions), f"score {key}", "rows", enabled=progress, phase="selection")
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
                bar.update(assembler.add(batch["id"], batch))
        finally:
            stats = bar.close()
        assembler.check_done()
        stats.update({"computed_shards": sorted(assembler.written), "plan": asdict(plan)})
        target.finish({"last_pass": stats})
    elif not target.is_complete():
        target.finish({"last_pass": {"computed_shards": [], "items": 0}})
    return store.open_scores(key)
