"""What every strategy shares: the `select` contract and the one input check all of them run first."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from raal.errors import EmptyPoolError, PoolExhaustedError

INPUTS = ("probs", "embeddings")
CHECK_CHUNK_BYTES = 16 << 20  # finite checks read this much at a time (stays in cache for the second look)
PROB_SUM_TOL = 1e-3


@dataclass(frozen=True)
class Pool:
    """The checked facts a strategy works from."""

    n: int                 # pool size N
    unlabeled: np.ndarray  # sorted int64 positions of the unlabeled items
    labeled: np.ndarray    # the bool mask as given (not copied)
    proxy: object = None   # callable: embedding rows -> class scores (for strategies that require "proxy")


class Strategy:
    """A selection strategy. Subclasses set `name` and `requires` (the inputs it needs: probs, embeddings, proxy;
    a pipeline declares what it supplies) and implement `_select`.

    `select(budget, *, labeled_mask, probs=None, embeddings=None, proxy=None, seed=0)` returns `budget` distinct
    int64 pool positions, none labeled, in the strategy's pick order. `proxy` (for strategies that require it) is
    the current model's head as a callable: a float32 block of embedding rows -> class probabilities or logits.
    Unknown keywords are an error (a typo must not pass silently). Options (iterations, block sizes...) are
    constructor arguments: `raal.strategies.get(name, **options)`.
    """

    name: str = ""
    requires: frozenset = frozenset()
    min_classes: int = 1  # probs columns the strategy needs
    #: it picks an arm's first batch itself (on the pre-trained features) instead of `al.initial_strategy`
    chooses_first_batch: bool = False

    def select(self, budget, *, labeled_mask, probs=None, embeddings=None, proxy=None, seed=0) -> np.ndarray:
        pool = check_inputs(self, budget, labeled_mask=labeled_mask, probs=probs, embeddings=embeddings, seed=seed,
                            proxy=proxy)
        out = np.asarray(self._select(int(budget), pool, probs=probs, embeddings=embeddings, seed=int(seed)),
                         dtype=np.int64)
        _check_output(self.name, out, int(budget), pool)
        return out

    def _select(self, budget: int, pool: Pool, *, probs, embeddings, seed: int) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<strategy {self.name!r} requires={sorted(self.requires)}>"


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _check_array(strategy: str, what: str, arr, n: int) -> None:
    """Type, dtype and shape of one input: an (N, K) floating numpy array or memmap, K >= 1."""
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"strategy {strategy!r}: {what} must be a numpy array or memmap, got {type(arr).__name__}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"strategy {strategy!r}: {what} must have a floating dtype, got {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"strategy {strategy!r}: {what} must be 2-D (N x {'C' if what == 'probs' else 'D'}), "
                         f"got shape {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(f"strategy {strategy!r}: {what} has {arr.shape[0]} rows but labeled_mask has N = {n}")
    if arr.shape[1] < 1:
        raise ValueError(f"strategy {strategy!r}: {what} has no columns")


def _check_values(strategy: str, what: str, arr: np.ndarray) -> None:
    """No NaN/inf (and, for probs, rows on the simplex), read in chunks: big inputs are never copied whole.

    A chunk's float sum is finite iff the chunk is, except when huge finite values overflow it: only then is the
    element-wise test run, which also locates the first bad row for the message.
    """
    rows = max(1, CHECK_CHUNK_BYTES // max(1, arr.shape[1] * arr.itemsize))
    for s in range(0, arr.shape[0], rows):
        block = np.asarray(arr[s:s + rows])
        if not np.isfinite(block.sum()):
            bad = ~np.isfinite(block)
            if bad.any():
                r = s + int(np.flatnonzero(bad.any(axis=1))[0])
                raise ValueError(f"strategy {strategy!r}: {what} contains NaN or inf (first at row {r})")
        if what == "probs":
            if block.min() < 0:
                r = s + int(np.flatnonzero((block < 0).any(axis=1))[0])
                raise ValueError(f"strategy {strategy!r}: probs has a negative entry (first at row {r})")
            sums = block.sum(axis=1, dtype=np.float64)
            off = np.abs(sums - 1.0) > PROB_SUM_TOL
            if off.any():
                r = int(np.argmax(off))
                raise ValueError(f"strategy {strategy!r}: probs rows must sum to 1 (softmax outputs, not logits); "
                                 f"row {s + r} sums to {sums[r]:.6g}")


def check_inputs(strategy: Strategy, budget, *, labeled_mask, probs, embeddings, seed, proxy=None) -> Pool:
    """The checks every strategy runs, cheapest first; the only full pass over the data (finiteness) comes last.

    Raises ValueError naming the problem, EmptyPoolError for N = 0 and PoolExhaustedError when all is labeled.
    Inputs the strategy does not require are checked for type and shape only.
    """
    name = strategy.name
    if not isinstance(labeled_mask, np.ndarray):
        raise ValueError(f"strategy {name!r}: labeled_mask must be a numpy bool array of length N, "
                         f"got {type(labeled_mask).__name__}")
    if labeled_mask.dtype != np.bool_:
        raise ValueError(f"strategy {name!r}: labeled_mask must have dtype bool, got {labeled_mask.dtype}")
    if labeled_mask.ndim != 1:
        raise ValueError(f"strategy {name!r}: labeled_mask must be 1-D (length N), got shape {labeled_mask.shape}")
    n = len(labeled_mask)
    if n == 0:
        raise EmptyPoolError(f"strategy {name!r}: the pool is empty (N = 0), there is nothing to select from")
    given = {"probs": probs, "embeddings": embeddings}
    for what in INPUTS:
        if given[what] is None:
            if what in strategy.requires:
                raise ValueError(f"strategy {name!r} requires {what}, got None")
            continue
        _check_array(name, what, given[what], n)
    if proxy is None and "proxy" in strategy.requires:
        raise ValueError(f"strategy {name!r} requires proxy, got None")
    if proxy is not None and not callable(proxy):
        raise ValueError(f"strategy {name!r}: proxy must be callable (embedding rows -> class scores), "
                         f"got {type(proxy).__name__}")
    if "probs" in strategy.requires and probs.shape[1] < strategy.min_classes:
        raise ValueError(f"strategy {name!r}: probs needs at least {strategy.min_classes} classes, "
                         f"got {probs.shape[1]}")
    unlabeled = np.flatnonzero(~labeled_mask)
    if len(unlabeled) == 0:
        raise PoolExhaustedError(f"strategy {name!r}: all {n} pool items are labeled, there is nothing to query")
    if not _is_int(budget):
        raise ValueError(f"strategy {name!r}: budget must be an integer, got {type(budget).__name__} {budget!r}")
    if budget <= 0:
        raise ValueError(f"strategy {name!r}: budget must be positive, got {budget}")
    if budget > len(unlabeled):
        raise ValueError(f"strategy {name!r}: budget {budget} exceeds the {len(unlabeled)} unlabeled items")
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"strategy {name!r}: seed must be a non-negative integer, got {seed!r}")
    for what in INPUTS:
        if what in strategy.requires:
            _check_values(name, what, given[what])
    return Pool(n=n, unlabeled=unlabeled.astype(np.int64, copy=False), labeled=labeled_mask, proxy=proxy)


def _check_output(name: str, out: np.ndarray, budget: int, pool: Pool) -> None:
    """Guard the contract on the way out (cheap: O(budget)); a failure here is a bug in the strategy."""
    if out.shape != (budget,) or len(np.unique(out)) != budget:
        raise RuntimeError(f"strategy {name!r} returned {out.shape} / non-distinct indices for budget {budget}")
    if out.min() < 0 or out.max() >= pool.n or pool.labeled[out].any():
        raise RuntimeError(f"strategy {name!r} returned an out-of-range or labeled index")


def check_option(strategy: str, option: str, value, ok: bool, allowed: str) -> None:
    """A constructor option's check (tests/test_strategy_options.py has one per option): a ValueError naming the
    strategy, the option and what it allows, at construction, instead of a crash deep in faiss or a silent default."""
    if not ok:
        raise ValueError(f"strategy {strategy!r}: {option}={value!r} is not allowed; {allowed}")


def is_flag(v) -> bool:
    """A real boolean (bool("no") is True, so a string must not pass as a flag)."""
    return isinstance(v, (bool, np.bool_))


def pick_priority(n: int) -> np.ndarray:
    """The score people see beside a query of n picks, in pick order: 1 - k/n for the k-th pick, so higher means
    ask sooner for every strategy (uncertainty sorts and set-based picks alike), in (0, 1]."""
    return 1.0 - np.arange(n, dtype=np.float64) / max(n, 1)


def top_by_score(scores: np.ndarray, candidates: np.ndarray, budget: int, *, largest: bool) -> np.ndarray:
    """The `budget` candidates with the smallest (or largest) score, ties broken by index (stable sort)."""
    key = -scores if largest else scores
    order = np.argsort(key, kind="stable")[:budget]
    return candidates[order]


def row_scores(probs: np.ndarray, rows: np.ndarray, fn, *, chunk_bytes: int = 8 << 20) -> np.ndarray:
    """`fn(block) -> per-row float64 score` over `probs[rows]`, read in chunks (rows sorted ascending)."""
    out = np.empty(len(rows), dtype=np.float64)
    step = max(1, chunk_bytes // max(1, probs.shape[1] * probs.itemsize))
    lo = 0
    n = probs.shape[0]
    for s in range(0, n, step):
        e = min(n, s + step)
        hi = np.searchsorted(rows, e, side="left")
        if hi > lo:
            block = np.asarray(probs[s:e])
            # contiguous read of the chunk, then keep the requested rows (cheaper than a scattered gather)
            out[lo:hi] = fn(block[rows[lo:hi] - s] if hi - lo < e - s else block)
        lo = hi
    return out
