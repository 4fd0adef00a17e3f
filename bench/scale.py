"""Selection at scale, the label side (issue #28): does restricting or restructuring selection cost labels?

Two parts, each a set of real raal experiments (`python -m raal.run`, private local Ray), every round of every arm
scored by the one evaluator (the partial fine-tune of bench/label_efficiency.py, seeds paired by (AL seed,
labeled-set size)), 64 px MobileNetV2, SVPp's proxy selecting:

- `animal` — Animal-MNIST (pool 8,000 / test 2,000), 100 -> 200 -> 400 -> 700 -> 1,100 labels, 5 seeds. Run `full`:
  margin over the whole pool, Cluster-Margin (`svpp/cluster_margin`) and the random baseline (measured past every
  arm's best). Run `seals`: margin on SEALS' candidates (`al.candidates=seals`, k = 100) with its own random
  baseline: the same seed draws the same random picks as run `full`'s and the evaluator's memo is copied from it, so
  only the rounds past `full`'s random curve (when SEALS reaches higher) and SEALS' own sets are trained.
- `longtail` — Animal-MNIST subsampled to a 1:20 long tail: class c keeps 800 * 20^(-rank_c / 9) pool images
  (800 ... 40, 2,729 in all; the ranks a fixed permutation of the classes), tested on a balanced 200 per class, so
  that a rare class weighs as much as a common one. 100 -> 200 -> 300 -> 500 -> 700 labels, 5 seeds. Run `plain`:
  margin, Cluster-Margin, random; run `balanced`: margin with `al.balanced=true` (picks round-robin over the
  predicted classes) and its random baseline (again from the memo). Per round the evaluator's test recall of every class (kept with each fit); minority-class
  recall = mean recall of the 5 rarest classes (<= 152 pool images each).

Each finished (part, run, seed) is written to bench/results/scale/<part>/<run>_seed<k>.json (every round of every
arm, with its per-class recall) as it comes; a killed run resumes, a written seed is skipped. `--aggregate` rebuilds
bench/results/scale/README.md from the JSON alone (saving ratios with 95 % t-intervals over seeds, rows scored per
round, paired differences). The machine-size half of the issue (1.28M x 2048 timings, workers, the projection to
10^9 images) is bench/scale_million.py and bench/sharded_select.py.

    python bench/scale.py --parts animal longtail --seeds 0 1 2 3 4
    python bench/scale.py --aggregate
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _runs import copy_memo, finished, run_raal, write_json  # noqa: E402

RUNS = ROOT / "bench" / "runs" / "scale"
OUT = ROOT / "bench" / "results" / "scale"
COMMON = ["conf=demo", "data.image_size=64", "al.initial=100", "eval.every_round=evaluator", "report=false",
          "al.pipeline=svpp", "al.strategy=margin"]
ALONE = ["al.compare=[]"]  # the random baseline stays: the same picks as the first run's, its fits from the memo
PARTS = {
    "animal": {"args": ["data.test_size=2000", "al.schedule=[100]+[200]+[300]+[400]"],
               "runs": {"full": ["al.compare=[svpp/cluster_margin]"], "seals": [*ALONE, "al.candidates=seals"]},
               "title": "Animal-MNIST (pool 8,000 / test 2,000)"},
    "longtail": {"args": ["data.source=parquet", "al.schedule=[100]+[100]+[200]+[200]"],
                 "runs": {"plain": ["al.compare=[svpp/cluster_margin]"], "balanced": [*ALONE, "al.balanced=true"]},
                 "title": "Animal-MNIST, 1:20 long tail (pool 2,729 / balanced test 2,000)"},
}
TAIL_MAX, TAIL_RATIO, TAIL_TEST, RARE = 800, 20.0, 200, 5


def longtail_manifests() -> tuple[Path, Path, list[int]]:
    """The long-tailed pool and the balanced test set as Parquet manifests (id, PNG bytes, label), written once;
    returns them and the rare classes."""
    from PIL import Image

    from raal.data.sources import animal_mnist_arrays

    base = RUNS / "longtail_data"
    pool_path, test_path = base / "pool.parquet", base / "test.parquet"
    rng = np.random.default_rng(2028)
    rank = rng.permutation(10)  # rank[c]: 0 = the most common class, 9 = the rarest
    keep = {c: int(round(TAIL_MAX * TAIL_RATIO ** (-rank[c] / 9))) for c in range(10)}
    rare = sorted(c for c in range(10) if rank[c] >= 10 - RARE)
    if pool_path.exists() and test_path.exists():
        return pool_path, test_path, rare
    images, labels = animal_mnist_arrays()
    pool_ids, test_ids = [], []
    for c in range(10):
        ids = rng.permutation(np.flatnonzero(labels == c))
        test_ids.append(ids[:TAIL_TEST])
        pool_ids.append(ids[TAIL_TEST:TAIL_TEST + keep[c]])
    base.mkdir(parents=True, exist_ok=True)
    for path, ids in ((pool_path, np.sort(np.concatenate(pool_ids))), (test_path, np.sort(np.concatenate(test_ids)))):
        pngs = []
        for i in ids:
            buf = io.BytesIO()
            Image.fromarray(images[i]).save(buf, format="PNG")
            pngs.append(buf.getvalue())
        table = pa.table({"id": ids.astype(np.int64), "image": pngs, "label": labels[ids].astype(np.int64)})
        tmp = path.with_suffix(".tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    return pool_path, test_path, rare


def run_dir(part: str, run: str, seed: int) -> Path:
    return RUNS / part / f"{run}_seed{seed}"


def result_path(part: str, run: str, seed: int) -> Path:
    return OUT / part / f"{run}_seed{seed}.json"


def seed_donors(part: str, run: str, seed: int) -> None:
    """What does not depend on the arm, from finished runs of the part: the v0 features and the evaluator's prefix
    cache (any seed), and the evaluator's memo of the first run of the same seed (round 0 is the same set)."""
    target = run_dir(part, run, seed)
    donors = sorted(p for p in (RUNS / part).glob("*_seed*") if p != target
                    and (p / "features" / "v0" / "test" / "manifest.json").exists())
    for rel in ("features/v0", "eval_cache"):
        if donors and (donors[0] / rel).is_dir() and not (target / rel).exists():
            shutil.copytree(donors[0] / rel, target / rel)
    copy_memo(run_dir(part, next(iter(PARTS[part]["runs"])), seed), target)


