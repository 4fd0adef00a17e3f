"""ActiveFT (Xie et al., CVPR 2023), single shot: move B centroids to match the pool's feature distribution, then
map each to its nearest unused item (algorithms.md §5.2, decisions.md §5).

The loss is the reference code's, not the paper's formula. With f_i the L2-normalised features, theta_j = c_j/|c_j|,
s_i = max_j f_i.theta_j / tau (argmax a_i) and S_j = sum_k exp(sg(theta_k).theta_j / tau) (k = j included):
L = -(1/n) sum_i [s_i - ln(exp(s_i) + lambda S_{a_i})], minimised with Adam (lr 1e-3) on the unconstrained c.

Why it is fast without changing the result:
- The gradient is written out (checked against autograd in the tests). Only the winning centroid of each item gets
  gradient from it, so the backward pass is a sparse scatter (N x D), not a second N x B x D product.
- The N x B argmax is not recomputed every step (`_Winners`): each item keeps its best centroids from its last full
  search with upper bounds that grow by each centroid's own path length, and only the cosines that could now win are
  computed again. The assignment is still the exact argmax at every step.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from raal.index import blas_threads, chunk_rows, iter_slices, knn, read_rows
from raal.strategies.base import Pool, Strategy

BOUND_SLACK = 1e-4  # covers float32 rounding of the similarities in the keep-the-winner tests
CANDIDATES = 16  # centroids remembered per item from its last full search
ROW_CHUNK = 1024  # rows per gathered block: the block of centroid rows stays in cache


@dataclass(frozen=True)
class ActiveFTConfig:
    iterations: int = 300
    batch: int = 100_000  # full batch when N <= batch, else a fresh random minibatch of this size per step
    lr: float = 1e-3
    tau: float = 0.07
    balance: float = 1.0  # lambda
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def __post_init__(self):
        if self.iterations < 0 or self.batch < 1:
            raise ValueError(f"ActiveFT needs iterations >= 0 and batch >= 1, got {self.iterations}, {self.batch}")
        if not (self.lr > 0 and self.tau > 0 and self.balance > 0):
            raise ValueError(f"ActiveFT needs lr, tau and balance > 0, got {self.lr}, {self.tau}, {self.balance}")


class _Adam:
    """torch.optim.Adam's update (no weight decay, no amsgrad), on a numpy array in place."""

    def __init__(self, shape, lr: float, betas: tuple[float, float], eps: float):
        self.m = np.zeros(shape, dtype=np.float32)
        self.v = np.zeros(shape, dtype=np.float32)
        self.lr, (self.b1, self.b2), self.eps, self.t = lr, betas, eps, 0

    def step(self, param: np.ndarray, grad: np.ndarray) -> None:
        self.t += 1
        self.m *= self.b1
        self.m += (1 - self.b1) * grad
        self.v *= self.b2
        self.v += (1 - self.b2) * grad * grad
        denom = np.sqrt(self.v) / np.float32(np.sqrt(1 - self.b2 ** self.t)) + np.float32(self.eps)
        param -= np.float32(self.lr / (1 - self.b1 ** self.t)) * self.m / denom


