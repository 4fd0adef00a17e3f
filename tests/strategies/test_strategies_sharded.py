"""A score strategy's selection spread over parts of the pool (raal.pipelines.sharded, without Ray): each part's
`ranked` rows, folded in any grouping, merged by `merge_ranked`, give exactly `select`'s picks on the whole pool,
in the same order, for margin, confidence and entropy, plain and `balanced`, on probabilities full of exact ties."""
from __future__ import annotations

import numpy as np
import pytest

from raal import strategies
from raal.strategies.scored import keep_ranked

pytestmark = pytest.mark.timeout(120)

NAMES = ("margin", "confidence", "entropy")


def _probs(n: int, c: int, seed: int) -> np.ndarray:
    """Rows on the simplex from a coarse grid, so many rows share a score (and a predicted class) exactly."""
    rng = np.random.default_rng(seed)
    w = rng.integers(1, 5, size=(n, c)).astype(np.float32)
    w[rng.random(n) < 0.3] = w[0]  # a block of exact duplicates
    return w / w.sum(axis=1, keepdims=True)


def _cuts(n: int, parts: int, rng) -> list[tuple[int, int]]:
    inner = np.sort(rng.choice(np.arange(1, n), size=parts - 1, replace=False)) if parts > 1 else []
    bounds = np.r_[0, inner, n].astype(int)
    return list(zip(bounds[:-1], bounds[1:]))


def _spread(s, probs, mask, budget, cuts):
    """What the workers and the driver do: per part `ranked`, positions made global, merged (parts in any order)."""
    pos, score, cls = [], [], []
    for a, b in cuts[::-1]:
        p, sc, c = s.ranked(budget, labeled_mask=mask[a:b], probs=probs[a:b])
        pos.append(p + a), score.append(sc), cls.append(c)
    pos, score, cls = np.concatenate(pos), np.concatenate(score), np.concatenate(cls)
    order = s.merge_ranked(pos, score, cls, budget)
    return pos[order], cls[order]


@pytest.mark.parametrize("balanced", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_the_merge_of_the_parts_is_the_whole_pools_selection(name, balanced):
    s = strategies.get(name, balanced=balanced)
    for seed in range(12):
        rng = np.random.default_rng(seed)
        n, c = int(rng.integers(200, 600)), int(rng.integers(2, 6))
        probs = _probs(n, c, seed)
        mask = rng.random(n) < 0.2
        mask[: n // 7] = True  # a fully labeled first part in some cuts
        budget = int(rng.integers(1, (~mask).sum() + 1))
        want = s.select(budget, labeled_mask=mask, probs=probs)
        for parts in (1, 2, 5, 17):
            got, cls = _spread(s, probs, mask, budget, _cuts(n, parts, rng))
            np.testing.assert_array_equal(got, want, err_msg=f"seed {seed}, {parts} parts")
            np.testing.assert_array_equal(cls, probs[want].argmax(1))  # the prediction shown beside each pick


def test_each_part_keeps_at_most_the_budget_and_every_pick():
    s = strategies.get("margin")
    probs = _probs(500, 3, 0)
    mask = np.zeros(500, bool)
    pos, _, _ = s.ranked(40, labeled_mask=mask, probs=probs)
    assert len(pos) == 40 and np.all(np.diff(pos) > 0)  # the best 40, in position order
    assert set(s.select(40, labeled_mask=mask, probs=probs)) == set(pos)
    b = strategies.get("margin", balanced=True)
    pos, _, cls = b.ranked(40, labeled_mask=mask, probs=probs)
    assert np.bincount(cls).max() <= 40 and len(pos) <= 3 * 40  # per predicted class
    full = s.ranked(40, labeled_mask=np.ones(500, bool), probs=probs)
    assert all(len(a) == 0 for a in full)  # a labeled part has nothing to offer


def test_folding_in_any_grouping_keeps_the_same_rows():
    """A worker folds its shards' candidates as they arrive: keeping from kept rows keeps the same rows."""
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 20, 300).astype(np.float64)
    classes = rng.integers(0, 4, 300)
    for balanced in (False, True):
        once = keep_ranked(scores, classes, 25, largest=False, balanced=balanced)
        first = keep_ranked(scores[:150], classes[:150], 25, largest=False, balanced=balanced)
        rest = 150 + keep_ranked(scores[150:], classes[150:], 25, largest=False, balanced=balanced)
        both = np.r_[first, rest]
        again = both[keep_ranked(scores[both], classes[both], 25, largest=False, balanced=balanced)]
        np.testing.assert_array_equal(again, once)


def test_ranked_runs_selects_input_checks():
    s = strategies.get("entropy")
    bad = _probs(50, 3, 0) * 2  # not on the simplex: logits passed by mistake
    with pytest.raises(ValueError, match="sum to 1"):
        s.ranked(5, labeled_mask=np.zeros(50, bool), probs=bad)
    with pytest.raises(ValueError, match="exceeds the 3 unlabeled"):
        s.merge_ranked(np.arange(3), np.zeros(3), np.zeros(3, np.int64), 4)
