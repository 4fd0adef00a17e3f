"""The strategy contract, run for every registered strategy, plus the sanity checks of docs/algorithms.md §5–§9."""
from __future__ import annotations

import numpy as np
import pytest

from raal import strategies
from raal.errors import EmptyPoolError, PoolError, PoolExhaustedError

pytestmark = pytest.mark.timeout(120)

N, C, D, BUDGET = 90, 5, 8, 7


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def pool():
    rng = np.random.default_rng(0)
    probs = _softmax(rng.standard_normal((N, C)) * 2).astype(np.float32)
    emb = rng.standard_normal((N, D)).astype(np.float32)
    mask = np.zeros(N, dtype=bool)
    mask[rng.choice(N, 15, replace=False)] = True
    return probs, emb, mask


def _head(emb_dim=D, classes=C):
    """A real linear softmax head over the embeddings: what a pipeline passes as the proxy."""
    w = np.random.default_rng(1).standard_normal((emb_dim, classes)).astype(np.float32)
    return lambda h: _softmax(np.asarray(h, np.float32) @ w)


def _inputs(strategy, probs, emb):
    """Only what the strategy declares, as a pipeline passes it."""
    given = {"probs": probs, "embeddings": emb, "proxy": _head()}
    return {k: given[k] for k in strategy.requires}


def _arrays(strategy):
    """The array inputs a strategy requires (the proxy is a callable)."""
    return [w for w in strategy.requires if w != "proxy"]


def test_registry():
    names = strategies.names()
    assert names == sorted(names)
    assert set(names) == {"random", "margin", "confidence", "entropy", "coreset", "badge", "activeft",
                          "activeft_al", "featdist", "kmeans_centroid", "typiclust", "probcover", "dropquery",
                          "cluster_margin"}
    assert strategies.get("badge").requires == frozenset({"probs", "embeddings"})
    assert strategies.get("random").requires == frozenset()
    for n in names:
        s = strategies.get(n)
        assert s.name == n and isinstance(s.requires, frozenset) and s.requires <= {"probs", "embeddings", "proxy"}
    with pytest.raises(ValueError, match="known: activeft, activeft_al, badge"):
        strategies.get("kmeans")
    assert strategies.get("activeft", iterations=5).cfg.iterations == 5
    with pytest.raises(ValueError, match="bad option"):
        strategies.get("margin", iterations=5)


