"""Benchmark LogME-PED (raal.transfer) against the reference code's structure, at ImageNet scale.

    python bench/transfer.py            # N = 10k, 30k, 100k labeled; D = 2048; C = 1000 (run under flock: ~6 GB)
    python bench/transfer.py --quick    # small sizes, a few seconds; writes bench/results/transfer.quick.*

Every measurement runs in a fresh subprocess, so its peak RSS (ru_maxrss) is its own. Features are generated
float32 with class structure: C Gaussian class centres (scale 0.5) plus unit noise, so classes overlap and PED
moves them.

Baselines, both written here in the reference code's structure (docs/algorithms.md §1, §2):
* per-class: the decomposition (F^T F, its SVD, U = F V / s) is recomputed for every class, then that class's
  fixed point. At C = 1000 this takes hours, so a few classes are timed and the total extrapolated (said so).
* reference: the LogME reference code as published: one decomposition with U formed explicitly (N x k), then per
  class x = U^T y and a scalar fixed point; per-class time measured on a sample of classes, extrapolated to C.
Both are given raal's PED for free: the reference PED builds two C x C x D float64 tensors (2 x 16.8 GB at
C = 1000, D = 2048), which this machine cannot hold; it is run (and checked) only in the small complete
comparison, where every baseline runs in full and the scores are compared with raal's.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FULL = {"scaling": [10_000, 30_000, 100_000], "d": 2048, "c": 1000, "complete": (10_000, 512, 100),
        "sample_classes": 20, "decomp_repeats": 2}
QUICK = {"scaling": [2_000, 5_000], "d": 256, "c": 50, "complete": (3_000, 128, 20),
         "sample_classes": 5, "decomp_repeats": 2}


# ---------------------------------------------------------------------------------------------------------------
# Data and the reference-structured baselines
# ---------------------------------------------------------------------------------------------------------------

def make_features(n: int, d: int, c: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """float32 features with class structure, generated in row blocks (no float64 N x D temporary)."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % c)
    centres = rng.standard_normal((c, d), dtype=np.float32) * np.float32(0.5)
    X = np.empty((n, d), dtype=np.float32)
    for a in range(0, n, 8192):
        b = min(n, a + 8192)
        X[a:b] = centres[y[a:b]] + rng.standard_normal((b - a, d), dtype=np.float32)
    return X, y


def truncated_svd(F: np.ndarray):
    """The reference's decomposition for N > D: SVD of F^T F, s = sqrt, U = F V / s formed explicitly."""
    _, s2, vh = np.linalg.svd(F.T @ F)
    s = np.sqrt(s2)
    k = int(np.count_nonzero(s > 1e-10))
    u = (F @ vh[:k].T) / s[:k]
    return u, s[:k]


def class_evidence(u: np.ndarray, s: np.ndarray, yc: np.ndarray, n: int, d: int) -> float:
    """One class of the reference fast fixed point (§1.3), scalar loop."""
    sig = s * s
    x2 = (u.T @ yc) ** 2
    r0 = yc @ yc - x2.sum()
    a = b = 1.0
    for _ in range(11):
        t = a / b
        g = (sig / (sig + t)).sum()
        m2 = (sig * x2 / (t + sig) ** 2).sum()
        res2 = (x2 / (1 + sig / t) ** 2).sum() + r0
        a, b = g / (m2 + 1e-5), (n - g) / (res2 + 1e-5)
        if abs(a / b - t) / t <= 1e-3:
            break
    ev = (d / 2 * np.log(a) + n / 2 * np.log(b) - 0.5 * np.log(a + b * sig).sum() - b / 2 * res2 - a / 2 * m2
          - n / 2 * np.log(2 * np.pi))
    return ev / n


def reference_ped(X: np.ndarray, y: np.ndarray, dt=0.1, nsigma=0.6, exit_ratio=0.5, max_steps=6):
    """§2.2-2.3 as the reference does it: full rescaled copy, class stats by masks, C x C x D tensors."""
    X = X.astype(np.float64)                 # float64 stats, as raal (float32 stats would differ by ~1e-7)
    mu_g, sd = X.mean(axis=0), np.maximum(X.std(axis=0), 1e-3)
    c = y.max() + 1
    n, first = 0, 0.0
    while n < max_steps:
        Z = (X - mu_g) / sd
        M = np.stack([Z[y == i].mean(axis=0) for i in range(c)])
        R = np.sqrt(np.stack([Z[y == i].var(axis=0) for i in range(c)]).sum(axis=1))
        diff = M[:, None, :] - M[None, :, :]
        dist = np.linalg.norm(diff, axis=2)
        over = np.maximum(nsigma * (R[:, None] + R[None, :]) - dist, 0)
        np.fill_diagonal(over, 0)
        disp = np.minimum(0.5 * dt * dt * over, over)
        delta = (disp[:, :, None] * diff / np.where(dist > 0, dist, 1)[:, :, None]).sum(axis=1)
        change = np.abs(delta).sum()
        if n == 0:
            first = change
        if first == 0 or not change / first > exit_ratio:
            break
        X = (Z + delta[y]) * sd + mu_g
        n += 1
    return X, n