def class_recalls(base: Path, seed: int) -> dict[str, list[list[float]]]:
    """Per arm and round, the evaluator's test recall of every class: read back from the evaluator's memo (each
    round's fit left its record there; nothing is trained again)."""
    from raal.config import from_yaml
    from raal.data.positions import IdIndex
    from raal.data.sources import load_data
    from raal.data.transforms import ImageTransform
    from raal.evaluator import Evaluator, Recipe, eval_seed
    from raal.store import RunStore

    store = RunStore(base)
    cfg = from_yaml(store.read_text("config.yaml"))
    ds = load_data(cfg.data)
    ev = Evaluator.build(store=store, data=ds, model_cfg=cfg.model, transform=ImageTransform(cfg.data.image_size),
                         freeze_blocks=cfg.eval.freeze_blocks, recipe=Recipe.from_config(cfg.eval))
    index = IdIndex(np.asarray(ds.pool.ids))
    out: dict[str, list[list[float]]] = {}
    for arm_dir in sorted((base / "arms").iterdir()):
        lab = pq.read_table(arm_dir / "labels.parquet").to_pydict()
        rounds, ids, y = np.asarray(lab["round"]), np.asarray(lab["id"]), np.asarray(lab["label"])
        out[arm_dir.name] = []
        for r in range(int(rounds.max()) + 1):
            keep = rounds <= r
            res = ev.score(index.positions(ids[keep]), y[keep], seed=eval_seed(cfg.al.seed, int(keep.sum())))
            out[arm_dir.name].append([float(v) for v in res["class_recall"]])
    return out


def export(part: str, run: str, seed: int) -> dict:
    base = run_dir(part, run, seed)
    out: dict = {"part": part, "run": run, "seed": seed, "arms": {}}
    recall = class_recalls(base, seed)
    for arm in sorted(p.name for p in (base / "arms").iterdir()):
        rows = pq.read_table(base / "arms" / arm / "rounds.parquet").to_pylist()
        out["arms"][arm] = [{**{k: v for k, v in r.items() if isinstance(v, (int, float, str, bool)) or v is None},
                             "class_recall": recall[arm][i]} for i, r in enumerate(rows)]
    if part == "longtail":
        out["rare_classes"] = longtail_manifests()[2]
    return out


def run_one(part: str, run: str, seed: int) -> None:
    res = result_path(part, run, seed)
    if res.exists():
        print(f"{part} {run} seed {seed}: done already", flush=True)
        return
    target = run_dir(part, run, seed)
    if not finished(target):
        seed_donors(part, run, seed)
        extra = []
        if part == "longtail":
            pool, test, _ = longtail_manifests()
            extra = [f"data.root={pool}", f"data.test_root={test}"]
        run_raal([*COMMON, *PARTS[part]["args"], *extra, *PARTS[part]["runs"][run], f"al.seed={seed}"], target,
                 RUNS / part / f"{run}_seed{seed}.log", f"{part} {run} seed {seed}")
    write_json(res, export(part, run, seed))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", nargs="*", default=list(PARTS), choices=list(PARTS))
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2, 3, 4])
    ap.add_argument("--aggregate", action="store_true", help="only rebuild the tables from the results")
    args = ap.parse_args()
    if not args.aggregate:
        for seed in args.seeds:  # seeds outermost: every part has a first seed early
            for part in args.parts:
                for run in PARTS[part]["runs"]:
                    run_one(part, run, seed)
    from scale_report import write  # the tables: one idea per file

    write(OUT, PARTS)


if __name__ == "__main__":
    main()
