"""Cold-start and diversity strategies on hand-made data where the right picks are known in closed form."""
from __future__ import annotations

import math

import numpy as np
import pytest

from raal import strategies
from raal.strategies.probcover import impure_distance, purity_delta

pytestmark = pytest.mark.timeout(120)


def _blobs(sizes, seed=0, spread=1.0, dim=2):
    """Gaussian clusters around centres 100 apart (so any k-means run with k = len(sizes) separates them)."""
    rng = np.random.default_rng(seed)
    parts, labels = [], []
    for c, n in enumerate(sizes):
        centre = np.zeros(dim, np.float32)
        centre[c % dim] = 100.0 * (1 + c // dim)
        parts.append(centre + spread * rng.standard_normal((n, dim)).astype(np.float32))
        labels.append(np.full(n, c))
    return np.concatenate(parts), np.concatenate(labels)


def _most_typical(x, members, k_nn=20):
    """Brute force: the member with the smallest mean Euclidean distance to its K = min(k_nn, n // 2) nearest."""
    k = min(k_nn, len(members) // 2)
    d = np.sqrt(((x[members][:, None, :] - x[members][None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    return members[int(np.argmin(np.sort(d, axis=1)[:, :k].mean(axis=1)))]


@pytest.mark.parametrize("seed", range(10))
def test_typiclust_one_per_cluster_most_typical_largest_first(seed):
    x, y = _blobs([30, 20, 10], seed=seed)
    out = strategies.get("typiclust").select(3, labeled_mask=np.zeros(len(x), bool), embeddings=x, seed=seed)
    assert y[out].tolist() == [0, 1, 2]
    assert out.tolist() == [_most_typical(x, np.flatnonzero(y == c)) for c in range(3)]


def test_typiclust_skips_labeled_clusters_and_recomputes_typicality_after_each_pick():
    x, y = _blobs([30, 20, 12], seed=1)
    mask = np.zeros(len(x), bool)
    mask[0] = True  # one labeled item in the largest cluster: it comes last
    s = strategies.get("typiclust", max_clusters=3)
    out = s.select(6, labeled_mask=mask, embeddings=x, seed=0)
    assert y[out].tolist() == [1, 2, 0, 1, 2, 0]
    for c in range(3):
        free = np.flatnonzero((y == c) & ~mask)
        first = _most_typical(x, free)
        second = _most_typical(x, free[free != first])
        assert out[y[out] == c].tolist() == [first, second]


def _stars():
    """A: centre + 8 points on a unit circle (45° apart); B: centre + 5 (72° apart); C: 3 points 1 apart, far away.
    With δ = 1.1 the ball of A's centre holds 9 items, B's 6, C's middle 3; no other ball is as large."""
    a = np.array([[0, 0]] + [[math.cos(t), math.sin(t)] for t in np.arange(8) * math.pi / 4])
    b = np.array([[0, 0]] + [[math.cos(t), math.sin(t)] for t in np.arange(5) * 2 * math.pi / 5]) + [50, 0]
    c = np.array([[-1, 0], [0, 0], [1, 0]]) + [0, 50]
    return np.concatenate([a, b, c]).astype(np.float32), np.array([0] * 9 + [1] * 6 + [2] * 3)


def test_probcover_greedy_coverage_closed_form():
    x, y = _stars()
    s = strategies.get("probcover", delta=1.1, normalize=False)
    out = s.select(3, labeled_mask=np.zeros(18, bool), embeddings=x, seed=0)
    assert out.tolist() == [0, 9, 16]  # the densest point first, then the next densest ball
    assert s.last["covered"] == 9 + 6 + 3
    out = s.select(2, labeled_mask=np.zeros(18, bool), embeddings=x, seed=0)
    assert s.last["covered"] == 9 + 6
    mask = np.zeros(18, bool)
    mask[9] = True  # B's centre labeled: its ball is covered from the start
    out = s.select(2, labeled_mask=mask, embeddings=x, seed=0)
    assert out.tolist() == [0, 16] and s.last["covered"] == 18


def test_probcover_once_all_is_covered_the_rest_is_random_unlabeled():
    x, _ = _stars()
    s = strategies.get("probcover", delta=1.1, normalize=False)
    out = s.select(10, labeled_mask=np.zeros(18, bool), embeddings=x, seed=4)
    assert out[:3].tolist() == [0, 9, 16] and len(set(out.tolist())) == 10


def test_probcover_purity_rule_matches_brute_force():
    x, y = _blobs([40, 25, 15], seed=3, spread=20.0)  # overlapping enough that purity bites
    n = len(x)
    d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    pseudo = y  # any labelling: the rule is about the labels it is given
    brute = np.where(pseudo[:, None] != pseudo[None, :], d, np.inf).min(axis=1)
    got, _ = impure_distance(x, pseudo, normalize=False, k=4, quantile_rank=n - math.ceil(0.95 * n))
    delta = purity_delta(got, 0.95)
    assert delta == pytest.approx(purity_delta(brute, 0.95), rel=1e-5)
    pure = (brute >= delta).mean()  # open balls of radius delta are pure for >= 95% of the items...
    assert pure >= 0.95
    assert (brute >= delta * (1 + 1e-4)).mean() < 0.95  # ...and any larger delta breaks that


def test_probcover_with_purity_covers_separated_clusters_in_one_pick_each():
    x, y = _blobs([30, 20, 10], seed=2)
    s = strategies.get("probcover", num_classes=3, normalize=False)
    out = s.select(3, labeled_mask=np.zeros(len(x), bool), embeddings=x, seed=0)
    assert sorted(y[out].tolist()) == [0, 1, 2] and s.last["covered"] == len(x)


@pytest.mark.parametrize("seed", range(10))
def test_kmeans_centroid_picks_the_item_nearest_each_cluster_centre(seed):
    x, y = _blobs([30, 20, 10], seed=seed, dim=3)
    out = strategies.get("kmeans_centroid").select(3, labeled_mask=np.zeros(len(x), bool), embeddings=x, seed=seed)
    assert y[out].tolist() == [0, 1, 2]  # largest cluster first
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    for c, pick in zip(range(3), out):
        members = np.flatnonzero(y == c)
        centre = u[members].mean(axis=0)
        assert pick == members[np.argmin(((u[members] - centre) ** 2).sum(1))]


def _halves(n_fragile, n_safe, seed=0):
    """Features of 400 dims; the proxy compares the sums of the two halves. A fragile item's halves hold 1.0 and
    1.01 (dropout flips its prediction about half the time); a safe item's second half is 0 (never flips: that needs
    all 200 first-half entries dropped, p = 0.75^200)."""
    rng = np.random.default_rng(seed)
    fragile = np.concatenate([np.ones((n_fragile, 200)), np.full((n_fragile, 200), 1.01)], axis=1)
    safe = np.concatenate([rng.uniform(0.5, 2.0, (n_safe, 1)) * np.ones((n_safe, 200)), np.zeros((n_safe, 200))],
                          axis=1)
    x = np.concatenate([fragile, safe]).astype(np.float32)

    def proxy(h):
        z = np.stack([h[:, :200].sum(1), h[:, 200:].sum(1)], axis=1) / 100.0
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)
    return x, proxy


@pytest.mark.parametrize("seed", range(10))
def test_dropquery_picks_only_items_whose_prediction_flips(seed):
    x, proxy = _halves(60, 140, seed)
    s = strategies.get("dropquery")
    out = s.select(5, labeled_mask=np.zeros(200, bool), embeddings=x, proxy=proxy, seed=seed)
    assert (out < 60).all()
    # each fragile item is a candidate with p = P(>= 2 of 3 flips) ~ 0.5: 60 of them give 30 +- 4; measured 24-38
    # over seeds 0-19
    assert 15 <= s.last["candidates"] <= 45


def test_dropquery_fallback_when_candidates_are_fewer_than_the_budget():
    x, proxy = _halves(3, 57)
    s = strategies.get("dropquery")
    out = s.select(10, labeled_mask=np.zeros(60, bool), embeddings=x, proxy=proxy, seed=0)
    assert s.last["candidates"] <= 3
    assert sorted(out[:3].tolist()) == [0, 1, 2]  # flips first, and fragile items are the least confident
    top = proxy(x).max(1)
    assert out[3:].tolist() == (3 + np.argsort(top[3:], kind="stable")[:7]).tolist()


def test_dropquery_proxy_errors():
    x, proxy = _halves(3, 17)
    s = strategies.get("dropquery")
    with pytest.raises(ValueError, match="requires proxy"):
        s.select(2, labeled_mask=np.zeros(20, bool), embeddings=x)
    with pytest.raises(ValueError, match="callable"):
        s.select(2, labeled_mask=np.zeros(20, bool), embeddings=x, proxy=np.ones((20, 2)))
    with pytest.raises(ValueError, match="proxy must map"):
        s.select(2, labeled_mask=np.zeros(20, bool), embeddings=x, proxy=lambda h: h[:, 0])


def _skewed_probs(n=600, c=6, seed=0):
    """Softmax outputs whose argmax is heavily skewed: class 0 predicted ~6x more often than class 5."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, c)) + np.linspace(1.5, 0, c)
    e = np.exp(2 * z)
    return (e / e.sum(1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("name", ["margin", "confidence", "entropy"])
@pytest.mark.parametrize("seed", range(3))
def test_balanced_never_lets_a_predicted_class_fall_more_than_one_pick_behind(name, seed):
    p = _skewed_probs(seed=seed)
    mask = np.zeros(len(p), bool)
    mask[::7] = True
    pred = p.argmax(1)
    left = np.bincount(pred[~mask], minlength=p.shape[1])
    out = strategies.get(name, balanced=True).select(300, labeled_mask=mask, probs=p, seed=0)
    assert len(set(out.tolist())) == 300 and not mask[out].any()
    counts = np.zeros(p.shape[1], int)
    for i in out:
        counts[pred[i]] += 1
        open_ = counts < left  # classes that still have unlabeled items
        if open_.any():
            assert counts.max() - counts[open_].min() <= 1
    plain = strategies.get(name).select(300, labeled_mask=mask, probs=p, seed=0)
    assert np.ptp(np.bincount(pred[plain], minlength=p.shape[1])) > 1  # unbalanced without the option
    # within each class the order is the plain strategy's ranking
    ranked = strategies.get(name).select(int((~mask).sum()), labeled_mask=mask, probs=p, seed=0)
    for c in range(p.shape[1]):
        mine = [i for i in out if pred[i] == c]
        assert mine == [i for i in ranked if pred[i] == c][:len(mine)]


def test_balanced_is_refused_where_there_is_no_score():
    with pytest.raises(ValueError, match="bad option"):
        strategies.get("coreset", balanced=True)


def test_run_settings_reach_the_strategies_that_take_them():
    from raal.config import ConfigError, load_config

    assert strategies.for_run("probcover", num_classes=7, balanced=True).num_classes == 7
    assert strategies.for_run("margin", num_classes=7, balanced=True).balanced
    assert strategies.for_run("coreset", num_classes=7, balanced=True) is strategies.get("coreset")
    assert strategies.accepting("balanced") == ["confidence", "entropy", "margin"]
    assert load_config(overrides=["al.strategy=entropy", "al.balanced=true"]).al.balanced
    with pytest.raises(ConfigError, match="al.balanced.*confidence, entropy, margin"):
        load_config(overrides=["al.strategy=typiclust", "al.balanced=true"])


def test_range_search_is_exact_across_chunks():
    from raal.index import range_search

    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 8)).astype(np.float32)
    q = np.sort(rng.choice(300, 40, replace=False))
    d2 = ((x[q][:, None, :] - x[None, :, :]) ** 2).sum(-1)
    r2 = float(np.quantile(d2, 0.05))
    for chunk in (4 * 8 * 37, 1 << 20):  # 37-row chunks of both sides, then one chunk
        lims, ids = range_search(x, x, r2, query_rows=q, chunk_bytes=chunk)
        for i in range(len(q)):
            want = np.flatnonzero(d2[i] < r2 * (1 - 1e-5))
            got = ids[lims[i]:lims[i + 1]]
            assert set(want) <= set(got) <= set(np.flatnonzero(d2[i] < r2 * (1 + 1e-5)))
            assert (np.diff(got) > 0).all()  # ascending, no repeats


def _reference_cover(x, delta, budget):
    """The reference code's greedy, densely: rows L2-normalised, edges x -> y iff ||x - y|| < delta, each pick the
    item with the most edges into uncovered items, whose targets are then covered."""
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    adj = np.sqrt(np.maximum(((u[:, None, :] - u[None, :, :]) ** 2).sum(-1), 0)) < delta
    covered, picks = np.zeros(len(x), bool), []
    for _ in range(budget):
        j = int(np.argmax((adj & ~covered[None, :]).sum(1)))
        picks.append(j)
        covered |= adj[j]
    return picks, adj


@pytest.mark.parametrize("seed", range(3))
def test_probcover_matches_the_reference_greedy_on_normalised_rows_whatever_their_scale(seed):
    """Three overlapping directions, each row scaled by a random factor in [0.5, 20]: ProbCover's default must work
    on directions only (the reference normalises its features; without it δ would measure the scales), and its
    purity-rule graph (k-NN lists, range search past 32 neighbours) must give the reference greedy's picks."""
    rng = np.random.default_rng(seed)
    dirs = rng.standard_normal((3, 6))
    x = np.concatenate([d + 0.35 * rng.standard_normal((n, 6)) for d, n in zip(dirs, (150, 100, 60))])
    x = x.astype(np.float32)
    scaled = (x * rng.uniform(0.5, 20, (len(x), 1))).astype(np.float32)
    s = strategies.get("probcover", num_classes=3)
    out = s.select(12, labeled_mask=np.zeros(len(x), bool), embeddings=scaled, seed=seed)
    picks, adj = _reference_cover(x, s.last["delta"], 12)
    assert adj.sum(1).max() > 32  # some balls outgrow the 32-NN lists: the range-search branch is used
    assert out.tolist() == picks
    assert s.select(12, labeled_mask=np.zeros(len(x), bool), embeddings=x, seed=seed).tolist() == picks


@pytest.mark.parametrize("seed", range(3))
def test_probcover_approximate_index_probing_every_cell_gives_the_reference_picks(seed):
    """Above `exact_max_n` the k-NN lists, purity search and large balls come from the IVF index; probing all its
    cells leaves only the 8-bit codes' ranking between it and exact, and the exact re-ranking undoes that here
    (up to float32 rounding at the ball's edge)."""
    rng = np.random.default_rng(seed)
    dirs = rng.standard_normal((3, 6))
    x = np.concatenate([d + 0.35 * rng.standard_normal((n, 6)) for d, n in zip(dirs, (150, 100, 60))])
    x = (x * rng.uniform(0.5, 20, (len(x), 1))).astype(np.float32)
    exact = strategies.get("probcover", num_classes=3)
    want = exact.select(12, labeled_mask=np.zeros(len(x), bool), embeddings=x, seed=seed)
    s = strategies.get("probcover", num_classes=3, exact_max_n=0, nlist=8, nprobe=8)
    out = s.select(12, labeled_mask=np.zeros(len(x), bool), embeddings=x, seed=seed)
    assert s.last["approx"] == {"nlist": 8, "nprobe": 8} and exact.last["approx"] is None
    assert s.last["delta"] == pytest.approx(exact.last["delta"], rel=1e-5)
    # float32 rounding differs between faiss's range search and the re-ranking: a pair at distance ~δ may flip
    assert abs(s.last["edges"] - exact.last["edges"]) <= 1e-3 * exact.last["edges"]
    assert out.tolist() == want.tolist()


def test_probcover_approximate_index_few_cells_probed_is_deterministic_and_valid():
    x, _ = _blobs([400, 300, 200], seed=4, dim=8)
    mask = np.zeros(len(x), bool)
    mask[::97] = True
    runs = [strategies.get("probcover", num_classes=3, exact_max_n=100, nprobe=2).select(
        40, labeled_mask=mask, embeddings=x, seed=1) for _ in range(2)]
    assert runs[0].tolist() == runs[1].tolist()
    assert len(np.unique(runs[0])) == 40 and not mask[runs[0]].any()


def test_kmeans_centroid_two_level_path(monkeypatch):
    """With the thresholds forced low, k-means runs in two levels; the picks stay distinct, unlabeled, one per
    cluster of the hierarchical assignment (its nearest member), and deterministic."""
    import raal.index._kmeans as ik

    monkeypatch.setattr(ik, "TWO_LEVEL_MIN_K", 1)
    monkeypatch.setattr(ik, "TWO_LEVEL_WORK", 0)
    x, _ = _blobs([120, 90, 60, 30], seed=3, dim=4)
    mask = np.zeros(len(x), bool)
    mask[:7] = True
    s = strategies.get("kmeans_centroid")
    out = s.select(25, labeled_mask=mask, embeddings=x, seed=2)
    assert len(np.unique(out)) == 25 and not mask[out].any()
    assert out.tolist() == s.select(25, labeled_mask=mask, embeddings=x, seed=2).tolist()
    unl = np.flatnonzero(~mask)
    cent, lab, d = ik.two_level_kmeans(x, 25, rows=unl, normalize=True, seed=2)
    for c in range(25):
        members = unl[lab == c]
        if len(members):
            assert members[np.argmin(d[lab == c])] in out
