"""Where everything lives in a run directory, and the one schema of its rounds table.

Every module that reads or writes a run names its files through here, so a file has one name and one meaning:
run-level keys are relative to the run store, arm-level keys to the arm's store (`arm(name)` below the run).
`FILES` describes each entry for people; the README's "run directory layout" table is generated from it and a
test keeps the two equal (`python -m raal.layout` prints the table).
"""
from __future__ import annotations

import math

# -- the run (keys relative to the run store) ----------------------------------------------------------------------
CONFIG = "config.yaml"
STATUS = "status.json"
LOG = "raal.log"  # local run dirs; a remote run logs to ./runs/<name>.raal.log
MLRUNS = "mlruns"
LOCK = ".raal.lock"  # local run dirs: flock'ed file (removed again on release)
REMOTE_LEASE = ".raal.lease.json"  # object stores: a best-effort lease object
UNDECODABLE = "data/undecodable.json"
ARMS = "arms"
FEATURES = "features"
FEATURE_TIMING = f"{FEATURES}/timing.json"
SCORES = "scores"  # pool scores of older runs (cluster fetch skips them)
INITIAL = "initial"
EVAL_CACHE = "eval_cache"
EVAL_MEMO = "eval_memo"
SWITCH = "switch.json"  # inside an arm: asvp.switch=holdout's decision
REPORT = "report"  # local runs: the report written when the run ends
REPORT_HTML, REPORT_SUMMARY = "report.html", "summary.txt"  # inside a report folder
ORACLE = "oracle"
LEDGER = f"{ORACLE}/labels.parquet"
PARTIAL = f"{ORACLE}/partial.json"
CLASSES = f"{ORACLE}/classes.json"
EXPORTS = "queries"  # what people label (the files oracle); not the arms' selections
EXPORT_IMAGES = f"{EXPORTS}/images"
LABELSTUDIO_CONFIG = f"{EXPORTS}/labelstudio_config.xml"
EXPORT_FORMATS = ("csv", "parquet", "labelstudio.json")

# -- an arm (keys relative to the arm's store, arms/<arm>/) ---------------------------------------------------------
ARM_META = "arm.json"
ROUNDS = "rounds.parquet"
LABELS = "labels.parquet"
FINAL = "final.json"
SELECTIONS = "selections"
OLD_SELECTIONS = "queries"  # runs written before the selections got their own name
CHECKPOINTS = "checkpoints"
STOPPING = "stopping"
RAY_TRAIN = "ray_train"

# -- inside a feature or score set (feature_set) -------------------------------------------------------
SET_MANIFEST, SET_PLAN, SET_IDS = "manifest.json", "plan.json", "ids.npy"


def shard_file(k: int, name: str) -> str:
    """Shard k's array `name` (with its suffix, e.g. "features.f32") inside a set."""
    return f"shards/{k:06d}.{name}"


# -- inside a Ray Train job folder (arms/<arm>/ray_train/<job>/) ---------------------------------------------------
TRAIN_INPUTS, TRAIN_BACKBONE, TRAIN_RESULT = "raal_inputs.json", "backbone.pt", "train_result.json"
TRAIN_STATE = "state.pt"  # inside each of Ray Train's checkpoints

# -- a sweep folder (python -m raal.tune) ---------------------------------------------------------------------------
SWEEP = "sweep.json"
TUNE = "tune"
RESULTS = "results"  # .parquet, .csv, .md
BEST = "best"  # .json, .yaml


def arm(name: str) -> str:
    return f"{ARMS}/{name}"


def feature_version(version: int) -> str:
    return f"{FEATURES}/v{int(version)}"


def feature_set(version: int, split: str) -> str:
    return f"{feature_version(version)}/{split}"


def initial_batch(name: str, size: int, seed: int) -> str:
    return f"{INITIAL}/{name}_{size}_{seed}.parquet"


def eval_cache(split: str, key: str) -> tuple[str, str]:
    """(data, meta) of one split's cached prefix activations."""
    return f"{EVAL_CACHE}/{split}-{key}.f32", f"{EVAL_CACHE}/{split}-{key}.json"


def eval_memo(key: str) -> str:
    """The record of one evaluator fit (accuracy, seconds), found again by the fit's identity."""
    return f"{EVAL_MEMO}/{key}.json"