# ---------------------------------------------------------------------------------------------------------------
# Workers (each in a fresh process)
# ---------------------------------------------------------------------------------------------------------------

def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9     # ru_maxrss is in KiB


def rss_gb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9


PHASES = {"_class_sums": "pass 1: class sums + Gram", "_class_scatter": "pass 2: class scatter",
          "_ped_motion": "PED steps", "eigh": "eigendecomposition", "_logme_from_spectrum": "fixed point + evidence"}


def phase_times(profile) -> dict:
    """Cumulative seconds of the main phases of logme_ped, read from a cProfile run."""
    import pstats
    stats = pstats.Stats(profile).stats
    out = {}
    for (_, _, func), (_, _, _, cum, _) in stats.items():
        if func in PHASES:
            out[PHASES[func]] = out.get(PHASES[func], 0.0) + cum
    return out


def worker_raal(n: int, d: int, c: int) -> dict:
    import cProfile

    from raal.transfer import logme, logme_ped
    X, y = make_features(n, d, c)
    data_gb = rss_gb()
    t = time.perf_counter()
    score, steps = logme_ped(X, y)
    t_lp = time.perf_counter() - t
    # the same with every PED step accepted (exit ratio 0): the slowest case, profiled for a breakdown
    prof = cProfile.Profile()
    t = time.perf_counter()
    prof.runcall(logme_ped, X, y, exit_ratio=0.0)
    t_forced = time.perf_counter() - t
    peak = peak_rss_gb()
    t = time.perf_counter()
    plain = logme(X, y)
    t_l = time.perf_counter() - t
    return {"n": n, "d": d, "c": c, "score": score, "steps": steps, "t_logme_ped": t_lp, "t_logme": t_l,
            "t_logme_ped_6_steps": t_forced, "phases_6_steps": phase_times(prof), "logme": plain,
            "rss_after_data_gb": data_gb, "peak_rss_gb": peak}


def worker_baseline(n: int, d: int, c: int, sample_classes: int, decomp_repeats: int) -> dict:
    from raal.transfer import ped
    X, y = make_features(n, d, c)
    t = time.perf_counter()
    moved, steps = ped(X, y)                       # raal's PED, given to the baselines for free
    t_ped = time.perf_counter() - t
    del X
    # per-class decomposition: time `decomp_repeats` classes in full (decomposition + fixed point)
    per_class = []
    for cls in range(decomp_repeats):
        t = time.perf_counter()
        u, s = truncated_svd(moved)
        class_evidence(u, s, (y == cls).astype(np.float64), n, d)
        per_class.append(time.perf_counter() - t)
        del u
    # reference: one decomposition (timed), then per-class projections on a sample of classes
    t = time.perf_counter()
    u, s = truncated_svd(moved)
    t_decomp = time.perf_counter() - t
    t = time.perf_counter()
    for cls in range(sample_classes):
        class_evidence(u, s, (y == cls).astype(np.float64), n, d)
    t_class = (time.perf_counter() - t) / sample_classes
    return {"n": n, "d": d, "c": c, "steps": steps, "t_ped": t_ped, "t_per_class_decomp": per_class,
            "t_decomp": t_decomp, "t_class": t_class, "sample_classes": sample_classes,
            "peak_rss_gb": peak_rss_gb(),
            "per_class_total_est": t_ped + c * float(np.mean(per_class)),
            "reference_total_est": t_ped + t_decomp + c * t_class}


