"""Selection spread over Ray workers (`al.select_workers`): the pool's feature shards are scored where a worker can
read them, and only each worker's candidates come back to the driver, which merges them.

The run store's shards already partition the pool: worker w gets a contiguous range of shards (its part), reads
those shard files from the store (checked against their sha256; never the driver's consolidated copy, which lives on
the driver's disk only), runs the round's proxy on them one shard at a time and returns
- for margin, confidence and entropy: the part's `ScoreStrategy.ranked` rows (its `budget` best by score, or each
  predicted class's `budget` best with `balanced`) with their scores, classes and pool positions. The driver's
  `merge_ranked` then gives exactly the picks of one process: the same scores (`predict` makes a row's outputs
  independent of the batch it is in) and the same order, ties to the lower position (`keep_ranked` says why no pick
  is lost).
- for coreset: its part's picks of greedy k-center seeded with the labeled rows, with their embeddings; the driver
  runs greedy k-center on their union (`raal.index._composable`: a 4-approximation, so at most 4x the objective
  of single-process greedy). With `al.coreset_dim` both rounds run on the embeddings' fixed random projection
  (`raal.index.random_projection`: the same matrix on every worker and on the driver), and the picks come back
  projected.
Tasks hold one CPU each, run torch on one thread, and are retried by Ray if a worker dies (they only read).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from raal.features import ShardedSet
from raal.index import merge_round, part_round, projected_width, random_projection
from raal.strategies.scored import ScoreStrategy, keep_ranked

log = logging.getLogger(__name__)

TASK_RETRIES = 2


@dataclass
class Sharded:
    """A selection's picks (pool positions, pick order), the model's class for each where it had probabilities,
    and what the workers did (`stats`: workers, rows read, bytes returned, seconds)."""

    picks: np.ndarray
    prediction: np.ndarray | None
    stats: dict = field(default_factory=dict)


def plan_parts(records: list[dict], workers: int) -> list[list[dict]]:
    """The shard records cut into min(workers, shards) contiguous parts of (nearly) equal shard counts."""
    k = max(1, min(int(workers), len(records)))
    cuts = np.linspace(0, len(records), k + 1).round().astype(int)
    return [records[a:b] for a, b in zip(cuts[:-1], cuts[1:])]


def _open_part(store, rel: str, threads: int):
    import torch

    torch.set_num_threads(threads)
    return ShardedSet(store, rel)


def score_part(store, rel: str, records: list[dict], dim: int, labeled: np.ndarray, proxy_state: dict,
               strategy: ScoreStrategy, budget: int, batch: int) -> dict:
    """Ray task: one part's `ranked` rows (pool positions, scores, predicted classes). Shards are scored one at a
    time and the part's candidates folded as they grow, so memory is a shard plus about `budget` candidates."""
    from raal.train import load_proxy, predict

    t0, c0 = time.perf_counter(), time.process_time()
    target, model = _open_part(store, rel, 1), load_proxy(proxy_state)
    base = int(records[0]["start"])
    pos, score, cls = [np.empty(0, np.int64)], [np.empty(0, np.float64)], [np.empty(0, np.int64)]
    held, folded, t_proxy, read = 0, 0, 0.0, 0
    for rec in records:
        s, e = int(rec["start"]), int(rec["stop"])
        mask = labeled[s - base:e - base]
        if mask.all():  # nothing to pick here: not even read
            continue
        t1 = time.perf_counter()
        probs = predict(model, target.read_shard(rec, "features", dim), batch_size=batch, want=("probs",))["probs"]
        t_proxy += time.perf_counter() - t1
        read += e - s
        p, sc, c = strategy.ranked(budget, labeled_mask=mask, probs=probs)
        pos.append(p + s)
        score.append(sc)
        cls.append(c)
        held += len(p)
        if held > 2 * folded + budget:  # amortised: each fold at least halves what is held
            pos, score, cls = _fold(pos, score, cls, strategy, budget)
            held = folded = len(pos[0])
    pos, score, cls = _fold(pos, score, cls, strategy, budget)
    out = {"pos": pos[0], "score": score[0], "cls": cls[0]}
    return {**out, "unlabeled": int((~labeled).sum()), "rows_read": read, "proxy_s": t_proxy,
            "task_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
            "bytes": sum(v.nbytes for v in out.values())}