def eval_memo_model(key: str) -> str:
    """The model of one evaluator fit (suffix + head state dicts), kept only with eval.memo_models."""
    return f"{EVAL_MEMO}/{key}.pt"


def export(r: int | str, fmt: str) -> str:
    """Round r's file for annotators in one of EXPORT_FORMATS."""
    return f"{EXPORTS}/round_{r}.{fmt}"


def export_image(r: int, i: int, ext: str) -> str:
    return f"{EXPORT_IMAGES}/round_{r}/{i}.{ext}"


def selection(r: int | str) -> str:
    """An arm's round-r selection (id, score, prediction): what it asked, written before the oracle is asked."""
    return f"{SELECTIONS}/round_{r}.parquet"


def old_selection(r: int) -> str:
    """Where runs before the rename kept `selection(r)`; read as a fallback only."""
    return f"{OLD_SELECTIONS}/round_{r}.parquet"


# An arm's weights, without a suffix: the writers add .pt / .head.pt / .partial.pt / .json.
def proxy_checkpoint(r: int) -> str:
    return f"{CHECKPOINTS}/proxy_round_{r}"


def eval_checkpoint(r: int) -> str:
    return f"{CHECKPOINTS}/eval_round_{r}"


def model_checkpoint(r: int) -> str:
    return f"{CHECKPOINTS}/model_round_{r}"


def backbone_checkpoint(version: int) -> str:
    return f"{CHECKPOINTS}/backbone_v{version}"


FINAL_CHECKPOINT = f"{CHECKPOINTS}/final"


def stopping_predictions(r: int) -> str:
    return f"{STOPPING}/round_{r}.npy"


def results(ext: str) -> str:
    return f"{RESULTS}.{ext}"


def best(ext: str) -> str:
    return f"{BEST}.{ext}"


#: (path shown to people, what it is) — the README's table; relative to the run dir.
FILES: tuple[tuple[str, str], ...] = (
    (CONFIG, "the resolved config; a resume with different settings is refused, listing the keys"),
    (STATUS, "running, waiting_for_labels or done, and the round"),
    (LOG, "the run's log (every Ray process appends to it)"),
    (LOCK, f"held while a run or a label import writes (object stores: `{REMOTE_LEASE}`)"),
    (export("K", "{csv,parquet,labelstudio.json}"), "files oracle: round K's items for people to label"),
    (LABELSTUDIO_CONFIG, "files oracle: the Label Studio labeling interface"),
    (EXPORT_IMAGES + "/round_K/", "files oracle: images held in arrays, written out for annotators"),
    (LEDGER, "files oracle: every imported label (id, label, round, file, sha256)"),
    (PARTIAL, "files oracle: the rounds allowed to commit with part of their labels"),
    (CLASSES, "files oracle: the class names labels are given in"),
    (UNDECODABLE, "images that failed to decode (data.skip_undecodable=true)"),
    (FEATURES + "/v0/{pool,test}/", "pre-computed features (shards + manifest with checksums)"),
    (FEATURE_TIMING, "how long each feature computation took"),
    (INITIAL + "/", "the round-0 batch, chosen once per experiment"),
    (EVAL_CACHE + "/", "cached activations of the evaluator's frozen prefix"),
    (EVAL_MEMO + "/", "one record per distinct evaluator fit (accuracy, seconds; its model with eval.memo_models): "
                      "identical fits run once"),
    (arm("<arm>") + "/" + ARM_META, "pipeline, strategy, baseline flag, seed"),
    (arm("<arm>") + "/" + SWITCH, "asvp.switch=holdout: FT and LP-FT held-out accuracies, the method chosen"),
    (arm("<arm>") + "/" + selection("K"), "the arm's round-K selection (id, score, prediction), written first"),
    (arm("<arm>") + "/" + LABELS, "id, label, round, source"),
    (arm("<arm>") + "/" + ROUNDS, "one row a round (the commit point): sizes, accuracy, ASVP decisions, phase times"),
    (arm("<arm>") + "/" + STOPPING + "/", "the predictions the stopping signals compare round to round"),
    (arm("<arm>") + "/" + CHECKPOINTS + "/", "proxy and fine-tuned weights (weights only, never pickle)"),
    (arm("<arm>") + "/" + RAY_TRAIN + "/<job>/", "Ray Train's own checkpoints of a fine-tune (S3 too)"),
    (arm("<arm>") + "/" + FINAL, "the final model: method, accuracy, labels used"),
    (MLRUNS + "/", "MLflow file store (the default tracking URI of a local run)"),
    (REPORT + "/", f"{REPORT_HTML} + PNGs + {REPORT_SUMMARY} (local runs, when the run ends)"),
)


