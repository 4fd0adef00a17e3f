"""SEALS' candidate pool: exactly the k-NN union of the labeled rows, grown by searching only the new labels."""
from __future__ import annotations

import numpy as np
import pytest

from raal.index import KnnCandidates, PoolIndex, knn

pytestmark = pytest.mark.timeout(60)

N, D, K = 600, 8, 6


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).standard_normal((N, D)).astype(np.float32)


def _exact_union(x, labeled, k):
    """Brute force: the k + 1 nearest rows of every labeled row, minus the labeled rows."""
    _, nb = knn(x, x, k + 1, query_rows=np.flatnonzero(labeled))
    out = np.zeros(len(x), dtype=bool)
    out[nb.ravel()] = True
    return np.flatnonzero(out & ~labeled)


def _spy(index: PoolIndex) -> list[np.ndarray]:
    """The query rows of each search the index runs."""
    calls: list[np.ndarray] = []
    real = index.knn

    def search(k, query_rows=None):
        calls.append(np.arange(len(index.x)) if query_rows is None else np.asarray(query_rows))
        return real(k, query_rows=query_rows)

    index.knn = search  # type: ignore[method-assign]
    return calls


def test_candidates_are_the_knn_union_and_grow_by_the_new_labels_only(x):
    index = PoolIndex(x, nprobe=10_000, rerank=4.0)  # every cell probed: the exact neighbours on this data
    calls = _spy(index)
    cand = KnnCandidates(index, K)
    rng = np.random.default_rng(1)
    labeled = np.zeros(N, dtype=bool)
    seen: list[int] = []
    for batch in (30, 10, 10, 0):
        new = rng.choice(np.flatnonzero(~labeled), batch, replace=False)
        labeled[new] = True
        got = cand.update(labeled)
        np.testing.assert_array_equal(got, _exact_union(x, labeled, K))
        assert cand.searched == batch and not labeled[got].any()
        seen.append(len(got))
        assert len(got) <= K * labeled.sum()  # far below the pool: no full scan of candidates
    assert [len(c) for c in calls] == [30, 10, 10]  # each search asks for the rows labeled since the last one only
    assert sorted(np.concatenate(calls).tolist()) == np.flatnonzero(labeled).tolist()
    assert cand.searched_total == labeled.sum() == 50
    assert seen[0] < seen[1] < seen[2] == seen[3]


def test_a_candidate_that_gets_labeled_leaves_and_adds_its_own_neighbours(x):
    index = PoolIndex(x, nprobe=10_000, rerank=4.0)
    cand = KnnCandidates(index, K)
    labeled = np.zeros(N, dtype=bool)
    labeled[0] = True
    first = cand.update(labeled)
    labeled[first[0]] = True
    second = cand.update(labeled)
    assert first[0] not in second and set(first) - {first[0]} <= set(second)
    np.testing.assert_array_equal(second, _exact_union(x, labeled, K))


def test_approximate_index_recall_and_bad_inputs(x):
    """With the default probes (16 of 4 sqrt(N) cells) the pool is close to the exact union; errors are precise."""
    labeled = np.zeros(N, dtype=bool)
    labeled[::20] = True
    got = KnnCandidates(PoolIndex(x), K).update(labeled)
    exact = _exact_union(x, labeled, K)
    assert len(np.intersect1d(got, exact)) >= 0.9 * len(exact)
    with pytest.raises(ValueError, match="k >= 1"):
        KnnCandidates(PoolIndex(x), 0)
    with pytest.raises(ValueError, match="bool array of the index's 600 rows"):
        KnnCandidates(PoolIndex(x), K).update(labeled[:-1])