def worker_complete(n: int, d: int, c: int) -> dict:
    """Small scale, every baseline in full: reference PED + reference LogME, per-class decomposition, raal."""
    from raal.transfer import logme_ped
    X, y = make_features(n, d, c, seed=1)
    t = time.perf_counter()
    score, steps = logme_ped(X, y)
    t_raal = time.perf_counter() - t
    t = time.perf_counter()
    moved, ref_steps = reference_ped(X, y)
    t_ref_ped = time.perf_counter() - t
    t = time.perf_counter()
    u, s = truncated_svd(moved)
    ref_score = float(np.mean([class_evidence(u, s, (y == i).astype(np.float64), n, d) for i in range(c)]))
    t_ref_logme = time.perf_counter() - t
    t = time.perf_counter()
    per_class = []
    for i in range(c):
        u, s = truncated_svd(moved)
        per_class.append(class_evidence(u, s, (y == i).astype(np.float64), n, d))
    t_per_class = time.perf_counter() - t
    return {"n": n, "d": d, "c": c, "raal_score": score, "raal_steps": steps, "t_raal": t_raal,
            "ref_score": ref_score, "ref_steps": ref_steps, "t_reference": t_ref_ped + t_ref_logme,
            "t_reference_ped": t_ref_ped, "per_class_score": float(np.mean(per_class)),
            "t_per_class": t_ref_ped + t_per_class}


WORKERS = {"raal": worker_raal, "baseline": worker_baseline, "complete": worker_complete}