def readme_table() -> str:
    """The README's run-directory table (markdown)."""
    rows = ["| path in the run dir | what it is |", "|---|---|"]
    rows += [f"| `{p}` | {what} |" for p, what in FILES]
    return "\n".join(rows)


# -- the rounds table (arms/<arm>/rounds.parquet) ------------------------------------------------------------------
#: Per-round phase-time columns, in the order they are stacked in the report.
PHASES: tuple[str, ...] = ("t_pre", "t_tr_proxy", "t_f_proxy", "t_tr_full", "t_f_full", "t_select", "t_eval")

#: column -> (Arrow type alias, value a writer stores when the round did not set it, value a reader shows when it
#: was not recorded). Type aliases, not pyarrow types: this module is imported by light CLIs too.
_ROUNDS: dict[str, tuple[str, object, object]] = {
    "round": ("int64", None, -1), "n_labeled": ("int64", None, -1), "n_new": ("int64", None, -1),
    "accuracy": ("float64", math.nan, math.nan), "eval_method": ("string", "none", ""),
    "random_only": ("bool", False, None), "features_version": ("int64", 0, -1),
    "ped_steps": ("int64", -1, -1), "logme_ped": ("float64", math.nan, math.nan),
    "score_diff": ("float64", math.nan, math.nan), "refreshed": ("bool", False, False),
    "train_method": ("string", "", ""),
    **{p: ("float64", 0.0, 0.0) for p in PHASES},
    "t_round": ("float64", 0.0, math.nan), "device": ("string", "cpu", "cpu"),
    "model_accuracy": ("float64", math.nan, math.nan), "model_eval": ("string", "none", ""),
    "probe_accuracy": ("float64", math.nan, math.nan), "trigger_signal": ("float64", math.nan, math.nan),
    "kappa": ("float64", math.nan, math.nan), "gain_per_100": ("float64", math.nan, math.nan),
    "stop_advice": ("string", "", ""), "stop_reason": ("string", "", ""),
    # the evaluator's fit of this labeled set: its measured seconds, and whether the memo answered (trained once)
    "eval_fit_s": ("float64", math.nan, math.nan), "eval_memo": ("bool", False, False),
    # the unlabeled rows the round's selection chose from: the whole unlabeled pool, or SEALS' candidates
    # (al.candidates=seals); -1 when the query was chosen before a restart
    "rows_scored": ("int64", -1, -1),
    # al.select_workers: the Ray tasks that chose the round (0 = the driver's process) and the bytes their results
    # took back to the driver; -1 when the query was chosen before a restart
    "select_workers": ("int64", -1, -1), "select_bytes": ("int64", -1, -1),
}
ROUND_TYPES: dict[str, str] = {k: t for k, (t, _, _) in _ROUNDS.items()}
#: what a writer stores for a column the round left unset (round, n_labeled and n_new must be given)
ROUND_DEFAULTS: dict[str, object] = {k: d for k, (_, d, _) in _ROUNDS.items() if d is not None}
#: what a reader shows for a column that is absent or null (random_only None: round 0 only)
ROUND_MISSING: dict[str, object] = {k: m for k, (_, _, m) in _ROUNDS.items()}
#: columns added after the first runs: their absence is not worth a note
ROUND_OPTIONAL = ("random_only", "model_accuracy", "model_eval", "probe_accuracy", "trigger_signal", "kappa",
                  "gain_per_100", "stop_advice", "stop_reason", "eval_fit_s", "eval_memo", "rows_scored",
                  "select_workers", "select_bytes")
#: without these an arm's rounds cannot be read at all
ROUND_REQUIRED = ("round", "n_labeled", "accuracy")


def round_schema():
    """The rounds table's pyarrow schema, in ROUND_TYPES' column order."""
    import pyarrow as pa  # lazy: light CLI: no pyarrow

    return pa.schema([(k, pa.type_for_alias(t)) for k, t in ROUND_TYPES.items()])


if __name__ == "__main__":
    print(readme_table())
