"""ActiveFT (Xie et al., CVPR 2023), single shot: move B centroids to match the pool's feature distribution, then
map each to its nearest unused item (docs/algorithms.md §5.2).

The loss is the reference code's, not the paper's formula. With f_i the L2-normalised features, theta_j = c_j/|c_j|,
s_i = max_j f_i.theta_j / tau (argmax a_i) and S_j = sum_k exp(sg(theta_k).theta_j / tau) (k = j included):
L = -(1/n) sum_i [s_i - ln(exp(s_i) + lambda S_{a_i})], minimised with Adam (lr 1e-3) on the unconstrained c.

Why it is fast without changing the result:
- The gradient is written out (checked against autograd in the tests). Only the winning centroid of each item gets
  gradient from it, so the backward pass is a sparse scatter (N x D), not a second N x B x D product.
- The N x B argmax is not recomputed every step (`_Winners`): each item keeps its best centroids from its last full
  search with upper bounds that grow by each centroid's own path length, and only the cosines that could now win are
  computed again. The assignment is still the exact argmax at every step.
- Those cosines are faiss's indexed inner products (no gathered copies of rows); the features are x_i times 1/|x_i|,
  so a float32 pool is read in place, never copied or normalised whole.
- The step's centroid-only products (S_j and its gradient term, 2 B K D multiply-adds) run in a second thread while
  the main thread settles the winners: on 2 cores the two halves of a step overlap. faiss runs single-threaded
  inside the loop (a nested 2-thread call would wait for the core the other half is using).
- The winners' cosines are one indexed-product call over the pool in place, and the gradient's pull term
  (sum over the items each centroid won) is one CSC product whose columns are the items in order: f is read
  sequentially once per pass, with no sort and no gathered copy (before: rows gathered by winner, 2x slower).
- Memory: besides the input, a few B x D arrays (centroids, raw c, Adam's moments, two gradient terms) and O(N x 16)
  winner state; the Adam update, renormalisation and searches work in row blocks.
"""
from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import faiss
import numpy as np
import scipy.sparse as sp

from raal.index import blas_threads, chunk_rows, iter_slices, knn, read_rows
from raal.strategies.base import Pool, Strategy

BOUND_SLACK = 1e-4  # covers float32 rounding of the similarities in the keep-the-winner tests
CANDIDATES = 16  # centroids remembered per item from its last full search
ROW_CHUNK = 1024  # rows per block of the centroid-side loops
SEARCH_BYTES = 16 << 20  # query block of a full search
FAISS_DOTS = 1 << 22  # multiply-adds from which indexed dots go to faiss (a 50,000-item winner pass is 10x this)


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
        """One update, in place, in row blocks (no temporaries the size of the parameters)."""
        self.t += 1
        b1, b2 = np.float32(self.b1), np.float32(self.b2)
        bc2 = np.float32(np.sqrt(1 - self.b2 ** self.t))
        step = np.float32(self.lr / (1 - self.b1 ** self.t))
        for s, e in iter_slices(len(param), ROW_CHUNK):
            g, m, v = grad[s:e], self.m[s:e], self.v[s:e]
            m *= b1
            m += g * np.float32(1 - self.b1)
            v *= b2
            v += g * g * np.float32(1 - self.b2)
            denom = np.sqrt(v) / bc2 + np.float32(self.eps)
            param[s:e] -= step * m / denom


@contextlib.contextmanager
def _faiss_threads(n: int):
    """faiss's OpenMP threads for calls from this thread, restored after: the step loop already keeps both cores
    busy with its two threads, and a nested 2-thread faiss call on top waits at its barrier for a busy core."""
    prev = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(prev)


