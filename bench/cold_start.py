"""Cold-start evidence: which first few labels to buy, and where the stopping advice falls.

Animal-MNIST (pool 8,000 / test 2,000, 64 px, MobileNetV2 with ImageNet weights: the data, backbone and evaluator of
bench/label_efficiency.py, built from its config). Per seed (5) and budget (10, 20, 50, 100, 200 labels) the labeled
set of each arm is graded:

- random, typiclust, probcover, kmeans_centroid, activeft: the whole budget chosen in one shot on the pre-computed
  (v0) features, as `al.initial_strategy` does for round 0;
- margin-after-random: a random start of 10, then margin rounds (10 -> 20 -> 50 -> 100 -> 200), the probe on the
  v0 features scoring the pool (the SVPp loop with a converged linear probe as its proxy);
- typicality-then-margin: typiclust rounds until the stopping advice (`raal.stopping.advise` with its defaults, on
  the probe's accuracy and kappa) says typicality's rounds stopped paying, margin rounds after.

Grading: every labeled set is scored by the converged linear probe on the v0 features (`raal.recipe.fit_probe`,
exactly the evaluator with `eval.method=lp`) and, for the budgets in --eval-budgets, also by the one evaluator
(`raal.evaluator`, the partial LP-FT of eval.every_round=evaluator, seed paired by (seed, labeled-set size)).

The pool's features are computed once: the evaluator's prefix activations are cached in the bench's run store and
the v0 features are the trainable suffix of the *pre-trained* backbone applied to them (suffix(prefix(x)) equals
the backbone's features; tested in tests/test_evaluator.py), saved beside them.

Stopping advice replay: `raal.stopping.advise` over the evaluator curves of bench/results/label_efficiency.json (5
seeds, every arm), compared with the first round after which the evaluator gains < 0.5 point per 100 labels; and,
with the kappa signal, on random labeled sets grown 100 -> 3,100 here (probe-graded).

    OMP_NUM_THREADS=1 RAAL_EVAL_THREADS=1 nice -n 19 python bench/cold_start.py
    python bench/cold_start.py --stage features        # only the cached features
    python bench/cold_start.py --eval-seeds 0 1 2       # the evaluator on fewer seeds
    python bench/cold_start.py --rerun probcover        # recompute one arm; the others only from the cache

A re-run reuses the labeled sets and grades kept in bench/runs/cold_start/, so it computes only what is missing.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.label_efficiency import COMMON, DATASETS, _ci  # noqa: E402
from raal.metrics import mean_ci  # noqa: E402

RUNS = ROOT / "bench" / "runs" / "cold_start"
OUT = ROOT / "bench" / "results"
SEEDS = [0, 1, 2, 3, 4]
BUDGETS = [10, 20, 50, 100, 200]
ONE_SHOT = ("random", "typiclust", "probcover", "kmeans_centroid", "activeft")
ARMS = ONE_SHOT + ("margin_after_random", "typicality_then_margin")


def bench_config():
    """The label-efficiency bench's Animal-MNIST config (data, backbone, evaluator recipe)."""
    from raal.config import load_config

    keep = [a for a in COMMON if a.split("=")[0].startswith(("conf", "data.", "eval.", "model."))]
    return load_config("demo", [a for a in keep if not a.startswith("conf=")] + DATASETS["animal"]["args"])


