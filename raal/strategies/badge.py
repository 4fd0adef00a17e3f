"""BADGE: k-means++ seeding on hallucinated last-layer gradients (docs/algorithms.md §6).

The gradient embedding of item x is g_x = (e_yhat - p_x) (outer) h_x, where yhat = argmax p_x and h_x is the
penultimate embedding. It is never formed (C x d numbers per item): with a = e_yhat - p,
||g_x - g_z||^2 = |a_x|^2 |h_x|^2 + |a_z|^2 |h_z|^2 - 2 (a_x . a_z)(h_x . h_z).
"""
from __future__ import annotations

import numpy as np

from raal.index import blas_threads
from raal.strategies.base import Pool, Strategy

TOL = 1e-10  # squared distances below TOL * (|g_x|^2 + |g_z|^2) are float64 rounding of a true 0 (a duplicate)
CHUNK_BYTES = 32 << 20
CENTRE_GROUP = 1024  # centres per product at most
PAIR_BLOCK = 1 << 20  # (rows x centres) float64 entries per temporary: 8 MB
SAMPLE_BLOCK = 1024  # items per block of the two-level D^2 sampler
SYNC_MIN_ATTEMPTS = 32  # proposals seen before the acceptance rate may trigger a full re-sync
GEMV_PENALTY = 16  # a single-item update's multiply-add costs about this many of a full pass's (GEMV vs GEMM)


