"""The tables of bench/asvp_full.py, rebuilt from its per-run JSON files alone (bench/results/asvp_full/)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from _tables import ci

from raal.metrics import SELECTION_PHASES, saving_curve
from raal.metrics import selection_seconds as metrics_selection_seconds

ARMS = {"asvp": "asvp_margin", "svpp": "svpp_margin", "standard": "standard_margin", "random": "svpp_random"}


def selection_seconds(rows: list[dict], n_rounds: int) -> float:
    """`raal.metrics.selection_seconds` (the report's rule) on JSON rows."""
    cols = {k: np.asarray([float(r.get(k) or 0.0) for r in rows]) for k in ("t_pre", *SELECTION_PHASES)}
    return metrics_selection_seconds({"round": np.arange(len(rows)), **cols}, n_rounds)


def curve(rows: list[dict]) -> list[tuple[int, float]]:
    return [(int(r["n_labeled"]), float(r["accuracy"])) for r in rows]


def saving(random_rows: list[dict], rows: list[dict]):
    return saving_curve(curve(random_rows), curve(rows), exclude=[bool(r.get("random_only")) for r in rows])


def load(out: Path, data: str) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {}
    for p in sorted((out / data).glob("*_seed*.json")):
        rec = json.loads(p.read_text())
        runs.setdefault(rec["run"], []).append(rec)
    return runs


def main_tables(mains: list[dict]) -> list[str]:
    n_al = min(len(m["arms"][ARMS["svpp"]]) for m in mains)
    stats = {k: {"ratio": [], "used": 0, "extrap": 0, "acc": [], "select": [], "eval": [], "refresh": []}
             for k in ARMS}
    diffs: dict[str, dict[int, list[float]]] = {k: {} for k in ("svpp-standard", "asvp-svpp", "svpp-random",
                                                                "standard-random", "asvp-random")}
    for m in mains:
        arms = {k: m["arms"][v] for k, v in ARMS.items() if v in m["arms"]}
        rnd = arms["random"]
        acc_at = {k: {int(r["n_labeled"]): float(r["accuracy"]) for r in rows} for k, rows in arms.items()}
        for k, rows in arms.items():
            s = stats[k]
            s["acc"].append(rows[n_al - 1]["accuracy"])
            s["select"].append(selection_seconds(rows, n_al))
            s["eval"].append(float(sum(r.get("t_eval", 0.0) for r in rows[:n_al])))
            s["refresh"].append([int(r["n_labeled"]) for r in rows if r.get("refreshed")])
            if k != "random":
                res = saving(rnd, rows[:n_al])
                s["ratio"].append(res.mean)
                s["used"] += int(res.used.sum())
                s["extrap"] += res.n_extrapolated
        for name in diffs:
            a, b = name.split("-")
            for n, v in acc_at.get(a, {}).items():
                if n in acc_at.get(b, {}) and n > min(acc_at[a]):
                    diffs[name].setdefault(n, []).append(v - acc_at[b][n])
    last = int(mains[0]["arms"][ARMS["svpp"]][n_al - 1]["n_labeled"])
    lines = ["| method | mean saving vs random % (interp. / extrap. rounds) | accuracy at "
             f"{last:,} labels % | selection compute s | evaluation wall s | refreshes at (labels) |",
             "|---|---|---|---|---|---|"]
    std_select = stats["standard"]["select"]
    for k in ("asvp", "svpp", "standard", "random"):
        s = stats[k]
        ratio = "baseline" if k == "random" else f"{ci(s['ratio'])} ({s['used']} / {s['extrap']})"
        refresh = "; ".join(str(x) for x in s["refresh"]) if k == "asvp" else "-"
        lines.append(f"| {k} | {ratio} | {ci(s['acc'], signed=False)} | {ci(s['select'], 1.0, False, 0)} | "
                     f"{ci(s['eval'], 1.0, False, 0)} | {refresh} |")
    if std_select and stats["asvp"]["select"]:
        frac = [a / b for a, b in zip(stats["asvp"]["select"], std_select) if b > 0]
        lines += ["", f"ASVP's selection compute / standard AL's (paired by seed): {ci(frac, 1.0, False, 2)} "
                  "(bar: <= 0.33)."]
    lines += ["", "Paired accuracy differences at the same labeled-set size (points, mean [95 % t-interval over "
              "seeds]); `svpp-standard` < 0 is where SVPp falls behind standard AL (the paper's premise):", "",
              "| labels | " + " | ".join(diffs) + " |", "|---" * (len(diffs) + 1) + "|"]
    for n in sorted({n for d in diffs.values() for n in d}):
        lines.append(f"| {n:,} | " + " | ".join(ci(diffs[k].get(n, [])) for k in diffs) + " |")
    asvp_minus = [a - b for a, b in zip(stats["asvp"]["ratio"], stats["svpp"]["ratio"])]
    lines += ["", f"ASVP - SVPp mean saving (points, paired): {ci(asvp_minus)} (bar: >= +3 with the interval above "
              "0 on one dataset, >= -1 on every dataset)."]
    return lines


def forced_tables(mains: list[dict], runs: dict[str, list[dict]]) -> list[str]:
    by_seed = {m["seed"]: m for m in mains}
    positions = sorted(int(k[2:]) for k in runs if k.startswith("at"))
    if not positions:
        return []
    lines = ["", "Forced single refresh (the paper's Table 4): ASVP refreshing once after the round that reaches N "
             "labels; saving vs the same seed's random arm, and the paired difference to SVPp's saving:", "",
             "| refresh at | seeds | mean saving % | minus SVPp (points) |", "|---|---|---|---|"]
    for n in positions:
        ratios, minus = [], []
        for rec in runs[f"at{n}"]:
            m = by_seed.get(rec["seed"])
            if m is None:
                continue
            rows = rec["arms"][ARMS["asvp"]]
            r = saving(m["arms"][ARMS["random"]], rows).mean
            ratios.append(r)
            minus.append(r - saving(m["arms"][ARMS["random"]], m["arms"][ARMS["svpp"]][:len(rows)]).mean)
        lines.append(f"| {n:,} | {len(ratios)} | {ci(ratios)} | {ci(minus)} |")
    return lines


def switch_table(runs: dict[str, list[dict]]) -> list[str]:
    """Final-model accuracy by the training switch (always FT, always LP-FT, the paper's rule, the holdout rule),
    per arm: with ASVP's picks (feature alignment) and SVPp's (none), the paper's Table 3 in the one-evaluator
    setting: feature alignment only = ASVP + always FT, training alignment only = SVPp + a switch."""
    recs = runs.get("switch", [])
    if not recs:
        return []
    lines = ["", "Training switch on the final labeled sets (final-model accuracy %, mean [95 % CI] over seeds; bar: "
             "the holdout rule >= the better fixed method - 0.3 points):", "",
             "| picks | always FT | always LP-FT | paper's rule | holdout rule | holdout - better fixed (points) | "
             "holdout picks |", "|---|---|---|---|---|---|---|"]
    for arm in ("svpp_margin", "asvp_margin"):
        vals = [rec["arms"][arm] for rec in recs if arm in rec["arms"]]
        if not vals:
            continue
        ft, lpft = [v["ft"] for v in vals], [v["lpft"] for v in vals]
        rule = [v[v["rule"]] for v in vals]
        hold = [v[v["holdout"]["method"]] for v in vals]
        best = ft if np.mean(ft) >= np.mean(lpft) else lpft
        picks = ", ".join(v["holdout"]["method"] for v in vals)
        lines.append(f"| {arm.split('_')[0]} | {ci(ft, signed=False)} | {ci(lpft, signed=False)} | "
                     f"{ci(rule, signed=False)} | {ci(hold, signed=False)} | "
                     f"{ci([h - b for h, b in zip(hold, best)])} | {picks} |")
    return lines


TAUS = [round(0.0025 * i, 4) for i in range(1, 81)]  # 0.0025 .. 0.2


def fire_position(signals: dict, tau: float, rounds: int = 2) -> int | None:
    """Where the `gain` rule (threshold tau, `rounds` consecutive scored rounds) first fires along SVPp's rounds; a
    NaN signal (too few labels) never fires and does not count, as in `raal.pipelines.asvp.decide`."""
    recent: list[float] = []
    for n in sorted(int(k) for k in signals):
        v = float(signals[str(n)] if str(n) in signals else signals[n])
        if not math.isfinite(v):
            continue
        recent.append(v)
        if len(recent) >= rounds and all(x < tau for x in recent[-rounds:]):
            return n
    return None


def position_savings(mains: list[dict], runs: dict[str, list[dict]]) -> dict[int, dict]:
    """seed -> {position (labels) or None (never): mean saving vs that seed's random arm}."""
    out: dict[int, dict] = {}
    for m in mains:
        rnd = m["arms"][ARMS["random"]]
        svpp = m["arms"][ARMS["svpp"]]
        per = {None: saving(rnd, svpp).mean}
        for name, recs in runs.items():
            if name.startswith("at"):
                for rec in recs:
                    if rec["seed"] == m["seed"]:
                        per[int(name[2:])] = saving(rnd, rec["arms"][ARMS["asvp"]]).mean
        out[m["seed"]] = per
    return out


def outcome(signals: dict, per: dict, tau: float, rounds: int) -> float:
    p = fire_position(signals, tau, rounds)
    return per.get(p, per[None])  # a position with no forced run (the last round) changes no pick: SVPp's


def calibration_lines(by_data: dict[str, tuple[list[dict], dict]]) -> list[str]:
    """Leave-one-dataset-out: the threshold that maximises the mean saving on one dataset's forced-refresh sweep,
    applied to the other's signals."""
    ready = {d: (mains, position_savings(mains, runs)) for d, (mains, runs) in by_data.items()
             if any(k.startswith("at") for k in runs) and all("svpp_signals" in m for m in mains)}
    if len(ready) < 2:
        return []
    lines = ["## The trigger, calibrated on one dataset and checked on the other", "",
             "| calibrated on | threshold (2 rounds) | checked on | fires at (per seed) | its mean saving % | best "
             "forced position (mean %) | within the best two? |", "|---|---|---|---|---|---|---|"]
    for a, (mains_a, per_a) in ready.items():
        seeds_a = [m for m in mains_a if len(per_a[m["seed"]]) > 1]
        tau = max(TAUS, key=lambda t: (np.mean([outcome(m["svpp_signals"], per_a[m["seed"]], t, 2)
                                                for m in seeds_a]), -t))
        for b, (mains_b, per_b) in ready.items():
            if b == a:
                continue
            seeds_b = [m for m in mains_b if len(per_b[m["seed"]]) > 1]
            fired = [fire_position(m["svpp_signals"], tau, 2) for m in seeds_b]
            got = [outcome(m["svpp_signals"], per_b[m["seed"]], tau, 2) for m in seeds_b]
            positions = sorted({p for m in seeds_b for p in per_b[m["seed"]]}, key=lambda p: (p is None, p or 0))
            means = {p: np.mean([per_b[m["seed"]][p] for m in seeds_b if p in per_b[m["seed"]]]) for p in positions}
            ranked = sorted(positions, key=lambda p: -means[p])
            modal = max(set(fired), key=fired.count)
            best = ranked[0]
            lines.append(f"| {a} | {tau:.4f} | {b} | {', '.join(str(p or 'never') for p in fired)} | "
                         f"{ci(got)} | {best or 'never'} ({100 * means[best]:+.1f}) | "
                         f"{'yes' if modal in ranked[:2] else 'no'} |")
    return lines + [""]


def write(out: Path, datasets: dict) -> None:
    lines = ["# ASVP where features move (bench/asvp_full.py)", "",
             "Every arm at every labeled-set size scored by the one full fine-tune evaluator (all blocks, FT, 300 "
             "steps, seeds paired by (AL seed, labeled-set size)); standard AL's per-round model and ASVP's refresh "
             "are that evaluator's fit of their labeled set. Saving ratio r = (N_random - N)/N_random over "
             "interpolated rounds 1.. (round 0 is random in every arm), mean [95 % t-interval over seeds]. Selection "
             "compute (`raal.metrics.selection_seconds`): proxy, selection, the fine-tunes and re-embeds that select "
             "(standard) or refresh (ASVP), each charged at its measured cost even when the evaluator's memo held the "
             "fit; the last round's fine-tune (a final model, which every method trains) left out; evaluation wall = the "
             "evaluator's time actually spent (each distinct fit once). 2 CPU cores shared with other benchmarks.", ""]
    by_data = {}
    for data, meta in datasets.items():
        runs = load(out, data)
        mains = runs.get("main", [])
        if not mains:
            continue
        by_data[data] = (mains, runs)
        lines += [f"## {meta['title']} — seeds {sorted(m['seed'] for m in mains)}", ""]
        lines += main_tables(mains) + forced_tables(mains, runs) + switch_table(runs) + [""]
        lines += ["Curves (labels: accuracy %) per seed:", ""]
        for m in mains:
            for k, arm in ARMS.items():
                rows = m["arms"].get(arm, [])
                lines.append(f"- {k} seed {m['seed']}: " + ", ".join(f"{int(r['n_labeled'])}: "
                                                                      f"{100 * r['accuracy']:.1f}" for r in rows))
        lines.append("")
    lines += calibration_lines(by_data)
    (out / "README.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from asvp_full import DATASETS, OUT

    write(OUT, DATASETS)
    np.seterr(all="ignore")
