"""The faiss layer: exact search against brute force, chunking invariance, greedy k-center against a plain loop."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from raal import index

pytestmark = pytest.mark.timeout(60)


def _brute(q, b, metric):
    q64, b64 = q.astype(np.float64), b.astype(np.float64)
    if metric == "l2":
        return ((q64[:, None, :] - b64[None, :, :]) ** 2).sum(-1)
    return q64 @ b64.T


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((300, 12)).astype(np.float32), rng.standard_normal((170, 12)).astype(np.float32)


@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("chunk_bytes", [index.CHUNK_BYTES, 12 * 4 * 7])  # one chunk / 7-row chunks both sides
def test_flat_knn_matches_brute_force(data, metric, chunk_bytes):
    q, b = data
    d, i = index.knn(q, b, 5, metric=metric, chunk_bytes=chunk_bytes)
    full = _brute(q, b, metric)
    order = np.argsort(full if metric == "l2" else -full, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(i, order)
    np.testing.assert_allclose(d, np.take_along_axis(full, order, axis=1), rtol=1e-4, atol=1e-4)


def test_faiss_path_matches_numpy_path(data, monkeypatch):
    """Blocks above SMALL_WORK go to faiss.knn; both paths give the same neighbours."""
    q, b = data
    small = index.knn(q, b, 3, metric="l2")
    monkeypatch.setattr(index._search, "SMALL_WORK", 0)  # where knn reads it
    big = index.knn(q, b, 3, metric="l2")
    np.testing.assert_array_equal(small[1], big[1])
    np.testing.assert_allclose(small[0], big[0], rtol=1e-4, atol=1e-4)


def test_chunking_and_row_subsets_are_exact(data):
    q, b = data
    qr = np.array([3, 5, 8, 200, 299])
    br = np.arange(0, 170, 3)
    d1, i1 = index.knn(q, b, 4, metric="ip", query_rows=qr, base_rows=br, normalize=True)
    d2, i2 = index.knn(q, b, 4, metric="ip", query_rows=qr, base_rows=br, normalize=True, chunk_bytes=48 * 5)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(d1, d2, rtol=1e-6)  # same ids; BLAS may round a product of other shape by 1 ulp
    qn = q[qr] / np.linalg.norm(q[qr], axis=1, keepdims=True)
    bn = b[br] / np.linalg.norm(b[br], axis=1, keepdims=True)
    np.testing.assert_array_equal(i1, br[np.argsort(-_brute(qn, bn, "ip"), axis=1, kind="stable")[:, :4]])
    assert np.all(np.isin(i1, br))


def test_knn_more_neighbours_than_rows_fills_minus_one(data):
    q, b = data
    d, i = index.knn(q[:4], b[:3], 5, chunk_bytes=48 * 2)  # 2-row base chunks, merged in a heap
    assert (i[:, 3:] == -1).all() and np.isinf(d[:, 3:]).all()
    assert (np.sort(i[:, :3], axis=1) == [0, 1, 2]).all()


def test_min_sq_dist_to(data):
    q, b = data
    d, i = index.min_sq_dist_to(q, b, return_index=True, chunk_bytes=48 * 11)
    full = _brute(q, b, "l2")
    np.testing.assert_allclose(d, full.min(axis=1), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(i, full.argmin(axis=1))
    assert (d >= 0).all()
    assert np.isinf(index.min_sq_dist_to(q, b, centre_rows=np.zeros(0, dtype=np.int64))).all()


def test_ivf_finds_most_true_neighbours():
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((20, 16)).astype(np.float32) * 5
    base = (centres[rng.integers(0, 20, 4000)] + rng.standard_normal((4000, 16))).astype(np.float32)
    q = base[:200] + 0.01
    _, exact = index.knn(q, base, 1)
    _, approx = index.knn(q, base, 1, kind="ivf", nlist=16, nprobe=4)
    assert (exact[:, 0] == approx[:, 0]).mean() > 0.95


def test_bad_arguments():
    x = np.zeros((3, 2), np.float32)
    with pytest.raises(ValueError, match="metric"):
        index.knn(x, x, 1, metric="cosine")
    with pytest.raises(ValueError, match="kind"):
        index.knn(x, x, 1, kind="hnsw")
    with pytest.raises(ValueError, match="budget"):
        index.kcenter_greedy(x, 4)


def test_cpu_fallback_logs_once(caplog):
    index.gpu_count.cache_clear()
    with caplog.at_level(logging.INFO, logger="raal.index"):
        for _ in range(3):
            assert index.gpu_count() == 0  # faiss-cpu build
    assert sum("no GPU" in r.message for r in caplog.records) == 1


def test_read_rows_never_modifies_input():
    x = np.arange(12, dtype=np.float32).reshape(4, 3) + 1
    before = x.copy()
    index.read_rows(x, 0, 4, normalize=True)
    np.testing.assert_array_equal(x, before)


# -- greedy k-center ------------------------------------------------------------------------------------------------
def _kcenter_reference(x, budget, labeled):
    """The textbook loop in float64 (BADGE/LabelBench furthest_first), first maximal index on ties."""
    x = x.astype(np.float64)
    if labeled.any():
        mind = ((x[:, None, :] - x[labeled][None, :, :]) ** 2).sum(-1).min(axis=1)
    else:
        far = ((x - x.mean(axis=0)) ** 2).sum(1)
        first = int(np.argmax(far))
        mind = ((x - x[first]) ** 2).sum(1)
    mind[labeled] = -np.inf
    picks = [] if labeled.any() else [first]
    if picks:
        mind[first] = -np.inf
    while len(picks) < budget:
        u = int(np.argmax(mind))
        picks.append(u)
        mind = np.minimum(mind, ((x - x[u]) ** 2).sum(1))
        mind[labeled] = -np.inf
        mind[picks] = -np.inf
    return np.array(picks)


@pytest.mark.parametrize("n_labeled", [0, 1, 37])
@pytest.mark.parametrize("block_rows", [1, 16, 256])
def test_lazy_kcenter_equals_textbook_loop(n_labeled, block_rows):
    """Integer coordinates make every float32 distance exact, so ties occur and must go to the first index."""
    rng = np.random.default_rng(n_labeled)
    x = rng.integers(-6, 7, size=(400, 5)).astype(np.float32)
    x[:10] = x[10:20]  # exact duplicates
    labeled = np.zeros(400, dtype=bool)
    labeled[rng.choice(400, n_labeled, replace=False)] = True
    if n_labeled == 0:
        far = ((x - x.astype(np.float64).mean(0)) ** 2).sum(1)
        assert (far == far.max()).sum() == 1  # the mean is not integral: keep the first pick unambiguous
    got = index.kcenter_greedy(x, 60, labeled_mask=labeled, block_rows=block_rows)
    np.testing.assert_array_equal(got, _kcenter_reference(x, 60, labeled))


def test_kcenter_normalize_equals_kcenter_on_normalised_copy():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((500, 7)) * rng.uniform(0.1, 10, (500, 1))).astype(np.float32)
    labeled = np.zeros(500, dtype=bool)
    labeled[:5] = True
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    a = index.kcenter_greedy(x, 40, labeled_mask=labeled, normalize=True, block_rows=32)
    b = index.kcenter_greedy(xn, 40, labeled_mask=labeled, block_rows=32)
    np.testing.assert_array_equal(a, b)


def test_kcenter_reads_memmap_in_chunks(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((700, 9)).astype(np.float32)
    mm = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float32, shape=x.shape)
    mm[:] = x
    mm.flush()
    ro = np.load(tmp_path / "x.npy", mmap_mode="r")
    labeled = np.zeros(700, dtype=bool)
    labeled[::50] = True
    a = index.kcenter_greedy(ro, 30, labeled_mask=labeled, chunk_bytes=9 * 4 * 64)
    b = index.kcenter_greedy(x, 30, labeled_mask=labeled)
    np.testing.assert_array_equal(a, b)


# -- two-level k-means and the approximate pool index ----------------------------------------------------------------
def _clustered(n=3000, dim=16, classes=40, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((classes, dim)).astype(np.float32)
    return (c[rng.integers(0, classes, n)] + 0.5 * rng.standard_normal((n, dim))).astype(np.float32)


def test_split_budget_is_proportional_and_fits():
    from raal.index._kmeans import split_budget
    sizes = np.array([500, 300, 3, 0, 197])
    share = split_budget(sizes, 100)
    assert share.sum() == 100 and (share <= sizes).all() and share[3] == 0
    assert np.abs(share - 100 * sizes / sizes.sum()).max() < 1
    assert split_budget(np.array([2, 2, 1]), 5).tolist() == [2, 2, 1]


def test_two_level_kmeans_objective_near_flat_and_deterministic():
    """Measured on this data (seeds 0-3): the two-level objective is 0.3-1.5% (nearest centroid) / 1.8-3.3% (its own
    assignment) above flat k-means; the bounds leave a wide margin."""
    from raal.index._kmeans import kmeans_labels, two_level_kmeans
    x = _clustered()
    cent, lab, d = two_level_kmeans(x, 200, seed=1)
    assert cent.shape == (200, 16) and lab.min() >= 0 and lab.max() < 200
    np.testing.assert_allclose(d, ((x - cent[lab]) ** 2).sum(1), rtol=1e-3, atol=1e-3)
    again = two_level_kmeans(x, 200, seed=1)
    np.testing.assert_array_equal(cent, again[0])
    np.testing.assert_array_equal(lab, again[1])
    flat = kmeans_labels(x, 200, seed=1, two_level=False)[2].mean()
    assert index.min_sq_dist_to(x, cent).mean() < 1.10 * flat
    assert d.mean() < 1.12 * flat


def test_kmeans_switches_to_two_level_above_the_thresholds(monkeypatch):
    import raal.index._kmeans as ik
    x = _clustered(n=800)
    assert not ik.use_two_level(800, 100, 16)
    flat = index.kmeans(x, 100, seed=0)
    monkeypatch.setattr(ik, "TWO_LEVEL_MIN_K", 50)
    monkeypatch.setattr(ik, "TWO_LEVEL_WORK", 0)
    assert ik.use_two_level(800, 100, 16) and not ik.use_two_level(800, 49, 16)
    st = {}
    two = index.kmeans(x, 100, seed=0, stats=st)
    assert st["two_level"]["coarse"] == 10 and two.shape == flat.shape
    np.testing.assert_array_equal(two, ik.two_level_kmeans(x, 100, seed=0)[0])


def test_pool_index_recall_exact_distances_and_filters():
    """recall@10 with 4 of 219 cells probed is 0.971-0.976 on this data (seeds 0-3); all cells probed, 0.99993."""
    from raal.index._ann import PoolIndex, recall_at_k
    x = _clustered(n=3000)
    de, ie = index.knn(x, x, 10, normalize=True)
    pi = PoolIndex(x, normalize=True, nprobe=4, seed=0)
    d, i = pi.knn(10)
    assert recall_at_k(i, ie) > 0.9
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(d, ((u[:, None, :] - u[i]) ** 2).sum(-1), rtol=1e-4, atol=1e-5)
    full = PoolIndex(x, normalize=True, nlist=16, nprobe=16, seed=0)
    assert recall_at_k(full.knn(10)[1], ie) > 0.999  # the 8-bit codes can still misrank a near tie
    q = np.arange(0, 3000, 150)
    allowed = np.arange(3000) % 3 == 0
    want = index.min_sq_dist_to(x, x, query_rows=q, centre_rows=np.flatnonzero(allowed), normalize=True)
    np.testing.assert_allclose(full.nearest_among(q, allowed), want, rtol=1e-4, atol=1e-5)
    r2 = float(np.median(de[:, 5]))
    lims, ids = full.range_search(r2, q)
    ref_lims, ref_ids = index.range_search(x, x, r2, query_rows=q, normalize=True)
    np.testing.assert_array_equal(lims, ref_lims)
    np.testing.assert_array_equal(ids, ref_ids)


def test_random_projection_is_fixed_chunked_and_keeps_distances(tmp_path):
    """The projection for al.coreset_dim: one matrix per (seed, D, m) whatever the process, applied chunk by chunk
    to an array, a memmap or a row subset alike; it keeps squared norms in expectation (variance 1/m entries); and
    `projected_width` projects only to fewer dimensions."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((500, 64)).astype(np.float32)
    r = index.projection_matrix(64, 16)
    assert r.shape == (64, 16) and r.dtype == np.float32
    assert np.array_equal(r, index.projection_matrix(64, 16))
    assert not np.array_equal(r, index.projection_matrix(64, 16, seed=1))
    ref = x @ r
    mm = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float32, shape=x.shape)
    mm[:] = x
    for src, chunk in ((x, index.CHUNK_BYTES), (mm, 64 * 4 * 7)):  # one chunk; 7-row chunks of a memmap
        np.testing.assert_allclose(index.random_projection(src, 16, chunk_bytes=chunk), ref, rtol=1e-5, atol=1e-5)
    rows = np.array([4, 2, 499])
    np.testing.assert_allclose(index.random_projection(x, 16, rows=rows), ref[rows], rtol=1e-5, atol=1e-5)
    big = index.random_projection(rng.standard_normal((2000, 256)).astype(np.float32), 128)
    assert abs(float((big ** 2).sum(1).mean()) / 256 - 1) < 0.05  # E|Rx|^2 = |x|^2 = 256 on average
    assert [index.projected_width(m, 64) for m in (0, 16, 64, 100)] == [64, 16, 64, 64]
    with pytest.raises(ValueError, match="dim >= 1"):
        index.projection_matrix(64, 0)