def run_worker(kind: str, threads: int, **kwargs) -> dict:
    """Run one worker in a fresh interpreter (BLAS limited to `threads`) and return its JSON result."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, json.dumps(kwargs)]
    env = {**os.environ, **{v: str(threads) for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}}
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {kind} {kwargs} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------------------
# Driver and report
# ---------------------------------------------------------------------------------------------------------------

def machine() -> dict:
    import scipy
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    return {"cpus": os.cpu_count(), "cpu": cpu, "load_at_start": os.getloadavg(), "python": platform.python_version(),
            "numpy": np.__version__, "scipy": scipy.__version__,
            "note": "2 cores, 24 GiB, shared with other jobs: timings are noisy"}


def fmt_s(x: float) -> str:
    return f"{x / 3600:.1f} h" if x > 7200 else f"{x:.1f} s" if x >= 10 else f"{x:.2f} s"


def report(res: dict, quick: bool) -> str:
    cfg = res["config"]
    lines = [f"# LogME-PED benchmark{' (quick)' if quick else ''}", "",
             f"Machine: {res['machine']['cpus']} cores ({res['machine']['cpu']}), shared and noisy; load at start "
             f"{', '.join(f'{x:.2f}' for x in res['machine']['load_at_start'])}. numpy {res['machine']['numpy']}, "
             f"scipy {res['machine']['scipy']}; BLAS threads per process: {cfg['threads']}. Command: "
             f"`python bench/transfer.py{' --quick' if quick else ''}`.",
             "", f"Features: float32, D = {cfg['d']}, C = {cfg['c']} Gaussian classes (centres x0.5 + unit noise, "
             "so classes overlap and PED moves them). Each row is a fresh process; peak RSS (GB = 1e9 bytes) "
             "includes the features (column 'features': RSS once they are generated).", "",
             "## raal `logme_ped` vs the reference structure (same run)", "",
             "| N | raal logme_ped | steps | peak RSS | features | raal logme alone | per-class decomposition "
             "(est.) | ratio | reference code (est.) | ratio | baseline peak RSS | load (raal / baseline) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r, b in zip(res["raal"], res["baseline"]):
        lines.append(
            f"| {r['n']:,} | {fmt_s(r['t_logme_ped'])} | {r['steps']} | {r['peak_rss_gb']:.2f} GB | "
            f"{r['rss_after_data_gb']:.2f} GB | {fmt_s(r['t_logme'])} | {fmt_s(b['per_class_total_est'])} | "
            f"{b['per_class_total_est'] / r['t_logme_ped']:,.0f}x | {fmt_s(b['reference_total_est'])} | "
            f"{b['reference_total_est'] / r['t_logme_ped']:,.1f}x | {b['peak_rss_gb']:.2f} GB | "
            f"{max(r['load_1min']):.1f} / {max(b['load_1min']):.1f} |")
    last = res["raal"][-1]
    lines += ["", "Load: the larger of the 1-minute load averages at the start and end of that process (2 cores; "
              "above 2, other jobs were competing for them).", "",
              f"Target at N = {last['n']:,}: logme_ped <= 60 s and <= 4 GB peak: "
              f"**{fmt_s(last['t_logme_ped'])}, {last['peak_rss_gb']:.2f} GB** "
              f"({'met' if last['t_logme_ped'] <= 60 and last['peak_rss_gb'] <= 4 else 'MISSED'}).", "",
              "Baseline estimates: *per-class decomposition* = PED + C x (time of one class with its own "
              f"decomposition, mean of {cfg['decomp_repeats']} timed classes); *reference code* = PED + one "
              f"decomposition (timed) + C x (per-class projection and fixed point, mean of {cfg['sample_classes']} "
              "timed classes). Both are given raal's PED (its time is included): the reference PED holds two "
              f"C x C x D float64 tensors, {2 * cfg['c'] ** 2 * cfg['d'] * 8 / 1e9:.2f} GB at this C and D"
              f"{', more than this machine has' if 2 * cfg['c'] ** 2 * cfg['d'] * 8 > 16e9 else ''}.", "",
              "Per-N timings of the baselines:", "",
              "| N | PED (raal) | one class with its decomposition | one decomposition | one class projection |",
              "|---|---|---|---|---|"]
    for b in res["baseline"]:
        lines.append(f"| {b['n']:,} | {fmt_s(b['t_ped'])} | {fmt_s(float(np.mean(b['t_per_class_decomp'])))} | "
                     f"{fmt_s(b['t_decomp'])} | {b['t_class'] * 1e3:.1f} ms |")
    names = list(PHASES.values())
    lines += ["", "raal logme_ped with all 6 PED steps accepted (exit_ratio=0, the slowest case), and where its "
              "time goes (cProfile, cumulative):", "",
              "| N | logme_ped, 6 steps | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for r in res["raal"]:
        ph = r["phases_6_steps"]
        lines.append(f"| {r['n']:,} | {fmt_s(r['t_logme_ped_6_steps'])} | "
                     + " | ".join(fmt_s(ph.get(k, 0.0)) for k in names) + " |")
    r0, r1 = res["raal"][0], res["raal"][-1]
    lines += ["", f"Scaling with N: x{r1['n'] / r0['n']:.0f} samples -> x{r1['t_logme_ped'] / r0['t_logme_ped']:.1f} "
              f"time (default PED), x{r1['t_logme_ped_6_steps'] / r0['t_logme_ped_6_steps']:.1f} (6 steps). Only "
              "the two passes grow with N (pass 1 is O(N D^2)); the D x D eigendecomposition, the PED steps "
              "(O(C^2 D) each) and the fixed point (O(k C) per iteration) do not.", ""]
    c = res["complete"]
    lines += ["## Small complete comparison (no extrapolation)", "",
              f"N = {c['n']:,}, D = {c['d']}, C = {c['c']}: every method in full, scores compared.", "",
              "| method | time | ratio to raal | LogME-PED | PED steps |", "|---|---|---|---|---|",
              f"| raal logme_ped | {c['t_raal']:.2f} s | 1 | {c['raal_score']:.10f} | {c['raal_steps']} |",
              f"| reference code (reference PED + one decomposition) | {c['t_reference']:.2f} s | "
              f"{c['t_reference'] / c['t_raal']:.1f}x | {c['ref_score']:.10f} | {c['ref_steps']} |",
              f"| per-class decomposition (reference PED) | {c['t_per_class']:.2f} s | "
              f"{c['t_per_class'] / c['t_raal']:.1f}x | {c['per_class_score']:.10f} | {c['ref_steps']} |", "",
              f"|raal - reference| = {abs(c['raal_score'] - c['ref_score']):.2e}.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, a few seconds")
    ap.add_argument("--threads", type=int, default=1,
                    help="BLAS threads per worker (default 1: what a 1-CPU Ray task gets; 2 threads on a shared "
                         "2-core machine make small LAPACK calls 10-50x slower when another job is running)")
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        kind, kwargs = args.worker
        load_start = os.getloadavg()[0]
        out = WORKERS[kind](**json.loads(kwargs))
        out["load_1min"] = [load_start, os.getloadavg()[0]]          # machine load at start and end
        print(json.dumps(out))
        return
    cfg = QUICK if args.quick else FULL
    res = {"config": {**cfg, "threads": args.threads}, "machine": machine(), "raal": [], "baseline": []}
    for n in cfg["scaling"]:
        res["raal"].append(run_worker("raal", args.threads, n=n, d=cfg["d"], c=cfg["c"]))
        print("raal", res["raal"][-1], flush=True)
        res["baseline"].append(run_worker("baseline", args.threads, n=n, d=cfg["d"], c=cfg["c"],
                                          sample_classes=cfg["sample_classes"],
                                          decomp_repeats=cfg["decomp_repeats"]))
        print("baseline", res["baseline"][-1], flush=True)
    n, d, c = cfg["complete"]
    res["complete"] = run_worker("complete", args.threads, n=n, d=d, c=c)
    print("complete", res["complete"], flush=True)
    name = "transfer.quick" if args.quick else "transfer"
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{name}.json").write_text(json.dumps(res, indent=2))
    (results / f"{name}.md").write_text(report(res, args.quick))
    print(report(res, args.quick))


if __name__ == "__main__":
    main()
