"""Warm embedding actors: one pool per driver process, kept alive across the embedding passes of a run.

A Ray Data `ActorPoolStrategy` lives as long as its dataset, so every pass (v0 pool and test, each refresh, standard
AL's per-round re-embed) started new actors, imported torch and built the backbone again: 6-11 s on 2 cores, half
of a 4,000-image pass. These actors outlive the pass. They keep torch imported and the last backbone built, and
build it again only when the pass asks for other weights (a refresh's state dict) or another transform.

Lifetime and resources: the actors are owned by the driver process and share its fate (a killed run takes them
along; the resumed run starts new ones and recomputes only the missing shards, as before). Between passes they hold
no CPU reservation (num_cpus=0: Ray Train's workers can have the cores while they idle); GPU actors hold their GPU,
and `release(gpu_only=True)` hands it back before a fine-tune. A crashed actor is restarted by Ray and its batch
retried (the backbone spec travels with every batch, so a restarted actor rebuilds it).

Only in-memory image columns go through the pool (the driver ships each batch's rows); a parquet-backed set (rows
stay on disk, ImageNet scale, where start-up is amortised anyway) keeps the Ray Data path.
"""
from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from raal.features._embedder import _Embedder

log = logging.getLogger("raal.embed_pool")  # the name users see in raal.log, as before the package

IN_FLIGHT = 2  # batches queued per actor: one computing, one arriving


def _session() -> tuple[str, str]:
    """This driver's (node, job): a new Ray instance in the same process (tests) gets a new node id."""
    import ray

    ctx = ray.get_runtime_context()
    return ctx.get_node_id(), ctx.get_job_id()


class _Worker:
    """One warm actor: torch imported once; the backbone of the last spec it saw."""

    def __init__(self, device: str, torch_threads: int):
        import torch

        if torch_threads > 0:
            torch.set_num_threads(torch_threads)
        self.device = device
        self.key: tuple | None = None
        self.embedder: Any = None  # raal.features._embedder._Embedder

    def embed(self, key: tuple, spec: dict, batch: dict) -> dict:
        if key != self.key:

            self.embedder = None  # free the old backbone before building the new one
            self.embedder = _Embedder(device=self.device, torch_threads=0, **spec)
            self.key = key
        return self.embedder(batch)


class WarmPool:
    """`plan.actors` warm actors for one `ActorPlan`; `map` runs one pass's batches through them, in order."""

    def __init__(self, plan):
        import ray

        self.plan = plan
        self.job = _session()
        cls = ray.remote(num_cpus=0, num_gpus=plan.num_gpus or 0, max_restarts=1, max_task_retries=2)(_Worker)
        self.actors = [cls.remote(plan.device, plan.torch_threads) for _ in range(plan.actors)]

    def alive(self) -> bool:
        import ray

        return ray.is_initialized() and _session() == self.job

    def map(self, key: tuple, spec: dict, batches: Iterable[dict]) -> Iterator[dict]:
        """Each batch's result, in submission order, with at most IN_FLIGHT batches queued per actor."""
        import ray

        pending: deque = deque()
        queued = [0] * len(self.actors)

        def pop() -> dict:
            ref, i = pending.popleft()
            out = ray.get(ref)
            queued[i] -= 1
            return out

        for batch in batches:
            while len(pending) >= IN_FLIGHT * len(self.actors):
                yield pop()
            i = min(range(len(self.actors)), key=queued.__getitem__)
            pending.append((self.actors[i].embed.remote(key, spec, batch), i))
            queued[i] += 1
        while pending:
            yield pop()

    def shutdown(self) -> None:
        import ray

        if self.alive():
            for a in self.actors:
                ray.kill(a)
        self.actors = []


_POOL: WarmPool | None = None


def single_node() -> bool:
    """Whether the warm pool applies: its actors reserve no CPU between passes, which suits one machine whose cores
    go to the round's other work; on a cluster of several nodes Ray Data's actor pool places the embedders where
    CPUs are free (and makes the autoscaler add nodes), so passes there keep that path."""
    import ray

    return sum(1 for n in ray.nodes() if n.get("Alive")) <= 1


def pool_for(device: str, num_actors: int, plan_fn) -> WarmPool:
    """The live pool when it fits the request (same device unless "auto", same actor count unless 0), else a new
    one from `plan_fn(device, num_actors)` (the old one is released first, so its GPUs count as free)."""
    global _POOL
    p = _POOL
    if p is not None and p.alive() and device in ("auto", p.plan.device) and num_actors in (0, p.plan.actors):
        return p
    release()
    _POOL = WarmPool(plan_fn(device, num_actors))
    log.info("embedding: started %d warm %s actor(s)", _POOL.plan.actors, _POOL.plan.device)
    return _POOL


def release(gpu_only: bool = False) -> None:
    """Stop the warm actors (only if they hold GPUs, with `gpu_only`): before a fine-tune needs the GPU."""
    global _POOL
    if _POOL is not None and (not gpu_only or _POOL.plan.num_gpus):
        _POOL.shutdown()
        _POOL = None


def batches(images, batch_size: int) -> Iterator[dict]:
    """The rows of an in-memory ImageSet as {"id", <image column>} batches."""

    (col, values), = images.columns.items()
    ids = np.asarray(images.ids, dtype=np.int64)
    for a in range(0, len(ids), batch_size):
        yield {"id": ids[a:a + batch_size], col: values[a:a + batch_size]}
