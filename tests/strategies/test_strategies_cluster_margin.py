"""Cluster-Margin: the margin candidates, picked round-robin over the pool's clusters (smallest first), margin-ranked
within; the pool clustered once per feature version."""
from __future__ import annotations

import math

import numpy as np
import pytest

import raal.strategies.cluster_margin as cm
from raal import strategies

pytestmark = pytest.mark.timeout(120)

SIZES = (200, 120, 80, 40, 20)  # five well-separated blobs of different sizes
D, C = 8, 4


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _blobs(seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((len(SIZES), D)) * 20
    truth = np.repeat(np.arange(len(SIZES)), SIZES)
    return (centres[truth] + rng.standard_normal((len(truth), D))).astype(np.float32), truth


X, TRUTH = _blobs()
N = len(X)
W = np.random.default_rng(1).standard_normal((D, C)).astype(np.float32) / 4


def logits(h):
    return np.asarray(h, np.float32) @ W


def reference(clusters, margin, budget):
    """The paper's loop: clusters of the candidates sorted by size (then smallest margin, then id); passes over them
    take each one's next candidate (by margin, then position) until the budget is filled."""
    queues = {c: sorted(np.flatnonzero(clusters == c).tolist(), key=lambda i: (margin[i], i))
              for c in np.unique(clusters).tolist()}
    order = sorted(queues, key=lambda c: (len(queues[c]), min(margin[i] for i in queues[c]), c))
    out: list[int] = []
    while len(out) < budget:
        for c in order:
            if queues[c] and len(out) < budget:
                out.append(queues[c].pop(0))
    return out


@pytest.mark.parametrize("seed", range(20))
def test_round_robin_is_the_papers_loop(seed):
    rng = np.random.default_rng(seed)
    m = int(rng.integers(1, 80))
    clusters = rng.integers(0, int(rng.integers(1, 12)), m)
    margin = rng.integers(0, 6, m) / 5.0  # ties on purpose
    budget = int(rng.integers(1, m + 1))
    np.testing.assert_array_equal(cm.round_robin(clusters, margin, margin, budget), reference(clusters, margin, budget))


def test_the_blobs_are_the_clusters():
    """k-means cells merged by average linkage find the five blobs (every row, labeled or not)."""
    got = cm.pool_clusters(X, len(SIZES), 40, niter=20)
    assert len(set(zip(got.tolist(), TRUTH.tolist()))) == len(SIZES) == len(np.unique(got))


def test_picks_spread_round_robin_over_clusters_and_margin_ranked_within():
    mask = np.zeros(N, dtype=bool)
    mask[np.random.default_rng(2).choice(N, 30, replace=False)] = True
    budget = 23
    s = strategies.get("cluster_margin", clusters=len(SIZES), margin_factor=4)
    out = s.select(budget, labeled_mask=mask, embeddings=X, proxy=logits, seed=0)
    unl = np.flatnonzero(~mask)
    margin = cm.margins(_softmax(logits(X[unl]).astype(np.float64)))
    cand = np.argsort(margin, kind="stable")[:4 * budget]
    assert set(out) <= set(unl[cand])  # only the k_m x budget smallest margins
    ref = unl[cand[reference(TRUTH[unl[cand]], margin[cand], budget)]]
    np.testing.assert_array_equal(out, ref)  # the paper's loop on the true blobs
    counts = np.bincount(TRUTH[out], minlength=len(SIZES))
    avail = np.bincount(TRUTH[unl[cand]], minlength=len(SIZES))
    live = avail > counts  # blobs with candidates left: within one pick of each other
    assert np.ptp(counts[live]) <= 1 and (counts[~live] == avail[~live]).all()
    pos = {int(i): k for k, i in enumerate(unl)}
    for b in range(len(SIZES)):  # within a blob: ascending margin, the blob's best candidates
        mine = [margin[pos[int(i)]] for i in out if TRUTH[i] == b]
        assert mine == sorted(mine) == sorted(margin[cand][TRUTH[unl[cand]] == b])[:len(mine)]
    first = TRUTH[out[:int((avail > 0).sum())]]  # the first pass: one pick per blob, fewest candidates first
    assert len(set(first)) == len(first) and list(avail[first]) == sorted(avail[first])
    plain = strategies.get("margin").select(budget, labeled_mask=mask, probs=_softmax(logits(X)))
    assert np.ptp(np.bincount(TRUTH[plain], minlength=len(SIZES))) > 1  # margin alone bunches: the test can fail


def test_clustered_once_per_feature_version(monkeypatch):
    calls: list[int] = []
    real = cm.kmeans_labels
    monkeypatch.setattr(cm, "kmeans_labels", lambda x, k, **kw: calls.append(len(x)) or real(x, k, **kw))
    s = strategies.get("cluster_margin", clusters=len(SIZES))
    mask = np.zeros(N, dtype=bool)
    a = s.select(10, labeled_mask=mask, embeddings=X, proxy=logits, seed=1)
    mask[a] = True
    b = s.select(10, labeled_mask=mask, embeddings=X.copy(), proxy=logits, seed=2)  # the next round: same features
    assert len(calls) == 1 and s.last["clusterings"] == 1
    fresh = strategies.get("cluster_margin", clusters=len(SIZES))  # a resumed run: clusters do not follow the seed
    np.testing.assert_array_equal(fresh.select(10, labeled_mask=mask, embeddings=X, proxy=logits, seed=2), b)
    s.select(10, labeled_mask=mask, embeddings=X * 2, proxy=logits, seed=3)  # a new feature version
    assert len(calls) == 3 and s.last["clusterings"] == 2


def test_logits_or_probabilities_and_a_bad_proxy():
    mask = np.zeros(N, dtype=bool)
    s = strategies.get("cluster_margin")
    by_logits = s.select(12, labeled_mask=mask, embeddings=X, proxy=logits)
    by_probs = s.select(12, labeled_mask=mask, embeddings=X, proxy=lambda h: _softmax(logits(h).astype(np.float64)))
    np.testing.assert_array_equal(by_logits, by_probs)
    for bad, what in [(lambda h: logits(h)[:, :1], "C >= 2"), (lambda h: logits(h)[:-1], "finite"),
                      (lambda h: logits(h) * np.nan, "finite")]:
        with pytest.raises(ValueError, match=f"cluster_margin.*proxy must map.*{what}"):
            s.select(3, labeled_mask=mask, embeddings=X, proxy=bad)


def test_auto_sizes():
    s = strategies.get("cluster_margin")
    assert s.sizes(N) == (math.ceil(math.sqrt(N)), 8 * math.ceil(math.sqrt(N)))
    assert s.sizes(1_281_167) == (1132, 4096)  # ImageNet: HAC on 4096 cells at most
    assert s.sizes(5) == (3, 5)
    assert strategies.get("cluster_margin", clusters=50, kmeans_k=20).sizes(N) == (50, 20)
