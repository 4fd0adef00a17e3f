"""Selection at a million images (issue #28): margin on SEALS' candidates, Cluster-Margin, CoreSet at budget 10,000,
and what those costs project to at 10^7-10^9 images.

    nice -n 19 python bench/scale_million.py --n 50000 --d 256 --c 100        # development size, a few minutes
    python bench/scale_million.py --tmp /data/tmp      # the issue's size (the defaults): ~40 min on 2 idle cores

Pool: --n x --d float32 class-structured Gaussians (--c class centres, noise 0.7; bench/sharded_select.py's `_pool`,
block by block) written once as a memmap under --tmp, read through the page cache, deleted at the end unless --keep
(then reused). Labeled rows: the first 1,000 and 10,000 (--labeled) of a fixed permutation, as two rounds. The model
is raal's proxy (`ProxyMLP` d -> d -> c, fixed random weights: sharded_select.py's `_proxy`) run through raal's
`predict`, as svpp does; its probabilities feed margin, its logits Cluster-Margin. Times are wall and CPU seconds
(all threads of this process); `extra_mb` is the peak anonymous memory above the part's start (bench/strategies.py's
`MemSampler`; the memmap's page cache is not counted). Parts (--parts, each replaces its own entry in the JSON):
- seals: raal's `PoolIndex` over the pool, built once and timed apart; `KnnCandidates` (k = al.candidates_k) for
  1,000 labeled, then grown to 10,000 (only the new labels searched, as the rounds do); margin at --budget on the
  candidates and labeled rows (`Pipeline.candidate_rows`: proxy on those rows only, then `margin.select`) against
  margin on the whole pool (1,000 labeled): rows scored, the share of the pool, seconds, and the share of SEALS'
  picks that whole-pool margin also picks. Bars: with 1,000 labeled, <= 10% of the pool scored and <= 10 s,
  read as the rounds table's t_select (search + margin); the proxy pass over the rows (t_f_proxy) is given beside.
- cluster_margin: raal's `ClusterMargin` at --budget: its one-time clustering of the pool (`pool_clusters`, what
  its first `select` does), then `select` per round (1,000 and 10,000 labeled: proxy margins of every unlabeled
  row, the round-robin); and on SEALS' candidates of the 1,000 labeled, where it clusters those rows each round.
- coreset: `CoreSet(project_dim=--project-dim)` (al.coreset_dim) at --budget with 1,000 labeled, timed; on the first
  --kn rows (budget --kbudget, at most a tenth of them; 1,000 of them labeled), exact greedy against the projection to each --kdims width and the projection with 2
  composable parts (al.select_workers): their k-center objective (largest distance of a row to its nearest labeled
  row or pick, `kcenter_radius`, in the original space) over exact greedy's. Bar: <= 10 min at the full size,
  objective <= 2x exact greedy's.
- projection: docs/scale.md from the JSON: nodes, memory per node and time per round at 10^7, 10^8 and 10^9 images.
Results: bench/results/scale_million.json (date and load average per part) and .md, written atomically.
Full size: --tmp needs n x d x 4 bytes free (10.5 GB); peak memory about 9 GB (the whole pool's probabilities,
5.1 GB, beside the index's 2.6 GB of codes).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
OUT = RESULTS / "scale_million.json"
BLOCK = 16 * 4096  # rows generated per write; a multiple of sharded_select.SHARD_ROWS

from sharded_select import _pool, _proxy  # noqa: E402  (bench/ is on the path when run as a script)
from strategies import MemSampler, machine  # noqa: E402


def timed(fn, *args, **kw):
    """fn's result and {"s": wall seconds, "cpu_s": CPU seconds of this process, "extra_mb": peak anonymous MB}."""
    t0, c0 = time.perf_counter(), time.process_time()
    with MemSampler() as mem:
        out = fn(*args, **kw)
    return out, {"s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
                 "extra_mb": round(mem.result()["extra_mb"], 1)}


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Ctx:
    """What the parts of one invocation share: the pool memmap, the proxy, the labeled masks and the SEALS index."""

    def __init__(self, a, tmp: Path):
        from raal.config import ALConfig, ProxyConfig
        from raal.train import load_proxy, predict

        self.a, self.k, self.batch = a, ALConfig().candidates_k, ProxyConfig().score_batch_size
        self.x = self._memmap(tmp / f"pool_{a.n}x{a.d}x{a.c}.npy")
        self.model = load_proxy(_proxy(a.d, a.c))
        self.predict = predict
        perm = np.random.default_rng(1).permutation(a.n)
        self.masks = {}
        for lab in a.labeled:
            self.masks[lab] = np.zeros(a.n, bool)
            self.masks[lab][perm[:lab]] = True
        self._index = None

    def _memmap(self, path: Path) -> np.ndarray:
        a = self.a
        done = path.with_suffix(".done")
        if done.exists():
            print(f"reusing {path}", flush=True)
        else:
            t0 = time.perf_counter()
            x = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(a.n, a.d))
            for s in range(0, a.n, BLOCK):
                x[s:s + BLOCK] = _pool(a.n, a.d, a.c, 0, slice(s, min(a.n, s + BLOCK)))
            x.flush()
            del x
            done.touch()
            print(f"generated {a.n:,} x {a.d} in {time.perf_counter() - t0:.0f} s", flush=True)
        return np.load(path, mmap_mode="r")

    def index(self) -> tuple:
        """raal's PoolIndex over the pool (the pipeline's `candidate_index`), built on first use, and its timing."""
        if self._index is None:
            from raal.index import PoolIndex

            idx, t = timed(PoolIndex, self.x, seed=0)
            t["nlist"], t["nprobe"] = idx.nlist, idx.nprobe
            t["bytes"] = int(idx.index.code_size * len(self.x) + 8 * len(self.x) + idx.sqn.nbytes + idx.scale.nbytes)
            self._index = (idx, t)
        return self._index

    def probs(self, rows=None):
        from raal.pipelines.base import RowSubset

        feats = self.x if rows is None else RowSubset(self.x, rows)
        return self.predict(self.model, feats, batch_size=self.batch, want=("probs",))["probs"]

    def logits(self, h):
        """The proxy as Cluster-Margin gets it from svpp's `strategy_inputs`: rows -> logits."""
        return self.predict(self.model, h, batch_size=self.batch, want=("logits",))["logits"]


