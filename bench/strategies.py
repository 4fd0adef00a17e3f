"""Benchmark raal's selection strategies against straightforward chunked-numpy versions of the same algorithms.

    python bench/strategies.py --quick                      # small sizes, < 1 minute -> results/strategies.quick.*
    python bench/strategies.py --parts targets,100k         # the 50k x 768 targets, then a 100k x 2048 pool
    flock /tmp/raal-heavy.lock python bench/strategies.py --parts 1.28M   # 10.5 GB + 5 GB memmaps under /tmp

Parts accumulate in bench/results/strategies.json (a re-run replaces its own part); strategies.md is rendered from it.
typiclust, probcover, kmeans_centroid and dropquery are benchmarked by bench/cold_strategies.py, which reuses this
file's memory sampler and pool model (this one is long enough).

Pools are generated float32 with class structure (C Gaussian class centres, noise 0.7 x the centre scale) and
softmax outputs of a noisy classifier (the true class boosted by U(0, 8) logits); 1,000 items are labeled (1% of
the small pools), as after a first random round.
Every measurement runs in a fresh subprocess: time is wall and CPU seconds of `select` (or of the baseline); memory
is sampled from /proc/self/status every 5 ms: "extra" is the peak anonymous RSS above what the process held once its
inputs were loaded (allocations), "file" the peak of mapped input pages (page cache of a memmap, not allocated).

Baselines (here, not in raal): the textbook loops in numpy, read in 64 MB chunks, float32 BLAS for every product:
k-center (coreset / featdist) updates the min-distance vector with ||x||^2 - 2 x.c + ||c||^2 over the whole pool per
pick; BADGE recomputes the factorised distance of every item to the newest centre per pick and draws with
rng.choice(p = D^2 / sum D^2); ActiveFT recomputes the full N x B argmax every step with a scatter-add gradient.
Where a baseline would run for hours, a fixed number of its picks (steps) is timed and the total extrapolated
linearly (its per-pick cost is constant); raal's strategies run in full except ActiveFT at 100k and 1.28M, whose
first steps are timed and extrapolated the same way (an upper bound for raal: its early steps cost the most).
At 1.28M (a full run of every strategy would take hours on 2 shared cores) raal's coreset, featdist and badge run
their first `raal_picks` picks (the same picks a full run starts with) and ActiveFT maps `map_centroids` of its
centroids: the speed-up there compares raal and numpy over the same picks (numpy's init plus its constant per-pick
cost times those picks), the starred totals are linear extrapolations (indicative: a lazy pick's cost varies), and
the extra memory adds what the buffers sized by the budget (centres rows) would hold at the full budget.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
CHUNK = 64 << 20

PARTS = {
    # name: pool size, dims, classes, budget, where, per-strategy settings
    "quick": dict(n=20_000, d=256, c=100, budget=500, memmap=False, picks=100, aft_iters=10, badge_picks=50),
    "targets": dict(),  # special: the three absolute targets of the task
    "100k": dict(n=100_000, d=2048, c=1000, budget=10_000, memmap=False, picks=300, aft_iters=3, badge_picks=40,
                 labeled=1000),
    # at 1.28M on 2 shared cores raal's own loops are timed in part too: the first raal_picks k-center / BADGE picks
    # (the same first picks as a full run), the first aft_iters ActiveFT steps and the mapping of map_centroids of
    # the 10,000 centroids; totals are extrapolated linearly and starred, speed-ups compare the same picks
    "1.28M": dict(n=1_280_000, d=2048, c=1000, budget=10_000, memmap=True, picks=6, aft_iters=2, badge_picks=4,
                  labeled=1000, raal_picks=500, badge_raal_picks=200, map_centroids=1000),
}
ALL = ["random", "margin", "confidence", "entropy", "coreset", "featdist", "badge", "activeft", "activeft_al"]
BASELINED = ["coreset", "featdist", "badge", "activeft"]


# ---------------------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------------------
def generate(path: Path, n: int, d: int, c: int, *, n_labeled: int | None = None, seed: int = 0) -> None:
    """features.npy (n x d), probs.npy (n x c), labeled.npy, written in row blocks (works as a memmap at any n)."""
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((c, d), dtype=np.float32)
    y = rng.integers(0, c, n)
    feats = np.lib.format.open_memmap(path / "features.npy", mode="w+", dtype=np.float32, shape=(n, d))
    probs = np.lib.format.open_memmap(path / "probs.npy", mode="w+", dtype=np.float32, shape=(n, c))
    for s in range(0, n, 16384):
        e = min(n, s + 16384)
        feats[s:e] = centres[y[s:e]] + np.float32(0.7) * rng.standard_normal((e - s, d), dtype=np.float32)
        z = rng.standard_normal((e - s, c), dtype=np.float32)
        z[np.arange(e - s), y[s:e]] += rng.uniform(0, 8, e - s).astype(np.float32)
        z = np.exp(z - z.max(axis=1, keepdims=True))
        probs[s:e] = z / z.sum(axis=1, keepdims=True)
    feats.flush()
    probs.flush()
    del feats, probs
    mask = np.zeros(n, dtype=bool)
    mask[rng.choice(n, max(1, n // 100) if n_labeled is None else n_labeled, replace=False)] = True
    np.save(path / "labeled.npy", mask)


# ---------------------------------------------------------------------------------------------------------------
# memory sampling
# ---------------------------------------------------------------------------------------------------------------
def _status() -> dict:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "RssAnon:", "RssFile:")):
                k, v = line.split(":")
                out[k] = int(v.split()[0]) * 1024
    return out


class MemSampler:
    """Peak anonymous / file-backed RSS above the level at start, sampled every 5 ms in a thread."""

    def __init__(self):
        self.base = _status()
        self.peak = dict(self.base)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            for k, v in _status().items():
                self.peak[k] = max(self.peak[k], v)
            time.sleep(0.005)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        for k, v in _status().items():
            self.peak[k] = max(self.peak[k], v)

    def result(self) -> dict:
        return {"extra_mb": (self.peak["RssAnon"] - self.base["RssAnon"]) / 2**20,
                "file_mb": self.peak["RssFile"] / 2**20,
                "rss_delta_mb": (self.peak["VmRSS"] - self.base["VmRSS"]) / 2**20}


# ---------------------------------------------------------------------------------------------------------------
# straightforward chunked-numpy baselines
# ---------------------------------------------------------------------------------------------------------------
def _rows(width: int, itemsize: int = 4) -> int:
    return max(1, CHUNK // (width * itemsize))


def _block(x, s, e, normalize):
    b = np.asarray(x[s:e], dtype=np.float32)
    if normalize:
        b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return b


def kcenter_numpy(x, budget, labeled, *, normalize=False, picks=None, kernel="numpy"):
    """The textbook greedy k-center: one full pass over the pool per pick. Returns picks and split timings."""
    n, d = x.shape
    step = _rows(d)
    t0 = time.perf_counter()
    sqn = np.concatenate([np.einsum("ij,ij->i", b, b) for b in
                          (_block(x, s, min(n, s + step), False) for s in range(0, n, step))])
    # featdist: ||x/|x| - c||^2 = 1 - 2 (x.c)/|x| + |c|^2, with the row norms computed once (no normalised copy)
    inv = (1 / np.maximum(np.sqrt(sqn), 1e-12)).astype(np.float32) if normalize else None
    if normalize:
        sqn = np.ones(n, dtype=np.float32)
    mind = np.full(n, np.inf, dtype=np.float32)
    lab = np.flatnonzero(labeled)
    for ls in range(0, len(lab), 4096):
        cl = _block(x[lab[ls:ls + 4096]], 0, len(lab[ls:ls + 4096]), normalize)
        csq = np.einsum("ij,ij->i", cl, cl)
        for s in range(0, n, step):
            e = min(n, s + step)
            g = _block(x, s, e, False) @ cl.T
            dd = sqn[s:e, None] - 2 * (g * inv[s:e, None] if normalize else g) + csq[None, :]
            np.minimum(mind[s:e], dd.min(axis=1), out=mind[s:e])
    mind[labeled] = -np.inf
    t_init = time.perf_counter() - t0
    out = []
    t1 = time.perf_counter()
    for _ in range(budget if picks is None else picks):
        u = int(np.argmax(mind))
        out.append(u)
        c = _block(x, u, u + 1, normalize)[0]
        cc = np.float32(c @ c)
        for s in range(0, n, step):
            e = min(n, s + step)
            if kernel == "faiss":
                import faiss
                dd = faiss.pairwise_distances(_block(x, s, e, normalize), c[None, :])[:, 0]
            else:
                g = _block(x, s, e, False) @ c
                dd = sqn[s:e] - 2 * (g * inv[s:e] if normalize else g) + cc
            np.minimum(mind[s:e], dd, out=mind[s:e])
        mind[u] = -np.inf
    return np.array(out), t_init, time.perf_counter() - t1


def badge_numpy(probs, emb, cand, budget, seed, *, picks=None):
    """Textbook k-means++ on the factorised gradient distance: one full pass per pick, rng.choice over D^2."""
    rng = np.random.default_rng(seed)
    m, c, d = len(cand), probs.shape[1], emb.shape[1]
    step = _rows(c + d)

    def factors(lo, hi):
        rows = cand[lo:hi]
        p = np.asarray(probs[rows], dtype=np.float32)
        a = -p
        a[np.arange(len(a)), p.argmax(axis=1)] += 1
        h = np.asarray(emb[rows], dtype=np.float32)
        return a, h, np.einsum("ij,ij->i", a, a) * np.einsum("ij,ij->i", h, h)

    t0 = time.perf_counter()
    g = np.concatenate([factors(lo, lo + step)[2] for lo in range(0, m, step)])
    t_init = time.perf_counter() - t0
    d2 = np.full(m, np.inf)
    chosen = np.zeros(m, dtype=bool)
    cur = int(np.argmax(g))
    out = []
    t1 = time.perf_counter()
    for _ in range(budget if picks is None else picks):
        out.append(cur)
        chosen[cur] = True
        ac, hc, gc = factors(cur, cur + 1)
        for lo in range(0, m, step):
            a, h, gg = factors(lo, lo + step)
            dd = gg + gc[0] - 2 * (a @ ac[0]) * (h @ hc[0])
            np.minimum(d2[lo:lo + step], np.maximum(dd, 0), out=d2[lo:lo + step])
        d2[chosen] = 0
        tot = d2.sum()
        cur = int(rng.choice(m, p=d2 / tot)) if tot > 0 else int(rng.choice(np.flatnonzero(~chosen)))
    return cand[np.array(out)], t_init, time.perf_counter() - t1


def activeft_numpy(x, init, iterations, batch, rng, *, fixed=None, tau=0.07, lr=1e-3):
    """ActiveFT's reference loop in numpy: the full argmax every step, scatter-add gradient, Adam. Returns losses."""
    n, d = x.shape
    fixed = np.zeros(0, dtype=np.int64) if fixed is None else fixed
    nf = len(fixed)
    feats = None
    if n <= batch:
        feats = np.concatenate([_block(x, s, min(n, s + _rows(d)), True) for s in range(0, n, _rows(d))])
    c = _block(x[np.sort(init)], 0, len(init), True)
    fixed_t = _block(x[fixed], 0, nf, True) if nf else np.zeros((0, d), np.float32)
    m, v = np.zeros_like(c), np.zeros_like(c)
    losses = []
    for t in range(1, iterations + 1):
        nrm = np.linalg.norm(c, axis=1, keepdims=True)
        th_tr = c / nrm
        theta = np.vstack([fixed_t, th_tr])
        if feats is not None:
            f = feats
        else:
            f = _block(x[np.sort(rng.choice(n, batch, replace=False))], 0, batch, True)
        a = np.empty(len(f), dtype=np.int64)
        s = np.empty(len(f), dtype=np.float32)
        for lo in range(0, len(f), 4096):
            sims = f[lo:lo + 4096] @ theta.T
            a[lo:lo + 4096] = sims.argmax(axis=1)
            s[lo:lo + 4096] = sims.max(axis=1)
        E = np.exp(th_tr @ theta.T / tau)
        S = E.sum(axis=1)
        mine = a >= nf
        j = a[mine] - nf
        z = np.log(S[j]) - s[mine] / tau
        w = 1 / (1 + np.exp(-z))
        losses.append(float(np.logaddexp(0, z).sum() / len(f)))
        pull = np.zeros_like(c)
        rows = np.flatnonzero(mine)
        for lo in range(0, len(rows), 4096):
            r = rows[lo:lo + 4096]
            np.add.at(pull, j[lo:lo + 4096], (w[lo:lo + 4096, None] * f[r]).astype(np.float32))
        push = np.bincount(j, weights=w / S[j], minlength=len(c))
        g = ((push[:, None] * (E @ theta)).astype(np.float32) - pull) / (tau * len(f))
        g = (g - th_tr * (th_tr * g).sum(axis=1, keepdims=True)) / nrm
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        c = c - (lr / (1 - 0.9 ** t)) * m / (np.sqrt(v) / np.sqrt(1 - 0.999 ** t) + 1e-8)
    return losses