def _normalize_rows(c: np.ndarray, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    n = np.sqrt(np.einsum("ij,ij->i", c, c))
    n = np.maximum(n, np.float32(1e-12))
    return np.divide(c, n[:, None], out=out), n


def _inv_norms(f: np.ndarray) -> np.ndarray:
    """1/|f_i| per row (float32), in row chunks: feature i is f_i times this, no normalised copy of f is made."""
    out = np.empty(len(f), dtype=np.float32)
    for s, e in iter_slices(len(f), ROW_CHUNK):
        out[s:e] = np.einsum("ij,ij->i", f[s:e], f[s:e])
    np.sqrt(out, out=out)
    return np.divide(np.float32(1), np.maximum(out, np.float32(1e-12)), out=out)


def _as_float32_rows(x: np.ndarray) -> np.ndarray:
    """The pool itself when it is C-contiguous float32 (read in place), else one float32 copy made in chunks."""
    if x.dtype == np.float32 and x.flags.c_contiguous:
        return x
    out = np.empty(x.shape, dtype=np.float32)
    for s, e in iter_slices(len(x), chunk_rows(x.shape[1])):
        out[s:e] = x[s:e]
    return out


def centroid_terms(theta: np.ndarray, n_fixed: int, tau: float) -> tuple[np.ndarray, np.ndarray]:
    """S_j = sum_k exp(theta_k.theta_j / tau) (float64) and sum_k exp(theta_k.theta_j / tau) theta_k for every
    trainable j: the two B x K x D products of a step, in row groups so the K-wide exp block stays ~32 MB."""
    theta_tr = theta[n_fixed:]
    b = len(theta_tr)
    ssum = np.empty(b, dtype=np.float64)
    e_theta = np.empty_like(theta_tr)
    for s, e in iter_slices(b, max(1, chunk_rows(len(theta), 32 << 20))):
        ex = theta_tr[s:e] @ theta.T  # (group, K); exp <= e^(1/tau): fine in float32
        np.divide(ex, np.float32(tau), out=ex)
        np.exp(ex, out=ex)
        ssum[s:e] = ex.sum(axis=1, dtype=np.float64)
        np.matmul(ex, theta, out=e_theta[s:e])
    return ssum, e_theta


def loss_and_grad(f: np.ndarray, theta: np.ndarray, n_fixed: int, c_norm: np.ndarray, assign: np.ndarray,
                  sim: np.ndarray, cfg: ActiveFTConfig, scale: np.ndarray | None = None,
                  terms: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[float, np.ndarray]:
    """Loss (up to the constant of items won by fixed centroids) and its gradient w.r.t. the trainable raw c.

    theta: all centroids, normalised, fixed ones first; assign/sim: exact winner and winning cosine per row of f.
    The features are the rows of f times `scale` (their inverse norms) when given, else f itself. `terms`: this
    step's `centroid_terms`, when already computed (they are overwritten).
    """
    n = len(f)
    tau = cfg.tau
    theta_tr = theta[n_fixed:]
    b = len(theta_tr)
    ssum, e_theta = centroid_terms(theta, n_fixed, tau) if terms is None else terms
    rows = np.flatnonzero(assign >= n_fixed)
    j = assign[rows] - n_fixed
    z = np.log(cfg.balance) + np.log(ssum[j]) - sim[rows].astype(np.float64) / tau
    w = 0.5 * (1.0 + np.tanh(0.5 * z))  # sigmoid(z) = lambda S / (e^s + lambda S), overflow-free
    loss = float(np.logaddexp(0.0, z).sum() / n)
    wf = w.astype(np.float32)
    if scale is not None:
        wf *= scale[rows]
    # sum_{i won by j} w_i f_i: one sparse product whose columns are the items in order (CSC, one nonzero each), so
    # f is read once, sequentially, and each row is added into its winner's accumulator (no sort, no gather)
    indptr = np.zeros(n + 1, dtype=np.int64)
    indptr[rows + 1] = 1
    np.cumsum(indptr, out=indptr)
    pull = sp.csc_matrix((wf, j, indptr), shape=(b, n)) @ f
    push = np.bincount(j, weights=w / ssum[j], minlength=b)  # sum_{i won by j} lambda / (e^s_i + lambda S_j)
    g = e_theta  # reused in place: g = (push e_theta - pull) / (tau n), then its tangential part / |c|
    g *= push[:, None].astype(np.float32)
    g -= pull
    g /= np.float32(tau * n)
    radial = np.einsum("ij,ij->i", theta_tr, g)
    np.multiply(theta_tr, radial[:, None], out=pull)
    g -= pull
    g /= c_norm[:, None]
    return loss, g


def _dots_by_index(f: np.ndarray, theta: np.ndarray, ids: np.ndarray, scale: np.ndarray | None, *,
                   use_faiss: bool | None = None) -> np.ndarray:
    """out[i, j] = scale_i f_i . theta[ids[i, j]] (-inf where ids < 0).

    Large calls go to faiss's indexed inner products (threaded, no gathered copies of rows); small ones, where
    faiss's thread start-up on a busy machine costs more than the dots, to numpy.
    """
    out = np.full(ids.shape, -np.inf, dtype=np.float32)
    if use_faiss is None:
        use_faiss = ids.size * f.shape[1] >= FAISS_DOTS
    if use_faiss:
        f, theta = np.ascontiguousarray(f, dtype=np.float32), np.ascontiguousarray(theta, dtype=np.float32)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        # faiss's bundled __init__.pyi lacks this SWIG function (the library has it)
        faiss.fvec_inner_products_by_idx(  # type: ignore[attr-defined]
            faiss.swig_ptr(out), faiss.swig_ptr(f), faiss.swig_ptr(theta), faiss.swig_ptr(ids), f.shape[1], len(f),
            ids.shape[1])
    else:
        r, j = np.nonzero(ids >= 0)
        for s, e in iter_slices(len(r), ROW_CHUNK):  # bounded gathers
            out[r[s:e], j[s:e]] = np.einsum("ij,ij->i", f[r[s:e]], theta[ids[r[s:e], j[s:e]]])
    if scale is not None:
        out *= scale[:, None]
    return out


def _search(f: np.ndarray, theta: np.ndarray, rows: np.ndarray, scale: np.ndarray | None, k: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """Top-k cosines and centroids of the items `rows`, exact (faiss), their rows gathered and scaled in ~16 MB
    blocks; the centroids are searched in place."""
    d = np.empty((len(rows), k), dtype=np.float32)
    i = np.empty((len(rows), k), dtype=np.int64)
    for s, e in iter_slices(len(rows), chunk_rows(f.shape[1], SEARCH_BYTES)):
        q = np.ascontiguousarray(f[rows[s:e]], dtype=np.float32)
        if scale is not None:
            q *= scale[rows[s:e], None]
        d[s:e], i[s:e] = knn(q, theta, k, metric="ip")
    return d, i


class _Winners:
    """Each item's winning centroid, kept exact across steps while computing as few cosines as possible.

    A full search (top M+1) gives an item its M best centroids (the candidates) with their cosines, and the
    (M+1)-th cosine, which bounds every other centroid. A stored cosine stays an upper bound if the centroid's path
    length since then is added: a unit item's cosine to a centroid that moved by delta changes by at most delta.
    Path lengths are tracked per centroid (Elkan's bounds), so a centroid that barely moves keeps its bound tight.
    Each step, per item: the exact cosine to its winner (one row dot, needed for the gradient anyway); then the exact
    cosine to just those candidates whose bound reaches it (these are stored back, tight again); a full search only
    when the bound on the non-candidates reaches it. The winner is therefore the exact argmax at every step.

    The winner dots and the candidate checks are faiss's indexed inner products: no feature or centroid row is
    gathered into a copy, and only the (item, centroid) pairs that need it are computed.
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

    def update(self, f: np.ndarray, theta: np.ndarray, rows: np.ndarray | None, scale: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Exact (winner, winning cosine) for the items `rows` (all items when None) whose features are f (times
        `scale`, their inverse norms, when given)."""
        if rows is None:  # full batch: work on the state itself
            cand, base, rest, rest_at = self.cand, self.base, self.rest, self.rest_at
        else:
            cand, base, rest, rest_at = self.cand[rows], self.base[rows], self.rest[rows], self.rest_at[rows]
        now = self.path[self.t]
        # how far any centroid has moved since step t': bounds every centroid outside an item's candidates
        grow = (now[None, :] - self.path[:self.t + 1]).max(axis=1)
        ids = cand.astype(np.int64)
        sim = _dots_by_index(f, theta, np.ascontiguousarray(ids[:, :1]), scale)[:, 0]  # -inf where unknown
        thr = sim - BOUND_SLACK
        search = (ids[:, 0] < 0) | (rest + grow[rest_at] >= thr)
        live = np.maximum(ids, 0)
        base[:, 0] = sim - now[live[:, 0]]  # the winner's bound, tight again
        need = base[:, 1:] + now[live[:, 1:]] >= thr[:, None]
        need[search] = False
        rows_c = np.flatnonzero(need.any(axis=1))
        if len(rows_c):
            need, ids_c = need[rows_c], ids[rows_c, 1:]
            self.cosines += int(np.count_nonzero(need))
            q = np.where(need, ids_c, -1)
            if len(rows_c) * 8 > len(f):  # many items to check: index the features in place
                q_all = np.full((len(f), q.shape[1]), -1, dtype=np.int64)
                q_all[rows_c] = q
                cs = _dots_by_index(f, theta, q_all, scale)[rows_c]
            else:  # few: gather just their rows
                cs = _dots_by_index(f[rows_c], theta, q, None if scale is None else scale[rows_c])
            b_c = base[rows_c, 1:]
            np.copyto(b_c, cs - now[np.maximum(ids_c, 0)], where=need)
            base[rows_c, 1:] = b_c
            slot = cs.argmax(axis=1)  # the best candidate, lowest slot on ties
            best = cs[np.arange(len(cs)), slot]
            beat = np.flatnonzero(best > sim[rows_c])  # it beats the winner: swap it into slot 0
            mv, ss = rows_c[beat], slot[beat] + 1
            cand[mv, 0], cand[mv, ss] = cand[mv, ss], cand[mv, 0].copy()
            base[mv, 0], base[mv, ss] = base[mv, ss], base[mv, 0].copy()
            sim[mv] = best[beat]
        full = np.flatnonzero(search)
        if len(full):
            self.searched += len(full)
            d, i = _search(f, theta, full, scale, self.k)
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
    items and repel, but do not move. Feature i is x_i / |x_i|, applied as a per-row scale: a float32 C-contiguous
    pool is read in place (full batch), a minibatch is gathered raw; no normalised copy is made. `stats`, when
    given, receives how many item-steps needed a candidate check or a full search. `_check_assign` (tests)
    compares every step's winners with a full argmax.

    Each step's centroid products (S_j and its gradient term, depending on the centroids only) run in a second
    thread while the main thread finds the winners over the features: the two halves of a step use both cores.
    """
    n, dim = x.shape
    fixed_rows = np.zeros(0, dtype=np.int64) if fixed_rows is None else np.asarray(fixed_rows, dtype=np.int64)
    n_fixed = len(fixed_rows)
    theta = np.empty((n_fixed + len(init_rows), dim), dtype=np.float32)
    if n_fixed:
        theta[:n_fixed] = read_rows(x, 0, n_fixed, fixed_rows, normalize=True)
    c = read_rows(x, 0, len(init_rows), np.asarray(init_rows, dtype=np.int64), normalize=True).copy()
    c_norm = _normalize_rows(c, out=theta[n_fixed:])[1].astype(np.float32)
    full = n <= cfg.batch
    feats = scale = None
    if full:
        feats = _as_float32_rows(x)
        scale = _inv_norms(feats)
    win = _Winners(n, len(theta), CANDIDATES, cfg.iterations)
    # below ~4e9 multiply-adds the centroid products run best on one BLAS thread (no waiting on a second one)
    small = (len(theta) - n_fixed) * len(theta) * dim < 1 << 32
    adam = _Adam(c.shape, cfg.lr, cfg.betas, cfg.eps)
    losses: list[float] = []

    def terms():
        with blas_threads(1) if small else contextlib.nullcontext():
            return centroid_terms(theta, n_fixed, cfg.tau)

    with ThreadPoolExecutor(max_workers=1) as pool, _faiss_threads(1):
        for _ in range(cfg.iterations):
            if full:
                rows, f = None, feats
                assert f is not None and scale is not None, "both are set before the loop when full"
            else:
                rows = np.sort(rng.choice(n, size=cfg.batch, replace=False))
                f = read_rows(x, 0, len(rows), rows)
                scale = _inv_norms(f)
            pending = pool.submit(terms)
            try:
                a, sim = win.update(f, theta, rows, scale)
            finally:
                ts = pending.result()
            if _check_assign:
                full_sims = (f @ theta.T) * scale[:, None]
                assert np.all(full_sims[np.arange(len(f)), a] >= full_sims.max(axis=1) - 1e-5), "winner is not argmax"
                np.testing.assert_allclose(sim, full_sims[np.arange(len(f)), a], atol=1e-5)
            with blas_threads(1) if small else contextlib.nullcontext():
                loss, grad = loss_and_grad(f, theta, n_fixed, c_norm, a, sim, cfg, scale, ts)
            del ts, f
            losses.append(loss)
            adam.step(c, grad)
            del grad
            # renormalise in row blocks, recording how far each centroid moved (no copy of the old centroids)
            delta = np.zeros(len(theta), dtype=np.float32)
            for s, e in iter_slices(len(c), ROW_CHUNK):
                new, c_norm[s:e] = _normalize_rows(c[s:e])
                cur = theta[n_fixed + s:n_fixed + e]
                cur -= new
                delta[n_fixed + s:n_fixed + e] = np.sqrt(np.einsum("ij,ij->i", cur, cur))
                cur[:] = new
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
    chooses_first_batch = True

    def __init__(self, iterations: int = 300, batch: int = 100_000, lr: float = 1e-3, tau: float = 0.07,
                 balance: float = 1.0):
        self.cfg = ActiveFTConfig(iterations=int(iterations), batch=int(batch), lr=lr, tau=tau, balance=balance)

    def _select(self, budget: int, pool: Pool, *, probs, embeddings, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        init = rng.choice(pool.unlabeled, size=budget, replace=False)
        theta, _ = optimise_centroids(embeddings, init, self.cfg, rng)
        return map_to_items(embeddings, theta, pool.labeled)
