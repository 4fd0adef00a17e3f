"""Experiment tracking in MLflow: the runs of raal side by side in the tool ML people already compare runs with.

One MLflow run per raal run (its config as params, the report as artifacts) with one nested run per arm (its
per-round metrics, step = round). The default tracking URI is a file store in the run dir (`<run_dir>/mlruns`,
no server); `track.mlflow_uri` points anywhere else; `track=none` turns tracking off.

Idempotent on resume: metrics are logged from committed rounds only (the driver's history), and before logging,
the steps MLflow already holds for each (arm, metric) are read back, so a run killed and resumed never logs a
step twice. The MLflow runs are found again by the `raal.run_dir` tag.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from raal import layout, metrics
from raal.config import to_dict
from raal.store import local_dir, redact_uri

log = logging.getLogger(__name__)

# MLflow 3.x keeps its file store (the no-server default here) behind this switch; the SQL store it recommends
# needs SQLAlchemy, which mlflow-skinny leaves out (README: "Console, logs and experiment tracking"). Set on import,
# so that a restored Tune sweep, whose MLflow callback comes back from Tune's saved state, finds it set too.
os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")

#: rounds-table columns logged as metrics as they are (phase times in seconds)
ROUND_METRICS = ("n_labeled", "n_new", "accuracy", "model_accuracy", "probe_accuracy", "ped_steps", "logme_ped",
                 "score_diff", "trigger_signal", "features_version", "t_round", *metrics.PHASES)
TAG_RUN, TAG_ARM = "raal.run_dir", "raal.arm"


def tracking_uri(cfg, run_dir: str) -> str:
    """track.mlflow_uri, else a file store in the (local) run dir, else ./mlruns."""
    if cfg.track.mlflow_uri:
        return cfg.track.mlflow_uri

    local = local_dir(run_dir)
    return (local / layout.MLRUNS if local is not None else Path(layout.MLRUNS).resolve()).as_uri()


def _flat(d: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
    return out


def round_metrics(row: dict, base_rows: list[dict] | None, prices: metrics.Prices, cum_cost: float
                  ) -> tuple[dict[str, float], float]:
    """The metrics of one committed round: its columns, the ASVP decisions as 0/1, the overall cost so far, and
    the sample saving ratio against the baseline's rounds committed so far (None for the baseline itself)."""
    out = {}
    for k in ROUND_METRICS:
        v = row.get(k)
        if isinstance(v, (bool, np.bool_)):
            v = float(v)
        if isinstance(v, (int, float, np.integer, np.floating)) and math.isfinite(float(v)):
            out[k] = float(v)
    out["refreshed"] = float(bool(row.get("refreshed", False)))
    out["trained_ft"] = float(str(row.get("train_method", "")).upper() == "FT")
    secs = metrics.round_seconds({k: np.array([row.get(k, 0.0) or 0.0], dtype=np.float64)
                                  for k in ("t_round", *metrics.PHASES)})
    cum_cost += float(metrics.compute_cost(secs, [str(row.get("device", "cpu"))], prices)[0])
    out["cost_usd"] = float(row.get("n_labeled", 0)) * prices.label_price + cum_cost
    acc = float(row.get("accuracy", float("nan")))
    if base_rows and math.isfinite(acc):
        curve = [(float(b["n_labeled"]), float(b["accuracy"])) for b in base_rows]
        if any(math.isfinite(a) for _, a in curve):
            sv = metrics.saving_curve(np.array(curve), np.array([[float(row["n_labeled"]), acc]]))
            if math.isfinite(float(sv.ratios[0])):
                out["saving_ratio"] = float(sv.ratios[0])
                out["saving_extrapolated"] = float(bool(sv.extrapolated[0]))
    return out, cum_cost