def part_seals(c: Ctx) -> dict:
    from raal.index import KnnCandidates
    from raal.strategies import get

    a, margin = c.a, get("margin")
    idx, t_index = c.index()
    lab0 = a.labeled[0]
    mask = c.masks[lab0]
    probs, t_proxy = timed(c.probs)
    whole, t_sel = timed(margin.select, a.budget, labeled_mask=mask, probs=probs)
    del probs
    res = {"k": c.k, "index": t_index,
           "whole": {"labeled": lab0, "rows_scored": int((~mask).sum()), "proxy": t_proxy, "margin": t_sel}}
    cands, rounds = KnnCandidates(idx, c.k), []
    for lab in a.labeled:  # nested labeled sets: the second update searches only the new labels, as the rounds do
        mask = c.masks[lab]
        cand, t_search = timed(cands.update, mask)
        rows = np.union1d(cand, np.flatnonzero(mask))  # Pipeline.candidate_rows: candidates + labeled rows
        probs, t_p = timed(c.probs, rows)
        local, t_m = timed(margin.select, a.budget, labeled_mask=mask[rows], probs=probs)
        picks = rows[local]
        r = {"labeled": lab, "searched": cands.searched, "rows_scored": len(cand), "share": len(cand) / a.n,
             "search": t_search, "proxy": t_p, "margin": t_m, "unique_per_label": len(cand) / (c.k * lab),
             "select_s": t_search["s"] + t_m["s"],  # the rounds table's t_select: candidates and strategy
             "round_s": t_search["s"] + t_p["s"] + t_m["s"]}  # ... and its t_f_proxy: the proxy on the rows
        if lab == lab0:
            r["same_as_whole"] = float(np.isin(picks, whole).mean())
        rounds.append(r)
        print("seals", json.dumps({k: v for k, v in r.items() if not isinstance(v, dict)}), flush=True)
    first = rounds[0]
    res.update(rounds=rounds, bar_share=first["share"] <= 0.10, bar_seconds=first["select_s"] <= 10.0,
               bar_seconds_with_proxy=first["round_s"] <= 10.0)
    return res


