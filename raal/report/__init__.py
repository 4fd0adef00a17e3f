"""The run report: one self-contained HTML file (plots embedded) plus PNGs and a plain-text summary.

    python -m raal.report RUN_DIR|URI [RUN_DIR|URI ...] [--out DIR]

A run directory holds `config.yaml` and `arms/<arm>/{arm.json, rounds.parquet}`. Every arm of every given run is
compared; saving ratios are taken against the random-baseline arm of the same run. Problems in a run (missing
rounds, no baseline, unreadable files) become notes in the report and on stdout, never a crash; only a directory
that is not a run at all is an error (exit code 2).

Private modules: `_load` reads runs through RunStore, `_stats` the per-arm measures, `_plots` every plot,
`_tables` the summary, `_stop` the stop advice, `_write` the page and the CLI.
"""
from raal.report._load import NotARunError, Run, load_run
from raal.report._stats import ArmStats
from raal.report._write import main, summary_text, write_report

__all__ = ["ArmStats", "NotARunError", "Run", "load_run", "main", "summary_text", "write_report"]
