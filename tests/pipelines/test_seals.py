"""al.candidates=seals through a pipeline's rounds, without Ray: the strategy sees SEALS' candidates (and the labeled
rows) only, the candidate pool grows by searching the new labels only, and the rounds table records the rows
scored. A fixed linear head over the features stands in for the proxy (svpp's own path is checked last)."""
from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest

from raal.config import load_config
from raal.index import PoolIndex, knn
from raal.labeling.oracle import SimulatedOracle
from raal.pipelines.base import ArmSpec, Context, PhaseTimer, Pipeline, take_rows
from raal.store import RunStore

pytestmark = pytest.mark.timeout(120)

D, C = 8, 4
W = np.random.default_rng(1).standard_normal((D, C)).astype(np.float32)


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class HeadPipeline(Pipeline):
    """Scores the rows it is given with a fixed softmax head over the v0 features; records how many."""

    name = "head"
    supplies = frozenset({"probs", "embeddings", "proxy"})

    def strategy_inputs(self, r, requires, timer, *, rows=None):
        feats = take_rows(self.ctx.features.open(0, "pool").features, rows)
        self.scored.append(len(feats))
        out = {"probs": _softmax(feats @ W), "embeddings": feats, "proxy": lambda h: h @ W}
        return {k: v for k, v in out.items() if k in requires}

    def after_labels(self, r, timer):
        return {"accuracy": 0.5, "eval_method": "proxy"}

    def stop_advice(self, r, row):
        return {}


def _context(tmp_path, x, overrides):
    n = len(x)
    ids = np.arange(n, dtype=np.int64) * 3 + 7  # pool ids are not positions
    cfg = load_config(overrides=["al.initial=20", "al.schedule=[20]*3", *overrides])
    features = SimpleNamespace(open=lambda v, split: SimpleNamespace(features=x, ids=ids))
    data = SimpleNamespace(pool=SimpleNamespace(ids=ids, num_classes=C))
    truth = dict(zip(ids.tolist(), _softmax(x @ W).argmax(1).tolist()))
    return Context(cfg=cfg, store=RunStore(str(tmp_path)), data=data, oracle=SimulatedOracle(truth),  # type: ignore
                   transform=None, features=features)  # type: ignore[arg-type]


def _arm(ctx, strategy="margin", baseline=False):
    p = HeadPipeline(ctx, ArmSpec("head", strategy, baseline))
    p.scored = []
    return p


def _run(p) -> list[dict]:
    return [p.run_round(r, size) for r, size in enumerate(p.sizes())]


