"""Selection spread over Ray workers (al.select_workers, raal/pipelines/sharded.py): proxy scoring time on 1 vs W
workers, and composable greedy k-center against single-process greedy.

    python bench/sharded_select.py --parts scoring,kcenter              # 200k x 256 scoring, 50k x 256 k-center
    python bench/sharded_select.py --parts scoring,coreset --n 1280000 --d 2048 --c 1000 --budget 10000
        # the issue's bars: scoring 1.28M rows on 1 and 2 workers, coreset at budget 10,000 (10.5 GB of shards
        # generated under --tmp and deleted; needs ~25 GB of disk and RAM for one worker's part of the embeddings)
    python bench/sharded_select.py --parts kcenter --kn 100000 --kd 2048 --kbudget 10000   # objective, subsample

scoring: a feature set of n x d float32 rows (class-structured Gaussians) is written to a temporary run store in
shards of 4,096 rows, a proxy with fixed random weights (d -> d -> c) scores it for margin on 1 and on W workers
(`raal.pipelines.sharded.select_scores`, 1% labeled), warm-up first, then `--repeats` interleaved timings; the picks
are checked against one process's (`strategies.get("margin").select` on `predict` of the whole set) when n <= 200k.
coreset: `select_coreset` on W workers at `--budget` (wall time; the round-1 tasks and the driver's merge).
kcenter: in process, no Ray: exact `kcenter_greedy` and `composable_kcenter` with 2, 4 and 8 parts on `--seeds`
class-structured pools; the k-center objective (largest distance of a row to its nearest labeled row or pick) of
each, as a ratio to greedy's (the proven bound is 4), and the times.
Results: bench/results/sharded_select.json (a part replaces its own earlier run) and .md; the machine's load average
is recorded with each part (2 shared cores: read ratios, not absolute times).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
SHARD_ROWS = 4096


def _pool(n: int, d: int, c: int, seed: int, rows: slice | None = None) -> np.ndarray:
    """Rows of a class-structured pool, made per block of SHARD_ROWS from (seed, block start): a slice that starts
    on a block boundary gives the same rows as the whole pool."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((c, d)).astype(np.float32)
    s, e = (0, n) if rows is None else (rows.start, rows.stop)
    assert s % SHARD_ROWS == 0, "slices start on a block boundary"
    out = np.empty((e - s, d), np.float32)
    for a in range(s, e, SHARD_ROWS):
        b = min(e, a + SHARD_ROWS)
        r = np.random.default_rng([seed, a])
        out[a - s:b - s] = centres[r.integers(0, c, b - a)] + 0.7 * r.standard_normal((b - a, d), dtype=np.float32)
    return out


def _write_set(store_dir: Path, n: int, d: int, c: int, mask: np.ndarray):
    """The pool as a feature set in a run store, in shards of SHARD_ROWS; returns it and the labeled rows."""
    from raal.features import FeatureStore
    from raal.store import RunStore

    target = FeatureStore(RunStore(str(store_dir))).set_for(0, "pool")
    ids = np.arange(n, dtype=np.int64)
    labeled = []
    for k in target.begin(ids, {"features": d}, SHARD_ROWS, {"kind": "bench", "version": 0, "split": "pool"}):
        s, e = target.shard_range(k)
        x = _pool(n, d, c, 0, slice(s, e))
        target.write_shard(k, ids[s:e], {"features": x})
        labeled.append(x[mask[s:e]])
    target.finish()
    return FeatureStore(RunStore(str(store_dir))).set_for(0, "pool"), np.concatenate(labeled)


def _proxy(d: int, c: int):
    import torch

    from raal.train import ProxyMLP, proxy_state_dict

    torch.manual_seed(0)
    return proxy_state_dict(ProxyMLP(d, c).eval())


