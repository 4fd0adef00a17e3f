"""Warm fine-tune worker: one long-lived training actor per driver process, for every one-worker fine-tune.

A Ray Train `fit` pays ~23-25 s on 2 cores before its first step (controller, worker group, placement group, torch
import, model build), and standard AL fine-tunes every round. This actor keeps torch imported and the backbone
built (its pre-trained weights kept on the host) across the jobs of a run. Per job it gets the initial weights, the
labeled rows and the test split (object refs), the recipe and the seed, loads the weights into the built backbone,
draws a fresh head and optimiser from the seed and runs the same `EpochLoop` as a Ray Train worker, so a seed gives
the same weights on either path.

Faults: every epoch's checkpoint goes atomically through the job's RunStore into the folder Ray Train would use
(`checkpoint_warm_NNNNNN/state.pt`, the newest two kept). If the actor dies (a crash, the fault hooks), the driver
starts a new one and re-submits the job, which resumes from the newest intact checkpoint, at most
`train.max_failures` times (what `FailureConfig` gives the Ray Train path).

Lifetime: the actor is owned by the driver process and dies with it (the CLI kills the driver actor at the end of
a run, a killed run takes it along, and the CLI's lifeline tags it like any process of the run's Ray); `release()`
kills it at once. It reserves no CPU (its torch threads are set per job from the CPUs free at submission). With
`use_gpu` it holds one GPU during a job and is released after it, because the warm embedding actors ask for whole
GPUs; a GPU job still skips Ray Train's controller and worker group, not the actor's start.
"""
from __future__ import annotations

import io
import logging
import os
import time

import numpy as np

from raal import logs

log = logging.getLogger("raal.train")

KEEP = 2  # epoch checkpoints kept, as Ray Train's CheckpointConfig(num_to_keep=2)
PREFIX = "checkpoint_warm_"


class WarmSession:
    """The one rank of a job in the warm actor: rows and test split in memory, checkpoints through the RunStore."""

    rank, world = 0, 1

    def __init__(self, config: dict, train: dict, test: dict, store, device):
        self.cfg, self.train, self.test, self.store, self.device = config, train, test, store, device

    def train_rows(self) -> dict:
        return self.train

    def test_batches(self, batch_size: int):
        n = len(self.test["id"])
        for a in range(0, n, batch_size):
            yield {k: v[a:a + batch_size] for k, v in self.test.items()}

    def checkpoint(self) -> dict | None:
        import ray

        ref = self.cfg.get("resume_state")
        return ray.get(ref) if ref is not None else None

    def save(self, state: dict | None, metrics: dict, epoch: int) -> None:
        import torch

        from raal.train._parts import STATE_FILE  # lazy: heavy: torch

        buf = io.BytesIO()
        torch.save(state, buf)
        self.store.write_bytes(f"{PREFIX}{epoch:06d}/{STATE_FILE}", buf.getvalue())  # atomic
        for old in [n for n in self.store.listdir() if n.startswith(PREFIX)][:-KEEP]:
            self.store.delete(old)

    def prepare_model(self, net):
        return net  # one process: no DistributedDataParallel (Ray Train's prepare_model does the same for 1 rank)

    def before_crash(self) -> None:
        pass  # the checkpoint is written before the next epoch starts


class _Trainer:
    """The actor: torch imported once, the last model config's backbone built once."""

    def __init__(self, use_gpu: bool):
        import torch


        logs.worker_setup()
        self.device = torch.device("cuda" if use_gpu else "cpu")
        self.cache: dict = {}

    def pid(self) -> int:

        return os.getpid()

    def run(self, config: dict, train: dict, test: dict, store) -> dict:
        from raal.train._loop import EpochLoop  # lazy: heavy: torch

        loop = EpochLoop(config, WarmSession(config, train, test, store, self.device), self.cache)
        loop.run()
        out = loop.state(done=loop.epoch >= loop.total_epochs and loop.accuracy is not None, optimiser=False)
        out["net"] = {k: v.detach().cpu().clone() for k, v in out["net"].items()}
        del loop
        if self.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()
        return out


_ACTOR = None  # (handle, session key, use_gpu)


def _session() -> tuple[str, str]:
    import ray

    ctx = ray.get_runtime_context()
    return ctx.get_node_id(), ctx.get_job_id()


def _actor(use_gpu: bool):
    """The live actor for this Ray session and device, else a new one (the old one is killed first)."""
    global _ACTOR
    import ray

    if _ACTOR is not None and _ACTOR[1] == _session() and _ACTOR[2] == use_gpu:
        return _ACTOR[0]
    release()
    cls = ray.remote(num_cpus=0, num_gpus=1 if use_gpu else 0, max_restarts=0)(_Trainer)
    _ACTOR = (cls.remote(use_gpu), _session(), use_gpu)
    log.info("fine-tune: started a warm training actor (%s)", "GPU" if use_gpu else "CPU")
    return _ACTOR[0]


def release() -> None:
    """Kill the warm training actor (end of a run, or its GPU is wanted elsewhere)."""
    global _ACTOR
    import ray

    if _ACTOR is not None:
        handle, session, _ = _ACTOR
        _ACTOR = None
        if ray.is_initialized() and session == _session():
            ray.kill(handle)


def _as_arrays(batch: dict) -> dict:
    """Every column as a numpy array, as a Ray Data batch would arrive at a Ray Train worker (a list of same-shape
    images stacked, any other list an object array: bytes and paths stay whole)."""

    out = {}
    for k, v in batch.items():
        if isinstance(v, np.ndarray):
            out[k] = v
        elif v and isinstance(v[0], np.ndarray) and len({x.shape for x in v}) == 1:
            out[k] = np.stack(v)
        else:
            arr = np.empty(len(v), dtype=object)
            for i, x in enumerate(v):  # element by element: arrays of several shapes stay whole too
                arr[i] = x
            out[k] = arr
    return out


def run_job(config: dict, train: dict, test: dict, store, max_failures: int, resume_state) -> tuple[dict, int]:
    """Run one job on the warm actor; returns (final state, actor deaths survived). `resume_state(store)` gives the
    newest checkpoint before each try (None for a fresh start)."""
    import ray
    from ray.exceptions import RayActorError

    refs = ray.put(_as_arrays(train)), ray.put(_as_arrays(test))
    deaths = 0
    while True:
        state = resume_state(store)
        cfg = dict(config, resume_state=ray.put(state) if state is not None else None)
        actor = _actor(bool(config["train_cfg"].use_gpu))
        t0 = time.perf_counter()
        try:
            out = ray.get(actor.run.remote(cfg, *refs, store))
            if config["train_cfg"].use_gpu:
                release()  # the embedding actors ask for whole GPUs: holding one between jobs would starve them
            return out, deaths
        except RayActorError:
            release()
            deaths += 1
            if max_failures >= 0 and deaths > max_failures:
                raise
            log.warning("fine-tune: the warm training actor died after %.1f s; resuming on a new one (%d of %s)",
                        time.perf_counter() - t0, deaths, max_failures)