def _fold(pos, score, cls, strategy: ScoreStrategy, budget: int):
    p, s, c = np.concatenate(pos), np.concatenate(score), np.concatenate(cls)  # in position order: shards ascend
    keep = keep_ranked(s, c, budget, largest=strategy.largest, balanced=strategy.balanced)
    return [p[keep]], [s[keep]], [c[keep]]


def coreset_part(store, rel: str, records: list[dict], dim: int, labeled: np.ndarray, proxy_state: dict,
                 centres: np.ndarray, budget: int, batch: int, project_dim: int = 0) -> dict:
    """Ray task: round 1 of composable k-center on one part: the proxy embeddings of the part's unlabeled rows, in
    one buffer after the labeled centres (the part's labeled rows are among them), greedy k-center there. Returns
    the picks' pool positions (ascending), their embeddings, and the embedding sum of the part's rows (the merge's
    start when nothing is labeled, and then every row is unlabeled). With `project_dim` (see
    `raal.index.projected_width`) the embeddings are projected as they are made, and `centres` come projected."""
    from raal.train import load_proxy, predict

    t0, c0 = time.perf_counter(), time.process_time()
    target, model = _open_part(store, rel, 1), load_proxy(proxy_state)
    base, n_c = int(records[0]["start"]), len(centres)
    rows = base + np.flatnonzero(~labeled)
    width = projected_width(project_dim, model.in_dim)
    buf = np.empty((n_c + len(rows), width), dtype=np.float32)
    buf[:n_c] = centres
    t_proxy, at, read = 0.0, n_c, 0
    for rec in records:
        s, e = int(rec["start"]), int(rec["stop"])
        keep = ~labeled[s - base:e - base]
        if not keep.any():
            continue
        t1 = time.perf_counter()
        feats = target.read_shard(rec, "features", dim)
        emb = predict(model, feats if keep.all() else feats[keep], batch_size=batch, want=("embeddings",))
        h = emb["embeddings"]
        buf[at:at + int(keep.sum())] = h if width == model.in_dim else random_projection(h, width)
        at += int(keep.sum())
        read += e - s
        t_proxy += time.perf_counter() - t1
    picks = np.sort(part_round(buf, n_c, budget))
    out = {"pos": rows[picks], "emb": buf[n_c + picks]}
    total = buf[n_c:].sum(axis=0, dtype=np.float64)
    return {**out, "sum": total, "unlabeled": len(rows), "rows_read": read, "proxy_s": t_proxy,
            "task_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
            "bytes": sum(v.nbytes for v in out.values())}


def _run(fn, target: ShardedSet, labeled_mask: np.ndarray, workers: int, shared: tuple) -> tuple[list[dict], dict]:
    """`fn(store, rel, records, dim, labeled, *shared)` as one Ray task per part of `target`'s shards: the results in
    part order, and the stats they share. Arrays and dicts in `shared` go to the object store once for every task."""
    import ray

    from raal.raylocal import init_local_ray

    manifest = target.manifest()
    if not manifest or not manifest.get("complete"):
        raise RuntimeError(f"{target}: no complete feature set to select from")
    if int(manifest["rows"]) != len(labeled_mask):
        raise RuntimeError(f"{target}: {manifest['rows']} rows but the pool has {len(labeled_mask)}")
    if not ray.is_initialized():
        init_local_ray(quiet=True)
    remote = ray.remote(num_cpus=1, max_retries=TASK_RETRIES)(fn)
    dim = int(manifest["arrays"]["features"])
    parts = plan_parts(manifest["shards"], workers)
    t0 = time.perf_counter()
    args = [ray.put(a) if isinstance(a, (dict, np.ndarray)) else a for a in shared]
    futures = []
    for part in parts:
        s, e = int(part[0]["start"]), int(part[-1]["stop"])
        futures.append(remote.remote(target.store, target.rel, part, dim, np.ascontiguousarray(labeled_mask[s:e]),
                                     *args))
    results = ray.get(futures)
    stats = {"workers": len(parts), "shards": len(manifest["shards"]),
             "rows_read": sum(r["rows_read"] for r in results),
             "bytes_returned": sum(r["bytes"] for r in results), "tasks_s": time.perf_counter() - t0,
             "proxy_s": max(r["proxy_s"] for r in results), "task_s": [round(r["task_s"], 3) for r in results],
             "cpu_s": [round(r["cpu_s"], 3) for r in results],
             "unlabeled": sum(r["unlabeled"] for r in results)}
    return results, stats


