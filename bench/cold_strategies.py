"""Benchmark the cold-start / diversity strategies (typiclust, probcover, kmeans_centroid, dropquery) at scale.

    python bench/cold_strategies.py --parts quick          # 20,000 x 256, a minute -> results/cold_strategies.*
    python bench/cold_strategies.py --parts 100k           # 100,000 x 2048, budget 10,000, 1,000 labeled
    python bench/cold_strategies.py --parts 1.28M          # typicality on a 1,280,000 x 2048 memmap (10.5 GB)
    python bench/cold_strategies.py --parts kmeans_quality # two-level vs flat k-means objective, a few minutes

The pools are bench/strategies.py's (`generate`: Gaussian classes, float32, features on disk), and so is the
memory sampling (`MemSampler`: peak anonymous RSS above the loaded inputs, in a fresh subprocess per measurement).
DropQuery's proxy is a fixed linear head, 0.05 x the class centres plus N(0, 1) weights, so that dropout flips a
good share of predictions (a head that always agrees would leave DropQuery in its fallback).

Every raal row runs the strategy's own code. Where a full run would take hours on 2 shared cores, parts are timed
and extrapolated linearly, and the row says so (`*`): k-means runs `kmeans_iters` Lloyd steps and the total adds
(20 - kmeans_iters) x the mean step time faiss reported; ProbCover's exact all-pairs k-NN pass (N^2 D, the whole
cost of an exact δ-ball graph) runs for `probcover_queries` query rows and is extrapolated; ProbCover above its
exact threshold runs in full on its approximate index (and its recall@32 is measured on those query rows); at 1.28M
only its index build is run in full and `ann_queries` of its k-NN searches; TypiClust at 1.28M runs the typicality
of `typ_clusters` of its clusters.

Workers run at the driver's niceness (start it under `nice -n 5` on a shared machine): a worker niced below the
other jobs gets a few per cent of a core and its times say nothing.

Baselines, the straightforward versions in numpy (64 MB chunks, float32 BLAS), in the same run: Lloyd's k-means
with a full distance pass per step (kmeans_centroid, DropQuery, TypiClust's clustering; one step timed on
`lloyd_rows` rows and scaled to all when set); ProbCover above its exact threshold, the exact 32-NN pass alone
(a lower bound of an exact ProbCover); TypiClust as the reference
code does it, a fresh k-NN search inside the cluster for every pick; ProbCover's greedy as the reference code does
it, an edge list filtered with np.isin after every pick (on the same graph); DropQuery's dropout passes on the
whole unlabeled matrix at once.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from strategies import MemSampler, machine  # noqa: E402  (bench/strategies.py)

from raal.strategies.probcover import EXACT_MAX_N  # noqa: E402  (after the sys.path insert)

RESULTS = ROOT / "bench" / "results"
NITER = 20  # raal's default Lloyd steps
PARTS = {
    "quick": dict(n=20_000, d=256, c=100, budget=1_000, labeled=200, memmap=False, kmeans_iters=NITER,
                  probcover_n=20_000, probcover_queries=None, picks=200, strategies=None),
    # on 2 cores shared with ~10 other processes a k-means step at k = 10,000 over 100k x 2048 (2e12 multiply-adds)
    # takes ~10 min: kmeans_centroid and dropquery run budget 2,000 here, and the notes scale k-means linearly in k
    # k = 10,000 runs two-level k-means (raal.index.two_level_kmeans), so every raal row runs in full
    "100k": dict(n=100_000, d=2048, c=1000, budget=10_000, labeled=1_000, memmap=False, kmeans_iters=NITER,
                 probcover_n=100_000, probcover_queries=1_000, picks=20, proxy_classes=100,
                 strategies=["kmeans_centroid", "probcover", "dropquery", "typiclust"],
                 lloyd_rows=10_000),
    "1.28M": dict(n=1_280_000, d=2048, c=1000, budget=10_000, labeled=1_000, memmap=True, kmeans_iters=1,
                  typ_clusters=5, picks=20, probcover_queries=100, ann_queries=10_000,
                  strategies=["typiclust", "probcover"]),
}
# two-level against flat k-means, both in full (normalised rows, as kmeans_centroid): n, d, classes, k
KMEANS_QUALITY = [(20_000, 256, 100, 1_000), (50_000, 512, 200, 2_000)]
COLD = ["kmeans_centroid", "typiclust", "dropquery", "probcover"]


def generate(path: Path, n: int, d: int, c: int, *, n_labeled: int, seed: int = 0) -> None:
    """bench/strategies.py's pool model (Gaussian class centres, noise 0.7, float32 on disk), features only."""
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((c, d), dtype=np.float32)
    y = rng.integers(0, c, n)
    feats = np.lib.format.open_memmap(path / "features.npy", mode="w+", dtype=np.float32, shape=(n, d))
    for s in range(0, n, 16384):
        e = min(n, s + 16384)
        feats[s:e] = centres[y[s:e]] + np.float32(0.7) * rng.standard_normal((e - s, d), dtype=np.float32)
    feats.flush()
    del feats
    mask = np.zeros(n, dtype=bool)
    mask[rng.choice(n, n_labeled, replace=False)] = True
    np.save(path / "labeled.npy", mask)