# ---------------------------------------------------------------------------------------------------------------
# one measurement (runs in its own process)
# ---------------------------------------------------------------------------------------------------------------
def worker(spec: dict) -> dict:
    from raal import strategies
    from raal.strategies.activeft import ActiveFTConfig, map_to_items, optimise_centroids
    from raal.strategies.badge import badge_select

    path = Path(spec["data"])
    mode = "r" if spec["memmap"] else None
    name, impl, budget = spec["strategy"], spec["impl"], spec["budget"]
    strat = strategies.get(name)
    feats = np.load(path / "features.npy", mmap_mode=mode) if "embeddings" in strat.requires else None
    probs = np.load(path / "probs.npy", mmap_mode=mode) if "probs" in strat.requires else None
    mask = np.load(path / "labeled.npy")
    if spec.get("no_labels"):
        mask = np.zeros_like(mask)
    unl = np.flatnonzero(~mask)
    inputs = {k: v for k, v in (("probs", probs), ("embeddings", feats)) if k in strat.requires}
    res = {"strategy": name, "impl": impl, "input_mb": sum(v.nbytes for v in inputs.values()) / 2**20}
    load0 = os.getloadavg()[0]
    c0, t0 = time.process_time(), time.perf_counter()
    with MemSampler() as mem:
        if impl == "raal" and name in ("activeft", "activeft_al") and spec.get("iterations"):
            # timed steps, extrapolated to the configured count; the mapping runs in full
            cfg = strat.cfg if name == "activeft" or mask.any() else strategies.get("activeft").cfg
            k = spec["iterations"]
            rng = np.random.default_rng(0)
            init = rng.choice(unl, size=budget, replace=False)
            st = {}
            fixed = np.flatnonzero(mask) if name == "activeft_al" and mask.any() else None
            theta, losses = optimise_centroids(feats, init, ActiveFTConfig(iterations=k, batch=cfg.batch), rng,
                                               fixed_rows=fixed, stats=st)
            t_steps = time.perf_counter() - t0
            t1 = time.perf_counter()
            nm = min(len(theta), spec.get("map_centroids") or len(theta))
            map_to_items(feats, theta[:nm], mask)
            t_map = (time.perf_counter() - t1) * len(theta) / nm
            if nm < len(theta):
                res["map_centroids"] = nm
            res.update(steps_timed=k, steps_total=cfg.iterations, t_steps=t_steps, t_map=t_map, losses=losses,
                       searched_frac=st["searched"] / max(1, st["item_steps"]),
                       wall_s=t_steps * cfg.iterations / k + t_map, extrapolated=k < cfg.iterations)
        elif impl == "raal" and name == "badge":
            st = {}
            p = min(budget, spec.get("raal_picks") or budget)
            out = badge_select(probs, feats, unl, p, 0, stats=st)
            res.update(wall_s=time.perf_counter() - t0, badge_stats=st)
            if p < budget:  # _Centres holds budget x (C + d) float64 rows, filled one per pick
                res.update(picks_timed=p, t_measured=res["wall_s"], wall_s=res["wall_s"] * budget / p,
                           extrapolated=True, budget_rows_mb=(budget - p) * (probs.shape[1] + feats.shape[1]) * 8 / 2**20)
        elif impl == "raal":
            p = min(budget, spec.get("raal_picks") or budget)
            out = strat.select(p, labeled_mask=mask, seed=0, **inputs)
            res["wall_s"] = time.perf_counter() - t0
            if p < budget:  # k-center's centres buffer holds budget x d float32 rows, filled one per pick
                res.update(picks_timed=p, t_measured=res["wall_s"], wall_s=res["wall_s"] * budget / p,
                           extrapolated=True, budget_rows_mb=(budget - p) * feats.shape[1] * 4 / 2**20)
            if name in ("coreset", "featdist"):
                res["first_picks"] = out[:spec.get("compare", 50)].tolist()
        elif name in ("coreset", "featdist"):
            p = spec.get("picks")
            out, t_init, t_picks = kcenter_numpy(feats, budget, mask, normalize=name == "featdist", picks=p,
                                                 kernel=spec.get("kernel", "numpy"))
            done = len(out)
            res.update(t_init=t_init, t_picks=t_picks, picks_timed=done, first_picks=out[:50].tolist(),
                       wall_s=t_init + t_picks * budget / done, extrapolated=done < budget)
        elif name == "badge":
            p = spec.get("picks")
            out, t_init, t_picks = badge_numpy(probs, feats, unl, budget, 0, picks=p)
            done = len(out)
            res.update(t_init=t_init, t_picks=t_picks, picks_timed=done,
                       wall_s=t_init + t_picks * budget / done, extrapolated=done < budget)
        elif name == "activeft":
            k = spec["iterations"]
            cfg = strat.cfg
            rng = np.random.default_rng(0)
            init = rng.choice(unl, size=budget, replace=False)
            losses = activeft_numpy(feats, init, k, cfg.batch, rng)
            t_steps = time.perf_counter() - t0
            # the mapping is the same code in both; the caller adds raal's measured mapping time to this total
            res.update(steps_timed=k, steps_total=cfg.iterations, t_steps=t_steps, t_map=0.0, losses=losses,
                       wall_s=t_steps * cfg.iterations / k, extrapolated=k < cfg.iterations)
    res["cpu_s"] = time.process_time() - c0
    res["mem"] = mem.result()
    res["mem"]["extra_full_mb"] = res["mem"]["extra_mb"] + res.get("budget_rows_mb", 0.0)
    res["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res["load"] = [load0, os.getloadavg()[0]]
    return res


def run_worker(spec: dict, timeout: int = 7200) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {spec['strategy']}/{spec['impl']} failed:\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"  {res['strategy']:12s} {res['impl']:6s} wall {res['wall_s']:9.2f}s"
          f"{' (extrapolated)' if res.get('extrapolated') else ''}  extra {res['mem']['extra_mb']:8.1f} MB",
          flush=True)
    return res


