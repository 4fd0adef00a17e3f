"""Why ProbCover picks poorly on the cold-start bench: its δ, ball sizes, coverage and the classes it picks.

Reads the features bench/cold_start.py caches (bench/runs/cold_start/v0_pool.npy, v0_test.npy: run
`python bench/cold_start.py --stage features` first) and, per seed, runs `probcover` exactly as that bench's one-shot
arm does (`strategies.for_run`, k = the class count, round-0 seed), then reports:

- δ from the purity rule, the median distance to the nearest neighbour and to the nearest other-pseudo-label item,
  and how well the k-means pseudo-labels agree with the true classes (majority-class purity);
- the δ-ball sizes (how many balls hold only their centre, the largest ball);
- the coverage after 10, 20, 50, 100, 200 greedy picks and the true-class histogram of the picks;
- a diagnostic δ sweep (δ x 0.8, 1, 1.2, 1.5; the rule's δ is x 1): coverage, classes hit and the linear-probe
  accuracy of the picks. The sweep reads the true labels, so it explains the rule's δ; it does not tune it.

    OMP_NUM_THREADS=1 nice -n 19 python bench/probcover_diag.py        # -> bench/results/probcover_diag.{md,json}
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.cold_start import BUDGETS, RUNS, SEEDS, bench_config, probe_accuracy  # noqa: E402

OUT = ROOT / "bench" / "results"
SCALES = (0.8, 1.0, 1.2, 1.5)


def load() -> SimpleNamespace:
    """The cached v0 features and the true labels (what probe_accuracy reads), no evaluator built."""
    from raal.data.sources import load_data

    paths = [RUNS / f"v0_{s}.npy" for s in ("pool", "test")]
    if not all(p.exists() for p in paths):
        sys.exit(f"missing {paths[0]}: run `python bench/cold_start.py --stage features` first")
    data = load_data(bench_config().data)
    return SimpleNamespace(pool_x=np.load(paths[0]), test_x=np.load(paths[1]), data=data,
                           truth=np.asarray([data.truth[int(i)] for i in data.pool.ids], dtype=np.int64),
                           test_y=np.asarray(data.test.labels, dtype=np.int64))


def coverage_curve(lims: np.ndarray, ids: np.ndarray, picks: np.ndarray, n: int) -> dict[int, float]:
    """Fraction of the pool inside the union of the first b picks' balls, for each budget b."""
    covered = np.zeros(n, bool)
    out = {}
    for i, p in enumerate(picks.tolist(), 1):
        covered[ids[lims[p]:lims[p + 1]]] = True
        if i in BUDGETS:
            out[i] = float(covered.mean())
    return out


def one_seed(b: SimpleNamespace, seed: int) -> dict:
    from raal import strategies
    from raal.index import kmeans, knn, min_sq_dist_to
    from raal.pipelines.base import round_seed
    from raal.strategies.probcover import ball_graph, impure_distance

    x, y, n_cls = b.pool_x, b.truth, len(b.data.class_names)
    n, s = len(x), round_seed(seed, 0)
    pc = strategies.for_run("probcover", num_classes=n_cls)
    top = max(BUDGETS)
    picks = pc.select(top, labeled_mask=np.zeros(n, bool), seed=s, embeddings=x)  # greedy: a prefix per budget
    delta = pc.last["delta"]
    # the rule's inputs, recomputed the way ProbCover computes them (same k-means seed)
    cent = kmeans(x, n_cls, normalize=True, niter=pc.niter, seed=s)
    _, pseudo = min_sq_dist_to(x, cent, normalize=True, return_index=True, normalize_centres=False)
    majority = sum(np.bincount(y[pseudo == c]).max() for c in np.unique(pseudo)) / n
    dist, _ = impure_distance(x, pseudo, normalize=True)
    nn_d2, _ = knn(x, x, 2, normalize=True)
    res = {"delta": delta, "nn_dist_median": float(np.sqrt(np.median(nn_d2[:, 1]))),
           "impure_dist_median": float(np.median(dist[np.isfinite(dist)])), "pseudo_majority_purity": majority,
           "picks_class_hist": {k: np.bincount(y[picks[:k]], minlength=n_cls).tolist() for k in (20, 50, 200)},
           "sweep": {}}
    for scale in SCALES:
        d = delta * scale
        lims, ids = ball_graph(x, d, normalize=True)
        size = np.diff(lims)
        sel = picks if scale == 1.0 else strategies.get("probcover", delta=d).select(
            top, labeled_mask=np.zeros(n, bool), seed=s, embeddings=x)
        res["sweep"][str(scale)] = {
            "delta": d, "singleton_balls": float((size == 1).mean()), "largest_ball": int(size.max()),
            "coverage": coverage_curve(lims, ids, sel, n),
            "classes_hit": {k: int(len(np.unique(y[sel[:k]]))) for k in BUDGETS},
            "probe": {k: probe_accuracy(b, np.sort(sel[:k])) for k in BUDGETS}}
        if scale == 1.0:
            res.update(singleton_balls=res["sweep"]["1.0"]["singleton_balls"],
                       largest_ball=int(size.max()), pick_ball_sizes_first10=size[picks[:10]].tolist())
    return res


