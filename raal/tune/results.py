"""The sweep's results: one row per trial read back from the trial run stores (the durable record), written as
results.{parquet,csv,md}, and the best trial's config as best.yaml / best.json."""
from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from raal import layout
from raal.config import to_yaml
from raal.pipelines.experiment import arm_specs
from raal.store import RunStore
from raal.tune.plan import Plan
from raal.tune.spec import fmt_params
from raal.tune.trial import trial_metrics


def collect_results(plan: Plan, baseline_curve: list[tuple[float, float]],
                    status: dict[int, tuple[str, str]]) -> list[dict]:
    """One row per trial, read from the trial run stores (the durable record), sorted best first."""

    rows = []
    for i, (params, cfg) in enumerate(zip(plan.params, plan.trials)):
        arm = arm_specs(cfg)[0].name
        store = RunStore(cfg.run_dir).child(layout.arm(arm))
        rounds = store.read_table(layout.ROUNDS).to_pylist() if store.exists(layout.ROUNDS) else []
        state, error = status.get(i, ("NOT_RUN", ""))
        row = {"trial": i, **{f"param:{k}": _cell(v) for k, v in params.items()}, "status": state,
               "arm": arm, "rounds": len(rounds)}
        m = trial_metrics(rounds, baseline_curve, cfg) if rounds else {}
        for key in ("saving_ratio", "accuracy", "n_labeled", "refreshes", "extrapolated", "t_total_s"):
            row[key] = m.get(key, math.nan)
        final = store.read_json(layout.FINAL)["accuracy"] if store.exists(layout.FINAL) else math.nan
        row["final_accuracy"] = float(final)
        row["run_dir"] = cfg.run_dir
        row["error"] = error
        rows.append(row)
    metric, sign = plan.spec.metric, (-1.0 if plan.spec.mode == "max" else 1.0)
    rows.sort(key=lambda r: (r["status"] != "TERMINATED", not np.isfinite(r[metric]),
                             sign * r[metric] if np.isfinite(r[metric]) else 0.0, r["trial"]))
    return rows


def _cell(v: Any) -> Any:
    return json.dumps(v) if isinstance(v, (list, dict)) else v


def markdown_table(rows: list[dict], metric: str) -> str:
    if not rows:
        return "(no trials)\n"
    cols = [c for c in rows[0] if c not in ("run_dir", "arm")]

    def fmt(c: str, v: Any) -> str:
        if isinstance(v, float):
            if not np.isfinite(v):
                return "–"
            if c.startswith("param:"):
                return f"{v:g}"
            return f"{v:.1f}" if c == "t_total_s" else f"{v:.0f}" if c in ("n_labeled", "refreshes",
                                                                          "extrapolated") else f"{v:.4f}"
        return str(v).replace("|", "\\|")

    head = "| " + " | ".join(c.removeprefix("param:") if c != metric else f"**{c}**" for c in cols) + " |"
    sep = "|" + "|".join("---:" if isinstance(rows[0][c], (int, float)) else "---" for c in cols) + "|"
    body = ["| " + " | ".join(fmt(c, r[c]) for c in cols) + " |" for r in rows]
    return "\n".join([head, sep, *body]) + "\n"


def write_results(plan: Plan, rows: list[dict], baseline_curve: list[tuple[float, float]]) -> dict | None:
    """results.parquet / .csv / .md and, if a trial finished with a finite objective, best.yaml + best.json."""


    store = RunStore(plan.root)
    cols = list(rows[0]) if rows else []
    table = pa.table({c: [r[c] for r in rows] for c in cols})
    store.write_table(layout.results("parquet"), table)
    buf = pa.BufferOutputStream()
    pacsv.write_csv(table, buf)
    store.write_bytes(layout.results("csv"), buf.getvalue().to_pybytes())
    metric = plan.spec.metric
    best = next((r for r in rows if r["status"] == "TERMINATED" and np.isfinite(r[metric])), None)
    md = [f"# Sweep {plan.spec.name}", "",
          f"Base config `{plan.spec.experiment}` with {', '.join(plan.spec.overrides) or 'no overrides'}; "
          f"objective `{metric}` ({plan.spec.mode}); {len(rows)} trials; random baseline "
          f"`{plan.baseline.al.pipeline}_random` in `{plan.baseline.run_dir}` "
          f"({len(baseline_curve)} points, shared by every trial).", "", markdown_table(rows, metric)]
    if best is not None:
        md.append(f"Best: trial {best['trial']:03d} ({fmt_params(plan.params[best['trial']])}), "
                  f"{metric} = {best[metric]:.4f}; its full config is best.yaml.\n")
    store.write_text(layout.results("md"), "\n".join(md))
    if best is None:
        return None
    info = {"trial": best["trial"], "params": plan.params[best["trial"]], "metric": metric,
            "value": best[metric], "run_dir": best["run_dir"], "sweep": plan.spec.name}
    store.write_json(layout.best("json"), info)
    store.write_text(layout.best("yaml"), to_yaml(plan.trials[best["trial"]]))
    return info