# ---------------------------------------------------------------------------------------------------------------
# parts
# ---------------------------------------------------------------------------------------------------------------
def _have_data(data: Path, cfg: dict) -> bool:
    """The generated files are already there with the part's shapes (generation is deterministic: seed 0)."""
    try:
        f = np.load(data / "features.npy", mmap_mode="r")
        p = np.load(data / "probs.npy", mmap_mode="r")
        lab = np.load(data / "labeled.npy")
    except (OSError, ValueError):
        return False
    return f.shape == (cfg["n"], cfg["d"]) and p.shape == (cfg["n"], cfg["c"]) and len(lab) == cfg["n"]


def pool_part(name: str, cfg: dict, workdir: Path, only: list[str] | None = None, keep: bool = False) -> dict:
    data = workdir / name
    t = time.perf_counter()
    if keep and _have_data(data, cfg):
        print(f"[{name}] reusing the generated pool in {data}", flush=True)
    else:
        generate(data, cfg["n"], cfg["d"], cfg["c"], n_labeled=cfg.get("labeled"))
        print(f"[{name}] generated {cfg['n']} x {cfg['d']} (+ probs x {cfg['c']}) in {time.perf_counter() - t:.0f}s",
              flush=True)
    base = {"data": str(data), "memmap": cfg["memmap"], "budget": cfg["budget"]}
    rows = {}
    try:
        for s in (only or ALL):
            spec = dict(base, strategy=s, impl="raal")
            if s in ("activeft", "activeft_al"):
                spec["iterations"] = cfg["aft_iters"]
                spec["map_centroids"] = cfg.get("map_centroids")
            if s in ("coreset", "featdist"):
                spec["raal_picks"] = cfg.get("raal_picks")
            if s == "badge":
                spec["raal_picks"] = cfg.get("badge_raal_picks")
            if s in ("coreset", "featdist"):
                spec["compare"] = cfg["picks"]
            rows[s] = {"raal": run_worker(spec)}
            if s in BASELINED:
                spec = dict(base, strategy=s, impl="numpy")
                spec["picks"] = cfg["badge_picks"] if s == "badge" else cfg["picks"]
                spec["iterations"] = cfg["aft_iters"]
                rows[s]["numpy"] = run_worker(spec)
    finally:
        if cfg["memmap"] and not keep:
            shutil.rmtree(data, ignore_errors=True)
    for s, r in rows.items():
        if s == "activeft" and "numpy" in r:
            r["numpy"]["t_map"] = r["raal"]["t_map"]
            r["numpy"]["wall_s"] += r["raal"]["t_map"]
        if "numpy" in r and r["raal"].get("picks_timed"):  # raal timed in part: compare the same picks
            nb, p = r["numpy"], r["raal"]["picks_timed"]
            r["numpy_same_picks_s"] = nb["t_init"] + nb["t_picks"] * p / nb["picks_timed"]
            r["speedup"] = r["numpy_same_picks_s"] / r["raal"]["t_measured"]
        elif "numpy" in r:
            r["speedup"] = r["numpy"]["wall_s"] / r["raal"]["wall_s"]
            if s in ("coreset", "featdist"):
                k = min(len(r["numpy"]["first_picks"]), len(r["raal"]["first_picks"]))
                r["same_first_picks"] = int(sum(a == b for a, b in zip(r["numpy"]["first_picks"][:k],
                                                                         r["raal"]["first_picks"][:k])))
                r["compared_picks"] = k
    if not keep:
        shutil.rmtree(data, ignore_errors=True)
    return {"config": cfg, "rows": rows}