def _normalize_rows(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = np.sqrt(np.einsum("ij,ij->i", c, c))
    n = np.maximum(n, np.float32(1e-12))
    return c / n[:, None], n


def _row_dots(f: np.ndarray, theta: np.ndarray, assign: np.ndarray) -> np.ndarray:
    """f_i . theta_{assign_i} for every row, in cache-sized chunks (no N x D gather at once)."""
    out = np.empty(len(f), dtype=np.float32)
    for s, e in iter_slices(len(f), ROW_CHUNK):
        out[s:e] = np.einsum("ij,ij->i", f[s:e], theta[assign[s:e]])
    return out


def loss_and_grad(f: np.ndarray, theta: np.ndarray, n_fixed: int, c_norm: np.ndarray, assign: np.ndarray,
                  sim: np.ndarray, cfg: ActiveFTConfig) -> tuple[float, np.ndarray]:
    """Loss (up to the constant of items won by fixed centroids) and its gradient w.r.t. the trainable raw c.

    theta: all centroids, normalised, fixed ones first; assign/sim: exact winner and winning cosine per row of f.
    """
    n = len(f)
    tau = cfg.tau
    theta_tr = theta[n_fixed:]
    b = len(theta_tr)
    ssum = np.empty(b, dtype=np.float64)
    e_theta = np.empty_like(theta_tr)
    for s, e in iter_slices(b, max(1, chunk_rows(len(theta), 32 << 20))):
        ex = np.exp(theta_tr[s:e] @ theta.T / np.float32(tau))  # (group, K): <= e^(1/tau), fine in float32
        ssum[s:e] = ex.sum(axis=1, dtype=np.float64)
        e_theta[s:e] = ex @ theta
    mine = assign >= n_fixed
    rows = np.flatnonzero(mine)
    j = assign[rows] - n_fixed
    z = np.log(cfg.balance) + np.log(ssum[j]) - sim[rows].astype(np.float64) / tau
    w = 0.5 * (1.0 + np.tanh(0.5 * z))  # sigmoid(z) = lambda S / (e^s + lambda S), overflow-free
    loss = float(np.logaddexp(0.0, z).sum() / n)
    pull = sp.csr_matrix((w.astype(np.float32), (j, rows)), shape=(b, n)) @ f  # sum_{i won by j} w_i f_i
    push = np.bincount(j, weights=w / ssum[j], minlength=b)  # sum_{i won by j} lambda / (e^s_i + lambda S_j)
    g_theta = (push[:, None].astype(np.float32) * e_theta - pull) / np.float32(tau * n)
    radial = np.einsum("ij,ij->i", theta_tr, g_theta)
    return loss, (g_theta - theta_tr * radial[:, None]) / c_norm[:, None]


class _Winners:
    """Each item's winning centroid, kept exact across steps while computing as few cosines as possible.

    A full search (faiss, top M+1) gives an item its M best centroids (the candidates) with their cosines, and the
    (M+1)-th cosine, which bounds every other centroid. A stored cosine stays an upper bound if the centroid's path
    length since then is added: a unit item's cosine to a centroid that moved by delta changes by at most delta.
    Path lengths are tracked per centroid (Elkan's bounds), so a centroid that barely moves keeps its bound tight.
    Each step, per item: the exact cosine to its winner (one row dot, needed for the gradient anyway); then the exact
    cosine to just those candidates whose bound reaches it (these are stored back, tight again); a full search only
    when the bound on the non-candidates reaches it. The winner is therefore the exact argmax at every step.
    """

    def __init__(self, n: int, n_centroids: int, m: int, steps: int):
        self.m = min(m, n_centroids)
        self.k = min(self.m + 1, n_centroids)
        self.cand = np.full((n, self.m), -1, dtype=np.int32)  # slot 0 is the winner
        # a candidate's bound is base + path[now, centroid], with base = cosine - path[then, centroid] stored
        self.base = np.zeros((n, self.m), dtype=np.float32)
        self.rest = np.full(n, np.inf, dtype=np.float32)
        self.rest_at = np.zeros(n, dtype=np.int32)
        self.path = np.zeros((steps + 1, n_centroids), dtype=np.float32)  # cumulative path length per centroid
        self.t = 0
        self.searched = self.cosines = 0

    def moved(self, delta: np.ndarray) -> None:
        """Record one step's movement per centroid."""
        self.path[self.t + 1] = self.path[self.t] + delta
        self.t += 1

    def update(self, f: np.ndarray, theta: np.ndarray, rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Exact (winner, winning cosine) for the items `rows` (all items when None) whose features are f."""
        if rows is None:  # full batch: work on the state itself
            cand, base, rest, rest_at = self.cand, self.base, self.rest, self.rest_at
        else:
            cand, base, rest, rest_at = self.cand[rows], self.base[rows], self.rest[rows], self.rest_at[rows]
        now = self.path[self.t]
        known = cand[:, 0] >= 0
        ids = np.maximum(cand, 0)
        sim = _row_dots(f, theta, ids[:, 0])
        stamps, inv = np.unique(rest_at, return_inverse=True)
        rest_ub = rest + (now[None, :] - self.path[stamps]).max(axis=1)[inv]
        full = np.flatnonzero(~known | (rest_ub >= sim - BOUND_SLACK))
        need = base[:, 1:] + now[ids[:, 1:]] >= (sim - BOUND_SLACK)[:, None]
        need[full] = False
        items = np.flatnonzero(need.any(axis=1))
        self.cosines += int(need.sum())
        fresh = np.full((len(items), self.m), -np.inf, dtype=np.float32)  # this step's exact cosines
        fresh[:, 0] = sim[items]
        for s, e in iter_slices(len(items), ROW_CHUNK):
            it = items[s:e]
            fb = f[it]
            for j in range(1, self.m):
                sub = np.flatnonzero(need[it, j - 1])
                if len(sub):
                    fresh[s + sub, j] = np.einsum("ij,ij->i", fb[sub], theta[ids[it[sub], j]])
        got = np.isfinite(fresh)
        base_items = base[items]
        base_items[got] = (fresh - now[ids[items]])[got]
        best = fresh.argmax(axis=1)
        swap = best > 0  # a candidate now beats the winner: swap it into slot 0
        mv, bpos = items[swap], best[swap]
        for arr in (cand, base_items):
            rows_ = mv if arr is cand else np.flatnonzero(swap)
            w = arr[rows_, 0].copy()
            arr[rows_, 0] = arr[rows_, bpos]
            arr[rows_, bpos] = w
        base[items] = base_items
        sim[mv] = fresh[swap, bpos]
        if len(full):
            self.searched += len(full)
            d, i = knn(f, theta, self.k, metric="ip", query_rows=full)
            cand[full] = i[:, :self.m]
            base[full] = d[:, :self.m] - now[i[:, :self.m]]
            sim[full] = d[:, 0]
            rest[full] = d[:, self.m] if self.k > self.m else -np.inf
            rest_at[full] = self.t
        if rows is not None:
            self.cand[rows], self.base[rows], self.rest[rows], self.rest_at[rows] = cand, base, rest, rest_at
        return cand[:, 0].astype(np.int64), sim


def optimise_centroids(x: np.ndarray, init_rows: np.ndarray, cfg: ActiveFTConfig, rng: np.random.Generator, *,
                       fixed_rows: np.ndarray | None = None, stats: dict | None = None,
                       _check_assign: bool = False) -> tuple[np.ndarray, list[float]]:
    """Run ActiveFT's optimisation; returns the normalised trainable centroids (in init order) and the losses.

    `init_rows` seed the trainable centroids; `fixed_rows` (ActiveFT(al), §5.3) are extra centroids that compete for
    items and repel, but do not move. Features are the L2-normalised rows of `x`, read in chunks. `stats`, when
    given, receives how many item-steps needed a candidate check or a full search. `_check_assign` (tests)
    compares every step's winners with a full argmax.
    """
    n, dim = x.shape
    fixed_rows = np.zeros(0, dtype=np.int64) if fixed_rows is None else np.asarray(fixed_rows, dtype=np.int64)
    n_fixed = len(fixed_rows)
    theta = np.empty((n_fixed + len(init_rows), dim), dtype=np.float32)
    if n_fixed:
        theta[:n_fixed] = read_rows(x, 0, n_fixed, fixed_rows, normalize=True)
    c = read_rows(x, 0, len(init_rows), np.asarray(init_rows, dtype=np.int64), normalize=True).copy()
    theta[n_fixed:], c_norm = _normalize_rows(c)
    full = n <= cfg.batch
    feats = None
    if full:
        feats = np.empty((n, dim), dtype=np.float32)
        for s, e in iter_slices(n, chunk_rows(dim)):
            feats[s:e] = read_rows(x, s, e, normalize=True)
    win = _Winners(n, len(theta), CANDIDATES, cfg.iterations)
    # below ~4e9 multiply-adds the centroid products run best on one BLAS thread (no waiting on a second one)
    small = (len(theta) - n_fixed) * len(theta) * dim < 1 << 32
    adam = _Adam(c.shape, cfg.lr, cfg.betas, cfg.eps)
    losses: list[float] = []
    for _ in range(cfg.iterations):
        if full:
            rows, f = None, feats
        else:
            rows = np.sort(rng.choice(n, size=cfg.batch, replace=False))
            f = read_rows(x, 0, len(rows), rows, normalize=True)
        a, sim = win.update(f, theta, rows)
        if _check_assign:
            full_sims = f @ theta.T
            assert np.all(full_sims[np.arange(len(f)), a] >= full_sims.max(axis=1) - 1e-5), "winner is not argmax"
            np.testing.assert_allclose(sim, full_sims[np.arange(len(f)), a], atol=1e-5)
        with blas_threads(1) if small else contextlib.nullcontext():
            loss, grad = loss_and_grad(f, theta, n_fixed, c_norm, a, sim, cfg)
        losses.append(loss)
        adam.step(c, grad)
        old = theta[n_fixed:].copy()
        theta[n_fixed:], c_norm = _normalize_rows(c)
        delta = np.zeros(len(theta), dtype=np.float32)
        delta[n_fixed:] = np.sqrt(np.einsum("ij,ij->i", theta[n_fixed:] - old, theta[n_fixed:] - old))
        win.moved(delta)
    if stats is not None:
        stats.update(item_steps=cfg.iterations * (n if full else cfg.batch), searched=win.searched,
                     candidate_cosines=win.cosines)
    return theta[n_fixed:].copy(), losses


def map_to_items(x: np.ndarray, centroids: np.ndarray, exclude: np.ndarray) -> np.ndarray:
    """For each centroid in order, the most cosine-similar item not yet taken and not excluded (§5.2 mapping).

    Always returns len(centroids) distinct items. Searches the top k items per centroid with faiss and doubles k only
    for the centroids that ran out (e.g. many identical centroids, T-F1).
    """
    cand = np.flatnonzero(~exclude)
    b = len(centroids)
    taken = np.zeros(len(x), dtype=bool)
    out = np.empty(b, dtype=np.int64)
    k = min(len(cand), 16)
    j0 = 0
    while j0 < b:
        first = j0
        _, ids = knn(centroids, x, k, metric="ip", query_rows=np.arange(first, b), base_rows=cand, normalize=True)
        for j in range(first, b):
            row = ids[j - first]
            free = row[~taken[row]]
            if not len(free):
                break
            out[j] = free[0]
            taken[free[0]] = True
            j0 = j + 1
        k = min(len(cand), 2 * k)
    return out


class ActiveFT(Strategy):
    """Single-shot ActiveFT: B = budget centroids seeded on random unlabeled items, optimised over the whole pool's
    features (300 full-batch steps up to 100,000 items, minibatches of 100,000 beyond), mapped to distinct
    unlabeled items. Returned in centroid order."""

    name = "activeft"
    requires = frozenset({"embeddings"})

    def __init__(self, iterations: int = 300, batch: int = 100_000, lr: float = 1e-3, tau: float = 0.07,
                 balance: float = 1.0):
        self.cfg = ActiveFTConfig(iterations=int(iterations), batch=int(batch), lr=lr, tau=tau, balance=balance)

    def _select(self, budget: int, pool: Pool, *, probs, embeddings, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        init = rng.choice(pool.unlabeled, size=budget, replace=False)
        theta, _ = optimise_centroids(embeddings, init, self.cfg, rng)
        return map_to_items(embeddings, theta, pool.labeled)