# -- straightforward baselines ------------------------------------------------------------------------------------
def _rows(d):
    return max(1, (64 << 20) // (4 * d))


def lloyd_step_numpy(x, rows, centres):
    """One textbook Lloyd step: every row's nearest centre by a chunked GEMM, then the means."""
    k, d = centres.shape
    csq = np.einsum("ij,ij->i", centres, centres)
    acc, cnt = np.zeros((k, d)), np.zeros(k)
    labs = []
    for s in range(0, len(rows), _rows(d)):
        b = np.asarray(x[rows[s:s + _rows(d)]], dtype=np.float32)
        lab = np.argmin(csq[None, :] - 2 * b @ centres.T, axis=1)
        np.add.at(acc, lab, b)
        cnt += np.bincount(lab, minlength=k)
        labs.append(lab)
    return (acc / np.maximum(cnt, 1)[:, None]).astype(np.float32), np.concatenate(labs)


def typiclust_picks_numpy(x, members, picks, k_nn=20):
    """The reference code's loop: each pick recomputes the k-NN of the cluster's remaining items from scratch."""
    alive = list(members)
    out = []
    for _ in range(picks):
        f = np.asarray(x[np.sort(alive)], dtype=np.float32)
        sq = np.einsum("ij,ij->i", f, f)
        d2 = np.maximum(sq[:, None] - 2 * f @ f.T + sq[None, :], 0)
        k = min(k_nn, len(alive) // 2)
        mean = np.sort(d2, axis=1)[:, 1:k + 1].mean(axis=1)
        j = int(np.argmax(1 / (mean + 1e-5)))
        out.append(np.sort(alive)[j])
        alive.remove(out[-1])
    return out


def probcover_greedy_numpy(src, dst, labeled, picks):
    """The reference code's greedy: the remaining edges filtered with np.isin after every pick."""
    n = len(labeled)
    covered = np.unique(dst[labeled[src]])
    keep = ~np.isin(dst, covered)
    src, dst = src[keep], dst[keep]
    out = []
    for _ in range(picks):
        cur = int(np.bincount(src, minlength=n).argmax())
        new = dst[src == cur]
        keep = ~np.isin(dst, new)
        src, dst = src[keep], dst[keep]
        out.append(cur)
    return out


# -- workers ------------------------------------------------------------------------------------------------------
def _proxy(c, d):
    """A linear head over the first c of the pool's classes (generate draws the class centres first)."""
    centres = np.random.default_rng(0).standard_normal((c, d), dtype=np.float32)
    w = 0.05 * centres + np.random.default_rng(1).standard_normal((c, d), dtype=np.float32)
    return lambda h: np.asarray(h, np.float32) @ w.T


def _instrument_kmeans(calls: list, iters: int):
    """Make the strategies' k-means run `iters` steps and record faiss's step times."""
    import raal.index
    import raal.strategies.dropquery as dq
    import raal.strategies.kmeans_centroid as kc
    import raal.strategies.probcover as pc
    import raal.strategies.typiclust as tc

    def timed(*a, **kw):
        st = {"k": a[1], "niter": iters}
        kw["niter"] = iters
        out = raal.index.kmeans(*a, stats=st, **kw)
        calls.append(st)
        return out
    def timed_labels(*a, **kw):
        st = {"k": a[1], "niter": iters}
        kw["niter"] = iters
        out = raal.index.kmeans_labels(*a, stats=st, **kw)
        calls.append(st)
        return out
    for m in (dq, kc, pc, tc):
        if hasattr(m, "kmeans"):
            m.kmeans = timed
        if hasattr(m, "kmeans_labels"):
            m.kmeans_labels = timed_labels


def _capture_pool_index(store: list):
    """Keep ProbCover's approximate index (if it builds one) for the recall measurement."""
    import raal.strategies.probcover as pc

    class Kept(pc.PoolIndex):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            store.append(self)
    pc.PoolIndex = Kept


def _recall(feats, index, queries: int) -> dict:
    """recall@32 of the approximate lists against the exact search, on the first `queries` rows; the exact part's
    time is the straightforward pass's sample."""
    from raal.index import knn, recall_at_k
    q = np.arange(min(queries, len(feats)))
    t0 = time.perf_counter()
    _, exact = knn(feats, feats, 32, query_rows=q, normalize=True)
    t_exact = time.perf_counter() - t0
    _, approx = index.knn(32, q)
    return {"recall32": recall_at_k(approx, exact), "recall_queries": len(q), "t_exact_sample": t_exact}


def worker(spec: dict) -> dict:
    from raal import strategies

    path = Path(spec["data"])
    name, impl, budget = spec["strategy"], spec["impl"], spec["budget"]
    feats = np.load(path / "features.npy", mmap_mode="r" if spec["memmap"] else None)
    mask = np.load(path / "labeled.npy")
    if spec.get("n_sub"):  # ProbCover's full run on the first n_sub rows
        feats, mask = feats[:spec["n_sub"]], mask[:spec["n_sub"]]
        budget = min(budget, spec["n_sub"] // 10)
    res = {"strategy": name, "impl": impl, "n": len(feats), "budget": budget, "input_mb": feats.nbytes / 2**20}
    load0 = os.getloadavg()[0]
    calls: list = []
    kept: list = []
    c0, t0 = time.process_time(), time.perf_counter()
    with MemSampler() as mem:
        if impl == "raal" and spec.get("part") == "typicality":
            res.update(_typicality_part(feats, mask, budget, spec, calls))
        elif impl == "raal" and spec.get("part") == "ann":  # 1.28M: ProbCover's index in full, searches in part
            from raal.index import PoolIndex
            index = PoolIndex(feats, normalize=True)
            t_build = time.perf_counter() - t0
            q = spec["ann_queries"]
            t1 = time.perf_counter()
            index.knn(32, np.arange(q))
            t_q = time.perf_counter() - t1
            res.update(measured_s=time.perf_counter() - t0, t_build=t_build, ann_queries=q, t_ann_sample=t_q,
                       wall_s=t_build + t_q * len(feats) / q, extrapolated=True, nlist=index.nlist,
                       nprobe=index.nprobe)
            kept.append(index)
        elif impl == "raal" and spec.get("part") == "knn":
            from raal.index import knn
            q = spec["queries"]
            knn(feats, feats, 32, query_rows=np.arange(q), normalize=True)
            res.update(measured_s=time.perf_counter() - t0, queries=q,
                       wall_s=(time.perf_counter() - t0) * len(feats) / q, extrapolated=True)
        elif impl == "raal":
            _instrument_kmeans(calls, spec["kmeans_iters"])
            _capture_pool_index(kept)
            opts = {"num_classes": spec["c"], "delta": spec.get("delta")} if name == "probcover" else {}
            s = strategies.get(name, **opts)
            kw = {"proxy": _proxy(spec["proxy_c"], feats.shape[1])} if name == "dropquery" else {}
            out = s.select(budget, labeled_mask=mask, embeddings=feats, seed=0, **kw)
            assert len(np.unique(out)) == budget
            res["wall_s"] = res["measured_s"] = time.perf_counter() - t0
            res["last"] = getattr(s, "last", {})
        else:
            res.update(_baseline(name, feats, mask, budget, spec))
    if calls:
        res["kmeans"] = calls
        missing = sum((NITER - c["niter"]) * float(np.mean(c["iteration_s"])) for c in calls)
        res["wall_s"] = res.get("wall_s_parts", res["measured_s"]) + missing
        res["extrapolated"] = res.get("extrapolated") or missing > 0
    res["cpu_s"] = time.process_time() - c0
    res["mem"] = mem.result()
    res["load"] = [load0, os.getloadavg()[0]]
    if kept and spec.get("queries"):  # after the timed and memory-sampled part
        res.update(_recall(feats, kept[0], spec["queries"]))
    return res


def _typicality_part(feats, mask, budget, spec, calls):
    """TypiClust at 1.28M: its clustering and assignment in full, the typicality of the first clusters timed."""
    import raal.strategies.typiclust as tc
    from raal.index import min_sq_dist_to

    _instrument_kmeans(calls, spec["kmeans_iters"])
    n = len(feats)
    k = min(int(mask.sum()) + budget, 500)
    t0 = time.perf_counter()
    cent = tc.kmeans(feats, k, seed=0)
    t_km = time.perf_counter() - t0
    _, lab = min_sq_dist_to(feats, cent, return_index=True, normalize_centres=False)
    t_assign = time.perf_counter() - t0 - t_km
    sizes = np.bincount(lab, minlength=k)
    nl = np.bincount(lab[mask], minlength=k)
    sched = tc.cluster_schedule(sizes, nl, sizes - nl, budget, 5)
    unl = np.flatnonzero(~mask)
    t1 = time.perf_counter()
    done = 0
    for c in np.unique(sched)[:spec["typ_clusters"]]:
        tc.typical_sequence(feats, unl[lab[unl] == c], int((sched == c).sum()), 20, False)
        done += 1
    t_typ = (time.perf_counter() - t1) * len(np.unique(sched)) / done
    return {"t_kmeans": t_km, "t_assign": t_assign, "t_typicality": t_typ, "clusters_timed": done,
            "clusters": int(len(np.unique(sched))), "measured_s": time.perf_counter() - t0,
            "wall_s_parts": t_km + t_assign + t_typ, "extrapolated": True, "n": n}


def _baseline(name, feats, mask, budget, spec):
    rng = np.random.default_rng(0)
    unl = np.flatnonzero(~mask)
    t0 = time.perf_counter()
    if name in ("kmeans_centroid", "typiclust"):
        k = budget if name == "kmeans_centroid" else min(int(mask.sum()) + budget, 500)
        rows = unl if name == "kmeans_centroid" else np.arange(len(feats))
        cent = np.asarray(feats[np.sort(rng.choice(rows, k, replace=False))], dtype=np.float32)
        sub = _lloyd_sub(rows, spec, rng) if name == "kmeans_centroid" else rows  # typiclust's picks need all
        t1 = time.perf_counter()
        cent, lab = lloyd_step_numpy(feats, sub, cent)
        t_step = (time.perf_counter() - t1) * len(rows) / len(sub)
        total = (t1 - t0) + (NITER + 1) * t_step  # NITER steps and the final assignment pass
        out = {"t_step": t_step, "steps_timed": 1, "step_rows": len(sub)}
        rows = sub
        if name == "typiclust":  # the per-pick loop, timed in the largest cluster
            big = int(np.argmax(np.bincount(lab, minlength=k)))
            members = np.setdiff1d(rows[lab == big], np.flatnonzero(mask))
            p = min(spec["picks"], len(members) - 1)
            t2 = time.perf_counter()
            typiclust_picks_numpy(feats, members, p)
            per_pick = (time.perf_counter() - t2) / p
            total += per_pick * budget
            out.update(per_pick_s=per_pick, picks_timed=p, cluster_size=len(members))
        return dict(out, measured_s=time.perf_counter() - t0, wall_s=total, extrapolated=True)
    if name == "dropquery":
        proxy = _proxy(spec["proxy_c"], feats.shape[1])
        x = np.asarray(feats[unl], dtype=np.float32)
        y = proxy(x).argmax(1)
        flips = np.zeros(len(unl), int)
        for _ in range(3):
            flips += proxy(x * (rng.random(x.shape, dtype=np.float32) >= 0.75) * 4).argmax(1) != y
        cand = unl[flips >= 2]
        t_drop = time.perf_counter() - t0
        total = t_drop
        out = {"t_dropout": t_drop, "candidates": int(len(cand))}
        if len(cand) >= budget:
            cent = np.asarray(feats[np.sort(rng.choice(cand, budget, replace=False))], dtype=np.float32)
            sub = _lloyd_sub(cand, spec, rng)
            t1 = time.perf_counter()
            lloyd_step_numpy(feats, sub, cent)
            t_step = (time.perf_counter() - t1) * len(cand) / len(sub)
            total += (NITER + 1) * t_step
            out.update(t_step=t_step, step_rows=len(sub))
        return dict(out, measured_s=time.perf_counter() - t0, wall_s=total, extrapolated=len(cand) >= budget)
    if name == "probcover" and spec.get("part") == "knn":  # the exact 32-NN pass alone, on a sample of queries
        from raal.index import knn
        q = spec["queries"]
        knn(feats, feats, 32, query_rows=np.arange(q), normalize=True)
        return {"measured_s": time.perf_counter() - t0, "queries": q,
                "wall_s": (time.perf_counter() - t0) * len(feats) / q, "extrapolated": True}
    if name == "probcover":  # the greedy on raal's own graph (same δ), as the reference code runs it
        from raal.strategies.probcover import ball_graph
        delta = spec["delta"]
        lims, ids = ball_graph(feats, delta, normalize=True)
        src = np.repeat(np.arange(len(feats)), np.diff(lims))
        t1 = time.perf_counter()
        p = spec["picks"]
        probcover_greedy_numpy(src, ids.astype(np.int64), mask, p)
        per_pick = (time.perf_counter() - t1) / p
        return {"t_graph": t1 - t0, "per_pick_s": per_pick, "picks_timed": p, "edges": int(lims[-1]),
                "measured_s": time.perf_counter() - t0, "wall_s": (t1 - t0) + per_pick * budget, "extrapolated": True}
    raise ValueError(name)


def _lloyd_sub(rows, spec, rng):
    """The rows one baseline Lloyd step is timed on: all, or `lloyd_rows` of them (the step is linear in rows)."""
    m = spec.get("lloyd_rows")
    return rows if not m or m >= len(rows) else np.sort(rng.choice(rows, m, replace=False))


def run_worker(spec: dict, timeout: int = 14400) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {spec['strategy']}/{spec['impl']} failed:\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"  {res['strategy']:16s} {res['impl']:6s} {spec.get('part', ''):10s} wall {res['wall_s']:9.1f}s"
          f"{'*' if res.get('extrapolated') else ''} (measured {res['measured_s']:.1f}s) extra "
          f"{res['mem']['extra_mb']:8.1f} MB  load {res['load'][0]:.1f}", flush=True)
    return res


# -- parts and report ---------------------------------------------------------------------------------------------
def run_part(name: str, cfg: dict, workdir: Path, keep: bool = False, only: list[str] | None = None) -> dict:
    data = workdir / name
    t = time.perf_counter()
    have = keep and (data / "labeled.npy").exists()
    if not have:
        generate(data, cfg["n"], cfg["d"], cfg["c"], n_labeled=cfg["labeled"])
        print(f"[{name}] generated {cfg['n']} x {cfg['d']} in {time.perf_counter() - t:.0f}s", flush=True)
    base = {"data": str(data), "memmap": cfg["memmap"], "budget": cfg["budget"], "c": cfg["c"],
            "kmeans_iters": cfg["kmeans_iters"], "picks": cfg["picks"], "proxy_c": cfg.get("proxy_classes", cfg["c"]),
            "lloyd_rows": cfg.get("lloyd_rows"), "ann_queries": cfg.get("ann_queries")}
    rows = {}
    try:
        for s in only or cfg["strategies"] or COLD:
            r = rows[s] = {}
            if cfg.get("typ_clusters") and s == "typiclust":  # 1.28M: typicality in part
                r["raal"] = run_worker(dict(base, strategy=s, impl="raal", part="typicality",
                                            typ_clusters=cfg["typ_clusters"]))
                continue
            if s == "probcover" and cfg.get("typ_clusters"):  # 1.28M: the approximate index and a sample of searches
                q = dict(base, strategy=s, part="ann" if cfg.get("ann_queries") else "knn",
                         queries=cfg["probcover_queries"])
                r["raal"] = run_worker(dict(q, impl="raal"))
                r["numpy"] = run_worker(dict(q, impl="numpy", part="knn"))
            elif s == "probcover" and cfg["probcover_n"] > EXACT_MAX_N:  # in full on the approximate index
                r["raal"] = run_worker(dict(base, strategy=s, impl="raal", queries=cfg["probcover_queries"]))
                r["numpy"] = run_worker(dict(base, strategy=s, impl="numpy", part="knn",
                                             queries=cfg["probcover_queries"]))
            elif s == "probcover":
                if cfg.get("probcover_queries"):
                    r["knn_pass"] = run_worker(dict(base, strategy=s, impl="raal", part="knn",
                                                    queries=cfg["probcover_queries"]))
                sub = dict(base, n_sub=cfg["probcover_n"] if cfg["probcover_n"] < cfg["n"] else None)
                r["purity"] = run_worker(dict(sub, strategy=s, impl="raal"))  # δ by the purity rule
                delta = r["purity"]["last"]["delta"]  # then graph + greedy for that δ, raal vs the reference way
                r["raal"] = run_worker(dict(sub, strategy=s, impl="raal", delta=delta))
                r["numpy"] = run_worker(dict(sub, strategy=s, impl="numpy", delta=delta))
            else:
                b = dict(base, budget=cfg.get("budgets", {}).get(s, cfg["budget"]))
                r["raal"] = run_worker(dict(b, strategy=s, impl="raal"))
                r["numpy"] = run_worker(dict(b, strategy=s, impl="numpy"))
            r["speedup"] = r["numpy"]["wall_s"] / r["raal"]["wall_s"]
            r["part_budget"] = cfg["budget"]
    finally:
        if not keep:
            shutil.rmtree(data, ignore_errors=True)
    return {"config": cfg, "rows": rows}


def body_budget(r: dict) -> int:
    return r.get("part_budget", 0)


def _s(r):
    return f"{r['wall_s']:.1f}{'*' if r.get('extrapolated') else ''}"


def _notes(s: str, r: dict) -> str:
    raal, nb = r["raal"], r.get("numpy", {})
    out = []
    if s in ("kmeans_centroid", "dropquery") and raal.get("budget", 0) < body_budget(r):
        x = body_budget(r) / raal["budget"]
        out.append(f"budget {raal['budget']:,}: k-means cost grows linearly with k (x{x:.0f} at the part's budget)")
    if raal.get("kmeans"):
        ks = ", ".join((f"k={c['k']} two-level ({c['two_level']['coarse']} coarse clusters, "
                        f"{c['two_level']['coarse_s']:.0f} s; all {c['train_s']:.0f} s)") if c.get("two_level") else
                       (f"k={c['k']}: {c.get('niter', len(c['iteration_s']))} of {NITER} steps timed "
                        f"({np.mean(c['iteration_s']):.1f} s/step), seeding {c['seed_s']:.1f} s")
                       for c in raal["kmeans"])
        out.append(f"k-means {ks}")
    last = raal.get("last") or {}
    if "candidates" in last:
        out.append(f"{last['candidates']} dropout candidates")
    if "delta" in last:
        out.append(f"δ = {last['delta']:.3f}, {last['edges']:,} edges, {last['covered']:,} of "
                   f"{last['n']:,} covered")
    if last.get("approx"):
        out.append(f"approximate index (IVF-SQ8, nlist {last['approx']['nlist']}, nprobe {last['approx']['nprobe']})")
    if "t_build" in raal:
        out.append(f"approximate index (IVF-SQ8, nlist {raal['nlist']}, nprobe {raal['nprobe']}) built in full "
                   f"({raal['t_build']:.0f} s), 32-NN searches of {raal['ann_queries']:,} rows timed "
                   f"({raal['t_ann_sample']:.0f} s) and scaled to N; δ-balls and greedy not run")
    if "recall32" in raal:
        out.append(f"recall@32 {raal['recall32']:.4f} against exact ({raal['recall_queries']:,} queries)")
    if "t_typicality" in raal:
        out.append(f"k-means {raal['t_kmeans']:.0f} s, assignment {raal['t_assign']:.0f} s, typicality "
                   f"{raal['t_typicality']:.0f} s ({raal['clusters_timed']} of {raal['clusters']} clusters timed)")
    if "per_pick_s" in nb and "cluster_size" in nb:  # the reference loop costs ~ n_c^2 per pick
        mean = raal["n"] / 500  # TypiClust's cluster cap (|L| + B is larger in every part)
        low = nb["wall_s"] - nb["per_pick_s"] * raal["budget"] * (1 - (mean / nb["cluster_size"]) ** 2)
        out.append(f"baseline: {nb['picks_timed']} picks timed in the largest cluster ({nb['cluster_size']} items, "
                   f"{nb['per_pick_s'] * 1e3:.0f} ms/pick), so its total is an upper bound; scaled to the mean "
                   f"cluster ({mean:.0f} items, cost ~ n²) it is {low:.0f} s, {low / raal['wall_s']:.0f}x raal")
    elif "per_pick_s" in nb:
        out.append(f"baseline: {nb['picks_timed']} picks timed ({nb['per_pick_s'] * 1e3:.1f} ms/pick)")
    if "t_step" in nb:
        part = f", timed on {nb['step_rows']:,} rows and scaled" if nb.get("step_rows", raal["n"]) < raal["n"] - 10_000 else ""
        out.append(f"baseline Lloyd step {nb['t_step']:.1f} s{part}")
    if nb.get("load") and max(raal["load"][0], 1) / max(nb["load"][0], 1) > 3:
        out.append(f"loads differ (raal {raal['load'][0]:.0f}, baseline {nb['load'][0]:.0f}): CPU seconds raal "
                   f"{raal['cpu_s']:.0f} vs baseline {nb['cpu_s'] * nb['wall_s'] / nb['measured_s']:.0f}* "
                   f"({nb['wall_s'] * nb['cpu_s'] / nb['measured_s'] / raal['cpu_s']:.1f}x)")
    if "queries" in nb and s == "probcover":
        out.append(f"baseline: the exact 32-NN pass alone (N² D; graph and greedy not counted), {nb['queries']:,} "
                   f"query rows timed ({nb['measured_s']:.0f} s) and scaled to N")
    if "queries" in raal:
        out.append(f"only the all-pairs 32-NN pass (N² D) that builds the δ-ball graph, {raal['queries']:,} query "
                   f"rows timed ({raal['measured_s']:.0f} s) and scaled to N")
    if "purity" in r:
        p = r["purity"]
        out.append(f"with δ chosen by the purity rule (k-means pseudo-labels, 32-NN pass): {_s(p)} s, "
                   f"{p['mem']['extra_mb']:.0f} MB extra; the columns compare graph + greedy for that δ")
    if "knn_pass" in r:
        k = r["knn_pass"]
        out.append(f"the all-pairs 32-NN pass (N² D) at N = {k['n']:,}: {k['wall_s']:.0f}* s ({k['queries']:,} "
                   f"queries timed, {k['mem']['extra_mb']:.0f} MB extra)")
    return "; ".join(out)


def kmeans_quality() -> list[dict]:
    """Two-level against flat k-means (both in full, 20 steps, normalised rows): objective = mean squared distance
    of a row to its nearest centroid; the two-level's own (hierarchical) assignment is reported too."""
    from raal.index import kmeans_labels, min_sq_dist_to
    out = []
    for n, d, c, k in KMEANS_QUALITY:
        path = Path("/tmp/raal-bench-cold-kmq")
        generate(path, n, d, c, n_labeled=1)
        x = np.load(path / "features.npy")
        row = {"n": n, "d": d, "classes": c, "k": k, "load": os.getloadavg()[0]}
        for name, tl in (("flat", False), ("two_level", True)):
            t0 = time.perf_counter()
            cent, _, dist = kmeans_labels(x, k, normalize=True, two_level=tl, seed=0)
            row[f"{name}_s"] = time.perf_counter() - t0
            row[f"{name}_obj"] = float(min_sq_dist_to(x, cent, normalize=True, normalize_centres=False).mean())
            row[f"{name}_obj_own"] = float(dist.mean())
        row["ratio"] = row["two_level_obj"] / row["flat_obj"]
        row["ratio_own"] = row["two_level_obj_own"] / row["flat_obj"]
        print(f"  kmeans quality {row}", flush=True)
        out.append(row)
        shutil.rmtree(path, ignore_errors=True)
    return out


def render(res: dict) -> str:
    m = res.get("machine", {})
    lines = ["# Cold-start strategies benchmark", "",
             f"Machine: {m.get('cpus')} CPU cores ({m.get('cpu')}), {m.get('mem_gb', 0):.0f} GiB, shared with other "
             "jobs (load = 1-minute load average at the start of each measurement; 2 = both cores busy). Times are "
             "wall seconds of one `select` in a fresh process; `*` = partly timed and extrapolated (method in "
             "bench/cold_strategies.py). Extra memory = peak anonymous RSS above the loaded inputs.", ""]
    for part, body in res["parts"].items():
        c = body["config"]
        lines += [f"## {part}: {c['n']:,} x {c['d']} float32{' (memmap)' if c['memmap'] else ''}, "
                  f"{c['labeled']:,} labeled, budget {c['budget']:,}", "",
                  "| strategy | N | raal s | raal cpu s | load | raal extra MB | input MB | straightforward s | "
                  "speed-up | notes |", "|---|---|---|---|---|---|---|---|---|---|"]
        if body.get("stale") or body.get("reruns"):
            old = ", ".join(body.get("stale") or [r for x in body["reruns"] for r in x["only"]])
            what = "from an earlier run of this part" if body.get("stale") else "re-run later"
            lines[-2:-2] = [f"Rows {what}: {old}.", ""]
        for s, r in body["rows"].items():
            a, b = r["raal"], r.get("numpy")
            lines.append(f"| {s} | {a['n']:,} | {_s(a)} | {a['cpu_s']:.0f} | {a['load'][0]:.1f} | "
                         f"{a['mem']['extra_mb']:.0f} | {a['input_mb']:.0f} | {_s(b) if b else ''} | "
                         f"{r['speedup']:.1f}x |" if b else f"| {s} | {a['n']:,} | {_s(a)} | {a['cpu_s']:.0f} | "
                         f"{a['load'][0]:.1f} | {a['mem']['extra_mb']:.0f} | {a['input_mb']:.0f} | | |")
            lines[-1] += f" {_notes(s, r)} |"
        lines.append("")
    if res.get("kmeans_quality"):
        lines += ["## two-level against flat k-means (normalised rows, 20 steps each, in full)", "",
                  "| N x D (classes) | k | flat s | two-level s | speed-up | objective ratio (nearest centroid) | "
                  "objective ratio (hierarchical assignment) | load |", "|---|---|---|---|---|---|---|---|"]
        for q in res["kmeans_quality"]:
            lines.append(f"| {q['n']:,} x {q['d']} ({q['classes']}) | {q['k']:,} | {q['flat_s']:.1f} | "
                         f"{q['two_level_s']:.1f} | {q['flat_s'] / q['two_level_s']:.1f}x | {q['ratio']:.5f} | "
                         f"{q['ratio_own']:.5f} | {q['load']:.1f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="quick", help="comma list of: quick, 100k, 1.28M")
    ap.add_argument("--workdir", default="/tmp/raal-bench-cold")
    ap.add_argument("--keep-data", action="store_true", help="keep (and reuse) the generated pools")
    ap.add_argument("--only", help="comma list of strategies to re-run (merged into the part's rows)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker)), default=float))
        return
    out_json = RESULTS / "cold_strategies.json"
    res = json.loads(out_json.read_text()) if out_json.exists() else {"parts": {}}
    res["machine"] = machine()
    for part in args.parts.split(","):
        t = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        if part == "kmeans_quality":
            res["kmeans_quality"] = kmeans_quality()
            _write(res, out_json)
            continue
        only = args.only.split(",") if args.only else None
        body = run_part(part, PARTS[part], Path(args.workdir), keep=args.keep_data, only=only)
        body["started"] = t
        if only and part in res["parts"]:  # merge the re-run rows into the earlier run of the part
            res["parts"][part]["rows"].update(body["rows"])
            res["parts"][part].setdefault("reruns", []).append({"started": t, "only": only})
        else:
            res["parts"][part] = body
        _write(res, out_json)


def _write(res: dict, out_json: Path) -> None:
    tmp = out_json.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1, default=float))
    os.replace(tmp, out_json)
    md = RESULTS / "cold_strategies.md"
    md.with_suffix(".tmp").write_text(render(res) + "\n")
    os.replace(md.with_suffix(".tmp"), md)


if __name__ == "__main__":
    main()