class Tracker:
    """The MLflow runs of one raal run. Create with `Tracker.open`; every call logs only what is missing."""

    def __init__(self, client, parent_id: str, arm_ids: dict[str, str], prices: metrics.Prices, baseline: str | None,
                 uri: str = ""):
        self.client, self.parent_id, self.arm_ids, self.uri = client, parent_id, arm_ids, uri
        self.prices, self.baseline = prices, baseline

    @classmethod
    def open(cls, cfg, run_dir: str, arms: list[str], baseline: str | None) -> Tracker | None:
        """The tracker, or None with track=none or when the tracking store cannot be reached (said on stderr:
        tracking is a view of the run, it never stops one)."""
        if cfg.track.kind == "none":
            return None
        try:
            return cls._open(cfg, run_dir, arms, baseline)
        except Exception as exc:  # noqa: BLE001 - MLflow raises many kinds (connection, permission, store)
            log.warning("tracking: MLflow is off for this run", exc_info=True)
            print(f"raal: MLflow tracking off for this run: {type(exc).__name__}: {str(exc)[:200]}", file=sys.stderr)
            return None

    @classmethod
    def _open(cls, cfg, run_dir: str, arms: list[str], baseline: str | None) -> Tracker:
        from mlflow.tracking import MlflowClient


        uri = tracking_uri(cfg, run_dir)
        client = MlflowClient(tracking_uri=uri)
        name = cfg.track.experiment or f"raal-{cfg.name}"
        exp = client.get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp is not None else client.create_experiment(name)
        key = os.path.abspath(run_dir) if "://" not in run_dir else redact_uri(run_dir)  # never a credential
        found = client.search_runs([exp_id], filter_string=f"tags.`{TAG_RUN}` = '{key}'", max_results=1000)
        parents = [r for r in found if TAG_ARM not in r.data.tags]
        if parents:
            parent_id = parents[0].info.run_id
            client.update_run(parent_id, status="RUNNING")
        else:
            parent_id = client.create_run(exp_id, run_name=Path(key).name or cfg.name,
                                          tags={TAG_RUN: key, "raal.config": cfg.name}).info.run_id
        if not client.get_run(parent_id).data.params:  # also when a kill came between the run and its params
            from mlflow.entities import Param

            params = {**_flat(to_dict(cfg)), "run_dir": key}
            items = [Param(k, v[:6000]) for k, v in sorted(params.items())]
            for i in range(0, len(items), 100):
                client.log_batch(parent_id, params=items[i:i + 100])
        existing = {r.data.tags[TAG_ARM]: r.info.run_id for r in found if TAG_ARM in r.data.tags}
        arm_ids = {}
        for arm in arms:
            if arm not in existing:
                existing[arm] = client.create_run(
                    exp_id, run_name=arm, tags={TAG_RUN: key, TAG_ARM: arm, "mlflow.parentRunId": parent_id,
                                                "raal.baseline": str(arm == baseline)}).info.run_id
            arm_ids[arm] = existing[arm]
        log.info("tracking: MLflow run %s in experiment %r at %s", parent_id, name, uri)
        return cls(client, parent_id, arm_ids, metrics.Prices.from_config(to_dict(cfg)["cost"]), baseline, uri)

    def _logged_steps(self, run_id: str) -> dict[str, set[int]]:
        run = self.client.get_run(run_id)
        return {k: {m.step for m in self.client.get_metric_history(run_id, k)} for k in run.data.metrics}

    def log_history(self, history: dict[str, list[dict]]) -> int:
        """Log every committed round not yet in MLflow; returns how many metric points were written."""
        from mlflow.entities import Metric

        written = 0
        base_rows = history.get(self.baseline) if self.baseline else None
        for arm, rows in history.items():
            run_id = self.arm_ids.get(arm)
            if run_id is None:
                continue
            have = self._logged_steps(run_id)
            cum, batch = 0.0, []
            for row in rows:
                step = int(row["round"])
                base = None if arm == self.baseline or base_rows is None else \
                    [b for b in base_rows if int(b["round"]) <= step]
                values, cum = round_metrics(row, base, self.prices, cum)
                ts = int(time.time() * 1000)
                batch += [Metric(k, v, ts, step) for k, v in values.items() if step not in have.get(k, ())]
            for i in range(0, len(batch), 500):
                self.client.log_batch(run_id, metrics=batch[i:i + 500])
            written += len(batch)
        return written

    def log_summary(self, finals: dict[str, dict]) -> None:
        """The final models' accuracies on the arm runs (logged once: a summary, step 0)."""
        from mlflow.entities import Metric

        for arm, res in finals.items():
            run_id = self.arm_ids.get(arm)
            if run_id is not None and "final_accuracy" not in self.client.get_run(run_id).data.metrics:
                self.client.log_batch(run_id, metrics=[Metric("final_accuracy", float(res["accuracy"]), 0, 0)])

    def log_report(self, report_dir: str | Path) -> None:
        """report.html, its PNGs and summary.txt as artifacts of the parent run (overwritten on a rerun)."""
        report_dir = Path(report_dir)
        if report_dir.is_dir():
            self.client.log_artifacts(self.parent_id, str(report_dir), artifact_path="report")

    def finish(self, status: str = "FINISHED") -> None:
        for run_id in [*self.arm_ids.values(), self.parent_id]:
            self.client.set_terminated(run_id, status=status)


def tune_callbacks(base_cfg, sweep_root: str, sweep_name: str) -> list:
    """Ray Tune's own MLflow integration for a sweep: each trial one MLflow run (its params and the metrics it
    reports every round) in the experiment `raal-tune-<sweep>`; none with track=none."""
    if base_cfg.track.kind == "none":
        return []
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    uri = base_cfg.track.mlflow_uri or tracking_uri(base_cfg, sweep_root)
    return [MLflowLoggerCallback(tracking_uri=uri, experiment_name=f"raal-tune-{sweep_name}",
                                 tags={"raal.sweep": sweep_name}, save_artifact=False)]
