"""Composable greedy k-center (raal.index._composable): one part is exactly single-process greedy; several parts
stay within the proven bound (max part radius + union radius, hence 4 x OPT <= 4 x greedy) on synthetic pools."""
from __future__ import annotations

import numpy as np
import pytest

from raal.index import APPROX_FACTOR, composable_kcenter, kcenter_greedy, kcenter_radius, merge_round, part_round

pytestmark = pytest.mark.timeout(300)


def _blobs(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((30, d)) * 4
    sizes = rng.integers(1, 30, n)  # uneven blob sizes and spreads
    return (centres[sizes % 30] + rng.standard_normal((n, d)) * (1 + sizes[:, None] % 3)).astype(np.float32)


def _cuts(n: int, parts: int) -> list[tuple[int, int]]:
    b = np.linspace(0, n, parts + 1).round().astype(int)
    return list(zip(b[:-1], b[1:]))


@pytest.mark.parametrize("labeled", [0, 40])
def test_one_part_is_single_process_greedy(labeled):
    """Integer rows full of ties and duplicates: distances are exact, so the picks and their order must match."""
    rng = np.random.default_rng(1)
    x = rng.integers(-3, 4, size=(1500, 6)).astype(np.float32)
    mask = np.zeros(len(x), bool)
    mask[rng.choice(len(x), labeled, replace=False)] = True
    for budget in (1, 37, 200):
        want = kcenter_greedy(x, budget, labeled_mask=mask)
        np.testing.assert_array_equal(composable_kcenter(x, budget, [(0, len(x))], labeled_mask=mask), want)


def test_several_parts_stay_within_the_bound():
    """Over 10 seeds x 3 part counts: the objective is at most max_j r_j + r_U (the proof's inequality, with the
    radii measured) and at most APPROX_FACTOR x single-process greedy's. No margin to measure: both are theorems."""
    for seed in range(10):
        x = _blobs(4000, 16, seed)
        rng = np.random.default_rng(seed)
        mask = np.zeros(len(x), bool)
        mask[rng.choice(len(x), 30, replace=False)] = True
        lab = np.flatnonzero(mask)
        budget = 60
        greedy = kcenter_radius(x, np.r_[lab, kcenter_greedy(x, budget, labeled_mask=mask)])
        for parts in (2, 3, 8):
            cuts = _cuts(len(x), parts)
            picked, part_r = [], []
            for a, b in cuts:
                rows = a + np.flatnonzero(~mask[a:b])
                p = rows[np.sort(part_round(np.concatenate([x[lab], x[rows]]), len(lab), budget))]
                picked.append(p)
                part_r.append(kcenter_radius(x, np.r_[lab, p], rows=np.arange(a, b)))
            union = np.concatenate(picked)
            final = union[merge_round(x[lab], x[union], budget)]
            np.testing.assert_array_equal(final, composable_kcenter(x, budget, cuts, labeled_mask=mask))
            ux = np.concatenate([x[lab], x[union]])
            r_u = kcenter_radius(ux, np.r_[np.arange(len(lab)), len(lab) + np.searchsorted(union, final)])
            objective = kcenter_radius(x, np.r_[lab, final])
            assert len(set(final)) == budget and not mask[final].any()
            assert objective <= max(part_r) + r_u + 1e-4, (seed, parts)
            assert objective <= APPROX_FACTOR * greedy, (seed, parts)


def test_parts_that_are_labeled_or_small():
    x = _blobs(300, 4, 0)
    mask = np.zeros(300, bool)
    mask[:100] = True
    assert len(part_round(np.concatenate([x[:5], x[:100]]), 5, 10, part_labeled=mask[:100])) == 0  # all labeled
    both = part_round(np.concatenate([x[:5], x[95:105]]), 5, 10, part_labeled=mask[95:105])
    np.testing.assert_array_equal(np.sort(both), np.arange(5, 10))  # labeled rows given as such are never picked
    small = part_round(np.concatenate([x[:5], x[100:108]]), 5, 10)
    np.testing.assert_array_equal(np.sort(small), np.arange(8))  # fewer rows than the budget: all of them
    with pytest.raises(ValueError, match="budget must be in 1..8"):
        merge_round(x[:5], x[100:108], 9)


def test_nothing_labeled_starts_from_the_given_origin():
    x = _blobs(500, 4, 2)
    origin = x[:100].mean(axis=0)
    far = int(np.argmax(((x - origin) ** 2).sum(axis=1)))
    assert merge_round(None, x, 3, origin=origin)[0] == far
    assert kcenter_greedy(x, 3, origin=origin)[0] == far
