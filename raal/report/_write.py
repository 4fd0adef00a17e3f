"""The report's assembly: HTML page, PNGs and summary.txt from the loaded runs, and the CLI (`__main__`)."""
from __future__ import annotations

import argparse
import base64
import html
import logging
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from raal import layout, metrics
from raal.report._load import NotARunError, Run, _run_name, load_run
from raal.report._plots import (
    PHASE_NAMES,
    _png,
    fmt_time,
    plot_accuracy,
    plot_asvp,
    plot_cost,
    plot_saving,
    plot_time,
    plot_tradeoff,
)
from raal.report._stats import ArmStats, _acc_scale, _collect
from raal.report._tables import SUMMARY_HEAD, _text_table, summary_rows

log = logging.getLogger("raal.report")  # the name users see in raal.log, as before the package


# ---------------------------------------------------------------------------------------------------------------
# Tables and HTML
# ---------------------------------------------------------------------------------------------------------------

def _notes(runs: Sequence[Run]) -> list[str]:
    out = []
    for run in runs:
        out += [f"{run.label}: {n}" for n in run.notes]
        for a in run.arms:
            out += [f"{run.label}/{a.name}: {n}" for n in a.notes]
    return out


def summary_text(runs: Sequence[Run], stats: Sequence[ArmStats], notes: Sequence[str] | None = None) -> str:
    """The plain-text summary printed on stdout: the table, then every note."""
    txt = _text_table(SUMMARY_HEAD, summary_rows(stats, _acc_scale(stats)[0])) if stats else "(no arms to report)"
    notes = _notes(runs) if notes is None else notes
    if notes:
        txt += "\n\nNOTES:\n" + "\n".join(f"  - {n}" for n in notes)
    return txt + "\n"


