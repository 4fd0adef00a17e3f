"""al.select_workers: svpp's selection spread over Ray tasks that each read their own feature shards from the run
store. On a real sharded feature set (Animal-MNIST pixels, 14 shards, the last one short) with a trained proxy,
margin, confidence and entropy (and balanced margin) pick exactly what one process picks, in the same order; coreset
by composable greedy k-center stays within its bound of single-process greedy; a fully labeled shard is never read."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from raal import strategies
from raal.config import load_config
from raal.data.sources import animal_mnist_arrays
from raal.errors import StoreError
from raal.features import FeatureStore
from raal.index import APPROX_FACTOR, kcenter_greedy, kcenter_radius
from raal.labeling.oracle import SimulatedOracle
from raal.pipelines.base import ArmSpec, Context, PhaseTimer
from raal.pipelines.svpp import SVPpPipeline
from raal.store import RunStore

pytestmark = [pytest.mark.timeout(600), pytest.mark.ray]

N, N_TEST, SHARD_ROWS, C = 1300, 200, 97, 10


class ProxyOnly(SVPpPipeline):
    """svpp with the proxy as its only model: no test-set evaluation or stopping advice (not what is tested)."""

    def after_labels(self, r, timer):
        self.train_proxy(r, timer)
        return {"accuracy": 0.0, "eval_method": "proxy"}

    def stop_advice(self, r, row):
        return {}


def _write(fs: FeatureStore, split: str, ids: np.ndarray, x: np.ndarray) -> None:
    target = fs.set_for(0, split)
    todo = target.begin(ids, {"features": x.shape[1]}, SHARD_ROWS, {"kind": "features", "version": 0,
                                                                     "split": split})
    for k in todo:
        s, e = target.shard_range(k)
        target.write_shard(k, ids[s:e], {"features": x[s:e]})
    target.finish()


@pytest.fixture(scope="module")
def arm(tmp_path_factory):
    """A run store with the real feature set and an svpp arm after round 0 (60 random labels, a trained proxy)."""
    images, labels = animal_mnist_arrays()
    x = images[:N + N_TEST].reshape(-1, 14, 2, 14, 2).mean(axis=(2, 4)).reshape(-1, 196).astype(np.float32) / 255
    ids = np.arange(N + N_TEST, dtype=np.int64) * 5 + 3  # ids are not positions
    store = RunStore(str(tmp_path_factory.mktemp("sharded")))
    fs = FeatureStore(store)
    _write(fs, "pool", ids[:N], x[:N])
    _write(fs, "test", ids[N:], x[N:])
    cfg = load_config(overrides=["al.initial=60", "al.schedule=[50]", "proxy.epochs=20", "proxy.batch_size=32",
                                 "proxy.score_batch_size=500"])
    data = SimpleNamespace(pool=SimpleNamespace(ids=ids[:N], num_classes=C),
                           test=SimpleNamespace(labels=labels[N:N + N_TEST]))
    ctx = Context(cfg=cfg, store=store, data=data, oracle=SimulatedOracle(dict(zip(ids.tolist(), labels.tolist()))),
                  transform=None, features=fs)  # type: ignore[arg-type]
    p = ProxyOnly(ctx, ArmSpec("svpp", "margin"))
    p.run_round(0, 60)
    return p, x[:N]


def _select(p, name, workers, balanced=False, project_dim=0):
    p.strategy = strategies.for_run(name, balanced=balanced, project_dim=project_dim)
    p.ctx.cfg.al.select_workers = workers
    p.last_spread = {}
    timer = PhaseTimer()
    q = p.select(1, 50, timer)
    return q, timer, p.last_spread


@pytest.mark.parametrize("name, balanced", [("margin", False), ("confidence", False), ("entropy", False),
                                            ("margin", True)])
def test_score_strategies_pick_what_one_process_picks(ray_local, arm, name, balanced):
    p, _ = arm
    one, _, none = _select(p, name, 0, balanced)
    assert none == {}  # in process: no tasks
    for workers in (2, 3):
        q, timer, stats = _select(p, name, workers, balanced)
        np.testing.assert_array_equal(q.ids, one.ids)  # the same picks, in the same order
        np.testing.assert_array_equal(q.prediction, one.prediction)
        np.testing.assert_array_equal(q.score, one.score)
        assert q.rows_scored == one.rows_scored == N - 60
        assert (one.select_workers, one.select_bytes) == (0, 0)  # the rounds table's record of who chose
        assert (q.select_workers, q.select_bytes) == (workers, stats["bytes_returned"])
        assert stats["workers"] == workers and stats["shards"] == 14 and stats["unlabeled"] == N - 60
        assert stats["candidates"] <= workers * (C if balanced else 1) * 50  # each worker sends its best only
        assert stats["bytes_returned"] == 24 * stats["candidates"]  # position, score, class: 8 bytes each
        assert timer.times["t_f_proxy"] > 0 and timer.times["t_select"] > 0


def test_coreset_is_composable_greedy_within_its_bound(ray_local, arm):
    from raal.train import predict

    p, x = arm
    proxy = p.proxy_after(0, PhaseTimer())
    emb = predict(proxy, x, want=("embeddings",))["embeddings"]
    mask = p.labeled_mask()
    lab = np.flatnonzero(mask)
    exact = kcenter_greedy(emb, 50, labeled_mask=mask)
    q, _, _ = _select(p, "coreset", 0)
    np.testing.assert_array_equal(p.positions(q.ids), exact)  # the in-process path is single-process greedy
    greedy = kcenter_radius(emb, np.r_[lab, exact])
    for workers in (1, 2, 4):
        q, _, stats = _select(p, "coreset", workers)
        picks = p.positions(q.ids)
        assert len(set(picks)) == 50 and not mask[picks].any() and q.prediction is None
        objective = kcenter_radius(emb, np.r_[lab, picks])
        assert objective <= APPROX_FACTOR * greedy, (workers, objective, greedy)
        assert stats["candidates"] == 50 * workers  # each part's picks ...
        assert stats["bytes_returned"] == stats["candidates"] * (8 + 4 * emb.shape[1])  # ... and their embeddings


def test_coreset_dim_projects_on_the_workers_too(ray_local, arm):
    """al.coreset_dim: in process, greedy on the proxy embeddings' fixed projection; on workers, composable greedy
    there (each task projects its part, the driver the labeled centres, with the same matrix), so only the
    projected picks come back; the objective in the ORIGINAL embedding space stays within 4x exact greedy's."""
    from raal.index import random_projection
    from raal.train import predict

    p, x = arm
    emb = predict(p.proxy_after(0, PhaseTimer()), x, want=("embeddings",))["embeddings"]
    mask = p.labeled_mask()
    lab = np.flatnonzero(mask)
    q, _, _ = _select(p, "coreset", 0, project_dim=16)
    np.testing.assert_array_equal(p.positions(q.ids), kcenter_greedy(random_projection(emb, 16), 50,
                                                                     labeled_mask=mask))
    greedy = kcenter_radius(emb, np.r_[lab, kcenter_greedy(emb, 50, labeled_mask=mask)])
    q, _, stats = _select(p, "coreset", 2, project_dim=16)
    picks = p.positions(q.ids)
    assert len(set(picks)) == 50 and not mask[picks].any()
    assert kcenter_radius(emb, np.r_[lab, picks]) <= APPROX_FACTOR * greedy
    assert stats["bytes_returned"] == stats["candidates"] * (8 + 4 * 16)  # projected embeddings came back


def test_a_worker_reads_only_the_shards_it_needs(ray_local, arm):
    """Shard 13's file is damaged after the driver consolidated its copy: the workers read the shard files, so a
    selection that needs shard 13 fails there, and one whose labels cover shard 13 never opens it."""
    p, _ = arm
    target = p.ctx.features.set_for(0, "pool")
    name = target.p(target.shard_file(13, "features.f32"))
    good = target.store.read_bytes(name)
    mask = p.labeled_mask()
    s, e = 13 * SHARD_ROWS, N
    mask[s:e] = True
    try:
        target.store.write_bytes(name, bytes(b ^ 0xFF for b in good[:8]) + good[8:])
        with pytest.raises(StoreError, match="shard 13"):
            _select(p, "margin", 2)
        p.labeled_mask = lambda: mask  # type: ignore[method-assign]
        q, _, stats = _select(p, "entropy", 2)
        assert stats["rows_read"] == N - (e - s) and stats["unlabeled"] == N - int(mask.sum())
        assert len(q.ids) == 50 and not mask[p.positions(q.ids)].any()
    finally:
        target.store.write_bytes(name, good)
        p.__dict__.pop("labeled_mask", None)