class Bench:
    """Data, the evaluator (its prefix cache) and the v0 features of the pool and test split, built once."""

    def __init__(self):
        from raal.data.sources import load_data
        from raal.data.transforms import ImageTransform
        from raal.evaluator import Evaluator, Recipe
        from raal.store import RunStore

        self.cfg = cfg = bench_config()
        self.data = load_data(cfg.data)
        self.store = RunStore(RUNS)
        t0 = time.perf_counter()
        self.ev = Evaluator.build(store=self.store, data=self.data, model_cfg=cfg.model,
                                  transform=ImageTransform(cfg.data.image_size, tuple(cfg.data.mean),
                                                           tuple(cfg.data.std)),
                                  freeze_blocks=cfg.eval.freeze_blocks, recipe=Recipe.from_config(cfg.eval))
        self.t_setup = time.perf_counter() - t0
        self.pool_x, self.test_x = self._features()
        self.truth = np.asarray([self.data.truth[int(i)] for i in self.data.pool.ids], dtype=np.int64)
        self.test_y = np.asarray(self.data.test.labels, dtype=np.int64)

    def _features(self) -> tuple[np.ndarray, np.ndarray]:
        out = []
        for split in ("pool", "test"):
            path = RUNS / f"v0_{split}.npy"
            if not path.exists():
                feats = self.ev.features(self.ev.new_suffix(), split).numpy().astype(np.float32)
                tmp = path.with_suffix(".tmp.npy")
                np.save(tmp, feats)
                tmp.replace(path)
            out.append(np.load(path))
        return out[0], out[1]


# -- labeled sets ---------------------------------------------------------------------------------------------------
def probe_probs(b: Bench, pos: np.ndarray) -> np.ndarray:
    """Softmax of the converged probe fitted on the labeled rows, over the whole pool (margin's input)."""
    import torch

    from raal.recipe import fit_probe

    head = fit_probe(torch.from_numpy(b.pool_x[pos]), torch.from_numpy(b.truth[pos]), len(b.data.class_names))
    with torch.no_grad():
        return torch.softmax(head(torch.from_numpy(b.pool_x)), 1).numpy()


def one_shot(b: Bench, name: str, budget: int, seed: int) -> np.ndarray:
    """Round 0 as `al.initial_strategy` chooses it: the whole budget at once on the v0 features."""
    from raal import strategies
    from raal.pipelines.base import round_seed

    strategy = strategies.for_run(name, num_classes=len(b.data.class_names))
    pos = strategy.select(budget, labeled_mask=np.zeros(len(b.pool_x), bool), seed=round_seed(seed, 0),
                          embeddings=b.pool_x)
    return np.sort(np.asarray(pos, dtype=np.int64))


def rounds_arm(b: Bench, start: str, seed: int, switch: bool) -> tuple[dict[int, np.ndarray], list[dict]]:
    """Rounds 10 -> 20 -> 50 -> 100 -> 200: `start` picks round 0; margin (the probe's) picks every later round,
    or, with `switch`, `start` keeps picking until the stopping advice says its rounds stopped paying."""
    from raal import strategies
    from raal.pipelines.advice import stop_sample
    from raal.pipelines.base import round_seed
    from raal.stopping import StopRule, advise, cohen_kappa

    sample = stop_sample(len(b.pool_x), 2000, seed)
    mask = np.zeros(len(b.pool_x), bool)
    sets, trace, kappas, accs, picker, prev, probs = {}, [], [], [], start, None, None
    for r, budget in enumerate(BUDGETS):
        size = budget - int(mask.sum())
        if r == 0 or picker != "margin":
            got = strategies.for_run(picker, num_classes=len(b.data.class_names)).select(
                size, labeled_mask=mask, seed=round_seed(seed, r), embeddings=b.pool_x)
        else:
            got = strategies.get("margin").select(size, labeled_mask=mask, probs=probs)
        mask[np.asarray(got, dtype=np.int64)] = True
        pos = np.flatnonzero(mask)
        sets[budget] = pos
        probs = probe_probs(b, pos)  # the next margin round scores the pool with it
        pred = probs[sample].argmax(1)
        kappas.append(cohen_kappa(prev, pred) if prev is not None else math.nan)
        accs.append(probe_accuracy(b, pos))
        prev = pred
        nxt = BUDGETS[r + 1] - budget if r + 1 < len(BUDGETS) else 0
        adv = advise(BUDGETS[:r + 1], accs, kappas, nxt, StopRule())
        trace.append({"labels": budget, "picker": picker, "kappa": kappas[-1], "advice": adv.label,
                      "reason": adv.reason})
        if r == 0 and not switch:
            picker = "margin"
        elif switch and adv.stop:
            picker = "margin"
    return sets, trace