def _blobs(n, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((12, D)) * 3
    return (centres[rng.integers(0, 12, n)] + rng.standard_normal((n, D))).astype(np.float32)


def test_seals_scores_only_the_knn_of_the_labeled_set_grown_per_round(tmp_path):
    x = _blobs(1200)
    ctx = _context(tmp_path, x, ["al.candidates=seals", "al.candidates_k=5"])
    p = _arm(ctx)
    built, searched = [], []
    real_init, real_knn = PoolIndex.__init__, PoolIndex.knn

    def init(self, *a, **kw):
        built.append(1)
        real_init(self, *a, **kw)

    def search(self, k, query_rows=None):
        searched.append(len(x) if query_rows is None else len(query_rows))
        return real_knn(self, k, query_rows=query_rows)

    mp = pytest.MonkeyPatch()
    mp.setattr(PoolIndex, "__init__", init)
    mp.setattr(PoolIndex, "knn", search)
    try:
        rows = _run(p)
    finally:
        mp.undo()
    assert [r["n_labeled"] for r in rows] == [20, 40, 60, 80]
    scored = [r["rows_scored"] for r in rows]
    assert scored[0] == len(x)  # round 0: the initial random batch, drawn from the whole pool
    assert built == [1] and searched == [20, 20, 20]  # one index; each round searches the last round's labels only
    assert p.candidates is not None and p.candidates.searched_total == 60
    assert all(s <= 6 * n for s, n in zip(scored[1:], (20, 40, 60)))  # k + 1 rows per label at most
    assert scored[1] < scored[2] < scored[3] < len(x) / 2  # grows with the labels, never the whole pool
    assert p.scored == [s + n for s, n in zip(scored[1:], (20, 40, 60))]  # the head saw candidates + labeled only
    labeled = p.positions(p.state.labeled_ids)
    for r in (1, 2, 3):  # every pick is a neighbour of a row labeled before its round
        before = labeled[:20 * r]
        _, nb = knn(x, x, 6, query_rows=before)
        picked = p.positions(p.state.saved_query(r))
        assert len(set(picked) - set(nb.ravel())) <= 1, r  # 0 here; the index is approximate (16 of 75 cells probed)
    table = p.store.read_table("rounds.parquet").column("rows_scored").to_pylist()
    assert table == scored


@pytest.mark.parametrize("strategy", ["margin", "coreset"])
def test_seals_with_every_neighbour_is_the_full_scan(tmp_path, strategy):
    """With k past the pool (and every cell probed, as on a pool this small) the candidates are every unlabeled
    row: the same picks as a full scan, round by round."""
    x = _blobs(240, seed=2)
    picks = {}
    for mode in ("all", "seals"):
        ctx = _context(tmp_path / mode, x, [f"al.candidates={mode}", "al.candidates_k=1000"])
        p = _arm(ctx, strategy)
        rows = _run(p)
        picks[mode] = [p.state.saved_query(r).tolist() for r in range(4)]
        assert [r["rows_scored"] for r in rows] == [240, 220, 200, 180]
    assert picks["all"] == picks["seals"]


def test_random_arms_and_short_candidate_pools_use_the_whole_pool(tmp_path, caplog):
    x = _blobs(600)
    ctx = _context(tmp_path, x, ["al.candidates=seals", "al.candidates_k=1", "al.schedule=[20,200]"])
    base = _arm(ctx, "random", baseline=True)
    assert [r["rows_scored"] for r in _run(base)] == [600, 580, 560]  # the baseline: never restricted
    p = _arm(ctx)
    with caplog.at_level(logging.WARNING):
        rows = _run(p)
    assert rows[1]["rows_scored"] < 2 * 20  # k = 1: at most one new row per label
    assert rows[2]["rows_scored"] == 560 and "this round chooses from the whole pool" in caplog.text


def test_svpp_proxy_scores_only_the_candidate_rows(tmp_path):
    """svpp's inputs for SEALS' rows: the proxy's outputs on those rows (read a slice at a time), the same numbers
    as the full pass has there; a strategy that runs the proxy itself gets those rows' features."""
    import torch

    from raal.pipelines.svpp import SVPpPipeline
    from raal.train import ProxyMLP, predict

    x = _blobs(300)
    ctx = _context(tmp_path, x, ["al.candidates=seals"])
    p = SVPpPipeline(ctx, ArmSpec("svpp", "badge"))
    torch.manual_seed(0)
    proxy = ProxyMLP(D, C).eval()
    p._proxy_cache = (0, proxy)
    rows = np.sort(np.random.default_rng(3).choice(300, 40, replace=False))
    timer = PhaseTimer()
    got = p.strategy_inputs(1, frozenset({"probs", "embeddings"}), timer, rows=rows)
    full = predict(proxy, x, want=("probs", "embeddings"))
    for k in ("probs", "embeddings"):
        assert got[k].shape[0] == 40
        np.testing.assert_allclose(got[k], full[k][rows], rtol=1e-5, atol=1e-6)
    assert timer.times["t_f_proxy"] > 0
    own = p.strategy_inputs(1, frozenset({"embeddings", "proxy"}), timer, rows=rows)
    np.testing.assert_array_equal(own["embeddings"], x[rows])
