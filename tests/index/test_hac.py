"""Average-linkage HAC of weighted centroids (Cluster-Margin's clustering) against scipy's textbook linkage."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.cluster.hierarchy import cut_tree as scipy_cut
from scipy.cluster.hierarchy import linkage

from raal.index import average_linkage, cut_tree

pytestmark = pytest.mark.timeout(60)


def _same_partition(a, b) -> bool:
    """Two labelings are one partition: each label of one maps to exactly one label of the other."""
    pairs = set(zip(np.asarray(a).tolist(), np.asarray(b).tolist()))
    return len(pairs) == len(set(np.asarray(a).tolist())) == len(set(np.asarray(b).tolist()))


@pytest.mark.parametrize("seed", range(5))
def test_unit_weights_are_scipys_average_linkage(seed):
    p = np.random.default_rng(seed).standard_normal((40, 5))
    merges = average_linkage(p)
    z = linkage(p, "average")
    np.testing.assert_allclose(merges[:, 2], z[:, 2], rtol=1e-9)  # the same heights, lowest first
    for k in (1, 3, 7, 40):
        assert _same_partition(cut_tree(merges, 40, k), scipy_cut(z, n_clusters=k).ravel()), k
    assert len(np.unique(cut_tree(merges, 40, 7))) == 7


@pytest.mark.parametrize("seed", range(5))
def test_weights_act_as_repeated_items(seed):
    """A centroid of weight w is w items in one place: scipy on the repeated points (whose zero-height merges come
    first) has the same remaining heights and the same cuts."""
    rng = np.random.default_rng(seed)
    p = rng.standard_normal((30, 4))
    w = rng.integers(1, 6, 30)
    merges = average_linkage(p, w)
    z = linkage(np.repeat(p, w, axis=0), "average")
    np.testing.assert_allclose(merges[:, 2], z[w.sum() - 30:, 2], rtol=1e-9)
    for k in (2, 5, 11):
        assert _same_partition(np.repeat(cut_tree(merges, 30, k), w), scipy_cut(z, n_clusters=k).ravel()), k
    assert not np.allclose(merges[:, 2], average_linkage(p)[:, 2])  # the weights do matter


def test_ids_and_bad_inputs():
    p = np.array([[0.0], [10.0], [0.1], [10.2], [5.0]])
    merges = average_linkage(p)
    np.testing.assert_array_equal(cut_tree(merges, 5, 3), [0, 1, 0, 1, 2])  # numbered by lowest point
    np.testing.assert_array_equal(cut_tree(merges, 5, 5), np.arange(5))
    assert average_linkage(p[:1]).shape == (0, 3)
    with pytest.raises(ValueError, match="weights > 0"):
        average_linkage(p, np.array([1, 1, 0, 1, 1]))
    with pytest.raises(ValueError, match="cannot be cut into 6 clusters"):
        cut_tree(merges, 5, 6)
