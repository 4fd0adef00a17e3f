"""One test per strategy option (issue #26, after scikit-activeml's `test_init_param_<p>`): each constructor option
of each registered strategy changes what the strategy does as its docstring says, and a bad value is refused at
construction with a message naming it. `test_every_option_has_a_test` reads the options from the constructors, so
an option added without a test here fails CI. No Ray; tiny synthetic pools (the file runs in a few seconds).
"""
from __future__ import annotations

import inspect
from collections.abc import Callable

import numpy as np
import pytest

import raal.strategies.activeft as activeft_mod
import raal.strategies.activeft_al as activeft_al_mod
import raal.strategies.badge as badge_mod
import raal.strategies.cluster_margin as cluster_margin_mod
import raal.strategies.dropquery as dropquery_mod
import raal.strategies.kmeans_centroid as kmeans_centroid_mod
import raal.strategies.probcover as probcover_mod
import raal.strategies.typiclust as typiclust_mod
from raal import strategies
from raal.config import ConfigError, load_config
from raal.strategies.activeft import ActiveFT
from raal.strategies.typiclust import typical_sequence

pytestmark = pytest.mark.timeout(120)

N, D, C = 160, 8, 4
COVERED: dict[tuple[str, str], str] = {}  # (strategy, option) -> the test that covers it


def covers(*pairs: tuple[str, str]) -> Callable:
    """Register the (strategy, option) pairs a test checks; the meta-test compares them with the constructors."""
    def mark(fn: Callable) -> Callable:
        for pair in pairs:
            assert pair not in COVERED, f"{pair} is covered twice ({COVERED[pair]}, {fn.__name__})"
            COVERED[pair] = fn.__name__
        return fn
    return mark