def _html_table(head, rows, cls="") -> str:
    e = html.escape
    th = "".join(f"<th>{e(str(h))}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _model_rows(run: Run) -> list[tuple[str, ...]] | None:
    tables = [a.rounds for a in run.arms if a.rounds is not None]
    if not tables:
        return None
    t = metrics.measured_phase_times(tables)
    tot = metrics.modelled_totals(t)
    rows: list[tuple[str, ...]] = [(PHASE_NAMES[p], fmt_time(getattr(t, p))) for p in metrics.MODEL_PHASES]
    rows += [("N_al (AL rounds)", str(t.n_al)), ("N_pre (feature computations)", str(t.n_pre))]
    rows += [(f"modelled T_s, {k}", fmt_time(v)) for k, v in
             (("standard AL", tot["standard"]), ("SVPp", tot["svpp"]), ("ASVP", tot["asvp"]))]
    return rows


def _round_rows(s: ArmStats, scale: float) -> list[tuple[str, ...]]:
    r = s.arm.rounds
    assert r is not None, s.key  # only arms with rounds get a rounds table
    rows: list[tuple[str, ...]] = []
    for i in range(len(r["round"])):
        acc = r["accuracy"][i]
        sv = s.saving
        n2 = sv.equivalent_labels[i] if sv is not None else np.nan
        ratio = sv.ratios[i] if sv is not None else np.nan
        flags = []
        if sv is not None and sv.extrapolated[i] and np.isfinite(acc):
            flags.append("extrapolated")
        if sv is not None and np.isfinite(ratio) and not sv.used[i]:
            flags.append("not in mean")
        if r["refreshed"][i]:
            flags.append("features refreshed")
        rows.append((str(int(r["round"][i])), str(int(r["n_labeled"][i])),
                     f"{acc * scale:.2f}" if np.isfinite(acc) else "n/a",
                     f"{n2:.0f}" if np.isfinite(n2) else "n/a",
                     f"{ratio * 100:.1f}%" if np.isfinite(ratio) else "n/a",
                     str(r["eval_method"][i] or "-"), str(r["train_method"][i] or "-"),
                     str(int(r["ped_steps"][i])) if r["ped_steps"][i] >= 0 else "-",
                     f"{r['logme_ped'][i]:.4g}" if np.isfinite(r["logme_ped"][i]) else "-",
                     fmt_time(float(s.seconds[i])), f"{s.cum_cost[i]:.2f}", ", ".join(flags)))
    return rows


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;
color:#222;padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.25em .6em}
th{background:#f3f3f3}td{text-align:right}td:first-child{text-align:left}
.notes{background:#fff4e5;border:1px solid #f0a030;padding:.6em 1em;border-radius:4px}
.notes li{margin:.2em 0}img{max-width:100%;border:1px solid #eee}figure{margin:1em 0}
figcaption{font-size:.9em;color:#555}code{background:#f3f3f3;padding:0 .2em}
"""


def _build(run_dirs: Sequence[str | Path]) -> tuple[list[Run], list[ArmStats]]:
    runs: list[Run] = []
    seen: dict[str, int] = {}
    for d in run_dirs:
        name = _run_name(d)
        seen[name] = seen.get(name, 0) + 1
        label = name if seen[name] == 1 else f"{name}#{seen[name]}"
        runs.append(load_run(d, label=label))
    return runs, _collect(runs)


def write_report(run_dirs: str | Path | Iterable[str | Path], out_dir: str | Path, *, echo: bool = False) -> Path:
    """Write report.html (self-contained), one PNG per plot and summary.txt into out_dir; return the HTML path.

    Raises NotARunError (a ValueError) if a path is not an experiment directory; any other problem with a run is
    reported inside the report. With echo=True the summary table is printed on stdout.
    """
    if isinstance(run_dirs, (str, Path)):
        run_dirs = [run_dirs]
    run_dirs = list(run_dirs)
    if not run_dirs:
        raise ValueError("write_report needs at least one run directory")
    runs, stats = _build(run_dirs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    base_idx = {run.label: i for i, run in enumerate(runs)}
    scale, ylab = _acc_scale(stats)
    thresholds = {run.threshold for run in runs}
    threshold = thresholds.pop() if len(thresholds) == 1 else 1.0
    def safe(name, fn, *args):
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - the report ends every run: one bad plot must not lose the rest
            log.exception("report: the %s plot failed", name)
            notes.append(f"the {name} plot could not be drawn ({type(exc).__name__}: {exc})")
            return None

    notes = _notes(runs)
    plots = [
        ("accuracy", "Test accuracy against the number of labels for every arm; the random baseline is black and "
                     "dashed.", safe("accuracy", plot_accuracy, stats, base_idx, scale, ylab)),
        ("saving", "Left: random-baseline labels needed for each AL round's accuracy (above the dotted line = "
                   "labels saved). Right: sample saving ratio per round. Hollow markers are extrapolated beyond the "
                   "random curve; grey crosses are left out of the mean (labeled set still purely random).",
         safe("saving", plot_saving, stats)),
        ("tradeoff", "Each method's mean saving ratio against the compute it spent choosing labels (proxy, "
                     "selection, and the fine-tunes and re-embeds that select or refresh, each charged at its "
                     "measured cost; evaluation left out). Up and left is better.",
         safe("tradeoff", plot_tradeoff, stats)),
        ("asvp", "ASVP's per-round decisions: PED step count, LogME-PED score and its change against the threshold; "
                 "stars and dotted lines mark feature refreshes; circles are rounds trained with LP-FT, squares "
                 "with FT.", safe("asvp", plot_asvp, stats, scale, ylab, threshold)),
        ("time", "Measured compute time per phase, summed over all rounds of each arm.",
         safe("time", plot_time, stats)),
        ("cost", "Overall cost so far (labels x label price + compute hours x hour price) against accuracy; the "
                 "dotted grey line is the random baseline's final accuracy.",
         safe("cost", plot_cost, stats, base_idx, scale, ylab)),
    ]
    e = html.escape
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>raal report</title><style>{CSS}</style>"
             "</head><body><h1>raal active-learning report</h1>"]
    parts.append("<p>Runs: " + ", ".join(f"<code>{e(r.label)}</code> ({e(r.path)})" for r in runs)
                 + "</p>")
    if notes:
        parts.append("<div class='notes'><strong>Problems found in the runs</strong><ul>"
                     + "".join(f"<li>{e(n)}</li>" for n in notes) + "</ul></div>")
    parts.append("<h2>Summary</h2>")
    parts.append(_html_table(SUMMARY_HEAD, summary_rows(stats, scale)) if stats else "<p>No arms to report.</p>")
    detail_rows = []
    for s in stats:
        if s.arm.rounds is None:
            continue
        sv = s.saving
        detail_rows.append((
            s.key,
            "baseline" if s.arm.baseline else ("n/a" if sv is None else f"{int(sv.used.sum())} of {sv.used.size}"),
            "-" if s.arm.baseline or sv is None else str(int((sv.extrapolated & np.isfinite(sv.accuracy)).sum())),
            f"{s.cost_to_target:.2f}" if np.isfinite(s.cost_to_target) else "not reached / n/a"))
    if detail_rows:
        parts.append(_html_table(("arm", "rounds in the mean saving ratio", "rounds extrapolated beyond the random "
                                  "curve", "cost to first reach the baseline's final accuracy (USD)"), detail_rows))
    for run in runs:
        p = run.prices
        parts.append(f"<p><code>{e(run.label)}</code>: prices {p.label_price:g} USD/label, "
                     f"{p.gpu_hour_price:g} USD/GPU-hour, {p.cpu_hour_price:g} USD/CPU-hour; rounds with a purely "
                     f"random labeled set are {'left out of' if run.exclude_random_rounds else 'included in'} "
                     "the mean saving ratio.</p>")
    for name, caption, fig in plots:
        if fig is None:
            msg = {"asvp": "No ASVP arm: no PED/LogME-PED decisions to show.",
                   "time": "No rounds recorded: no phase times to show."}.get(name, "This plot could not be drawn; "
                                                                              "see the problems listed above.")
            parts.append(f"<h2>{e(name.upper() if name == 'asvp' else name.capitalize())}</h2><p>{e(msg)}</p>")
            continue
        png = _png(fig)
        (out / f"{name}.png").write_bytes(png)
        title = {"accuracy": "Accuracy vs labels", "saving": "Equivalent labels and sample saving ratio",
                 "tradeoff": "Label saving vs selection compute",
                 "asvp": "ASVP decisions", "time": "Time per phase", "cost": "Cost vs accuracy"}[name]
        parts.append(f"<h2>{e(title)}</h2><figure><img alt='{e(title)}' src='data:image/png;base64,"
                     f"{base64.b64encode(png).decode('ascii')}'><figcaption>{e(caption)}</figcaption></figure>")
    parts.append("<h2>Time model (docs/report.md)</h2><p>Per-round averages of the measured phase times over "
                 "the rounds where each phase ran (all arms of the run pooled), and the modelled totals "
                 "T_s = N_al·(T_tr+T_f) (+ N_pre·T_pre + (N_pre−1)·T_tr,full for ASVP). n/a: the phase never ran "
                 "in this run.</p>")
    for run in runs:
        rows = _model_rows(run)
        if rows:
            parts.append(f"<p><code>{e(run.label)}</code></p>" + _html_table(("quantity", "value"), rows))
    parts.append("<h2>Per-round details</h2>")
    head = ("round", "labels", "accuracy", "equiv. random labels", "saving ratio", "eval", "train", "PED steps",
            "LogME-PED", "compute", "cost so far (USD)", "flags")
    for s in stats:
        if s.arm.rounds is not None:
            parts.append(f"<details><summary>{e(s.key)}</summary>{_html_table(head, _round_rows(s, scale))}"
                         "</details>")
    parts.append("</body></html>")
    path = out / layout.REPORT_HTML
    path.write_text("".join(parts), encoding="utf-8")
    summary = summary_text(runs, stats, notes)
    (out / layout.REPORT_SUMMARY).write_text(summary, encoding="utf-8")
    if echo:
        sys.stdout.write(summary)
        sys.stdout.write(f"\nreport: {path}\n")
    else:
        for n in notes:
            log.warning("report: %s", n)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m raal.report",
                                     description="Compare the arms of one or more raal runs in an HTML report.")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="experiment directory (config.yaml, arms/)")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="output folder (default: RUN_DIR/report for one run, ./raal_report for several)")
    args = parser.parse_args(argv)
    first = args.run_dirs[0]
    local = None if "://" in first and not first.startswith("file://") else first.removeprefix("file://")
    out = args.out or (Path(local) / layout.REPORT if len(args.run_dirs) == 1 and local else Path("raal_report"))
    try:
        write_report(args.run_dirs, out, echo=True)
    except NotARunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
