"""Fault injection on real raal runs: kill them inside every phase, damage their files, check that nothing is lost.

One uninterrupted ASVP run (real Animal-MNIST, MobileNetV2, local Ray; a refresh is forced in round 2, so the run
embeds, trains proxies, selects, fine-tunes with Ray Train and re-embeds) is the reference. A second run with the
same seed is hit by one fault after another, each time resumed with the plain command, until it finishes:

  1 SIGKILL of the whole run while the v0 embedding is half written       then one committed shard is corrupted
  2 SIGKILL while the round-0 proxy trains
  3 SIGKILL after round 0's labels are written, before its row commits
  4 the driver actor dies while round 1 selects (Ray restarts it; the run goes on in the same process), then
    SIGKILL while the refresh fine-tune runs (a checkpoint is on disk)     then the newest checkpoint is removed
  5 SIGKILL while the refreshed features (v1) are being written
  6 resume to the end
It must end with the same labeled set, rounds table and v1 features as the reference. The label-import crash of the
files oracle is tested in tests/test_labeling.py. `python bench/faults.py` writes bench/faults.md.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
ARM = "asvp_margin"
ARGS = ["conf=demo", "eval.every_round=proxy", "al.baseline_cap=0", "train.min_steps=0",  "al.pipeline=asvp", "al.strategy=margin", "al.compare=[]", "al.baseline=false",
        "data.pool_size=200", "data.test_size=100", "data.image_size=32", "al.initial=20", "al.schedule=[20]*2",
        "embed.batch_size=25", "embed.shard_rows=50", "train.epochs=3", "train.lp_epochs=1", "train.milestones=[1]",
        "train.batch_size=32", "asvp.rule=delta", "asvp.threshold=1e9", "asvp.ped_max_steps_for_skip=-1", "report=false"]
STEPS = [  # (name, RAAL_FAULT points, damage after the kill)
    ("embedding v0", [("embed", "pause")], "corrupt_shard"),
    ("proxy training", [("proxy_train", "pause")], None),
    ("labels written, round not committed", [("before_commit", "pause")], None),
    ("driver actor killed in selection; then fine-tuning (epoch 2 of 3)", [("select", "exit"), ("finetune", "pause")],
     "remove_newest_checkpoint"),
    ("re-embedding v1", [("embed", "pause")], None),
]


def env() -> dict:
    return dict(os.environ, RAY_AUTH_MODE="disabled", TQDM_DISABLE="1", RAAL_LOG="WARNING",
                PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def run_to_end(run_dir: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raal.run", *ARGS, f"run_dir={run_dir}"], cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=timeout)


def run_with_faults(run_dir: Path, points: list[tuple[str, str]], markers: Path, timeout: float = 900) -> dict:
    """Start the run with the fault points armed; SIGKILL its process group once the last pause point is reached."""
    marks = [markers / f"{p}-{m}-{time.time_ns()}" for p, m in points]
    spec = ";".join(f"{p}:{m}:{mark}" for (p, m), mark in zip(points, marks))
    proc = subprocess.Popen([sys.executable, "-m", "raal.run", *ARGS, f"run_dir={run_dir}"], cwd=ROOT,
                            env=dict(env(), RAAL_FAULT=spec), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    pause = [mark for (p, m), mark in zip(points, marks) if m == "pause"]
    t0 = time.time()
    while time.time() - t0 < timeout and proc.poll() is None and not all(m.exists() for m in pause):
        time.sleep(0.05)
    killed = proc.poll() is None
    if killed:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return {"fired": [m.exists() for m in marks], "killed": killed, "rc": proc.returncode,
            "stderr": proc.stderr.read().decode(errors="replace")[-3000:] if proc.stderr else ""}


def corrupt_shard(run_dir: Path) -> str:
    shards = sorted((run_dir / "features" / "v0" / "pool" / "shards").glob("*.features.f32"))
    if not shards:
        return "no committed shard to corrupt"
    data = bytearray(shards[0].read_bytes())
    data[-8:] = b"\xff" * 8
    shards[0].write_bytes(bytes(data))
    return f"corrupted {shards[0].relative_to(run_dir)} ({len(shards)} shards committed)"


def remove_newest_checkpoint(run_dir: Path) -> str:
    ckpts = sorted((p for p in (run_dir / "arms" / ARM / "ray_train").glob("*/checkpoint_*") if p.is_dir()),
                   key=lambda p: p.stat().st_mtime)
    if not ckpts:
        return "no checkpoint on disk"
    shutil.rmtree(ckpts[-1])
    return f"removed {ckpts[-1].relative_to(run_dir)} ({len(ckpts) - 1} left)"


DAMAGE = {"corrupt_shard": corrupt_shard, "remove_newest_checkpoint": remove_newest_checkpoint}


def state(run_dir: Path) -> dict:
    """What must survive: the labeled set, the queries, the rounds table, the ledger of versions and features."""
    arm = run_dir / "arms" / ARM
    labels = pq.read_table(arm / "labels.parquet").to_pylist() if (arm / "labels.parquet").exists() else []
    rounds = pq.read_table(arm / "rounds.parquet").to_pylist() if (arm / "rounds.parquet").exists() else []
    queries = {p.name: pq.read_table(p).column("id").to_pylist() for p in sorted((arm / "queries").glob("*.parquet"))}
    return {"labels": sorted((r["id"], r["label"], r["round"]) for r in labels), "queries": queries,
            "rounds": [{k: r[k] for k in ("round", "n_labeled", "n_new", "refreshed", "features_version",
                                          "train_method")} for r in rounds]}


def v1_features(run_dir: Path) -> np.ndarray | None:
    from raal.features import FeatureStore
    from raal.store import RunStore

    fs = FeatureStore(RunStore(run_dir / "arms" / ARM))
    return np.array(fs.open(1, "pool").features) if fs.has(1, "pool") else None


def problems(run_dir: Path) -> list[str]:
    """Internal consistency: every label answers its round's query once, rounds are contiguous and add up; labels
    of the round in flight (written, row not committed yet) answer that round's saved query."""
    s, out = state(run_dir), []
    ids = [i for i, _, _ in s["labels"]]
    if len(set(ids)) != len(ids):
        out.append("duplicate labels")
    if any(i not in s["queries"].get(f"round_{r}.parquet", []) for i, _, r in s["labels"]):
        out.append("a label answers no query of its round")
    done = len(s["rounds"])
    if [r["round"] for r in s["rounds"]] != list(range(done)):
        out.append("rounds not contiguous")
    if any(r > done for _, _, r in s["labels"]):
        out.append("labels for a round after the one in flight")
    committed = sum(1 for _, _, r in s["labels"] if r < done)
    if s["rounds"] and (s["rounds"][-1]["n_labeled"] != committed or
                        sum(r["n_new"] for r in s["rounds"]) != committed):
        out.append("rounds table does not add up to the committed labels")
    return out