def _labeled(n: int) -> np.ndarray:
    mask = np.zeros(n, bool)
    mask[np.random.default_rng(1).choice(n, max(1, n // 100), replace=False)] = True
    return mask


def part_scoring(a, tmp: Path) -> dict:
    from raal import strategies
    from raal.pipelines.sharded import select_scores
    from raal.train import load_proxy, predict

    state, mask, margin = _proxy(a.d, a.c), _labeled(a.n), strategies.get("margin")
    target, _ = _write_set(tmp / "store", a.n, a.d, a.c, mask)
    runs: dict[int, list[float]] = {1: [], a.workers: []}
    picks, cpu = {}, {}
    for w in runs:  # warm-up: workers start and import torch
        picks[w] = select_scores(target, state, margin, a.budget, mask, workers=w).picks
    for _ in range(a.repeats):
        for w in runs:
            t0 = time.perf_counter()
            out = select_scores(target, state, margin, a.budget, mask, workers=w)
            runs[w].append(time.perf_counter() - t0)
            cpu[str(w)] = out.stats["cpu_s"]  # CPU seconds of each task: the work split, whatever the load
            assert np.array_equal(out.picks, picks[1])
    same = None
    if a.n <= 200_000:
        x = _pool(a.n, a.d, a.c, 0)
        probs = predict(load_proxy(state), x, want=("probs",))["probs"]
        same = bool(np.array_equal(margin.select(a.budget, labeled_mask=mask, probs=probs), picks[1]))
    best = {w: min(t) for w, t in runs.items()}
    return {"n": a.n, "d": a.d, "c": a.c, "budget": a.budget, "workers": a.workers,
            "seconds": {str(w): t for w, t in runs.items()}, "best_s": {str(w): t for w, t in best.items()},
            "task_cpu_s": cpu,
            "speedup": best[1] / best[a.workers], "same_as_one_process": same,
            "bytes_returned": int(out.stats["bytes_returned"]), "candidates": int(out.stats["candidates"])}


def part_coreset(a, tmp: Path) -> dict:
    from raal.pipelines.sharded import select_coreset
    from raal.train import load_proxy, predict

    state, mask = _proxy(a.d, a.c), _labeled(a.n)
    target, labeled = _write_set(tmp / "store", a.n, a.d, a.c, mask)
    centres = predict(load_proxy(state), labeled, want=("embeddings",))["embeddings"]
    select_coreset(target, state, centres, 1, mask, workers=a.workers)  # warm-up: workers start, import torch
    t0 = time.perf_counter()
    out = select_coreset(target, state, centres, a.budget, mask, workers=a.workers)
    res = {"n": a.n, "d": a.d, "budget": a.budget, "workers": a.workers, "seconds": time.perf_counter() - t0,
           "merge_s": out.stats["merge_s"], "task_s": out.stats["task_s"], "cpu_s": out.stats["cpu_s"],
           "bytes_returned": int(out.stats["bytes_returned"])}
    if a.n <= 200_000:  # one process on the same embeddings: its time (proxy + greedy) and objective
        from raal.index import kcenter_greedy, kcenter_radius

        t0 = time.perf_counter()
        emb = predict(load_proxy(state), _pool(a.n, a.d, a.c, 0), want=("embeddings",))["embeddings"]
        exact = kcenter_greedy(emb, a.budget, labeled_mask=mask)
        lab = np.flatnonzero(mask)
        res.update(one_process_s=time.perf_counter() - t0, ratio=kcenter_radius(emb, np.r_[lab, out.picks])
                   / kcenter_radius(emb, np.r_[lab, exact]))
    return res


def part_kcenter(a, tmp: Path) -> dict:
    from raal.index import composable_kcenter, kcenter_greedy, kcenter_radius

    rows = []
    for seed in range(a.seeds):
        x = _pool(a.kn, a.kd, 100, seed)
        mask = _labeled(a.kn)
        lab = np.flatnonzero(mask)
        t0 = time.perf_counter()
        g = kcenter_greedy(x, a.kbudget, labeled_mask=mask)
        row = {"seed": seed, "greedy_s": time.perf_counter() - t0, "greedy": kcenter_radius(x, np.r_[lab, g])}
        for parts in (2, 4, 8):
            cuts = np.linspace(0, a.kn, parts + 1).round().astype(int)
            t0 = time.perf_counter()
            c = composable_kcenter(x, a.kbudget, list(zip(cuts[:-1], cuts[1:])), labeled_mask=mask)
            row[f"p{parts}_s"] = time.perf_counter() - t0
            row[f"p{parts}_ratio"] = kcenter_radius(x, np.r_[lab, c]) / row["greedy"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary = {f"p{p}": {k: float(f(np.array([r[f"p{p}_ratio"] for r in rows])))
                         for k, f in (("min", np.min), ("median", np.median), ("max", np.max))} for p in (2, 4, 8)}
    return {"n": a.kn, "d": a.kd, "budget": a.kbudget, "seeds": a.seeds, "ratios": summary, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="scoring,kcenter")
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--c", type=int, default=100)
    ap.add_argument("--budget", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--kn", type=int, default=50_000)
    ap.add_argument("--kd", type=int, default=256)
    ap.add_argument("--kbudget", type=int, default=1000)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--tmp", default=tempfile.gettempdir())
    a = ap.parse_args()
    fns = {"scoring": part_scoring, "coreset": part_coreset, "kcenter": part_kcenter}
    parts = a.parts.split(",")
    out_json = RESULTS / "sharded_select.json"
    results = json.loads(out_json.read_text()) if out_json.exists() else {}
    ray_started = False
    if {"scoring", "coreset"} & set(parts):
        from raal.raylocal import init_local_ray

        init_local_ray(num_cpus=max(2, a.workers), quiet=True)
        ray_started = True
    try:
        for part in parts:
            tmp = Path(tempfile.mkdtemp(prefix="raal-sharded-", dir=a.tmp))
            try:
                load = os.getloadavg()[0]
                res = fns[part](a, tmp)
                res.update(load_before=load, load_after=os.getloadavg()[0], date=time.strftime("%Y-%m-%d %H:%M"))
                results[f"{part}:{a.n if part != 'kcenter' else a.kn}"] = res
                print(part, json.dumps({k: v for k, v in res.items() if k != "rows"}), flush=True)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if ray_started:
            import ray

            ray.shutdown()
    out_json.write_text(json.dumps(results, indent=1, default=float))
    (RESULTS / "sharded_select.md").write_text(render(results))


def render(results: dict) -> str:
    lines = ["# Selection on Ray workers (bench/sharded_select.py)", ""]
    for key, r in sorted(results.items()):
        head = f"## {key} ({r['date']}, load {r['load_before']:.1f} -> {r['load_after']:.1f})"
        if key.startswith("scoring"):
            body = (f"{r['n']:,} x {r['d']} rows, {r['c']} classes, margin, budget {r['budget']}: best of "
                    f"{len(r['seconds']['1'])} - "
                    + ", ".join(f"{w} worker(s) {t:.1f} s" for w, t in r["best_s"].items())
                    + f"; speed-up {r['speedup']:.2f}x; CPU seconds per task (last run) {r['task_cpu_s']}; "
                    f"same picks as one process: {r['same_as_one_process']}; "
                    f"{r['candidates']} candidates ({r['bytes_returned'] / 1e3:.1f} kB) returned")
        elif key.startswith("coreset"):
            body = (f"{r['n']:,} x {r['d']} rows, budget {r['budget']}, {r['workers']} workers: {r['seconds']:.1f} s "
                    f"(tasks {r['task_s']} s, merge {r['merge_s']:.1f} s), {r['bytes_returned'] / 1e6:.1f} MB back"
                    + (f"; one process {r['one_process_s']:.1f} s, objective / its objective {r['ratio']:.3f}"
                       if "ratio" in r else ""))
        else:
            body = (f"{r['n']:,} x {r['d']} rows, budget {r['budget']}, {r['seeds']} seeds; objective / greedy's "
                    "(min / median / max): " + "; ".join(
                        f"{p[1:]} parts {v['min']:.3f} / {v['median']:.3f} / {v['max']:.3f}"
                        for p, v in r["ratios"].items()))
        lines += [head, "", body, ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