@pytest.mark.parametrize("name", strategies.names())
class TestContract:
    """Every strategy: exactly `budget` distinct unlabeled int64 indices, deterministic per seed, same errors."""

    def test_selects_budget_distinct_unlabeled(self, name, pool):
        probs, emb, mask = pool
        s = strategies.get(name)
        out = s.select(BUDGET, labeled_mask=mask, seed=3, **_inputs(s, probs, emb))
        assert isinstance(out, np.ndarray) and out.dtype == np.int64 and out.shape == (BUDGET,)
        assert len(np.unique(out)) == BUDGET
        assert not mask[out].any()
        assert ((0 <= out) & (out < N)).all()

    def test_deterministic_for_a_seed(self, name, pool):
        probs, emb, mask = pool
        s = strategies.get(name)
        a = s.select(BUDGET, labeled_mask=mask, seed=11, **_inputs(s, probs, emb))
        b = s.select(BUDGET, labeled_mask=mask, seed=11, **_inputs(s, probs, emb))
        np.testing.assert_array_equal(a, b)

    def test_whole_unlabeled_pool_and_nothing_labeled(self, name, pool):
        probs, emb, mask = pool
        s = strategies.get(name)
        small = np.ones(N, dtype=bool)
        small[:12] = False  # 12 unlabeled items, budget 12: every one of them
        out = s.select(12, labeled_mask=small, seed=0, **_inputs(s, probs, emb))
        np.testing.assert_array_equal(np.sort(out), np.arange(12))
        out = s.select(BUDGET, labeled_mask=np.zeros(N, dtype=bool), seed=0, **_inputs(s, probs, emb))
        assert len(np.unique(out)) == BUDGET

    def test_accepts_read_only_memmaps_and_float64_without_touching_them(self, name, pool, tmp_path):
        probs, emb, mask = pool
        s = strategies.get(name)
        np.save(tmp_path / "p.npy", probs.astype(np.float64))
        np.save(tmp_path / "e.npy", emb)
        p_mm, e_mm = np.load(tmp_path / "p.npy", mmap_mode="r"), np.load(tmp_path / "e.npy", mmap_mode="r")
        out = s.select(BUDGET, labeled_mask=mask, seed=1, **_inputs(s, p_mm, e_mm))
        assert len(np.unique(out)) == BUDGET and not mask[out].any()
        np.testing.assert_array_equal(np.asarray(e_mm), emb)

    @pytest.mark.parametrize("budget", [0, -3, BUDGET * 100, 2.0, True, None])
    def test_bad_budget(self, name, pool, budget):
        probs, emb, mask = pool
        s = strategies.get(name)
        with pytest.raises(ValueError, match="budget"):
            s.select(budget, labeled_mask=mask, **_inputs(s, probs, emb))

    def test_bad_labeled_mask(self, name, pool):
        probs, emb, mask = pool
        s = strategies.get(name)
        kw = _inputs(s, probs, emb)
        for bad, what in [(mask.astype(int), "dtype bool"), (mask.tolist(), "numpy bool"), (mask[None, :], "1-D")]:
            with pytest.raises(ValueError, match=what):
                s.select(BUDGET, labeled_mask=bad, **kw)
        if kw:  # a length that disagrees with the inputs (random has no inputs to disagree with)
            with pytest.raises(ValueError, match="labeled_mask has N = 89"):
                s.select(BUDGET, labeled_mask=mask[:-1], **kw)

    def test_missing_required_input(self, name, pool):
        probs, emb, mask = pool
        s = strategies.get(name)
        for what in s.requires:
            kw = _inputs(s, probs, emb)
            del kw[what]
            with pytest.raises(ValueError, match=f"requires {what}"):
                s.select(BUDGET, labeled_mask=mask, **kw)

    @pytest.mark.parametrize("what", ["probs", "embeddings"])
    def test_wrong_shape_or_dtype(self, name, pool, what):
        probs, emb, mask = pool
        s = strategies.get(name)
        good = {"probs": probs, "embeddings": emb}[what]
        for bad, msg in [(good[:-1], "rows but labeled_mask"), (good[:, 0], "2-D"), (good.astype(np.int32), "floating"),
                         (good.tolist(), "numpy array")]:
            kw = _inputs(s, probs, emb)
            kw[what] = bad  # a given input is checked even when the strategy does not use it
            with pytest.raises(ValueError, match=msg):
                s.select(BUDGET, labeled_mask=mask, **kw)

    @pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
    def test_non_finite_inputs(self, name, pool, bad):
        probs, emb, mask = pool
        s = strategies.get(name)
        for what in _arrays(s):
            kw = {k: v if k == "proxy" else v.copy() for k, v in _inputs(s, probs, emb).items()}
            kw[what][40, 1] = bad
            with pytest.raises(ValueError, match=f"{what} contains NaN or inf \\(first at row 40\\)"):
                s.select(BUDGET, labeled_mask=mask, **kw)

    def test_empty_and_exhausted_pool(self, name, pool):
        probs, emb, mask = pool
        s = strategies.get(name)
        empty = {k: v if k == "proxy" else v[:0] for k, v in _inputs(s, probs, emb).items()}
        with pytest.raises(EmptyPoolError):
            s.select(1, labeled_mask=np.zeros(0, dtype=bool), **empty)
        with pytest.raises(PoolExhaustedError):
            s.select(1, labeled_mask=np.ones(N, dtype=bool), **_inputs(s, probs, emb))
        assert issubclass(EmptyPoolError, PoolError) and issubclass(PoolError, ValueError)

    def test_unknown_keyword_is_an_error(self, name, pool):
        probs, emb, mask = pool
        s = strategies.get(name)
        with pytest.raises(TypeError):
            s.select(BUDGET, labeled_mask=mask, budjet=3, **_inputs(s, probs, emb))


def test_probs_must_be_probabilities(pool):
    probs, emb, mask = pool
    logits = probs * 3
    with pytest.raises(ValueError, match="sum to 1"):
        strategies.get("entropy").select(3, labeled_mask=mask, probs=logits)
    neg = probs.copy()
    neg[5, 0] = -0.1
    neg[5, 1] += 0.1
    with pytest.raises(ValueError, match="negative entry \\(first at row 5\\)"):
        strategies.get("margin").select(3, labeled_mask=mask, probs=neg)
    with pytest.raises(ValueError, match="at least 2 classes"):
        strategies.get("margin").select(3, labeled_mask=mask, probs=np.ones((N, 1), np.float32))


def test_bad_seed(pool):
    with pytest.raises(ValueError, match="seed"):
        strategies.get("random").select(3, labeled_mask=pool[2], seed=-1)
    with pytest.raises(ValueError, match="seed"):
        strategies.get("random").select(3, labeled_mask=pool[2], seed=1.5)


# -- §8 uncertainty -------------------------------------------------------------------------------------------------
def test_T_U1_uncertainty_picks():
    p = np.array([[0.5, 0.5, 0.0], [0.4, 0.3, 0.3], [0.6, 0.39, 0.01]], dtype=np.float32)  # D, E, A
    mask = np.zeros(3, dtype=bool)
    assert strategies.get("margin").select(1, labeled_mask=mask, probs=p).tolist() == [0]
    assert strategies.get("confidence").select(1, labeled_mask=mask, probs=p).tolist() == [1]
    assert strategies.get("entropy").select(1, labeled_mask=mask, probs=p).tolist() == [1]
    from raal.strategies.entropy import entropies

    h = entropies(p)
    assert np.isfinite(h).all()
    np.testing.assert_allclose(h[:2], [np.log(2), 1.0888999753452238], rtol=1e-6)


