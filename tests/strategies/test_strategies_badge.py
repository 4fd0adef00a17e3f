"""BADGE (docs/algorithms.md §6): T-B1–T-B4, and that the lazy sampler draws exactly from D^2 / sum D^2."""
from __future__ import annotations

import numpy as np
import pytest

from raal import strategies
from raal.strategies.badge import Badge, badge_select, grad_factors, grad_sq_dist

pytestmark = pytest.mark.timeout(60)


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _explicit(p, h):
    """The C*d gradient embeddings themselves, (e_yhat - p) outer h, in float64."""
    p = p.astype(np.float64)
    a = -p
    a[np.arange(len(p)), p.argmax(axis=1)] += 1
    return (a[:, :, None] * h.astype(np.float64)[:, None, :]).reshape(len(p), -1)


def _pool(n, c, d, seed):
    rng = np.random.default_rng(seed)
    return _softmax(rng.standard_normal((n, c)) * 2).astype(np.float32), rng.standard_normal((n, d)).astype(np.float32)


def _d2(g, centres):
    return ((g[:, None, :] - g[centres][None, :, :]) ** 2).sum(-1).min(axis=1)


def test_T_B3_factorised_distance_equals_outer_product_distance():
    p, h = _pool(40, 7, 5, 0)
    a, hh, g = grad_factors(p, h)
    fact = grad_sq_dist(a, hh, g, a[:9], hh[:9], g[:9])
    emb = _explicit(p, h)
    full = ((emb[:, None, :] - emb[None, :9, :]) ** 2).sum(-1)
    np.testing.assert_allclose(fact, full, rtol=0, atol=1e-8)
    np.testing.assert_allclose(g, (emb ** 2).sum(1), rtol=1e-12)


def test_T_B1_first_pick_is_the_largest_gradient_norm():
    for seed in range(5):
        p, h = _pool(60, 4, 6, seed)
        norms = np.linalg.norm(_explicit(p, h), axis=1)
        for s in range(3):
            out = strategies.get("badge").select(3, labeled_mask=np.zeros(60, dtype=bool), probs=p, embeddings=h,
                                                 seed=s)
            assert out[0] == int(np.argmax(norms))


def test_T_B2_an_item_identical_to_a_chosen_centre_has_probability_zero():
    p, h = _pool(30, 5, 4, 1)
    first = int(np.argmax((_explicit(p, h) ** 2).sum(1)))
    twin = 29 if first != 29 else 28
    p[twin], h[twin] = p[first], h[first]  # exact twin of the first centre (ties go to the lower index)
    a, hh, g = grad_factors(p, h)
    assert grad_sq_dist(a[[twin]], hh[[twin]], g[[twin]], a[[first]], hh[[first]], g[[first]])[0, 0] == 0.0
    for seed in range(150):
        out = badge_select(p, h, np.arange(30), 25, seed)
        assert out[0] == first
        assert twin not in out  # 28 other items remain, so 25 picks never need the twin


def test_T_B4_three_points_two_coincide():
    h = np.array([[3.0, 0.0], [3.0, 0.0], [1.0, 1.0]], dtype=np.float32)
    p = np.array([[0.4, 0.6], [0.4, 0.6], [0.3, 0.7]], dtype=np.float32)  # the twins have the largest gradient
    for seed in range(200):
        out = strategies.get("badge").select(2, labeled_mask=np.zeros(3, dtype=bool), probs=p, embeddings=h, seed=seed)
        assert out.tolist() == [0, 2]


def test_all_distances_zero_falls_back_to_uniform():
    p = np.tile(np.array([[0.2, 0.8]], np.float32), (10, 1))
    h = np.ones((10, 3), np.float32)
    seen = set()
    for seed in range(40):
        out = badge_select(p, h, np.arange(10), 4, seed)
        assert out[0] == 0 and len(set(out.tolist())) == 4
        seen.update(out[1:].tolist())
    assert seen == set(range(1, 10))


@pytest.mark.parametrize("resync", [False, True])
def test_draws_follow_d_squared_exactly(resync, monkeypatch):
    """Second and third picks against the exact k-means++ probabilities (explicit embeddings, float64).

    With resync, every rejection triggers the full re-sync pass, so both update paths are checked."""
    import raal.strategies.badge as badge

    if resync:
        monkeypatch.setattr(badge, "SYNC_MIN_ATTEMPTS", 1)
    else:  # no cost-based passes either: every stale proposal goes through the single-item path
        monkeypatch.setattr(badge, "GEMV_PENALTY", 0)
    min_accept = 0.999 if resync else 0.25
    p, h = _pool(12, 3, 4, 2)
    g = _explicit(p, h)
    first = int(np.argmax((g ** 2).sum(1)))
    runs = 3000
    second = np.zeros(12)
    third_given = {}
    total = {"rejections": 0, "full_passes": 0}
    for seed in range(runs):
        st = {}
        out = badge_select(p, h, np.arange(12), 3, seed, min_accept=min_accept, stats=st)
        total["rejections"] += st["rejections"]
        total["full_passes"] += st["full_passes"] - 1
        assert out[0] == first
        second[out[1]] += 1
        third_given.setdefault(int(out[1]), np.zeros(12))[out[2]] += 1
    assert total["rejections"] > 100  # stale proposals were really rejected...
    assert (total["full_passes"] > 100) == resync  # ...and re-synced in full only when asked
    w = _d2(g, [first])
    expect = w / w.sum()
    # each frequency within 4.5 binomial standard deviations of its probability
    sd = np.sqrt(expect * (1 - expect) / runs)
    assert (np.abs(second / runs - expect) <= 4.5 * sd + 1e-12).all()
    j = max(third_given, key=lambda k: third_given[k].sum())
    cnt = third_given[j]
    w3 = _d2(g, [first, j])
    e3 = w3 / w3.sum()
    sd3 = np.sqrt(e3 * (1 - e3) / cnt.sum())
    assert (np.abs(cnt / cnt.sum() - e3) <= 4.5 * sd3 + 1e-12).all()


def test_ignores_labeled_items_and_respects_candidates():
    p, h = _pool(50, 4, 3, 3)
    mask = np.zeros(50, dtype=bool)
    norms = (_explicit(p, h) ** 2).sum(1)
    mask[int(np.argmax(norms))] = True  # the overall largest norm is labeled: the first pick is the runner-up
    out = Badge().select(5, labeled_mask=mask, probs=p, embeddings=h, seed=0)
    norms[mask] = -1
    assert out[0] == int(np.argmax(norms)) and not mask[out].any()


def test_larger_pool_lazy_path_runs_to_completion():
    """A clustered pool where many proposals are stale: all picks distinct, and deterministic per seed."""
    rng = np.random.default_rng(4)
    centres = rng.standard_normal((6, 10)) * 4
    h = (centres[rng.integers(0, 6, 3000)] + rng.standard_normal((3000, 10)) * 0.3).astype(np.float32)
    p = _softmax(rng.standard_normal((3000, 8))).astype(np.float32)
    a = badge_select(p, h, np.arange(3000), 400, 9)
    b = badge_select(p, h, np.arange(3000), 400, 9)
    np.testing.assert_array_equal(a, b)
    assert len(set(a.tolist())) == 400


def test_bad_option():
    with pytest.raises(ValueError, match="min_accept"):
        strategies.get("badge", min_accept=0)