def targets_part(workdir: Path, quick: bool = False) -> dict:
    """The absolute targets: coreset 1000 of 50k x 768; activeft 2% of 50k x 768; badge memory at 20k / 100 / 768."""
    n = 10_000 if quick else 50_000
    data = workdir / "t768"
    generate(data, n, 768, 100)
    out = {"n": n, "n_badge": 4_000 if quick else 20_000}
    base = {"data": str(data), "memmap": False}
    pick = n // 50
    out["coreset"] = {
        "raal": run_worker(dict(base, strategy="coreset", impl="raal", budget=pick, compare=pick)),
        "numpy": run_worker(dict(base, strategy="coreset", impl="numpy", budget=pick)),
        "faiss_kernel": run_worker(dict(base, strategy="coreset", impl="numpy", budget=pick, kernel="faiss",
                                        picks=pick // 10)),
    }
    aft_iters = 20 if quick else 300
    out["activeft"] = {
        "raal": run_worker(dict(base, strategy="activeft", impl="raal", budget=pick, iterations=aft_iters,
                                no_labels=True)),
        "numpy": run_worker(dict(base, strategy="activeft", impl="numpy", budget=pick, iterations=10 if quick else 20,
                                 no_labels=True)),
    }
    out["activeft"]["numpy"]["wall_s"] += out["activeft"]["raal"]["t_map"]
    shutil.rmtree(data, ignore_errors=True)
    data = workdir / "t_badge"
    generate(data, out["n_badge"], 768, 100)
    out["badge"] = {"raal": run_worker({"data": str(data), "memmap": False, "strategy": "badge", "impl": "raal",
                                        "budget": out["n_badge"] // 10})}
    shutil.rmtree(data, ignore_errors=True)
    return out


# ---------------------------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------------------------
def _fmt_s(r):
    return f"{r['wall_s']:.1f}{'*' if r.get('extrapolated') else ''}"


def render(res: dict) -> str:
    m = res["machine"]
    lines = ["# Strategies benchmark", "",
             f"Machine: {m['cpus']} CPU cores ({m['cpu']}), {m['mem_gb']:.0f} GiB RAM, shared with other jobs "
             "(load average at each run in the JSON), faiss-cpu, numpy OpenBLAS. Times are wall seconds; "
             "`*` marks an extrapolated total (see the method in bench/strategies.py's docstring); cpu is the CPU "
             "time of the measured part, load the 1-minute load average when it started (2 = both cores busy). "
             "Extra memory = peak anonymous RSS above the loaded inputs (where only the first picks are timed, plus "
             "what the budget-sized centre buffers would hold at the full budget).", ""]
    t = res.get("parts", {}).get("targets")
    if t:
        lines += ["## Targets", "", "| target | measured | status |", "|---|---|---|"]
        cs, af, b = t["coreset"], t["activeft"], t["badge"]["raal"]
        n, nb = t.get("n", 50_000), t.get("n_badge", 20_000)
        ratio = cs["numpy"]["wall_s"] / cs["raal"]["wall_s"]
        lines.append(f"| coreset picks {n // 50:,} of {n:,} x 768 in <= 12 s | {cs['raal']['wall_s']:.2f} s "
                     f"(cpu {cs['raal']['cpu_s']:.1f} s; chunked numpy {cs['numpy']['wall_s']:.1f} s, {ratio:.1f}x; "
                     f"the same loop with faiss.pairwise_distances {_fmt_s(cs['faiss_kernel'])} s) | "
                     f"{'met' if cs['raal']['wall_s'] <= 12 else 'MISSED'} |")
        miss = af["raal"]["wall_s"] / 30
        lines.append(f"| activeft picks 2% of {n:,} x 768 in <= 30 s | {af['raal']['wall_s']:.1f} s "
                     f"(cpu {af['raal']['cpu_s']:.0f} s; full argmax for {100 * af['raal']['searched_frac']:.1f}% "
                     f"of item-steps; chunked numpy {_fmt_s(af['numpy'])} s, "
                     f"{af['numpy']['wall_s'] / af['raal']['wall_s']:.1f}x) | "
                     f"{'met' if miss <= 1 else f'MISSED by {miss:.1f}x'} |")
        lines.append(f"| badge n = {nb:,}, C = 100, d = 768 uses <= 200 MB extra | {b['mem']['extra_mb']:.0f} MB "
                     f"(peak RSS delta {b['mem']['rss_delta_mb']:.0f} MB, {b['wall_s']:.1f} s for {nb // 10:,} "
                     f"picks) | {'met' if b['mem']['extra_mb'] <= 200 else 'MISSED'} |")
        lines.append("")
    for name in ("quick", "100k", "1.28M"):
        p = res.get("parts", {}).get(name)
        if not p:
            continue
        c = p["config"]
        lines += [f"## Pool {c['n']:,} x {c['d']} float32{' (memmap on disk)' if c['memmap'] else ''}, "
                  f"{c['c']} classes, {c.get('labeled') or c['n'] // 100:,} labeled, budget {c['budget']:,}", "",
                  "| strategy | raal s | raal cpu s | load | raal extra MB | input MB | chunked numpy s "
                  "| numpy extra MB | speed-up | notes |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for s in ALL:
            r = p["rows"].get(s)
            if not r:
                continue
            a = r["raal"]
            notes = []
            if a.get("picks_timed"):
                notes.append(f"raal: first {a['picks_timed']:,} of {c['budget']:,} picks timed ({a['t_measured']:.0f} s); "
                             f"numpy over the same picks {r.get('numpy_same_picks_s', float('nan')):.0f} s; "
                             f"extra MB at the full budget {a['mem']['extra_full_mb']:.0f}")
            if s in ("coreset", "featdist") and "same_first_picks" in r:
                notes.append(f"first {r['compared_picks']} picks identical to numpy: {r['same_first_picks']}")
            if s == "badge":
                bs = a.get("badge_stats", {})
                notes.append(f"{bs.get('proposals')} proposals, {bs.get('rejections')} rejected, "
                             f"{bs.get('full_passes')} full passes")
            if s in ("activeft", "activeft_al"):
                mapped = a.get("map_centroids")
                notes.append(f"{a['steps_timed']} of {a['steps_total']} steps timed ({a['t_steps']:.0f} s), "
                             f"mapping {a['t_map']:.0f} s{f' ({int(mapped)} centroids timed)' if mapped else ''}, "
                             f"full argmax for {100 * a['searched_frac']:.0f}% of item-steps")
            if "numpy" in r and r["numpy"].get("picks_timed"):
                notes.append(f"numpy: {r['numpy']['picks_timed']} picks timed")
            if a["mem"]["file_mb"] > 1 and c["memmap"]:
                notes.append(f"mapped input pages {a['mem']['file_mb']:.0f} MB")
            nb = r.get("numpy")
            cells = [s, _fmt_s(a), f"{a['cpu_s']:.1f}", f"{a['load'][0]:.1f}", f"{a['mem'].get('extra_full_mb', a['mem']['extra_mb']):.0f}",
                     f"{a['input_mb']:.0f}",
                     _fmt_s(nb) if nb else "", f"{nb['mem']['extra_mb']:.0f}" if nb else "",
                     f"{r['speedup']:.1f}x" if "speedup" in r else "", "; ".join(notes)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def machine() -> dict:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu": cpu, "mem_gb": mem, "python": platform.python_version(),
            "numpy": np.__version__}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    ap.add_argument("--parts", default="targets,100k,1.28M", help="comma list of: targets, 100k, 1.28M")
    ap.add_argument("--workdir", default="/tmp/raal-bench-strategies")
    ap.add_argument("--only", help="comma list of strategies to re-run in the given pool parts (merged into the JSON)")
    ap.add_argument("--aft-iters", type=int, help="ActiveFT steps to time in the pool parts (default per part)")
    ap.add_argument("--keep-data", action="store_true",
                    help="keep the generated pools in --workdir and reuse them when their shapes match")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    workdir = Path(args.workdir)
    stem = "strategies.quick" if args.quick else "strategies"
    out_json = RESULTS / f"{stem}.json"
    res = json.loads(out_json.read_text()) if out_json.exists() and not args.quick else {"parts": {}}
    res["machine"] = machine()
    try:
        if args.quick:
            res["parts"]["targets"] = targets_part(workdir, quick=True)
            res["parts"]["quick"] = pool_part("quick", PARTS["quick"], workdir)
        else:
            for part in args.parts.split(","):
                part = part.strip()
                if part == "targets":
                    res["parts"]["targets"] = targets_part(workdir)
                else:
                    cfg = dict(PARTS[part], **({"aft_iters": args.aft_iters} if args.aft_iters else {}))
                    only = args.only.split(",") if args.only else None
                    out = pool_part(part, cfg, workdir, only, keep=args.keep_data)
                    if only and part in res["parts"]:
                        res["parts"][part]["rows"].update(out["rows"])
                    else:
                        res["parts"][part] = out
                RESULTS.mkdir(parents=True, exist_ok=True)
                out_json.write_text(json.dumps(res, indent=1))
                (RESULTS / f"{stem}.md").write_text(render(res))
    finally:
        if not args.keep_data:
            shutil.rmtree(workdir, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(res, indent=1))
    (RESULTS / f"{stem}.md").write_text(render(res))
    print(f"wrote {RESULTS / (stem + '.md')}")


if __name__ == "__main__":
    main()
