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
files oracle is tested in tests/labeling/test_labeling.py. `python bench/faults.py` writes bench/faults.md;
`python bench/faults.py --concurrent` only its concurrent-writer section (two writers on one run dir, issue #16).
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
    from raal import layout

    arm = run_dir / "arms" / ARM
    labels = pq.read_table(arm / "labels.parquet").to_pylist() if (arm / "labels.parquet").exists() else []
    rounds = pq.read_table(arm / "rounds.parquet").to_pylist() if (arm / "rounds.parquet").exists() else []
    queries = {p.name: pq.read_table(p).column("id").to_pylist() for p in sorted((arm / layout.SELECTIONS).glob("*.parquet"))}
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
              "imports nothing twice (tests/labeling/test_labeling.py::test_files_oracle_round_trip); a Ray Train worker that "
              "dies mid-epoch resumes from its checkpoint to the same step count (tests/train/test_train.py)."]
    kill_cli = ROOT / "bench" / "results" / "kill_cli.json"  # bench/kill_cli.py's row, kept when this file is rewritten
    if kill_cli.exists():
        import json

        from kill_cli import md_row

        lines += [""] + md_row(json.loads(kill_cli.read_text()))
    old = path.read_text() if path.exists() else ""
    keep = old[old.index("\n" + CONCURRENT_HEADER):] if "\n" + CONCURRENT_HEADER in old else ""
    path.write_text("\n".join(lines) + "\n" + keep)


# -- concurrent writers (issue #16): the run dir's lease refuses a second writer --------------------------------------
FILES_ARGS = [a for a in ARGS if not a.startswith(("al.pipeline", "asvp.", "train."))] + [
    "al.pipeline=svpp", "oracle.kind=files"]
CONCURRENT_HEADER = "## Concurrent writers"


def _cli(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raal.run", *args], cwd=ROOT, env=env(), capture_output=True,
                          text=True, timeout=600, **kw)


def _holder(args: list[str], point: str, markers: Path) -> tuple[subprocess.Popen, Path]:
    """A writer started with a pause point armed; returns once it is paused there (holding the lease)."""
    mark = markers / f"{point}-{time.time_ns()}"
    proc = subprocess.Popen([sys.executable, "-m", "raal.run", *args], cwd=ROOT, start_new_session=True,
                            env=dict(env(), RAAL_FAULT=f"{point}:pause:{mark}"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    t0 = time.time()
    while not mark.exists() and proc.poll() is None and time.time() - t0 < 600:
        time.sleep(0.05)
    if not mark.exists():
        raise RuntimeError(f"the writer never reached {point} (exit {proc.poll()})")
    return proc, mark


def _second(args: list[str]) -> dict:
    t0 = time.time()
    proc = _cli(args)
    lines = proc.stderr.strip().splitlines()
    return {"rc": proc.returncode, "lines": len(lines), "msg": (lines[-1] if lines else "").replace(f"{ROOT}/", ""),
            "seconds": time.time() - t0, "load": os.getloadavg()[0]}


def _ledger(run_dir: Path) -> list[tuple[int, int]]:
    p = run_dir / "oracle" / "labels.parquet"
    return sorted(zip(*pq.read_table(p, columns=["id", "label"]).to_pydict().values())) if p.exists() else []


def concurrent_writers(root: Path) -> list[dict]:
    """A files-oracle run stopped for labels; then each pair of writers on its run dir, the first one paused inside
    its write (label import: after its ledger write; run: while the proxy trains), the second started meanwhile."""
    import csv

    run_dir, markers = root / "concurrent", root / "markers-concurrent"
    markers.mkdir(parents=True, exist_ok=True)
    proc = _cli([*FILES_ARGS, f"run_dir={run_dir}"])
    if proc.returncode != 0 or "waits for" not in proc.stdout:
        raise RuntimeError(f"the files-oracle run did not stop for labels: {proc.stderr[-3000:]}")
    with open(run_dir / "queries" / "round_0.csv") as f:
        ids = [int(r["id"]) for r in csv.DictReader(f)]
    classes = ["cat", "dog"]
    (root / "a.csv").write_text("id,label\n" + "".join(f"{i},{classes[0]}\n" for i in ids))
    (root / "b.csv").write_text("id,label\n" + "".join(f"{i},{classes[1]}\n" for i in ids))  # conflicting
    label = ["label", f"run_dir={run_dir}"]
    rows = []
    holder, _ = _holder([*label, f"file={root / 'a.csv'}"], "label_import", markers)
    for what, args in [("two label imports at once", [*label, f"file={root / 'b.csv'}"]),
                       ("a run while a label import holds the run dir", [f"run_dir={run_dir}"])]:
        rows.append({"case": what, **_second(args)})
    os.killpg(holder.pid, signal.SIGKILL)
    holder.wait()
    again = _cli([*label, f"file={root / 'a.csv'}"])  # the killed import, re-run: nothing twice
    ledger = _ledger(run_dir)
    for row in rows:
        row["after"] = (f"ledger: {len(ledger)} labels, {len(ledger) - len({i for i, _ in ledger})} duplicated, "
                        f"{sum(1 for _, lab in ledger if lab != 0)} from the refused file; first import re-run: "
                        f"exit {again.returncode}")
    holder, _ = _holder([f"run_dir={run_dir}"], "proxy_train", markers)
    for what, args in [("two runs on one run dir", [f"run_dir={run_dir}"]),
                       ("a label import while a run holds the run dir", [*label, f"file={root / 'b.csv'}"])]:
        rows.append({"case": what, **_second(args), "after": f"ledger unchanged: {_ledger(run_dir) == ledger}"})
    os.killpg(holder.pid, signal.SIGKILL)
    holder.wait()
    return rows


def write_concurrent_md(rows: list[dict], path: Path) -> None:
    """Replace (or append) the concurrent-writer section of faults.md, leaving the fault table as it is."""
    text = path.read_text() if path.exists() else ""
    text = text.split("\n" + CONCURRENT_HEADER)[0].rstrip("\n") + "\n"
    lines = ["", CONCURRENT_HEADER, "",
             "`python bench/faults.py --concurrent`: a files-oracle run (same data) stopped for its 20 round-0 labels; "
             "a first writer is paused inside its write (a label import after its ledger write, or a resumed run "
             "while the proxy trains) and a second one is started on the same run dir. Every first writer was then "
             f"SIGKILLed. Times include the second writer's start (imports, config, data checks) on a machine with a "
             f"1-minute load average of {max(r['load'] for r in rows):.0f} (2 cores, shared).", "",
             "| # | second writer | exit | stderr | refused after | state after |", "|---|---|---|---|---|---|"]
    for k, r in enumerate(rows, 1):
        lines.append(f"| {k} | {r['case']} | {r['rc']} | {r['lines']} line: `{r['msg']}` | {r['seconds']:.1f} s "
                     f"| {r['after']} |")
    path.write_text(text + "\n".join(lines) + "\n")


def main() -> None:
    root = ROOT / "bench" / "runs" / "faults"
    if "--concurrent" in sys.argv[1:]:  # only the concurrent-writer rows (minutes, not the whole fault sequence)
        shutil.rmtree(root / "concurrent", ignore_errors=True)
        write_concurrent_md(concurrent_writers(root), ROOT / "bench" / "faults.md")
        print((ROOT / "bench" / "faults.md").read_text())
        return
    shutil.rmtree(root, ignore_errors=True)
    res = run_all(root)
    write_md(res, ROOT / "bench" / "faults.md")
    print((ROOT / "bench" / "faults.md").read_text())


if __name__ == "__main__":
    main()