def part_cluster_margin(c: Ctx) -> dict:
    from raal.index import KnnCandidates
    from raal.strategies.cluster_margin import ClusterMargin

    a, cm = c.a, ClusterMargin()
    groups, t_cluster = timed(cm.pool_clusters, c.x)  # what the first select does, timed apart
    clusters, cells = cm.sizes(a.n)
    res = {"clusters": clusters, "kmeans_k": cells, "clusters_found": int(len(np.unique(groups))),
           "clustering": t_cluster, "rounds": []}
    for lab in a.labeled:
        mask = c.masks[lab]
        _, t = timed(cm.select, a.budget, labeled_mask=mask, embeddings=c.x, proxy=c.logits, seed=0)
        res["rounds"].append({"labeled": lab, "rows_scored": int((~mask).sum()), "select": t,
                              "clusterings": cm.last["clusterings"], "clusters_hit": cm.last["clusters_hit"]})
        print("cluster_margin", json.dumps(res["rounds"][-1]), flush=True)
    lab0 = a.labeled[0]
    mask = c.masks[lab0]
    cand = KnnCandidates(c.index()[0], c.k).update(mask)
    rows = np.union1d(cand, np.flatnonzero(mask))
    seals = ClusterMargin()  # svpp passes take_rows(features, rows): the candidates' rows, clustered each round
    _, t = timed(lambda: seals.select(a.budget, labeled_mask=mask[rows], embeddings=np.asarray(c.x[rows]),
                                      proxy=c.logits, seed=0))
    res["seals"] = {"labeled": lab0, "rows_scored": len(cand), "select": t, "clusters": seals.sizes(len(rows))[0]}
    return res


