"""The recipe gate: the evaluator's fine-tune must beat the converged linear probe, and not depend on its seed.

On random labeled sets of Animal-MNIST (pool 8,000 / test 2,000, 64 px, MobileNetV2 with ImageNet weights) of
100, 400 and 1,300 images, 3 sets per size and 3 job seeds per set, it runs
- LP: the linear probe on the frozen features trained to convergence (L-BFGS; deterministic, so once per set);
- LP-FT: that probe, then the evaluator's fixed number of steps on the trainable blocks and the head;
- FT: the same steps from a fresh head;
with the evaluator's defaults (`EvalConfig`) unless flags say otherwise. The gate: at every size, FT and LP-FT
>= LP on the same set (the margin is reported per set), and the spread over job seeds <= 2 points. Only random
labeled sets are used here, never sets chosen by an AL strategy: the recipe must not be tuned on what it judges.

    python bench/recipe.py                       # ~6-10 min on 2 cores
    python bench/recipe.py --freeze 16 --out recipe.k16    # another variant, written beside the default
    python bench/recipe.py --full [--data animal mnist] [--aggregate]   # the full fine-tune gate (recipe_full.py)
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from raal.config import DataConfig, EvalConfig, ModelConfig  # noqa: E402
from raal.data.sources import load_data  # noqa: E402
from raal.data.transforms import ImageTransform  # noqa: E402
from raal.evaluator import Evaluator, Recipe  # noqa: E402
from raal.store import RunStore  # noqa: E402

OUT = ROOT / "bench" / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100,400,1300")
    ap.add_argument("--sets", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--freeze", type=int, default=EvalConfig.freeze_blocks)
    ap.add_argument("--steps", type=int, default=EvalConfig.steps)
    ap.add_argument("--out", default="recipe")
    ap.add_argument("--full", action="store_true", help="the full fine-tune gate (bench/recipe_full.py)")
    ap.add_argument("--data", nargs="*", default=["animal", "mnist"], choices=["animal", "mnist"])
    ap.add_argument("--aggregate", action="store_true", help="--full: only rebuild the tables")
    args = ap.parse_args()
    if args.full:
        import recipe_full  # bench/ is on sys.path: this script's folder

        recipe_full.main(args.data, args.aggregate)
        return
    sizes = [int(s) for s in args.sizes.split(",")]

    data = load_data(DataConfig(test_size=2000))
    truth = np.asarray([data.truth[int(i)] for i in data.pool.ids], dtype=np.int64)
    store = RunStore(ROOT / "bench" / "runs" / "recipe")
    t0 = time.perf_counter()
    base = Recipe.from_config(EvalConfig(steps=args.steps))
    ev = Evaluator.build(store=store, data=data, model_cfg=ModelConfig(), transform=ImageTransform(size=64),
                         freeze_blocks=args.freeze, recipe=base)
    print(f"prefix cache (freeze {ev.freeze_blocks} blocks): {time.perf_counter() - t0:.1f} s", flush=True)

    rows = []
    for n in sizes:
        for s in range(args.sets):
            pos = np.sort(np.random.default_rng([n, s]).choice(len(truth), n, replace=False))
            y = truth[pos]
            lp = ev.fit(pos, y, seed=0, recipe=Recipe(**{**base.__dict__, "method": "lp"}))
            row = {"size": n, "set": s, "lp": lp.accuracy, "lpft": [], "ft": [], "seconds": {"lp": lp.seconds}}
            for method in ("lpft", "ft"):
                secs = []
                for j in range(args.seeds):
                    f = ev.fit(pos, y, seed=1000 + j, recipe=Recipe(**{**base.__dict__, "method": method}))
                    row[method].append(f.accuracy)
                    secs.append(f.seconds)
                row["seconds"][method] = statistics.mean(secs)
            rows.append(row)
            print(f"n={n:5d} set {s}: LP {lp.accuracy:.4f}  LP-FT {np.round(row['lpft'], 4).tolist()}  "
                  f"FT {np.round(row['ft'], 4).tolist()}  ({row['seconds']['lpft']:.1f} s a fit)", flush=True)

    summary = []
    for n in sizes:
        rs = [r for r in rows if r["size"] == n]
        out = {"size": n, "lp": statistics.mean(r["lp"] for r in rs)}
        for m in ("lpft", "ft"):
            margins = [statistics.mean(r[m]) - r["lp"] for r in rs]
            spreads = [max(r[m]) - min(r[m]) for r in rs]
            out[m] = statistics.mean(statistics.mean(r[m]) for r in rs)
            out[m + "_margin_mean"], out[m + "_margin_min"] = statistics.mean(margins), min(margins)
            out[m + "_worst_single"] = min(min(r[m]) - r["lp"] for r in rs)
            out[m + "_spread_max"] = max(spreads)
            out[m + "_pass"] = min(margins) >= 0 and max(spreads) <= 0.02
        out["seconds_lpft"] = statistics.mean(r["seconds"]["lpft"] for r in rs)
        summary.append(out)

    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()}, 2 shared cores",
            "freeze_blocks": ev.freeze_blocks, "recipe": base.__dict__, "sets": args.sets, "seeds": args.seeds}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{args.out}.json").write_text(json.dumps({"meta": meta, "rows": rows, "summary": summary}, indent=1))
    lines = [f"# Recipe gate ({meta['date']})", "",
             f"Animal-MNIST, pool 8,000 / test 2,000, 64 px, MobileNetV2 (ImageNet). Random labeled sets only: "
             f"{args.sets} sets per size x {args.seeds} job seeds. Evaluator recipe: first {ev.freeze_blocks} blocks "
             f"frozen (activations cached), {base.steps} AdamW steps of batch {base.batch_size}, backbone lr "
             f"{base.backbone_lr}, head lr {base.head_lr} (LP-FT) / {base.ft_head_lr} (FT, fresh head), warm-up "
             f"{base.warmup_frac:.0%} then cosine, frozen BatchNorm statistics, flip augmentation. LP = L-BFGS "
             "logistic regression on the frozen features (converged). Margin = method - LP on the same set "
             "(mean over job seeds); spread = max - min over job seeds.", "",
             "| labels | LP | LP-FT | margin mean / min set / worst single | seed spread max | FT | "
             "margin mean / min set / worst single | seed spread max | gate | s a fit |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for o in summary:
        gate = "pass" if o["lpft_pass"] and o["ft_pass"] else "MISS"
        lines.append(f"| {o['size']} | {o['lp']:.4f} | {o['lpft']:.4f} | {o['lpft_margin_mean']:+.4f} / "
                     f"{o['lpft_margin_min']:+.4f} / {o['lpft_worst_single']:+.4f} | {o['lpft_spread_max']:.4f} | "
                     f"{o['ft']:.4f} | {o['ft_margin_mean']:+.4f} / {o['ft_margin_min']:+.4f} / "
                     f"{o['ft_worst_single']:+.4f} | {o['ft_spread_max']:.4f} | {gate} | {o['seconds_lpft']:.1f} |")
    (OUT / f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