def _m(vals) -> str:
    return f"{np.mean(vals):.3g} ({np.min(vals):.3g}-{np.max(vals):.3g})"


def write(res: dict) -> None:
    seeds = list(res["seeds"])
    per = [res["per_seed"][str(s)] for s in seeds]
    lines = ["# ProbCover on the cold-start features (bench/probcover_diag.py)", "",
             f"Animal-MNIST pool {res['n']} x {res['dim']} (MobileNetV2 v0 features, bench/cold_start.py's cache), "
             f"L2-normalised as ProbCover uses them; seeds {seeds}. Mean (min-max) over seeds.", "",
             f"- δ (purity rule, α = 0.95, k = {res['classes']}): {_m([p['delta'] for p in per])}",
             f"- median distance to the nearest neighbour: {_m([p['nn_dist_median'] for p in per])}; "
             f"to the nearest item of another pseudo-label: {_m([p['impure_dist_median'] for p in per])}",
             f"- k-means pseudo-labels vs the true classes (majority purity): "
             f"{_m([p['pseudo_majority_purity'] for p in per])}",
             f"- δ-balls holding only their centre: {_m([p['singleton_balls'] for p in per])}; largest ball: "
             f"{_m([p['largest_ball'] for p in per])} items; the first 10 picks' balls (seed {seeds[0]}): "
             f"{per[0]['pick_ball_sizes_first10']}", "",
             "True-class histogram of the picks (classes " + ", ".join(res["class_names"]) + "):", ""]
    for s, p in zip(seeds, per):
        lines.append(f"- seed {s}: " + "; ".join(f"first {k}: {h}" for k, h in p["picks_class_hist"].items()))
    lines += ["", "δ sweep (diagnostic only: the probe reads true labels). Coverage / distinct classes / probe "
              "accuracy % at each budget, mean over seeds:", "",
              "| δ scale | δ | singleton balls | " + " | ".join(f"{k} labels" for k in BUDGETS) + " |",
              "|---|---|---|" + "---|" * len(BUDGETS)]
    for scale in SCALES:
        sw = [p["sweep"][str(scale)] for p in per]
        cells = [f"{np.mean([w['coverage'][str(k)] for w in sw]):.1%} / "
                 f"{np.mean([w['classes_hit'][str(k)] for w in sw]):.1f} / "
                 f"{100 * np.mean([w['probe'][str(k)] for w in sw]):.1f}" for k in BUDGETS]
        lines.append(f"| x{scale} | {np.mean([w['delta'] for w in sw]):.3f} | "
                     f"{np.mean([w['singleton_balls'] for w in sw]):.0%} | " + " | ".join(cells) + " |")
    (OUT / "probcover_diag.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="*", default=SEEDS)
    args = ap.parse_args()
    b = load()
    res = {"seeds": args.seeds, "n": len(b.pool_x), "dim": b.pool_x.shape[1], "classes": len(b.data.class_names),
           "class_names": list(b.data.class_names), "per_seed": {}}
    for seed in args.seeds:
        res["per_seed"][str(seed)] = one_seed(b, seed)
        print(f"seed {seed}: delta {res['per_seed'][str(seed)]['delta']:.4f}", flush=True)
    res = json.loads(json.dumps(res))  # int keys -> str, as the file will hold them
    tmp = OUT / "probcover_diag.tmp"
    tmp.write_text(json.dumps(res, indent=1))
    tmp.replace(OUT / "probcover_diag.json")
    write(res)


if __name__ == "__main__":
    main()