# -- grading ----------------------------------------------------------------------------------------------------------
def probe_accuracy(b: Bench, pos: np.ndarray) -> float:
    """The converged linear probe on the v0 features (the evaluator with eval.method=lp)."""
    import torch

    from raal.recipe import fit_probe

    head = fit_probe(torch.from_numpy(b.pool_x[pos]), torch.from_numpy(b.truth[pos]), len(b.data.class_names))
    with torch.no_grad():
        return float((head(torch.from_numpy(b.test_x)).argmax(1).numpy() == b.test_y).mean())


def evaluator_accuracy(b: Bench, pos: np.ndarray, seed: int) -> float:
    """The one evaluator (partial LP-FT), its seed paired by (seed, labeled-set size) as in every raal run."""
    from raal.evaluator import eval_seed

    return float(b.ev.score(pos, b.truth[pos], seed=eval_seed(seed, len(pos)))["accuracy"])


class Grades:
    """{arm/seed/budget/grader: accuracy} kept in the run folder (atomic rewrite), so a killed bench resumes."""

    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.exists() else {}

    def get(self, key: str, fn) -> float:
        if key not in self.data:
            t0 = time.perf_counter()
            self.data[key] = fn()
            self.data["seconds/" + key] = time.perf_counter() - t0
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.data))
            tmp.replace(self.path)
        return self.data[key]