def part_coreset(c: Ctx) -> dict:
    from raal.index import composable_kcenter, kcenter_greedy, kcenter_radius, random_projection
    from raal.strategies import get

    a = c.a
    lab0 = a.labeled[0]
    fast = get("coreset", project_dim=a.project_dim)
    picks, t = timed(fast.select, a.budget, labeled_mask=c.masks[lab0], embeddings=c.x)
    assert len(np.unique(picks)) == a.budget and not c.masks[lab0][picks].any()
    res = {"labeled": lab0, "project_dim": a.project_dim, "full": t, "bar_seconds": t["s"] <= 600}
    kn = min(a.kn, a.n)
    xs = c.x[:kn]  # a subsample of the same pool (its rows are i.i.d.)
    kb = min(a.kbudget, kn // 10)
    mask = np.zeros(kn, bool)
    mask[np.random.default_rng(2).choice(kn, min(lab0, kn // 50), replace=False)] = True
    lab = np.flatnonzero(mask)
    exact, t_exact = timed(kcenter_greedy, xs, kb, labeled_mask=mask)
    r_exact = kcenter_radius(xs, np.r_[lab, exact])
    sub = {"n": kn, "budget": kb, "labeled": len(lab), "exact": t_exact, "objective": r_exact, "ratios": {}}
    for m in a.kdims:
        p, tm = timed(get("coreset", project_dim=m).select, kb, labeled_mask=mask, embeddings=xs)
        sub["ratios"][str(m)] = {"ratio": kcenter_radius(xs, np.r_[lab, p]) / r_exact, **tm}
        print("coreset", m, json.dumps(sub["ratios"][str(m)]), flush=True)
    half = kn // 2
    p, tm = timed(lambda: composable_kcenter(random_projection(xs, a.project_dim), kb, [(0, half), (half, kn)],
                                             labeled_mask=mask))
    sub["composable2"] = {"ratio": kcenter_radius(xs, np.r_[lab, p]) / r_exact, **tm}
    worst = max([v["ratio"] for v in sub["ratios"].values()] + [sub["composable2"]["ratio"]])
    res.update(subsample=sub, bar_objective=worst <= 2.0)
    return res


# -- projection --------------------------------------------------------------------------------------------------------
NODE = {"cores": 32, "ram_gb": 256, "usable_gb": 200, "net_gbps": 25}  # a commodity node; edit and rerun
SCALES = (10**7, 10**8, 10**9)
TARGET_S = 600  # nodes are added until a round's selection fits in 10 minutes (or the index fits in RAM)


def project(res: dict) -> list[dict]:
    """Per scale and method: nodes, memory per node, one-time cost, time per round. CPU seconds measured per row
    here are divided by the cores (perfect scaling: optimistic); network time is added, not overlapped."""
    s, cm = res["seals"], res["cluster_margin"]
    n, row_b, budget, k = s["n"], 4 * s["d"], s["budget"], s["k"]
    net, cores = NODE["net_gbps"] / 8 * 1e9, NODE["cores"]  # bytes/s per node
    score_cpu = (s["whole"]["proxy"]["cpu_s"] + s["whole"]["margin"]["cpu_s"]) / s["whole"]["rows_scored"]
    lab = s["rounds"][-1]["labeled"]
    search_cpu = s["rounds"][0]["search"]["cpu_s"] / s["rounds"][0]["searched"]  # per query at n rows
    cm_round = cm["rounds"][-1]
    cm_cpu = cm_round["select"]["cpu_s"] / cm_round["rows_scored"]
    shard_mem = cores * (4096 * row_b + budget * 24)  # a shard and the kept candidates per core
    out = []
    for big in SCALES:
        data = big * row_b

        def spread(per_node_s: float) -> int:  # nodes for a round of per_node_s on one node to fit TARGET_S
            return max(1, math.ceil(per_node_s / TARGET_S))

        one = big * score_cpu / cores + data / net  # sharded scoring: every row, every round, a shard per core
        nodes = spread(one)
        out.append({"N": big, "method": "sharded scoring (margin, al.select_workers)", "nodes": nodes,
                    "mem_gb": shard_mem / 1e9, "once_s": 0.0, "round_s": one / nodes, "read_gb": data / 1e9})
        # margin + SEALS: the index's codes in RAM across nodes; a round searches its new labels (budget rows),
        # re-ranks their neighbours from the float32 rows and scores the candidates (k per label, at most)
        nodes = max(1, math.ceil(big * s["index"]["bytes"] / n / (NODE["usable_gb"] * 1e9)))
        cand = min(big, k * lab)
        read = cand * row_b + budget * round(1.5 * (k + 1)) * row_b
        t_round = budget * search_cpu * math.sqrt(big / n) / cores + cand * score_cpu / cores + read / net
        out.append({"N": big, "method": "margin + SEALS (al.candidates=seals)", "nodes": nodes,
                    "mem_gb": big * s["index"]["bytes"] / n / nodes / 1e9,
                    "once_s": (big * s["index"]["cpu_s"] / n / cores + data / net) / nodes, "round_s": t_round,
                    "read_gb": read / 1e9})
        # Cluster-Margin: clustering once per feature version; each round a margin pass over every unlabeled row
        one = big * cm_cpu / cores + data / net
        nodes = spread(one)
        cells = max(math.ceil(math.sqrt(big)), min(8 * math.ceil(math.sqrt(big)), 4096))
        once = (big * cm["clustering"]["cpu_s"] / n * math.sqrt(cells / cm["kmeans_k"]) / cores + data / net) / nodes
        out.append({"N": big, "method": "Cluster-Margin (sharded margin pass)", "nodes": nodes,
                    "mem_gb": (8 * big + 8 * cells**2) / 1e9, "once_s": once, "round_s": one / nodes,
                    "read_gb": data / 1e9})
    return out


def _dur(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"


def render_scale(res: dict) -> str:
    s, cm = res["seals"], res["cluster_margin"]
    n, d = s["n"], s["d"]
    r0, last = s["rounds"][0], s["rounds"][-1]
    score_mrow = (s["whole"]["proxy"]["cpu_s"] + s["whole"]["margin"]["cpu_s"]) / s["whole"]["rows_scored"] * 1e6
    rows = project(res)
    small = "" if n >= 10**6 and d >= 2048 else (
        f"\n**Measured at {n:,} x {d} only (a development size, not the issue's 1,280,000 x 2048): the per-row "
        "costs below are for these rows; rerun the bench at the full size before reading the table.**\n")
    if (cm["n"], cm["d"]) != (n, d):
        small += f"\n**The cluster_margin part was measured at {cm['n']:,} x {cm['d']}, the seals part at {n:,} x {d}.**\n"
    lines = [
        "# Selection beyond one machine: a projection", "",
        "Generated by `python bench/scale_million.py --parts projection` from `bench/results/scale_million.json` "
        f"(seals part of {s['date']}, load {s['load_before']:.1f}; cluster_margin part of {cm['date']}). Edit `NODE` "
        "in the script and rerun to change the assumptions.", small,
        "## Measured (one process)", "",
        f"- Pool: {n:,} x {d} float32 ({4 * d:,} bytes a row), proxy {d} -> {d} -> {s['c']} "
        f"(raal's `ProxyMLP`, fixed random weights), budget {s['budget']:,}. CPU seconds count every thread.",
        f"- Scoring (proxy + margin): {score_mrow:,.0f} CPU s per million rows.",
        f"- SEALS index (`PoolIndex`, IVF-SQ8, nlist {s['index']['nlist']:,}): built in "
        f"{s['index']['cpu_s'] / n * 1e6:,.0f} CPU s per million rows, {s['index']['bytes'] / n:,.0f} bytes a row.",
        f"- SEALS candidates (k = {s['k']}): {r0['rows_scored']:,} rows ({100 * r0['share']:.1f}% of the pool) "
        f"for {r0['labeled']:,} labeled, {last['rows_scored']:,} ({100 * last['share']:.1f}%) for "
        f"{last['labeled']:,}: {last['unique_per_label']:.2f} new rows per label and neighbour; a search costs "
        f"{r0['search']['cpu_s'] / r0['searched'] * 1e3:.1f} CPU ms per new label.",
        f"- Cluster-Margin: clustering ({cm['kmeans_k']:,} k-means cells, {cm['clusters']:,} clusters) "
        f"{cm['clustering']['cpu_s'] / n * 1e6:,.0f} CPU s per million rows, once per feature version; a round "
        f"{cm['rounds'][-1]['select']['cpu_s'] / cm['rounds'][-1]['rows_scored'] * 1e6:,.0f} CPU s per million "
        "unlabeled rows (the proxy's margins of all of them, then a sort).", "",
        "## Assumptions", "",
        f"- A node: {NODE['cores']} cores, {NODE['ram_gb']} GB RAM ({NODE['usable_gb']} GB usable), "
        f"{NODE['net_gbps']} Gb/s to the feature store. Per-core speed as measured here; CPU time divides evenly "
        "over cores and nodes (optimistic: no straggler, no contention; and on a loaded machine threads that "
        "wait for a core count as CPU time, pessimistic); reading is added to computing, not overlapped "
        "(pessimistic). One-time costs are spread over the same nodes (raal's k-means and index build are one "
        "process today).",
        f"- Features stay {d}-wide float32 in the run store, in shards of 4,096 rows (`embed.shard_rows`), "
        "readable from every node. A round asks for the budget above; the labeled set is "
        f"{last['labeled']:,} rows (SEALS' candidates grow with it: at most k per label).",
        f"- Nodes: for scoring and Cluster-Margin, enough that a round fits in {TARGET_S // 60} minutes; for "
        "SEALS, enough RAM for the index's codes (one IVF sharded by rows: raal's `PoolIndex` is one process today; "
        "a round's search grows as sqrt N, nlist = 4 sqrt N). SEALS' candidates are taken at their bound, k per "
        "label (fewer are measured: the neighbour lists overlap), and scored on one node, as raal does.",
        "- Memory per node: scoring, a 4,096-row shard and the kept candidates per core; SEALS, the node's share "
        "of the index; Cluster-Margin, the driver's cluster id per row and its HAC matrix (cells x cells float64).",
        "- Cluster-Margin's margin pass is assumed sharded like margin's (each worker keeps its k_m x budget "
        "smallest margins, an exact merge as `keep_ranked`); raal runs it in the driver's process today. Its "
        "clustering grows as sqrt(cells) per row (two-level k-means) and its HAC holds a cells x cells matrix.", "",
        "## Projection", "",
        "| images | method | nodes | memory per node | once (index / clustering) | a round's selection | read per round |",
        "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| 10^{round(math.log10(r['N']))} | {r['method']} | {r['nodes']:,} | {r['mem_gb']:,.1f} GB | "
                     f"{_dur(r['once_s']) if r['once_s'] else '-'} | {_dur(r['round_s'])} | {r['read_gb']:,.{0 if r['read_gb'] >= 100 else 1}f} GB |")
    at = {(r["method"].split(" (")[0], r["N"]): r for r in rows}
    lo, hi = SCALES[0], SCALES[-1]
    sc, se, cl = (at[(m, hi)] for m in ("sharded scoring", "margin + SEALS", "Cluster-Margin"))
    net_share = sc["read_gb"] * 1e9 / (NODE["net_gbps"] / 8 * 1e9) / (sc["round_s"] * sc["nodes"])
    e = f"10^{round(math.log10(hi))}"
    lines += ["", "## Reading it", "",
              f"- Sharded scoring and Cluster-Margin read and score every row every round, so their cost grows with "
              f"N: at {e} images it takes {sc['nodes']:,} nodes (scoring) and {cl['nodes']:,} (Cluster-Margin) to "
              f"keep a round near {TARGET_S // 60} minutes, reading {sc['read_gb']:,.0f} GB per round "
              f"({100 * net_share:.0f}% of the scoring round is that read).",
              f"- margin + SEALS scores a set that grows with the labels, not with the pool: a round takes "
              f"{_dur(at[('margin + SEALS', lo)]['round_s'])} at 10^{round(math.log10(lo))} images and "
              f"{_dur(se['round_s'])} at {e} (only the search grows, as sqrt N). Its price is RAM for the index "
              f"({se['nodes']:,} node(s) of {se['mem_gb']:,.0f} GB at {e}) and random reads of the candidates' "
              "rows; and it sees only the labeled rows' neighbourhoods (a region no label is near is never "
              "scored).",
              "- CoreSet: see `bench/results/scale_million.md`. With `al.coreset_dim` its greedy works on an "
              "in-memory N x dim copy (N x 512 bytes at dim 128: 0.5 TB at 10^9), so past one node it needs "
              "`al.select_workers` (composable k-center, each worker projecting its own part) as well.", "",
              "## What raal does not do yet (needed past one node)", "",
              "- A sharded SEALS index: `PoolIndex` is one faiss IVF in one process; past one node's RAM it needs "
              "per-node shards searched together (faiss `IndexShards`), or PQ codes (tens of bytes a row, not d).",
              "- Cluster-Margin on workers: its margin pass runs in the driver's process; the exact sharded merge "
              "exists for margin (`select_scores`) and would carry over (each worker's k_m x budget smallest).",
              "- Smaller stored features: every full pass reads 4 x d bytes a row; float16 or a fixed projection "
              "of the stored features would cut that read (and the index's memory) 2x or more.", ""]
    return "\n".join(lines)


def render(results: dict) -> str:
    lines = ["# Selection at a million images (bench/scale_million.py, issue #28)", ""]
    for part in ("seals", "cluster_margin", "coreset"):
        r = results.get(part)
        if not r:
            continue
        lines += [f"## {part}: {r['n']:,} x {r['d']}, {r['c']} classes, budget {r['budget']:,} ({r['date']}, load "
                  f"{r['load_before']:.1f} -> {r['load_after']:.1f})", ""]
        if part == "seals":
            i, w = r["index"], r["whole"]
            lines.append(f"- Index built once: {i['s']:.1f} s ({i['cpu_s']:.0f} CPU s), {i['bytes'] / 1e9:.2f} GB, "
                         f"nlist {i['nlist']:,}.")
            lines.append(f"- Whole pool, {w['labeled']:,} labeled: {w['rows_scored']:,} rows scored, proxy "
                         f"{w['proxy']['s']:.1f} s + margin {w['margin']['s']:.1f} s.")
            for q in r["rounds"]:
                lines.append(f"- SEALS, {q['labeled']:,} labeled ({q['searched']:,} searched): {q['rows_scored']:,} "
                             f"rows scored ({100 * q['share']:.1f}%), search {q['search']['s']:.1f} s + margin "
                             f"{q['margin']['s']:.2f} s = {q['select_s']:.1f} s (t_select), + proxy "
                             f"{q['proxy']['s']:.1f} s (t_f_proxy) = {q['round_s']:.1f} s"
                             + (f"; {100 * q['same_as_whole']:.0f}% of its picks are whole-pool margin's"
                                if "same_as_whole" in q else ""))
            lines.append(f"- Bars ({r['rounds'][0]['labeled']:,} labeled): <= 10% scored "
                         f"{'met' if r['bar_share'] else 'MISSED'}; <= 10 s {'met' if r['bar_seconds'] else 'MISSED'}"
                         f" (t_select), {'met' if r['bar_seconds_with_proxy'] else 'MISSED'} with the proxy pass.")
        elif part == "cluster_margin":
            lines.append(f"- Clustering once: {r['clustering']['s']:.1f} s ({r['kmeans_k']:,} cells -> "
                         f"{r['clusters_found']:,} clusters), {r['clustering']['extra_mb']:.0f} MB extra.")
            for q in r["rounds"]:
                lines.append(f"- Round with {q['labeled']:,} labeled: {q['select']['s']:.1f} s over "
                             f"{q['rows_scored']:,} rows ({q['clusters_hit']:,} clusters hit, clustered "
                             f"{q['clusterings']} time(s) so far).")
            q = r["seals"]
            lines.append(f"- On SEALS' candidates ({q['labeled']:,} labeled, {q['rows_scored']:,} rows, clustered "
                         f"into {q['clusters']:,} each round): {q['select']['s']:.1f} s.")
        else:
            sub, f = r["subsample"], r["full"]
            lines.append(f"- CoreSet, al.coreset_dim={r['project_dim']}, {r['labeled']:,} labeled: {f['s']:.1f} s "
                         f"({f['cpu_s']:.0f} CPU s, {f['extra_mb']:.0f} MB extra); <= 10 min "
                         f"{'met' if r['bar_seconds'] else 'MISSED'}.")
            lines.append(f"- Subsample {sub['n']:,} rows, budget {sub['budget']:,}, {sub['labeled']:,} labeled: "
                         f"exact greedy {sub['exact']['s']:.1f} s; objective / exact greedy's: " + "; ".join(
                             f"dim {m} {v['ratio']:.3f} ({v['s']:.1f} s)" for m, v in sub["ratios"].items())
                         + f"; dim {r['project_dim']} on 2 composable parts {sub['composable2']['ratio']:.3f}. "
                         f"<= 2x: {'met' if r['bar_objective'] else 'MISSED'}.")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="seals,cluster_margin,coreset,projection")
    ap.add_argument("--n", type=int, default=1_280_000)
    ap.add_argument("--d", type=int, default=2048)
    ap.add_argument("--c", type=int, default=1000)
    ap.add_argument("--budget", type=int, default=10_000)
    ap.add_argument("--labeled", type=lambda v: [int(x) for x in v.split(",")], default=[1000, 10_000])
    ap.add_argument("--project-dim", type=int, default=128)
    ap.add_argument("--kn", type=int, default=100_000)
    ap.add_argument("--kbudget", type=int, default=10_000)
    ap.add_argument("--kdims", type=lambda v: [int(x) for x in v.split(",")], default=[64, 128, 256])
    ap.add_argument("--tmp", default=tempfile.gettempdir())
    ap.add_argument("--keep", action="store_true", help="keep the pool memmap under --tmp (and reuse it)")
    ap.add_argument("--scale-md", default=str(ROOT / "docs" / "scale.md"))
    a = ap.parse_args()
    if max(a.labeled) + a.budget > a.n:
        ap.error(f"--labeled {max(a.labeled)} + --budget {a.budget} exceed --n {a.n}")
    parts = a.parts.split(",")
    results = json.loads(OUT.read_text()) if OUT.exists() else {}
    work = [p for p in parts if p != "projection"]
    if work:
        need = a.n * a.d * 4
        free = shutil.disk_usage(a.tmp).free
        if free < need * 1.1 and not any(Path(a.tmp).glob(f"raal-scale-*/pool_{a.n}x{a.d}x{a.c}.done")):
            sys.exit(f"--tmp {a.tmp} has {free / 1e9:.1f} GB free; the pool needs {need / 1e9:.1f} GB")
        tmp = Path(a.tmp) / (f"raal-scale-{a.n}x{a.d}" if a.keep else f"raal-scale-{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        try:
            ctx = Ctx(a, tmp)
            for part in work:
                load = os.getloadavg()[0]
                res = {"part_s": 0.0}
                t0 = time.perf_counter()
                res.update({"seals": part_seals, "cluster_margin": part_cluster_margin,
                            "coreset": part_coreset}[part](ctx))
                res.update(n=a.n, d=a.d, c=a.c, budget=a.budget, part_s=time.perf_counter() - t0, load_before=load,
                           load_after=os.getloadavg()[0], date=time.strftime("%Y-%m-%d %H:%M"), machine=machine())
                results[part] = res
                write_atomic(OUT, json.dumps(results, indent=1, default=float))
                write_atomic(RESULTS / "scale_million.md", render(results))
                print(f"{part}: {res['part_s']:.0f} s", flush=True)
        finally:
            if not a.keep:
                shutil.rmtree(tmp, ignore_errors=True)
    if "projection" in parts:
        write_atomic(Path(a.scale_md), render_scale(results))
        print(f"wrote {a.scale_md}")


if __name__ == "__main__":
    main()