def run_all(root: Path, reference: Path | None = None) -> dict:
    """Reference run (unless given) + the fault sequence; returns the table rows and both final states."""
    root.mkdir(parents=True, exist_ok=True)
    if reference is None:
        reference = root / "reference"
        t0 = time.time()
        proc = run_to_end(reference)
        if proc.returncode != 0:
            raise RuntimeError(f"reference run failed: {proc.stderr[-3000:]}")
        ref_time = time.time() - t0
    else:
        ref_time = float("nan")
    run_dir, markers = root / "faulted", root / "markers"
    markers.mkdir(exist_ok=True)
    rows = []
    for name, points, damage in STEPS:
        res = run_with_faults(run_dir, points, markers)
        after = state(run_dir)
        note = DAMAGE[damage](run_dir) if damage else ""
        rows.append({"fault": name, "points": points, "fired": res["fired"], "killed": res["killed"],
                     "rc": res["rc"], "rounds_committed": len(after["rounds"]), "labels": len(after["labels"]),
                     "damage": note, "problems": problems(run_dir), "stderr": res["stderr"]})
    t0 = time.time()
    final = run_to_end(run_dir)
    rows.append({"fault": "resume to the end", "points": [], "fired": [], "killed": False, "rc": final.returncode,
                 "rounds_committed": len(state(run_dir)["rounds"]), "labels": len(state(run_dir)["labels"]),
                 "damage": "", "problems": problems(run_dir), "stderr": final.stderr[-3000:]})
    ref_v1, got_v1 = v1_features(reference), v1_features(run_dir)
    return {"rows": rows, "reference": state(reference), "faulted": state(run_dir), "ref_time": ref_time,
            "final_time": time.time() - t0, "resumed_out": final.stdout,
            "v1_max_abs_diff": None if ref_v1 is None or got_v1 is None else float(np.abs(ref_v1 - got_v1).max())}


def write_md(res: dict, path: Path) -> None:
    same = res["reference"] == res["faulted"]
    lines = ["# Fault injection (bench/faults.py)", "",
             "A real ASVP run (Animal-MNIST 200/100 at 32 px, MobileNetV2, margin, 20 → 40 → 60 labels, a refresh "
             "forced in round 2: Ray Data embedding, proxy training, selection, Ray Train fine-tune, re-embedding) is "
             "hit by the faults below one after another, each time resumed with the same command, and compared "
             "with an uninterrupted run with the same seed.", "",
             "| # | fault | fired | what happened | state after | damage before the resume | consistency |",
             "|---|---|---|---|---|---|---|"]
    for k, r in enumerate(res["rows"], 1):
        fired = ", ".join(f"{p}:{m} {'yes' if f else 'NO'}" for (p, m), f in zip(r["points"], r["fired"])) or "-"
        what = "SIGKILL of the whole run (process group)" if r["killed"] else f"exited with {r['rc']}"
        lines.append(f"| {k} | {r['fault']} | {fired} | {what} | {r['rounds_committed']} rounds committed, "
                     f"{r['labels']} labels | {r['damage'] or '-'} | {'; '.join(r['problems']) or 'ok'} |")
    lines += ["", f"Final labeled set, queries and rounds table identical to the uninterrupted run: **{same}**.",
              f"Labels in the end: {len(res['faulted']['labels'])} (reference {len(res['reference']['labels'])}); "
              "lost: 0; duplicated: 0." if same else "MISMATCH: see the JSON",
              f"Refreshed (v1) pool features, largest absolute difference to the reference: {res['v1_max_abs_diff']}.",
              "", "The files-oracle label import killed between its ledger write and its status write, then re-run, "
              "imports nothing twice (tests/test_labeling.py::test_files_oracle_round_trip); a Ray Train worker that "
              "dies mid-epoch resumes from its checkpoint to the same step count (tests/test_train.py)."]
    kill_cli = ROOT / "bench" / "results" / "kill_cli.json"  # bench/kill_cli.py's row, kept when this file is rewritten
    if kill_cli.exists():
        import json

        from kill_cli import md_row

        lines += [""] + md_row(json.loads(kill_cli.read_text()))
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    root = ROOT / "bench" / "runs" / "faults"
    shutil.rmtree(root, ignore_errors=True)
    res = run_all(root)
    write_md(res, ROOT / "bench" / "faults.md")
    print((ROOT / "bench" / "faults.md").read_text())


if __name__ == "__main__":
    main()
