"""What the label benches share: one real raal experiment per process, its finished state, atomic JSON results,
and the evaluator's memo handed from one run of a seed to the next."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def finished(run_dir: Path) -> bool:
    status = run_dir / "status.json"
    return status.exists() and json.loads(status.read_text()).get("state") == "done"


def run_raal(args: list[str], run_dir: Path, log_path: Path, name: str) -> None:
    """`python -m raal.run ARGS run_dir=RUN_DIR` in its own process (its own private local Ray), its output appended
    to `log_path`; a killed or failed run is resumed by calling this again."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log_path, "a") as log:
        proc = subprocess.run([sys.executable, "-m", "raal.run", *args, f"run_dir={run_dir}"], cwd=ROOT,
                              env=dict(os.environ, TQDM_DISABLE="1"), stdout=log, stderr=log)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed (exit {proc.returncode}); see {log_path}")
    print(f"{name}: {time.perf_counter() - t0:.0f} s wall", flush=True)


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=float))
    os.replace(tmp, path)


def copy_memo(src_run: Path, dst_run: Path) -> None:
    """The evaluator's memo of one run into another of the same data and seed: identical fits are not trained
    again (the memo key holds set, labels, seed, recipe and data, so a foreign record can never be hit)."""
    src = src_run / "eval_memo"
    if not src.is_dir() or src_run == dst_run:
        return
    (dst_run / "eval_memo").mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if not (dst_run / "eval_memo" / f.name).exists():
            shutil.copy2(f, dst_run / "eval_memo" / f.name)