def options_of(name: str) -> set[str]:
    """The options strategy `name` accepts: its constructor's named parameters (what `strategies.get` passes on)."""
    params = inspect.signature(type(strategies.get(name)).__init__).parameters.values()
    return {p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _blobs(n=N, d=D, k=4, seed=0, spread=0.6):
    """n points around k well-separated centres (float32)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d)) * 4
    return (centres[rng.integers(0, k, n)] + rng.standard_normal((n, d)) * spread).astype(np.float32)


EMB = _blobs()
W = np.random.default_rng(1).standard_normal((D, C)).astype(np.float32)
PROBS = _softmax(EMB @ W / 4).astype(np.float32)
NONE = np.zeros(N, dtype=bool)
SOME = np.zeros(N, dtype=bool)
SOME[np.random.default_rng(2).choice(N, 12, replace=False)] = True


def _proxy(h):
    return _softmax(np.asarray(h, np.float32) @ W)


def pick(name: str, budget: int = 6, *, mask=SOME, emb=EMB, probs=PROBS, proxy=_proxy, seed=0, **options):
    s = strategies.get(name, **options)
    given = {"probs": probs, "embeddings": emb, "proxy": proxy}
    return s.select(budget, labeled_mask=mask, seed=seed, **{k: given[k] for k in s.requires}), s


def refused(name: str, match: str, **options) -> None:
    with pytest.raises(ValueError, match=match):
        strategies.get(name, **options)


def spy(monkeypatch, module, fn_name: str) -> list[dict]:
    """Record the arguments of each call of `module.fn_name` (the strategy's own reference to it): its keywords,
    and its positional arguments under "args"."""
    calls: list[dict] = []
    real = getattr(module, fn_name)

    def wrapper(*args, **kwargs):
        calls.append(dict(kwargs, args=args))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, fn_name, wrapper)
    return calls


# -- the meta-test ----------------------------------------------------------------------------------------------------
def test_every_option_has_a_test():
    """Every accepted option of every registered strategy has a test here, and no test claims an option that is gone."""
    accepted = {(n, o) for n in strategies.names() for o in options_of(n)}
    assert all(strategies.accepts(n, o) for n, o in accepted)
    missing = sorted(accepted - set(COVERED))
    stale = sorted(set(COVERED) - accepted)
    assert not missing, f"options without a test in {__name__}: {missing}; add one with @covers(...)"
    assert not stale, f"tests claim options the strategies no longer take: {stale}"


@pytest.mark.parametrize("name", strategies.names())
def test_unknown_option_is_refused(name):
    """An option the strategy does not take is an error naming it, never silently dropped."""
    with pytest.raises(ValueError, match=rf"strategy '{name}': bad option in \['no_such_option'\]"):
        strategies.get(name, no_such_option=1)


# -- score strategies -------------------------------------------------------------------------------------------------
@covers(("margin", "balanced"), ("confidence", "balanced"), ("entropy", "balanced"))
@pytest.mark.parametrize("name", ["margin", "confidence", "entropy"])
def test_option_score_balanced(name):
    """balanced=True: round-robin over predicted classes (no class more than one pick behind); False: plain ranking.
    Reached from a config through al.balanced (refused for a strategy without it); not a flag: refused."""
    budget = 40
    plain, _ = pick(name, budget)
    default, _ = pick(name, budget, balanced=False)
    fair, _ = pick(name, budget, balanced=True)
    pred = PROBS.argmax(axis=1)
    free = np.bincount(pred[~SOME], minlength=C)
    counts = np.bincount(pred[fair], minlength=C)
    live = free > counts  # classes that still had unlabeled items after the batch
    assert np.array_equal(plain, default)
    assert set(fair) != set(plain)
    assert np.ptp(counts[live]) <= 1 and all(counts[~live] == free[~live])
    assert np.ptp(np.bincount(pred[plain], minlength=C)) > 1  # the data does make the plain ranking unbalanced
    refused(name, rf"strategy '{name}': balanced='yes' is not allowed; must be true or false", balanced="yes")
    cfg = load_config(overrides=[f"al.strategy={name}", "al.balanced=true"])
    assert strategies.for_run(cfg.al.strategy, balanced=cfg.al.balanced, num_classes=C).balanced
    with pytest.raises(ConfigError, match="al.balanced.*confidence, entropy, margin"):
        load_config(overrides=["al.strategy=coreset", "al.balanced=true"])


# -- k-center ---------------------------------------------------------------------------------------------------------
@covers(("coreset", "block_rows"), ("featdist", "block_rows"))
@pytest.mark.parametrize("name", ["coreset", "featdist"])
def test_option_kcenter_block_rows(name):
    """block_rows only sizes the lazy search's blocks: the picks are exact, so the same for every size."""
    ref, _ = pick(name, 12)
    for rows in (1, 7, 10_000):
        got, s = pick(name, 12, block_rows=rows)
        assert s.block_rows == rows and np.array_equal(got, ref), rows
    refused(name, rf"strategy '{name}': block_rows=0 is not allowed; must be >= 1", block_rows=0)


@covers(("coreset", "project_dim"))
def test_option_coreset_project_dim():
    """project_dim=0 (the default) or >= D: exact greedy, the same picks; 0 < project_dim < D: greedy k-center on
    the embeddings' fixed random projection (kcenter_greedy's picks there), the same picks on every call and in a
    fresh instance. Not an integer >= 0: refused. Reached from a config through al.coreset_dim (tests/config)."""
    from raal.index import kcenter_greedy, random_projection

    ref, _ = pick("coreset", 12)
    for dim in (0, D, D + 5):
        got, s = pick("coreset", 12, project_dim=dim)
        assert s.project_dim == dim and np.array_equal(got, ref), dim
    low, s = pick("coreset", 12, project_dim=4)
    assert np.array_equal(low, s.select(12, labeled_mask=SOME, embeddings=EMB))
    assert np.array_equal(low, pick("coreset", 12, project_dim=4)[0])
    assert np.array_equal(low, kcenter_greedy(random_projection(EMB, 4), 12, labeled_mask=SOME))
    for bad in (-1, 1.5, True, "8"):
        refused("coreset", r"strategy 'coreset': project_dim=.* is not allowed; must be an integer >= 0",
                project_dim=bad)


# -- badge ------------------------------------------------------------------------------------------------------------
@covers(("badge", "min_accept"))
def test_option_badge_min_accept(monkeypatch):
    """The acceptance rate below which the lazy D^2 sampler re-syncs every bound: a higher one, more full passes."""
    calls = spy(monkeypatch, badge_mod, "badge_select")
    monkeypatch.setattr(badge_mod, "SYNC_MIN_ATTEMPTS", 1)  # judge the rate from the first proposal on...
    monkeypatch.setattr(badge_mod, "GEMV_PENALTY", 0)  # ...and leave out the cost rule's passes
    passes = {}
    for rate in (0.01, 0.999):
        out, _ = pick("badge", 30, min_accept=rate)
        assert calls[-1]["min_accept"] == rate and len(set(out)) == 30
        stats: dict = {}
        badge_mod.badge_select(PROBS, EMB, np.flatnonzero(~SOME), 30, 0, min_accept=rate, stats=stats)
        passes[rate] = stats["full_passes"]
    assert passes[0.999] > passes[0.01]
    for bad in (0, 1, -0.5):
        refused("badge", r"min_accept must be in \(0, 1\)", min_accept=bad)


# -- activeft / activeft_al -------------------------------------------------------------------------------------------
def _seeds(mask, budget, seed=0):
    """The random unlabeled items ActiveFT seeds its centroids on (the first draw of its seeded generator)."""
    return np.random.default_rng(seed).choice(np.flatnonzero(~mask), size=budget, replace=False)


def _centroids(monkeypatch, name: str) -> list[np.ndarray]:
    """The optimised centroids of each select() call of `name` (what the options act on; picks are their nearest
    items, which can coincide for different centroids)."""
    module = activeft_mod if name == "activeft" else activeft_al_mod
    out: list[np.ndarray] = []
    real = module.optimise_centroids

    def wrapper(*args, **kwargs):
        theta, losses = real(*args, **kwargs)
        out.append(theta.copy())
        return theta, losses

    monkeypatch.setattr(module, "optimise_centroids", wrapper)
    return out


AFT = [("activeft", NONE), ("activeft_al", SOME)]


@covers(("activeft", "iterations"), ("activeft_al", "iterations"))
@pytest.mark.parametrize("name, mask", AFT)
def test_option_activeft_iterations(monkeypatch, name, mask):
    """Optimiser steps: with 0 the centroids stay on their random seed items, which are then the picks."""
    theta = _centroids(monkeypatch, name)
    still, s = pick(name, 8, mask=mask, iterations=0)
    pick(name, 8, mask=mask, iterations=30)
    assert s.cfg.iterations == 0 and np.array_equal(still, _seeds(mask, 8))
    seeds = EMB[_seeds(mask, 8)] / np.linalg.norm(EMB[_seeds(mask, 8)], axis=1, keepdims=True)
    np.testing.assert_allclose(theta[0], seeds, atol=1e-6)
    assert np.abs(theta[1] - seeds).max() > 1e-2
    refused(name, "ActiveFT needs iterations >= 0", iterations=-1)


@covers(("activeft", "batch"), ("activeft_al", "batch"))
@pytest.mark.parametrize("name, mask", AFT)
def test_option_activeft_batch(monkeypatch, name, mask):
    """Full batch when N <= batch (so any batch >= N gives the same centroids), random minibatches of `batch` below."""
    theta = _centroids(monkeypatch, name)
    for batch in (N, 10 * N, N // 4):
        pick(name, 8, mask=mask, iterations=30, batch=batch)
    assert np.array_equal(theta[0], theta[1]) and np.abs(theta[0] - theta[2]).max() > 1e-4
    refused(name, "ActiveFT needs iterations >= 0 and batch >= 1", batch=0)


@covers(("activeft", "lr"), ("activeft_al", "lr"))
@pytest.mark.parametrize("name, mask", AFT)
def test_option_activeft_lr(monkeypatch, name, mask):
    """Adam's step size: a vanishing one leaves the centroids on their seeds; activeft_al's first round gets it too."""
    theta = _centroids(monkeypatch, name)
    frozen, s = pick(name, 8, mask=mask, iterations=30, lr=1e-12)
    pick(name, 8, mask=mask, iterations=30, lr=1e-1)
    assert np.array_equal(frozen, _seeds(mask, 8)) and np.abs(theta[0] - theta[1]).max() > 1e-2
    if name == "activeft_al":
        assert s.first_round.cfg.lr == 1e-12
    refused(name, "ActiveFT needs lr, tau and balance > 0", lr=0)


@covers(("activeft", "tau"), ("activeft_al", "tau"), ("activeft", "balance"), ("activeft_al", "balance"))
@pytest.mark.parametrize("name, mask", AFT)
@pytest.mark.parametrize("option, value", [("tau", 1.0), ("balance", 20.0)])
def test_option_activeft_loss_terms(monkeypatch, name, mask, option, value):
    """tau (temperature) and balance (lambda) enter the loss: other values, other centroids (the loss itself is
    checked against autograd in test_strategies_activeft.py); activeft_al's first round gets them too."""
    theta = _centroids(monkeypatch, name)
    pick(name, 8, mask=mask, iterations=30, lr=0.05)
    _, s = pick(name, 8, mask=mask, iterations=30, lr=0.05, **{option: value})
    assert getattr(s.cfg, option) == value and np.abs(theta[0] - theta[1]).max() > 1e-3
    if name == "activeft_al":
        assert getattr(s.first_round.cfg, option) == value
    refused(name, "ActiveFT needs lr, tau and balance > 0", **{option: 0})


@covers(("activeft_al", "first_round"))
def test_option_activeft_al_first_round():
    """The strategy used while nothing is labeled (and only then); anything but an ActiveFT is refused."""
    first = ActiveFT(iterations=0)
    with_none, s = pick("activeft_al", 8, mask=NONE, first_round=first)
    assert s.first_round is first and np.array_equal(with_none, _seeds(NONE, 8))
    later, _ = pick("activeft_al", 8, mask=SOME, first_round=first, iterations=0)
    plain, _ = pick("activeft_al", 8, mask=SOME, iterations=0)
    assert np.array_equal(later, plain)
    refused("activeft_al", "strategy 'activeft_al': first_round='x' is not allowed; must be an ActiveFT", first_round="x")


# -- k-means based: kmeans_centroid, typiclust, probcover, dropquery ----------------------------------------------------
@covers(("kmeans_centroid", "niter"), ("typiclust", "niter"), ("probcover", "niter"), ("dropquery", "niter"))
@pytest.mark.parametrize("name, module, fn", [("kmeans_centroid", kmeans_centroid_mod, "kmeans_labels"),
                                              ("typiclust", typiclust_mod, "kmeans"),
                                              ("probcover", probcover_mod, "kmeans"),
                                              ("dropquery", dropquery_mod, "kmeans_labels")])
def test_option_niter(monkeypatch, name, module, fn):
    """k-means' Lloyd steps: passed to the k-means call; 0 (the seeding alone) picks otherwise than 20; < 0 refused."""
    calls = spy(monkeypatch, module, fn)
    emb = _blobs(300, k=12, spread=1.5, seed=3)
    mask = np.zeros(300, dtype=bool)
    opts = {"dropout": 0.5} if name == "dropquery" else {}
    out = {it: pick(name, 8, mask=mask, emb=emb, niter=it, **opts)[0] for it in (0, 20)}
    assert [c["niter"] for c in calls] == [0, 20]
    assert not np.array_equal(out[0], out[20])
    refused(name, rf"strategy '{name}': niter=-1 is not allowed; must be >= 0", niter=-1)


@covers(("kmeans_centroid", "max_points_per_centroid"))
def test_option_kmeans_centroid_max_points_per_centroid(monkeypatch):
    """k-means trains on at most this many rows per centroid: above N/k it changes nothing, far below it does."""
    calls = spy(monkeypatch, kmeans_centroid_mod, "kmeans_labels")
    ref, _ = pick("kmeans_centroid", 8)
    same, _ = pick("kmeans_centroid", 8, max_points_per_centroid=10_000)
    few, _ = pick("kmeans_centroid", 8, max_points_per_centroid=2)
    assert [c["max_points_per_centroid"] for c in calls] == [256, 10_000, 2]
    assert np.array_equal(ref, same) and not np.array_equal(ref, few)
    refused("kmeans_centroid", "max_points_per_centroid=0 is not allowed; must be >= 1", max_points_per_centroid=0)


def _mean_knn_dist(x, members, k):
    d = np.sqrt(((x[members, None] - x[None, members]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    return np.sort(d, axis=1)[:, :k].mean(axis=1)


@covers(("typiclust", "k_nn"))
def test_option_typiclust_k_nn():
    """Typicality = 1 / mean distance to the K = min(k_nn, n // 2) nearest members: one cluster, one pick, brute force."""
    unl = np.flatnonzero(~SOME)
    for k in (1, 3, 20):
        got, s = pick("typiclust", 1, k_nn=k, max_clusters=1)
        assert s.k_nn == k
        assert got[0] == unl[np.argmin(_mean_knn_dist(EMB, unl, min(k, len(unl) // 2)))], k
    assert pick("typiclust", 1, k_nn=1, max_clusters=1)[0][0] != pick("typiclust", 1, k_nn=20, max_clusters=1)[0][0]
    refused("typiclust", "strategy 'typiclust': k_nn=0 is not allowed; must be >= 1", k_nn=0)


@covers(("typiclust", "max_clusters"))
def test_option_typiclust_max_clusters():
    """k = min(|L| + B, max_clusters): with one cluster the picks are that cluster's typicality sequence."""
    got, _ = pick("typiclust", 5, max_clusters=1)
    unl = np.flatnonzero(~SOME)
    assert np.array_equal(got, typical_sequence(EMB, unl, 5, 20, False))
    spread, _ = pick("typiclust", 5)
    assert not np.array_equal(got, spread)
    refused("typiclust", "max_clusters=0 is not allowed; must be >= 1", max_clusters=0)


@covers(("typiclust", "min_cluster_size"))
def test_option_typiclust_min_cluster_size():
    """Clusters of at most min_cluster_size items are skipped (while a bigger one is left): three far triplets get
    no pick at 5, one each at 2."""
    rng = np.random.default_rng(4)
    big = _blobs(150, k=3, spread=0.3, seed=5)
    far = np.repeat(rng.standard_normal((3, D)) * 40, 3, axis=0) + rng.standard_normal((9, D)) * 0.01
    x = np.vstack([big, far]).astype(np.float32)
    mask = np.zeros(len(x), dtype=bool)
    triplets = set(range(150, 159))
    skipped, _ = pick("typiclust", 6, mask=mask, emb=x, min_cluster_size=5)
    kept, _ = pick("typiclust", 6, mask=mask, emb=x, min_cluster_size=2)
    assert not triplets & set(skipped.tolist())
    assert len(triplets & set(kept.tolist())) == 3
    refused("typiclust", "min_cluster_size=-1 is not allowed; must be >= 0", min_cluster_size=-1)


@covers(("typiclust", "normalize"), ("probcover", "normalize"))
@pytest.mark.parametrize("name", ["typiclust", "probcover"])
def test_option_normalize(name):
    """normalize=True works on L2-normalised rows: rescaling each row leaves the picks unchanged; False sees it."""
    scale = np.random.default_rng(6).uniform(0.2, 5.0, (N, 1)).astype(np.float32)
    opts = {"num_classes": 4} if name == "probcover" else {}
    on, _ = pick(name, 8, normalize=True, **opts)
    on_scaled, _ = pick(name, 8, emb=EMB * scale, normalize=True, **opts)
    off, _ = pick(name, 8, normalize=False, **opts)
    off_scaled, _ = pick(name, 8, emb=EMB * scale, normalize=False, **opts)
    assert np.array_equal(on, on_scaled) and not np.array_equal(off, off_scaled)
    refused(name, rf"strategy '{name}': normalize='no' is not allowed; must be true or false", normalize="no")


@covers(("probcover", "num_classes"))
def test_option_probcover_num_classes(monkeypatch):
    """k of the pseudo-label k-means; a single class makes every ball pure (delta past the largest k-NN distance);
    a run passes the dataset's class count (strategies.for_run)."""
    calls = spy(monkeypatch, probcover_mod, "kmeans")
    _, four = pick("probcover", 6, num_classes=4)
    _, one = pick("probcover", 6, num_classes=1)
    assert [c["args"][1] for c in calls] == [4, 1] and one.last["delta"] > four.last["delta"]
    assert one.last["covered"] == N  # one ball covers the pool
    assert strategies.for_run("probcover", num_classes=7, balanced=True).num_classes == 7
    refused("probcover", "strategy 'probcover': num_classes=0 is not allowed; must be >= 1", num_classes=0)


@covers(("probcover", "alpha"))
def test_option_probcover_alpha():
    """The purity rule's fraction: delta is the largest radius pure for alpha of the items, so it falls as alpha
    rises."""
    deltas = [pick("probcover", 6, num_classes=4, alpha=a)[1].last["delta"] for a in (0.5, 0.9, 0.99)]
    assert deltas[0] >= deltas[1] >= deltas[2] and deltas[0] > deltas[2]
    for bad in (0, 1.5):
        refused("probcover", r"alpha must be in \(0, 1\]", alpha=bad)


@covers(("probcover", "delta"))
def test_option_probcover_delta(monkeypatch):
    """A given delta replaces the purity rule (no pseudo-label k-means); it must be > 0 (a negative one used to act
    as its absolute value)."""
    calls = spy(monkeypatch, probcover_mod, "kmeans")
    _, s = pick("probcover", 6, delta=1.5, normalize=False)
    assert s.last["delta"] == 1.5 and not calls
    small, _ = pick("probcover", 6, delta=0.05, normalize=False)
    _, huge = pick("probcover", 1, delta=1e6, normalize=False)
    assert huge.last["covered"] == N and not np.array_equal(small, pick("probcover", 6, delta=1.5,
                                                                            normalize=False)[0])
    for bad in (0.0, -1.5):
        refused("probcover", rf"strategy 'probcover': delta={bad!r} is not allowed; must be > 0", delta=bad)


@covers(("probcover", "exact_max_n"))
def test_option_probcover_exact_max_n():
    """Up to exact_max_n items the search is exact; above it the approximate IVF index is used."""
    _, exact = pick("probcover", 6, num_classes=4, exact_max_n=N)
    _, approx = pick("probcover", 6, num_classes=4, exact_max_n=N - 1)
    assert exact.last["approx"] is None and approx.last["approx"] is not None
    refused("probcover", "exact_max_n=-1 is not allowed; must be >= 0", exact_max_n=-1)


@covers(("probcover", "nprobe"), ("probcover", "nlist"))
def test_option_probcover_index_cells():
    """The approximate index's cells (nlist; None = 4 sqrt(N), at most N / 16) and cells probed per query (nprobe,
    at most nlist); only used above exact_max_n."""
    _, auto = pick("probcover", 6, num_classes=4, exact_max_n=0)
    _, set_ = pick("probcover", 6, num_classes=4, exact_max_n=0, nlist=5, nprobe=2)
    _, capped = pick("probcover", 6, num_classes=4, exact_max_n=0, nlist=4, nprobe=99)
    _, unused = pick("probcover", 6, num_classes=4, nlist=5, nprobe=2)
    assert auto.last["approx"] == {"nlist": N // 16, "nprobe": N // 16}
    assert set_.last["approx"] == {"nlist": 5, "nprobe": 2} and capped.last["approx"] == {"nlist": 4, "nprobe": 4}
    assert unused.last["approx"] is None
    refused("probcover", "nprobe=0 is not allowed; must be >= 1", nprobe=0)
    refused("probcover", "nlist=0 is not allowed; must be >= 1", nlist=0)


@covers(("dropquery", "iterations"))
def test_option_dropquery_iterations():
    """M dropout passes after the clean one: the proxy is called M + 1 times per chunk (one chunk here)."""
    for m in (1, 4):
        seen: list[int] = []
        pick("dropquery", 6, proxy=lambda h, seen=seen: seen.append(len(h)) or _proxy(h), iterations=m)
        assert len(seen) == m + 1, m
    refused("dropquery", "dropquery needs iterations >= 1", iterations=0)


@covers(("dropquery", "dropout"))
def test_option_dropquery_dropout():
    """The dropout rate: a vanishing one never flips a prediction (no candidates, the fallback order), a high one
    flips many."""
    _, calm = pick("dropquery", 6, dropout=1e-9)
    _, wild = pick("dropquery", 6, dropout=0.9)
    assert calm.last["candidates"] == 0 and wild.last["candidates"] > 6
    for bad in (0, 1):
        refused("dropquery", "0 < dropout < 1", dropout=bad)


# -- cluster_margin ---------------------------------------------------------------------------------------------------
@covers(("cluster_margin", "margin_factor"))
def test_option_cluster_margin_margin_factor():
    """Candidates = the ceil(margin_factor x budget) smallest margins: at 1 the batch is margin's batch (in round-robin
    order), larger factors reach past it for diversity."""
    plain, _ = pick("margin", 12, probs=_proxy(EMB))
    one, s = pick("cluster_margin", 12, margin_factor=1)
    wide, w = pick("cluster_margin", 12, margin_factor=8)
    assert s.margin_factor == 1.0 and set(one) == set(plain) and s.last["candidates"] == 12
    assert set(wide) != set(plain) and w.last["candidates"] == 96
    for bad in (0.5, True, float("inf"), "10"):
        refused("cluster_margin", rf"strategy 'cluster_margin': margin_factor={bad!r} is not allowed; must be a number",
                margin_factor=bad)


@covers(("cluster_margin", "clusters"))
def test_option_cluster_margin_clusters():
    """The HAC cut: one cluster is plain margin order; four spread the picks (None: ceil(sqrt N))."""
    plain, _ = pick("margin", 12, probs=_proxy(EMB))
    one, _ = pick("cluster_margin", 12, clusters=1)
    four, s = pick("cluster_margin", 12, clusters=4)
    assert np.array_equal(one, plain) and not np.array_equal(four, plain)
    assert len(np.unique(s.pool_clusters(EMB))) == 4 and strategies.get("cluster_margin").sizes(N)[0] == 13
    for bad in (0, 2.5, True):
        refused("cluster_margin", rf"clusters={bad!r} is not allowed; must be None \(auto\) or an integer >= 1",
                clusters=bad)


@covers(("cluster_margin", "kmeans_k"))
def test_option_cluster_margin_kmeans_k(monkeypatch):
    """The k-means cells HAC merges (None: min(N, max(clusters, min(8 clusters, 4096)))); a cut into more clusters
    than cells keeps the cells."""
    calls = spy(monkeypatch, cluster_margin_mod, "kmeans_labels")
    pick("cluster_margin", 6)
    _, s = pick("cluster_margin", 6, kmeans_k=10, clusters=4)
    _, few = pick("cluster_margin", 6, kmeans_k=3, clusters=4)
    assert [c["args"][1] for c in calls] == [104, 10, 3]
    assert len(np.unique(s.pool_clusters(EMB))) == 4 and len(np.unique(few.pool_clusters(EMB))) == 3
    refused("cluster_margin", "kmeans_k=0 is not allowed", kmeans_k=0)


@covers(("cluster_margin", "within"))
def test_option_cluster_margin_within():
    """Within a cluster: ascending margin (default), or uniformly at random for a seed (the paper); the clusters'
    shares are the same either way."""
    ranked, s = pick("cluster_margin", 12, clusters=4)
    rand, _ = pick("cluster_margin", 12, clusters=4, within="random")
    other, _ = pick("cluster_margin", 12, clusters=4, within="random", seed=1)
    lab = s.pool_clusters(EMB)
    assert np.array_equal(np.bincount(lab[ranked], minlength=4), np.bincount(lab[rand], minlength=4))
    assert not np.array_equal(ranked, rand) and not np.array_equal(rand, other)
    refused("cluster_margin", "within='best' is not allowed; allowed: margin, random", within="best")


@covers(("cluster_margin", "niter"))
def test_option_cluster_margin_niter(monkeypatch):
    """k-means' Lloyd steps before HAC: passed on; 0 (the seeding alone) gives other cells than 20."""
    calls = spy(monkeypatch, cluster_margin_mod, "kmeans_labels")
    emb = _blobs(300, k=12, spread=1.5, seed=3)
    mask = np.zeros(300, dtype=bool)
    cells = {}
    for it in (0, 20):
        _, s = pick("cluster_margin", 8, mask=mask, emb=emb, niter=it, kmeans_k=30, clusters=30)
        cells[it] = s.pool_clusters(emb)
    assert [c["niter"] for c in calls] == [0, 20] and not np.array_equal(cells[0], cells[20])
    refused("cluster_margin", "niter=-1 is not allowed; must be >= 0", niter=-1)