def labeled_sets(b: Bench, seed: int, arms: tuple[str, ...]) -> tuple[dict, dict]:
    """arm -> budget -> pool positions, and the per-round traces of the round-based arms (cached per seed)."""
    import pickle

    path = RUNS / f"sets_seed{seed}.pkl"
    have = pickle.loads(path.read_bytes()) if path.exists() else ({}, {})
    sets, traces = have
    for arm in arms:
        if arm in sets:
            continue
        t0 = time.perf_counter()
        if arm in ONE_SHOT:
            sets[arm] = {n: one_shot(b, arm, n, seed) for n in BUDGETS}
        else:
            sets[arm], traces[arm] = rounds_arm(b, "random" if arm == "margin_after_random" else "typiclust", seed,
                                                switch=arm == "typicality_then_margin")
        print(f"seed {seed} {arm}: sets in {time.perf_counter() - t0:.1f} s", flush=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(pickle.dumps((sets, traces)))
        tmp.replace(path)
    return sets, traces


def forget(arm: str, grades: Grades, seeds) -> None:
    """Drop a one-shot arm's cached labeled sets and grades (atomic rewrites), so the next pass recomputes them."""
    import pickle

    for seed in seeds:
        path = RUNS / f"sets_seed{seed}.pkl"
        if path.exists():
            sets, traces = pickle.loads(path.read_bytes())
            sets.pop(arm, None)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(pickle.dumps((sets, traces)))
            tmp.replace(path)
    grades.data = {k: v for k, v in grades.data.items() if not k.removeprefix("seconds/").startswith(arm + "/")}
    tmp = grades.path.with_suffix(".tmp")
    tmp.write_text(json.dumps(grades.data))
    tmp.replace(grades.path)


# -- the stopping advice replayed ---------------------------------------------------------------------------------
REPLAY_LABELS = [100, 200, 400, 700, 1100, 1500, 1900, 2300, 2700, 3100]  # label_efficiency's random arm


def replay_label_efficiency() -> dict:
    """`raal.stopping` on every evaluator curve of bench/results/label_efficiency.json (no predictions were kept
    there, so the kappa signal is absent: the plateau rule alone), against the measured plateau point."""
    from raal.stopping import StopRule, first_stop, plateau_round, replay

    src = json.loads((OUT / "label_efficiency.json").read_text())
    out = {}
    for data, res in src.items():
        for arm, by_seed in res["curves"].items():
            for seed, curve in by_seed.items():
                n, acc = [c[0] for c in curve], [c[1] for c in curve]
                out[f"{data}/{arm}/{seed}"] = {"labels": n, "stop": first_stop(replay(n, acc, rule=StopRule())),
                                               "plateau": plateau_round(n, acc)}
    return out


def replay_own(b: Bench, seed: int, grades: Grades) -> dict:
    """A random labeled set grown 100 -> 3,100 (label_efficiency's random schedule): probe accuracy, kappa of
    consecutive probes on the fixed pool sample, and the full advice (kappa included) against the plateau point."""
    from raal.pipelines.advice import stop_sample
    from raal.stopping import StopRule, cohen_kappa, first_stop, plateau_round, replay

    order = np.random.default_rng([seed, 0xC0]).permutation(len(b.pool_x))
    sample = stop_sample(len(b.pool_x), 2000, seed)
    acc, kap, prev = [], [], None
    for n in REPLAY_LABELS:
        pos = np.sort(order[:n])
        key = f"replay/{seed}/{n}"
        acc.append(grades.get(key + "/probe", lambda pos=pos: probe_accuracy(b, pos)))
        pred = np.asarray(grades.get(key + "/pred", lambda pos=pos: probe_probs(b, pos)[sample].argmax(1).tolist()))
        kap.append(cohen_kappa(prev, pred) if prev is not None else math.nan)
        prev = pred
    adv = replay(REPLAY_LABELS, acc, kap, StopRule())
    return {"accuracy": acc, "kappa": kap, "stop": first_stop(adv), "reason": [a.reason for a in adv],
            "plateau": plateau_round(REPLAY_LABELS, acc)}


# -- output -----------------------------------------------------------------------------------------------------------
def _table(grades: dict, arms, budgets, ref: str = "random") -> list[str]:
    """Accuracy mean [95 % CI] per arm and budget, then each arm's paired difference to `ref` (same seeds)."""
    lines = ["| arm | " + " | ".join(f"{n} labels" for n in budgets) + " |", "|---|" + "---|" * len(budgets)]
    for arm in arms:
        if arm in grades:
            cells = [_ci(grades[arm].get(n, []), signed=False) + (f" (n={len(grades[arm].get(n, []))})" if len(
                grades[arm].get(n, [])) < len(SEEDS) else "") for n in budgets]
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    lines += ["", f"Paired difference to {ref} (points, mean [95 % CI] over seeds):", "",
              "| arm | " + " | ".join(f"{n}" for n in budgets) + " |", "|---|" + "---|" * len(budgets)]
    for arm in arms:
        if arm in grades and arm != ref and ref in grades:
            cells = []
            for n in budgets:
                a, r = grades[arm].get(n, []), grades[ref].get(n, [])
                k = min(len(a), len(r))
                cells.append(_ci(np.subtract(a[:k], r[:k])) if k else "n/a")
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return lines


def _bar(grades: dict) -> list[str]:
    """The issue's bar: typiclust or probcover >= random + 5 points at 20 and 50 labels (mean paired difference)."""
    out = []
    for n in (20, 50):
        best = []
        for arm in ("typiclust", "probcover"):
            if arm in grades and "random" in grades and grades[arm].get(n):
                d = np.subtract(grades[arm][n], grades["random"][n][:len(grades[arm][n])])
                m, lo, hi = mean_ci(d)
                best.append((m, arm, lo))
        if best:
            m, arm, lo = max(best)
            out.append(f"- {n} labels: best of typiclust/probcover = {arm}, {100 * m:+.1f} points over random "
                       f"(95 % CI low end {100 * lo:+.1f}): {'MET' if m >= 0.05 else 'MISSED'}")
    return out


def write(res: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = OUT / "cold_start.json.tmp"
    tmp.write_text(json.dumps(res, indent=1, default=float))
    tmp.replace(OUT / "cold_start.json")
    arms, budgets = res["arms"], res["budgets"]
    lines = ["# Cold start and stopping advice (bench/cold_start.py)", "",
             f"Animal-MNIST, pool 8,000 / test 2,000, 64 px, MobileNetV2 (ImageNet) v0 features; seeds {res['seeds']}. "
             "One-shot arms choose the whole budget on the v0 features (what `al.initial_strategy` does for round 0); "
             "margin_after_random starts with 10 random labels, then margin rounds (the probe's probabilities) to "
             "20, 50, 100, 200; typicality_then_margin runs typiclust rounds until the stopping advice says stop, "
             "then margin. Accuracy % mean [95 % t-interval over seeds].", ""]
    if res["missing"]:
        lines += [f"Not in this build (not run): {', '.join(res['missing'])}.", ""]
    lines += ["## Graded by the converged linear probe (every arm, budget and seed)", "",
              "The probe = `raal.recipe.fit_probe` on the v0 features, i.e. the evaluator with `eval.method=lp`; "
              "deterministic.", ""]
    lines += _table(res["probe"], arms, budgets) + [""] + _bar(res["probe"]) + [""]
    if res["evaluator"]:
        eb = sorted({n for a in res["evaluator"].values() for n in a}, key=int)
        lines += ["## Graded by the one evaluator (subset: these budgets)", "",
                  "The partial LP-FT of `eval.every_round=evaluator` (the probe, then 300 AdamW steps of MobileNetV2's "
                  "last 2 blocks from cached activations), seed paired by (seed, labeled-set size).", ""]
        lines += _table(res["evaluator"], arms, eb) + [""] + _bar(res["evaluator"]) + [""]
    tr = res.get("traces", {})
    rows = [(seed, t) for seed, by in tr.items() for arm, t in by.items() if arm == "typicality_then_margin"]
    if rows:
        lines += ["## typicality_then_margin: the advice after each round (probe accuracy, probe kappa)", ""]
        for seed, t in rows:
            lines.append(f"- seed {seed}: " + "; ".join(
                f"{x['labels']} {x['picker']} -> {x['advice']} ({x['reason']})" for x in t))
        lines.append("")
    rep = res.get("replay_label_efficiency", {})
    if rep:
        ok = [abs(v["stop"] - v["plateau"]) <= 1 for v in rep.values()
              if v["stop"] is not None and v["plateau"] is not None]
        both_none = sum(v["stop"] is None and v["plateau"] is None for v in rep.values())
        early = [k for k, v in rep.items() if v["stop"] is not None and (v["plateau"] is None or
                                                                          v["stop"] < v["plateau"] - 1)]
        late = [k for k, v in rep.items() if v["plateau"] is not None and (v["stop"] is None or
                                                                            v["stop"] > v["plateau"] + 1)]
        lines += ["## Stopping advice replayed on the label-efficiency curves (the one evaluator)", "",
                  "`raal.stopping.replay` with the defaults (plateau: < 0.5 point per 100 labels over the last round; "
                  "kappa absent: those runs kept no predictions) on every curve of "
                  "bench/results/label_efficiency.json, "
                  "against the plateau point (the first round after which every later step gains < 0.5 point per "
                  "100 labels).", "",
                  f"- curves with a plateau point and a stop: {len(ok)}, stop within 1 round: {sum(ok)}",
                  f"- curves still gaining at their end, never advised to stop: {both_none}",
                  f"- stopped early (> 1 round before the point, or without one): {early or 'none'}",
                  f"- stopped late or never although a point exists: {late or 'none'}", "",
                  "| curve | labels | advised stop at | plateau point |", "|---|---|---|---|"]
        for k, v in rep.items():
            at = lambda i, v=v: "-" if i is None else str(v["labels"][i])  # noqa: E731
            lines.append(f"| {k} | {v['labels'][-1]} max | {at(v['stop'])} | {at(v['plateau'])} |")
        lines.append("")
    own = res.get("replay_own", {})
    if own:
        lines += ["## Stopping advice with the kappa signal: random sets 100 -> 3,100, probe-graded", "",
                  "| seed | advised stop at | plateau point (probe) | kappa per round | reason |",
                  "|---|---|---|---|---|"]
        for seed, v in own.items():
            at = lambda i: "-" if i is None else str(REPLAY_LABELS[i])  # noqa: E731
            kap = ", ".join("-" if not math.isfinite(k) else f"{k:.3f}" for k in v["kappa"])
            why = v["reason"][v["stop"]] if v["stop"] is not None else "never"
            lines.append(f"| {seed} | {at(v['stop'])} | {at(v['plateau'])} | {kap} | {why} |")
        lines.append("")
    secs = res.get("seconds", {})
    if secs:
        lines += [f"Evaluator cost: {np.mean(list(secs.values())):.1f} s per grade on average "
                  f"({len(secs)} grades; 2 shared cores, OMP_NUM_THREADS=1, RAAL_EVAL_THREADS=1).", ""]
    (OUT / "cold_start.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    from raal import strategies

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=("features", "all"), default="all")
    ap.add_argument("--seeds", type=int, nargs="*", default=SEEDS)
    ap.add_argument("--eval-budgets", type=int, nargs="*", default=[20, 50],
                    help="budgets also graded by the one evaluator (every arm, every seed)")
    ap.add_argument("--eval-seeds", type=int, nargs="*", default=None, help="default: --seeds")
    ap.add_argument("--write-only", action="store_true", help="rewrite the .md from bench/results/cold_start.json")
    ap.add_argument("--rerun", choices=ONE_SHOT, default=None,
                    help="drop this arm's cached sets and grades and compute them again; other arms' missing "
                         "evaluator grades are left missing")
    args = ap.parse_args()
    if args.write_only:
        res = json.loads((OUT / "cold_start.json").read_text())
        for g in ("probe", "evaluator"):
            res[g] = {arm: {int(n): v for n, v in by.items()} for arm, by in res[g].items()}
        if (RUNS / "grades.json").exists():  # a run stopped during the evaluator pass: its measured seconds
            res["seconds"] = {k: v for k, v in Grades(RUNS / "grades.json").data.items()
                              if k.startswith("seconds/") and "evaluator" in k}
        write(res)
        return
    b = Bench()
    print(f"features: pool {b.pool_x.shape}, test {b.test_x.shape}, setup {b.t_setup:.0f} s", flush=True)
    if args.stage == "features":
        return
    known = set(strategies.names())
    arms = tuple(a for a in ARMS if a not in ONE_SHOT or a in known)
    grades = Grades(RUNS / "grades.json")
    if args.rerun:
        forget(args.rerun, grades, args.seeds)
    results = {"arms": list(arms), "missing": [a for a in ARMS if a not in arms], "seeds": args.seeds,
               "budgets": BUDGETS, "probe": {}, "evaluator": {}, "traces": {}, "seconds": {}}
    all_sets = {}
    for seed in args.seeds:
        sets, traces = labeled_sets(b, seed, arms)
        all_sets[seed] = sets
        results["traces"][seed] = traces
        for arm in arms:
            for n in BUDGETS:
                acc = grades.get(f"{arm}/{seed}/{n}/probe", lambda pos=sets[arm][n]: probe_accuracy(b, pos))
                results["probe"].setdefault(arm, {}).setdefault(n, []).append(acc)
        print(f"seed {seed}: probe grades done", flush=True)
    results["replay_label_efficiency"] = replay_label_efficiency()
    results["replay_own"] = {seed: replay_own(b, seed, grades) for seed in args.seeds}
    write(results)
    # the bar's arms first, seed by seed (a partial run still has every budget of the bar), then the others
    key = [a for a in ("random", "typiclust", "probcover") if a in arms]
    for group in (key, [a for a in arms if a not in key]):
        for seed in args.eval_seeds if args.eval_seeds is not None else args.seeds:
            for n in args.eval_budgets:
                for arm in group:
                    pos = all_sets[seed][arm][n]
                    if args.rerun and arm != args.rerun and f"{arm}/{seed}/{n}/evaluator" not in grades.data:
                        continue
                    acc = grades.get(f"{arm}/{seed}/{n}/evaluator",
                                     lambda pos=pos, seed=seed: evaluator_accuracy(b, pos, seed))
                    results["evaluator"].setdefault(arm, {}).setdefault(n, []).append(acc)
                print(f"evaluator: {', '.join(group)} budget {n} seed {seed} done", flush=True)
                write(results)
    results["seconds"] = {k: v for k, v in grades.data.items() if k.startswith("seconds/") and "evaluator" in k}
    write(results)


if __name__ == "__main__":
    main()