def test_uncertainty_ties_go_to_the_lower_index_and_order_is_by_score():
    p = np.tile(np.array([[0.5, 0.3, 0.2]], np.float32), (6, 1))
    p[4] = [0.34, 0.33, 0.33]
    mask = np.zeros(6, dtype=bool)
    mask[1] = True
    for name in ("margin", "confidence", "entropy"):
        assert strategies.get(name).select(3, labeled_mask=mask, probs=p).tolist() == [4, 0, 2]


# -- §7 coreset and §9 featdist ------------------------------------------------------------------------------------
def test_T_C1_points_on_a_line():
    x = np.array([[0.0], [1.0], [2.0], [10.0]], dtype=np.float32)
    mask = np.array([True, False, False, False])
    assert strategies.get("coreset").select(2, labeled_mask=mask, embeddings=x).tolist() == [3, 2]


def _radius(x, centres, rows):
    d = ((x[rows][:, None, :] - x[centres][None, :, :]) ** 2).sum(-1)
    return float(d.min(axis=1).max())


@pytest.mark.parametrize("name", ["coreset", "featdist"])
def test_T_C2_T_C3_never_labeled_and_radius_never_grows(name):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((250, 6)).astype(np.float32)
    geo = x / np.linalg.norm(x, axis=1, keepdims=True) if name == "featdist" else x
    for trial in range(3):
        mask = np.zeros(250, dtype=bool)
        mask[rng.choice(250, 1 + 20 * trial, replace=False)] = True
        out = strategies.get(name).select(30, labeled_mask=mask, embeddings=x)
        assert not mask[out].any()
        rows = np.arange(250)
        radii = [_radius(geo, np.concatenate([np.flatnonzero(mask), out[:k]]), rows) for k in range(31)]
        assert all(b <= a + 1e-6 for a, b in zip(radii, radii[1:]))
        # and each pick is the farthest point at its turn (greedy k-center, Euclidean)
        for k in range(30):
            cen = np.concatenate([np.flatnonzero(mask), out[:k]])
            d = ((geo[:, None, :] - geo[cen][None, :, :]) ** 2).sum(-1).min(axis=1)
            d[cen] = -1
            assert d[out[k]] >= d.max() - 1e-5


def test_coreset_project_dim_contract_and_objective():
    """al.coreset_dim (CoreSet's project_dim), on a class-structured pool (2,000 x 256, 20 Gaussian classes, 20
    labeled, fixed seed): greedy on a 32-dimensional random projection picks `budget` distinct unlabeled rows, the
    same ones on every call, and its k-center objective measured in the ORIGINAL space (the largest distance of a
    row to its nearest labeled row or pick) is within 2x exact greedy's: issue #28's bar (here about 1.03x)."""
    from raal.index import kcenter_radius

    rng = np.random.default_rng(0)
    n, d, classes, budget = 2000, 256, 20, 100
    centres = rng.standard_normal((classes, d)).astype(np.float32)
    x = centres[rng.integers(0, classes, n)] + 0.7 * rng.standard_normal((n, d)).astype(np.float32)
    mask = np.zeros(n, dtype=bool)
    mask[rng.choice(n, 20, replace=False)] = True
    lab = np.flatnonzero(mask)
    exact = strategies.get("coreset").select(budget, labeled_mask=mask, embeddings=x)
    fast = strategies.get("coreset", project_dim=32).select(budget, labeled_mask=mask, embeddings=x)
    assert len(fast) == budget and len(set(fast.tolist())) == budget and not mask[fast].any()
    assert ((0 <= fast) & (fast < n)).all()
    assert np.array_equal(fast, strategies.get("coreset", project_dim=32).select(budget, labeled_mask=mask,
                                                                               embeddings=x))
    assert not np.array_equal(fast, exact)  # it did run on other distances
    ratio = kcenter_radius(x, np.r_[lab, fast]) / kcenter_radius(x, np.r_[lab, exact])
    assert ratio <= 2.0, ratio


def test_coreset_first_pick_without_labels_is_farthest_from_mean():
    x = np.array([[0, 0], [1, 0], [0, 1], [5, 5], [-1, -1]], dtype=np.float32)
    out = strategies.get("coreset").select(2, labeled_mask=np.zeros(5, dtype=bool), embeddings=x)
    assert out[0] == 3 and out[1] == 4


def test_featdist_ignores_scale():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((120, 5)).astype(np.float32)
    scaled = x * rng.uniform(0.01, 100, (120, 1)).astype(np.float32)
    mask = np.zeros(120, dtype=bool)
    mask[:3] = True
    a = strategies.get("featdist").select(10, labeled_mask=mask, embeddings=x)
    b = strategies.get("featdist").select(10, labeled_mask=mask, embeddings=scaled)
    np.testing.assert_array_equal(a, b)
