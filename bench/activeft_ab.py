"""ActiveFT's 2%-of-50,000 x 768 target, today's code against a baseline revision, interleaved in one run.

    python bench/activeft_ab.py                    # baseline bd615ed, 3 rounds -> results/activeft_ab.{json,md}
    python bench/activeft_ab.py --base REV --rounds 3 --iterations 300

The pool is bench/strategies.py's targets pool (seed 0, 100 classes), no labels; B = 1,000 centroids seeded as
there. Each run is a fresh subprocess (old, new, old, new, ...), timing optimise_centroids (300 full-batch steps)
plus map_to_items; the baseline module is the file at --base, loaded from git under another name. On a machine
shared with other jobs the wall times move with the load (recorded per run): compare the same-run ratio and the
best of the rounds. Both produce the same centroids up to float32 rounding (max difference reported).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"


def worker(spec: dict) -> dict:
    if spec["module"] == "new":
        from raal.strategies import activeft as mod
    else:
        s = importlib.util.spec_from_file_location("activeft_base", spec["module"])
        mod = sys.modules["activeft_base"] = importlib.util.module_from_spec(s)
        s.loader.exec_module(mod)
    x = np.load(Path(spec["data"]) / "features.npy")
    rng = np.random.default_rng(0)
    init = rng.choice(len(x), size=len(x) // 50, replace=False)
    load0 = os.getloadavg()[0]
    c0, t0 = time.process_time(), time.perf_counter()
    st: dict = {}
    theta, _ = mod.optimise_centroids(x, init, mod.ActiveFTConfig(iterations=spec["iterations"]), rng, stats=st)
    t1 = time.perf_counter()
    picks = mod.map_to_items(x, theta, np.zeros(len(x), dtype=bool))
    t2 = time.perf_counter()
    np.save(spec["out"], theta)
    return {"wall_s": t2 - t0, "t_steps": t1 - t0, "t_map": t2 - t1, "cpu_s": time.process_time() - c0,
            "load": [load0, os.getloadavg()[0]], "searched": st["searched"], "picks_head": picks[:20].tolist()}


def run(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True,
                          cwd=ROOT, check=False)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def render(res: dict) -> str:
    rows = ["| round | impl | wall s | steps s | map s | cpu s | load (start, end) |", "|---|---|---|---|---|---|---|"]
    for r in res["runs"]:
        rows.append(f"| {r['round']} | {r['impl']} | {r['wall_s']:.1f} | {r['t_steps']:.1f} | {r['t_map']:.1f} | "
                    f"{r['cpu_s']:.1f} | {r['load'][0]:.1f}, {r['load'][1]:.1f} |")
    s = res["summary"]
    return "\n".join([
        f"# ActiveFT: 2% of {res['n']:,} x 768, {res['iterations']} steps, {res['base']} vs this tree (interleaved)",
        "", f"Machine: {res['cpus']} CPUs, shared (load average per run below).", "",
        f"- best of {res['rounds']}: baseline {s['base_best']:.1f} s, new {s['new_best']:.1f} s "
        f"(target <= 30 s); ratio of the bests {s['ratio_best']:.2f}x, median same-round ratio "
        f"{s['ratio_median']:.2f}x; cpu {s['base_cpu']:.1f} s -> {s['new_cpu']:.1f} s (medians)",
        f"- same picks: first 20 identical in {s['same_head']} of {res['rounds']} rounds; max |centroid difference| "
        f"{s['max_theta_diff']:.1e}", "", *rows, ""])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="bd615ed", help="git revision of the baseline raal/strategies/activeft.py")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--workdir", default="/tmp/raal-bench-activeft-ab")
    ap.add_argument("--out", default=str(RESULTS / "activeft_ab"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    from bench.strategies import generate

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    base_file = work / "activeft_base.py"
    base_file.write_text(subprocess.run(["git", "show", f"{args.base}:raal/strategies/activeft.py"], cwd=ROOT,
                                        capture_output=True, text=True, check=True).stdout)
    generate(work / "pool", args.n, 768, 100)
    runs, diffs, same = [], [], 0
    for k in range(args.rounds):
        pair = {}
        for impl, module in (("base", str(base_file)), ("new", "new")):
            r = run({"module": module, "data": str(work / "pool"), "iterations": args.iterations,
                     "out": str(work / f"{impl}.npy")})
            r.update(round=k + 1, impl=impl)
            print(f"round {k + 1} {impl:4s} wall {r['wall_s']:6.1f}s cpu {r['cpu_s']:6.1f}s load {r['load']}",
                  flush=True)
            runs.append(r)
            pair[impl] = r
        diffs.append(float(np.abs(np.load(work / "base.npy") - np.load(work / "new.npy")).max()))
        same += pair["base"]["picks_head"] == pair["new"]["picks_head"]
    b = [r for r in runs if r["impl"] == "base"]
    n = [r for r in runs if r["impl"] == "new"]
    summary = {"base_best": min(r["wall_s"] for r in b), "new_best": min(r["wall_s"] for r in n),
               "ratio_median": float(np.median([x["wall_s"] / y["wall_s"] for x, y in zip(b, n)])),
               "base_cpu": float(np.median([r["cpu_s"] for r in b])),
               "new_cpu": float(np.median([r["cpu_s"] for r in n])),
               "max_theta_diff": max(diffs), "same_head": same}
    summary["ratio_best"] = summary["base_best"] / summary["new_best"]
    res = {"n": args.n, "iterations": args.iterations, "rounds": args.rounds, "base": args.base,
           "cpus": os.cpu_count(), "runs": runs, "summary": summary}
    Path(args.out + ".json").write_text(json.dumps(res, indent=1))
    Path(args.out + ".md").write_text(render(res))
    print(render(res))


if __name__ == "__main__":
    main()
