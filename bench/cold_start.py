"""Cold-start evidence: which first few labels to buy, and where the stopping advice falls.

Animal-MNIST (pool 8,000 / test 2,000, 64 px, MobileNetV2 with ImageNet weights: the data, backbone and evaluator of
bench/label_efficiency.py, built from its config). Per seed (5) and budget (10, 20, 50, 100, 200 labels) the labeled
set of each arm is graded:

- random, typiclust, probcover, kmeans_centroid, activeft: the whole budget chosen in one shot on the pre-computed
  (v0) features, as `al.initial_strategy` does for round 0;
- margin-after-random: a random start of 10, then margin rounds (10 -> 20 -> 50 -> 100 -> 200), the probe on the
  v0 features scoring the pool (the SVPp loop with a converged linear probe as its proxy);
- typicality-then-margin: typiclust rounds until the stopping advice (`raal.stopping.advise`, its kappa signal)
  says typicality stopped paying, margin rounds after.

Grading: every labeled set is scored by the converged linear probe on the v0 features (`raal.recipe.fit_probe`,
exactly the evaluator with `eval.method=lp`) and, for the budgets in --eval-budgets, also by the one evaluator
(`raal.evaluator`, the partial LP-FT of eval.every_round=evaluator, seed paired by (seed, labeled-set size)).

The pool's features are computed once: the evaluator's prefix activations are cached in the bench's run store and
the v0 features are the trainable suffix of the *pre-trained* backbone applied to them (suffix(prefix(x)) equals
the backbone's features; tested in tests/test_evaluator.py), saved beside them.

Stopping advice replay: `raal.stopping.advise` over the evaluator curves of bench/results/label_efficiency.json (5
seeds, every arm), compared with the first round after which the evaluator gains < 0.5 point per 100 labels.

    OMP_NUM_THREADS=1 RAAL_EVAL_THREADS=1 nice -n 19 python bench/cold_start.py
    python bench/cold_start.py --stage features        # only the cached features
    python bench/cold_start.py --aggregate              # rebuild the tables from the saved grades
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=("features", "all"), default="all")
    args = ap.parse_args()
    b = Bench()
    print(f"features: pool {b.pool_x.shape}, test {b.test_x.shape}, setup {b.t_setup:.0f} s", flush=True)
    if args.stage == "features":
        return


if __name__ == "__main__":
    main()