def grad_factors(probs_rows: np.ndarray, emb_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a = e_yhat - p, h, |a|^2 |h|^2) in float64 for a block of rows."""
    a = -np.asarray(probs_rows, dtype=np.float64)
    a[np.arange(len(a)), np.argmin(a, axis=1)] += 1.0  # argmin of -p is argmax p (first on ties)
    h = np.asarray(emb_rows, dtype=np.float64)
    g = np.einsum("ij,ij->i", a, a) * np.einsum("ij,ij->i", h, h)
    return a, h, g


def grad_sq_dist(a: np.ndarray, h: np.ndarray, g: np.ndarray, ac: np.ndarray, hc: np.ndarray,
                 gc: np.ndarray) -> np.ndarray:
    """Squared distances between the gradient embeddings of rows (a, h) and centres (ac, hc): (rows, centres).

    Factorised (no C x d vectors); clipped at 0, and set to exactly 0 below the rounding level, so that an item
    identical to a centre has probability 0.
    """
    d = g[:, None] + gc[None, :] - 2.0 * (a @ ac.T) * (h @ hc.T)
    d[d <= TOL * (g[:, None] + gc[None, :])] = 0.0
    return d


def _read(arr: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """arr[rows] for sorted rows: a slice when they are contiguous, else a gather of just those rows."""
    if len(rows) and rows[-1] - rows[0] == len(rows) - 1:
        return np.asarray(arr[rows[0]:rows[-1] + 1])
    return np.asarray(arr[rows])


class _Centres:
    """The chosen centres' factors, float64, grown in place."""

    def __init__(self, budget: int, c: int, d: int):
        self.a = np.empty((budget, c))
        self.h = np.empty((budget, d))
        self.g = np.empty(budget)
        self.k = 0

    def add(self, a: np.ndarray, h: np.ndarray, g: float) -> None:
        self.a[self.k], self.h[self.k], self.g[self.k] = a, h, g
        self.k += 1

    def min_sq_dist(self, a, h, g, start: int) -> np.ndarray:
        """Min squared distance of rows (a, h, g) to centres start..k-1 (+inf when there are none)."""
        out = np.full(len(a), np.inf)
        group = max(16, min(CENTRE_GROUP, PAIR_BLOCK // max(1, len(a))))  # bound the (rows x centres) temporaries
        for s in range(start, self.k, group):
            e = min(self.k, s + group)
            np.minimum(out, grad_sq_dist(a, h, g, self.a[s:e], self.h[s:e], self.g[s:e]).min(axis=1), out=out)
        return out


def badge_select(probs: np.ndarray, emb: np.ndarray, cand: np.ndarray, budget: int, seed: int, *,
                 min_accept: float = 0.25, chunk_bytes: int = CHUNK_BYTES, stats: dict | None = None) -> np.ndarray:
    """BADGE's k-means++ seeding over the candidate rows `cand` (sorted); returns `budget` rows in pick order.

    First pick: the largest gradient norm. Then exact D^2 sampling, P(x) = D(x)^2 / sum D^2 with D the Euclidean
    distance to the nearest chosen centre, uniform over the unchosen items when every D is 0.

    Exact, but lazy. u(x) >= D(x)^2 is kept per item with the number of centres it accounts for; D only shrinks as
    centres are added, so a stale u is an upper bound. Each draw proposes x with probability u(x) / sum u (a
    two-level cumulative sum), brings that one item up to date against the centres it missed, and accepts it with
    probability D(x)^2 / u(x); a rejected item keeps its now exact value. Conditional on acceptance, x is drawn with
    probability D(x)^2 / sum D^2 exactly, whatever state u is in. When fewer than `min_accept` of recent proposals
    are accepted, or when the single-item updates since the last pass have cost more than a pass would (each one
    grows with the centres its item missed), one chunked pass brings every u up to date (a GEMM against the missed
    centres). So a pick costs a few single-item updates instead of a pass over N items, and the passes that remain
    are matrix-matrix work.
    `stats`, when given, receives the counts of proposals, rejections and full passes.
    """
    m = len(cand)
    c, d = probs.shape[1], emb.shape[1]
    rows = max(1, int(chunk_bytes) // (8 * (c + d)))
    rng = np.random.default_rng(seed)

    g_all = np.empty(m)
    for lo in range(0, m, rows):
        g_all[lo:lo + rows] = grad_factors(_read(probs, cand[lo:lo + rows]), _read(emb, cand[lo:lo + rows]))[2]
    centres = _Centres(budget, c, d)
    chosen = np.zeros(m, dtype=bool)
    u = np.zeros(m)                       # upper bound on D^2 per item (0 once chosen)
    synced = np.zeros(m, dtype=np.int64)  # centres accounted for in u
    picks: list[int] = []

    def choose(i: int) -> None:
        a, h, g = grad_factors(_read(probs, cand[i:i + 1]), _read(emb, cand[i:i + 1]))
        centres.add(a[0], h[0], g[0])
        chosen[i] = True
        u[i] = 0.0
        picks.append(i)

    def sync_all() -> None:
        """Bring every u up to date against the centres it missed (chunked; one GEMM group per chunk)."""
        start = int(synced.min())
        for lo in range(0, m, rows):
            a, h, g = grad_factors(_read(probs, cand[lo:lo + rows]), _read(emb, cand[lo:lo + rows]))
            np.minimum(u[lo:lo + rows], centres.min_sq_dist(a, h, g, start), out=u[lo:lo + rows])
        u[chosen] = 0.0
        synced[:] = centres.k

    choose(int(np.argmax(g_all)))
    del g_all
    u[~chosen] = np.inf
    sync_all()
    starts = np.arange(0, m, SAMPLE_BLOCK)
    nb = len(starts)
    bsum = np.add.reduceat(u, starts)
    attempts = accepts = 0
    refresh_work = 0  # centre-item products spent in single-item updates since the last full pass
    last_pass_k = centres.k
    counts = {"proposals": 0, "rejections": 0, "full_passes": 1, "uniform_fallback": 0}
    # the single-item updates are thin products: one BLAS thread is faster; a full pass gets the default back
    with blas_threads(1) as default:
        while len(picks) < budget:
            total = float(bsum.sum())
            if not total > 0.0:  # every remaining D is 0 and stays 0 (duplicates): uniform over the rest
                rest = rng.choice(np.flatnonzero(~chosen), size=budget - len(picks), replace=False)
                picks.extend(int(i) for i in rest)
                counts["uniform_fallback"] = len(rest)
                break
            cum = np.cumsum(bsum)
            r = rng.random() * total
            b = min(int(np.searchsorted(cum, r, side="right")), nb - 1)
            lo = b * SAMPLE_BLOCK
            ub = u[lo:lo + SAMPLE_BLOCK]
            j = min(int(np.searchsorted(np.cumsum(ub), r - (cum[b] - bsum[b]), side="right")), len(ub) - 1)
            i = lo + j
            if not u[i] > 0.0:  # rounding at a block edge landed on a zero weight: redraw
                bsum[b] = ub.sum()
                continue
            attempts += 1
            counts["proposals"] += 1
            k = centres.k
            if synced[i] < k:
                refresh_work += k - int(synced[i])
                a, h, g = grad_factors(_read(probs, cand[i:i + 1]), _read(emb, cand[i:i + 1]))
                true = min(u[i], float(centres.min_sq_dist(a, h, g, int(synced[i]))[0]))
            else:
                true = u[i]
            accept = rng.random() * u[i] < true
            u[i], synced[i] = true, k
            if accept:
                accepts += 1
                choose(i)
            else:
                counts["rejections"] += 1
            bsum[b] = ub.sum()
            stale = not accept and attempts >= SYNC_MIN_ATTEMPTS and accepts < min_accept * attempts
            if stale or GEMV_PENALTY * refresh_work > m * (centres.k - last_pass_k + 4):
                refresh_work, last_pass_k = 0, centres.k
                with blas_threads(default or 1):
                    sync_all()
                counts["full_passes"] += 1
                bsum = np.add.reduceat(u, starts)
                attempts = accepts = 0
    if stats is not None:
        stats.update(counts)
    return cand[np.asarray(picks, dtype=np.int64)]


class Badge(Strategy):
    """BADGE (Ash et al. 2020) with per-sample gradients (no batch-size factor), the factorised distance, the
    largest-norm item first and exact D^2 sampling; see `badge_select`. Labeled items are neither candidates nor
    centres, as in the original."""

    name = "badge"
    requires = frozenset({"probs", "embeddings"})

    def __init__(self, min_accept: float = 0.25):
        if not 0.0 < min_accept < 1.0:
            raise ValueError(f"min_accept must be in (0, 1), got {min_accept}")
        self.min_accept = float(min_accept)

    def _select(self, budget: int, pool: Pool, *, probs, embeddings, seed: int) -> np.ndarray:
        return badge_select(probs, embeddings, pool.unlabeled, budget, seed, min_accept=self.min_accept)
