"""Composable greedy k-center: each part of the pool runs greedy k-center for the whole budget, then greedy
k-center on the union of the parts' picks chooses the batch. Lets CoreSet run on workers that each hold one part.

The algorithm is GREEDY-MR of Malkomes, Kusner, Chen, Weinberger and Moseley, "Fast distributed k-center clustering
with outliers on massive data" (NeurIPS 2015), whose first round is a composable core-set in the sense of
Aghamolaei, Farhadi and Zarrabi-Zadeh, "Diversity maximization via composable coresets" (CCCG 2015). raal adds
AL's fixed centres: the labeled rows L seed both rounds and are never picked.

The bound (objective: the largest distance of any pool row to its nearest centre in L ∪ picks; OPT: the best
over every choice of `budget` picks):
- greedy seeded with L is a 2-approximation: after k picks with radius r, the k picks and the farthest row are
  k + 1 rows pairwise >= r apart and >= r from L, so if r > OPT two of them share an optimal centre: r <= 2·OPT.
  The argument holds for any subset of the pool (OPT of the whole pool bounds it), so each part's radius r_j and
  the union's radius r_U are <= 2·OPT.
- a row x of part j is within r_j of L or of a pick u of its part, and u is within r_U of L ∪ final picks:
  objective <= max_j r_j + r_U <= 4·OPT, hence <= 4x the objective of single-process greedy (which is >= OPT).
With one part the union is that part's picks, and the merge repeats them in the same order: the same picks as
`kcenter_greedy` on the whole pool. Cost: round 1 is the single-process work split over the parts (they run in
parallel on the workers), round 2 is greedy on parts × budget rows.
"""
from __future__ import annotations

import numpy as np

from raal.index._common import CHUNK_BYTES, iter_slices, mean_row
from raal.index._search import kcenter_greedy, min_sq_dist_to

APPROX_FACTOR = 4  # the bound above, against OPT and therefore against exact greedy


def part_round(x: np.ndarray, n_centres: int, budget: int, *, part_labeled: np.ndarray | None = None,
               block_rows: int = 256) -> np.ndarray:
    """Round 1 on one part: `x` holds the labeled centres (its first `n_centres` rows) and then the part's rows.
    Returns the part's picks as row numbers of the part, in pick order: min(budget, its unlabeled rows) of them.
    Leave the part's labeled rows out of `x` (they are among the centres already; as `part_labeled` rows they are
    centres twice, which costs time); with no centres at all the first pick is the row farthest from the part's
    mean."""
    n_part = len(x) - int(n_centres)
    part_labeled = np.zeros(n_part, bool) if part_labeled is None else np.asarray(part_labeled, dtype=bool)
    k = min(int(budget), int((~part_labeled).sum()))
    if k == 0:
        return np.empty(0, np.int64)
    mask = np.concatenate([np.ones(int(n_centres), bool), part_labeled])
    return kcenter_greedy(x, k, labeled_mask=mask, block_rows=block_rows) - int(n_centres)


def merge_round(centres: np.ndarray | None, candidates: np.ndarray, budget: int, *, origin: np.ndarray | None = None,
                block_rows: int = 256) -> np.ndarray:
    """Round 2: greedy k-center on the union of the parts' picks (`candidates`, in pool order), seeded with the
    labeled `centres`; returns indices into `candidates`, in pick order. With no centres the first pick is the
    candidate farthest from `origin` (pass the whole pool's mean: the union's own mean leans to the parts' picks)."""
    n_c = 0 if centres is None else len(centres)
    if not 0 < int(budget) <= len(candidates):
        raise ValueError(f"budget must be in 1..{len(candidates)} (the parts' picks), got {budget}")
    if n_c == 0:
        return kcenter_greedy(candidates, int(budget), origin=origin, block_rows=block_rows)
    assert centres is not None
    x = np.concatenate([np.asarray(centres, dtype=np.float32), np.asarray(candidates, dtype=np.float32)])
    mask = np.zeros(len(x), bool)
    mask[:n_c] = True
    return kcenter_greedy(x, int(budget), labeled_mask=mask, block_rows=block_rows) - n_c


def composable_kcenter(x: np.ndarray, budget: int, parts: list[tuple[int, int]], *,
                       labeled_mask: np.ndarray | None = None, block_rows: int = 256) -> np.ndarray:
    """Both rounds in one process over the row ranges `parts` of `x` (what raal.pipelines.sharded does on
    workers): the pool positions picked, in pick order. For tests and benchmarks against `kcenter_greedy`."""
    n = len(x)
    labeled = np.zeros(n, bool) if labeled_mask is None else np.asarray(labeled_mask, dtype=bool)
    lab_rows = np.flatnonzero(labeled)
    centres = np.asarray(x[lab_rows], dtype=np.float32)
    picked = []
    for s, e in parts:
        rows = s + np.flatnonzero(~labeled[s:e])  # the part's labeled rows are among the centres already
        buf = np.concatenate([centres, np.asarray(x[rows], dtype=np.float32)])
        picked.append(rows[np.sort(part_round(buf, len(centres), budget, block_rows=block_rows))])
    union = np.concatenate(picked)
    origin = None if len(lab_rows) else mean_row(x)
    return union[merge_round(centres, np.asarray(x[union], dtype=np.float32), budget, origin=origin,
                             block_rows=block_rows)]


def kcenter_radius(x: np.ndarray, centre_rows: np.ndarray, *, rows: np.ndarray | None = None,
                   chunk_bytes: int = CHUNK_BYTES) -> float:
    """The k-center objective: the largest Euclidean distance of any row of `x` (or of its `rows`) to its nearest
    row in `centre_rows` (the labeled rows and the picks), read in chunks."""
    centre_rows = np.asarray(centre_rows, dtype=np.int64)
    query = np.arange(len(x)) if rows is None else np.asarray(rows, dtype=np.int64)
    worst = 0.0
    for s, e in iter_slices(len(query), 1 << 16):
        d = min_sq_dist_to(x, x, query_rows=query[s:e], centre_rows=centre_rows, chunk_bytes=chunk_bytes)
        worst = max(worst, float(d.max()))
    return float(np.sqrt(worst))
