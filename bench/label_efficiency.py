"""Label-efficiency evidence on Animal-MNIST: ASVP vs SVPp vs standard AL (FT, LP-FT), margin, several seeds.

Per seed, three real raal experiments (each `python -m raal.run`, its own local Ray):
  A  asvp/margin + svpp/margin + svpp/random   every round evaluated by fine-tuning MobileNetV2 on the labeled set
                                               (ASVP with its own alignment: LP-FT until a refresh, FT after;
                                               SVPp and random with FT, the paper's final-model recipe)
  B  standard/margin, FT every round           (selection with the fine-tuned model)
  C  standard/margin, LP-FT every round
The random arm of A (fine-tuned by FT on random sets of the same sizes and seed) is the baseline of every arm:
the same pool, seed and schedule, reused rather than recomputed. The pre-trained features (v0) of A are copied to
B and C (same data, same backbone: the manifest checks both), so each seed embeds the pool once.

Writes bench/results/label_efficiency.{md,json}: average sample saving ratio (mean ± std over seeds) per method,
where ASVP's refreshes happened, and the total compute time of each run (AL compute, evaluation excluded).

    python bench/label_efficiency.py                  # 3 seeds (about 10 min a seed on 2 cores)
    python bench/label_efficiency.py --seeds 0        # one seed; results of earlier seeds are kept and aggregated
    python bench/label_efficiency.py --aggregate      # only rebuild the tables from finished runs
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from raal.metrics import saving_curve  # noqa: E402

RUNS = ROOT / "bench" / "runs" / "label_efficiency"
OUT = ROOT / "bench" / "results"

COMMON = ["conf=demo", "data.image_size=32", "embed.batch_size=256", "al.initial=100", "al.schedule=[100]+[200]+[300]",
          "train.lp_epochs=3", "train.epochs=10", "train.milestones=[7]", "train.batch_size=32", "report=false"]
# A first recipe (FT 4 epochs at batch 64: 8 SGD steps at 100 labels) left every curve at chance level below 400
# labels, so selection differences drowned in fine-tuning noise; 10 epochs at batch 32 give 40-220 steps a fit.
EXPERIMENTS = {
    "A": ["al.pipeline=asvp", "al.strategy=margin", "al.compare=[svpp/margin]", "eval.every_round=ft"],
    "B": ["al.pipeline=standard", "al.strategy=margin", "al.baseline=false", "train.method=ft"],
    "C": ["al.pipeline=standard", "al.strategy=margin", "al.baseline=false", "train.method=lpft"],
}
METHODS = {  # method label -> (experiment, arm)
    "asvp": ("A", "asvp_margin"), "svpp": ("A", "svpp_margin"),
    "standard FT": ("B", "standard_margin"), "standard LP-FT": ("C", "standard_margin"),
}
AL_PHASES = ("t_tr_proxy", "t_f_proxy", "t_tr_full", "t_f_full", "t_select", "t_pre")


def run_seed(seed: int, quick: bool) -> None:
    extra = ["data.pool_size=1000", "data.test_size=500"] if quick else []
    for name, args in EXPERIMENTS.items():
        run_dir = RUNS / f"seed{seed}" / name
        if (run_dir / "status.json").exists() and '"done"' in (run_dir / "status.json").read_text():
            print(f"seed {seed} {name}: done already")
            continue
        source = RUNS / f"seed{seed}" / "A" / "features" / "v0"
        if name != "A" and source.is_dir() and not (run_dir / "features" / "v0").exists():
            shutil.copytree(source, run_dir / "features" / "v0")
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "raal.run", *COMMON, *extra, *args, f"al.seed={seed}", f"run_dir={run_dir}"]
        env = dict(os.environ, RAAL_LOG="WARNING", TQDM_DISABLE="1")
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        print(proc.stdout[-2000:])
        if proc.returncode != 0:
            print(proc.stderr[-4000:], file=sys.stderr)
            raise SystemExit(f"seed {seed} experiment {name} failed")
        print(f"seed {seed} {name}: {time.perf_counter() - t0:.0f} s wall")


def rounds(seed: int, exp: str, arm: str) -> list[dict] | None:
    """The rounds table of a finished experiment (None while it runs: partial curves would skew the means)."""
    status = RUNS / f"seed{seed}" / exp / "status.json"
    if not status.exists() or json.loads(status.read_text()).get("state") != "done":
        return None
    path = RUNS / f"seed{seed}" / exp / "arms" / arm / "rounds.parquet"
    return pq.read_table(path).to_pylist() if path.exists() else None


def aggregate() -> dict:
    seeds = sorted(int(p.name[4:]) for p in RUNS.glob("seed*") if p.is_dir())
    per_method: dict[str, dict] = {m: {"ratios": [], "compute_s": [], "final_acc": [], "refreshes": []}
                                   for m in METHODS}
    per_method["random"] = {"ratios": [], "compute_s": [], "final_acc": [], "refreshes": []}
    curves: dict[str, dict] = {}
    for seed in seeds:
        base = rounds(seed, "A", "svpp_random")
        if base is None:
            continue
        rand_curve = [(r["n_labeled"], r["accuracy"]) for r in base]
        curves.setdefault("random", {})[seed] = rand_curve
        per_method["random"]["final_acc"].append(base[-1]["accuracy"])
        per_method["random"]["compute_s"].append(sum(sum(r[k] for k in AL_PHASES) for r in base))
        for method, (exp, arm) in METHODS.items():
            rows = rounds(seed, exp, arm)
            if rows is None or len(rows) != len(base):
                continue
            curve = [(r["n_labeled"], r["accuracy"]) for r in rows]
            res = saving_curve(rand_curve, curve, exclude=[bool(r["random_only"]) for r in rows])
            per_method[method]["ratios"].append(float(res.mean))
            per_method[method]["compute_s"].append(sum(sum(r[k] for k in AL_PHASES) for r in rows))
            per_method[method]["final_acc"].append(rows[-1]["accuracy"])
            per_method[method]["refreshes"].append([r["n_labeled"] for r in rows if r.get("refreshed")])
            curves.setdefault(method, {})[seed] = curve
    return {"seeds": seeds, "methods": per_method, "curves": curves}


def fmt(values: list[float], scale: float = 100.0, unit: str = " %") -> str:
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return "n/a"
    return f"{scale * np.mean(v):+.1f} ± {scale * np.std(v):.1f}{unit}" if len(v) > 1 else f"{scale * v[0]:+.1f}{unit}"


def write(results: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "label_efficiency.json").write_text(json.dumps(results, indent=2, default=float))
    m = results["methods"]
    lines = ["# Label efficiency on Animal-MNIST (bench/label_efficiency.py)", "",
             f"Seeds: {results['seeds']}. Pool 8,000 / test 2,000 real Animal-MNIST images at 32 px, MobileNetV2 "
             "(ImageNet weights), margin sampling, schedule 100 → 200 → 400 → 700 labels. Every round of every arm is "
             "evaluated by fine-tuning MobileNetV2 on the labeled set (Ray Train; FT 10 epochs, batch 32, lr 0.01 "
             "head / 0.001 backbone, step at epoch 7; LP-FT adds 3 linear-probe epochs), and the random arm is the "
             "baseline of all. Saving ratio r = (N₂ − N₁)/N₂ averaged over the rounds after the random round 0 "
             "(decisions.md §7). Compute = the AL phases (proxy training/scoring, fine-tunes that select, feature "
             "refreshes, selection), evaluation fine-tunes excluded. 2-core shared machine: times are noisy.", "",
             "| method | avg sample saving ratio | final accuracy | AL compute (s) | refreshes at (labels) |",
             "|---|---|---|---|---|"]
    for method in ("asvp", "svpp", "standard FT", "standard LP-FT", "random"):
        d = m[method]
        ratio = "baseline" if method == "random" else fmt(d["ratios"])
        acc = fmt(d["final_acc"], 100.0, " %").lstrip("+")
        comp = fmt(d["compute_s"], 1.0, "").lstrip("+")
        refresh = "; ".join(str(x) for x in d["refreshes"]) if d["refreshes"] else "-"
        lines.append(f"| {method} | {ratio} | {acc} | {comp} | {refresh} |")
    lines += ["", "Per-seed learning curves (labels, accuracy):", ""]
    for method, by_seed in results["curves"].items():
        for seed, curve in by_seed.items():
            pts = ", ".join(f"({n}, {a:.3f})" for n, a in curve)
            lines.append(f"- {method}, seed {seed}: {pts}")
    (OUT / "label_efficiency.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:12 + len(m)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    ap.add_argument("--quick", action="store_true", help="1,000-image pool, for a smoke run")
    ap.add_argument("--aggregate", action="store_true", help="only rebuild the tables from finished runs")
    args = ap.parse_args()
    if not args.aggregate:
        for seed in args.seeds:
            run_seed(seed, args.quick)
    write(aggregate())


if __name__ == "__main__":
    main()