def select_scores(target: ShardedSet, proxy_state: dict, strategy: ScoreStrategy, budget: int,
                  labeled_mask: np.ndarray, *, workers: int, batch: int = 16384) -> Sharded:
    """A score strategy's `budget` picks over the whole pool of `target`, scored on `workers` Ray tasks: exactly
    `strategy.select`'s picks on the proxy's probabilities of the whole pool."""
    unlabeled = int((~labeled_mask).sum())
    if not 0 < int(budget) <= unlabeled:
        raise ValueError(f"strategy {strategy.name!r}: budget {budget} exceeds the {unlabeled} unlabeled items")
    results, stats = _run(score_part, target, labeled_mask, workers, (proxy_state, strategy, int(budget), batch))
    t0 = time.perf_counter()
    pos, score, cls = (np.concatenate([r[k] for r in results]) for k in ("pos", "score", "cls"))
    order = strategy.merge_ranked(pos, score, cls, int(budget))
    stats.update(candidates=len(pos), merge_s=time.perf_counter() - t0)
    _log(strategy.name, stats)
    return Sharded(pos[order], cls[order], stats)


def select_coreset(target: ShardedSet, proxy_state: dict, centres: np.ndarray, budget: int,
                   labeled_mask: np.ndarray, *, workers: int, batch: int = 16384, project_dim: int = 0) -> Sharded:
    """CoreSet's `budget` picks by composable greedy k-center: each of `workers` Ray tasks picks `budget` in its
    part (seeded with the labeled rows' proxy embeddings `centres`), the driver picks `budget` from their union.
    `project_dim`: CoreSet's option of the same name (both rounds on the fixed random projection)."""
    unlabeled = int((~labeled_mask).sum())
    if not 0 < int(budget) <= unlabeled:
        raise ValueError(f"strategy 'coreset': budget {budget} exceeds the {unlabeled} unlabeled items")
    centres = np.ascontiguousarray(centres, dtype=np.float32)
    width = projected_width(project_dim, centres.shape[1])
    if width < centres.shape[1]:
        centres = random_projection(centres, width)
    results, stats = _run(coreset_part, target, labeled_mask, workers,
                          (proxy_state, centres, int(budget), batch, width))
    t0 = time.perf_counter()
    pos = np.concatenate([r["pos"] for r in results])
    origin = None if len(centres) else (sum(r["sum"] for r in results) / len(labeled_mask)).astype(np.float32)
    picks = merge_round(centres, np.concatenate([r["emb"] for r in results]), int(budget), origin=origin)
    stats.update(candidates=len(pos), merge_s=time.perf_counter() - t0)
    _log("coreset", stats)
    return Sharded(pos[picks], None, stats)


def _log(name: str, stats: dict) -> None:
    log.info("%s on %d worker(s): %d shards, %d rows read, %d candidates (%.2f MB) back, tasks %.1fs (proxy %.1fs "
             "on the slowest), merge %.2fs", name, stats["workers"], stats["shards"], stats["rows_read"],
             stats["candidates"], stats["bytes_returned"] / 1e6, stats["tasks_s"], stats["proxy_s"],
             stats["merge_s"])
