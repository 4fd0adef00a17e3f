"""Benchmark: images/s of the Ray Data embedding pass (`raal.features.embed_images`) against a plain torch loop.

Same images (Animal-MNIST, resized in the pipeline), same model (MobileNetV2, ImageNet weights), same per-batch
work (decode + resize/normalise + features + logits). Configurations on CPU:
  plain loop × 2 threads (the baseline), plain loop × 1 thread,
  Ray 1 actor × 2 threads, Ray 2 actors × 1 thread.
The Ray numbers include writing the feature shards and the manifest. "end-to-end" counts everything from the call
(actor start-up included); "steady" divides by the compute window: for Ray from the first batch an actor starts
to the last one it finishes (actor start-up and model build excluded), for the plain loop from the built model on.

    python bench/embed.py [--quick] [--device cpu|cuda] [--repeats N]
writes bench/results/embed.md/.json (embed.quick.*, embed.cuda.* for --quick / --device cuda).

    python bench/embed.py --warm [--n64 4000] [--repeats 3]     -> bench/results/embed.warm.md/.json
warm actors (raal/features/_pool.py) at 64 px: the plain loops, the Ray Data pass (a new actor pool per pass, the path
before warm actors), the warm pool's first pass of a run (actors started) and a later pass (actors reused),
interleaved per repeat.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from raal.config import DataConfig, EmbedConfig, ModelConfig  # noqa: E402
from raal.data import ImageTransform, load_data  # noqa: E402
from raal.models.backbones import build_backbone  # noqa: E402


def plain_loop(images, transform, device: str, threads: int, batch: int, autocast: str) -> dict:
    """The baseline: one process, one model, batches in order, results copied back to numpy."""
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    model = build_backbone(ModelConfig()).eval()
    dev = torch.device(device)
    if device == "cuda":
        model = model.to(dev, memory_format=torch.channels_last)
    cols = images.columns["image"]
    n = len(images)
    t_ready = time.perf_counter()  # model built: the window a Ray actor's compute rate also starts from
    for a in range(0, n, batch):
        x = torch.from_numpy(transform({"image": cols[a:a + batch]}))
        if device == "cuda":
            x = x.pin_memory().to(dev, non_blocking=True).contiguous(memory_format=torch.channels_last)
        ctx = (torch.autocast("cuda", dtype=torch.bfloat16 if autocast == "bf16" else torch.float16)
               if device == "cuda" and autocast != "none" else contextlib.nullcontext())
        with torch.inference_mode(), ctx:
            f = model.features(x)
            feats, logits = f.float().cpu().numpy(), model.head(f).float().cpu().numpy()
        assert feats.shape[0] == logits.shape[0]
    t1 = time.perf_counter()
    return {"seconds": t1 - t0, "img_s": n / (t1 - t0), "img_s_steady": n / (t1 - t_ready)}


def ray_pass(images, transform, device: str, actors: int, batch: int, shard_rows: int, autocast: str,
             warm: bool = False) -> dict:
    """One `embed_images` call: the Ray Data path (warm=False) or the run's warm actors (raal/features/_pool.py)."""
    from raal.features import FeatureStore, embed_images
    from raal.store import RunStore

    root = Path(tempfile.mkdtemp(prefix="raal-bench-embed-"))
    try:
        t0 = time.perf_counter()
        fset = embed_images(images, model_cfg=ModelConfig(), transform=transform,
                            store=FeatureStore(RunStore(root)), version=0, split="pool",
                            embed_cfg=EmbedConfig(batch_size=batch, num_actors=actors, device=device,
                                                  autocast=autocast, shard_rows=shard_rows, warm=warm),
                            progress=False)
        t1 = time.perf_counter()
        n = len(images)
        assert len(fset) == n and np.array_equal(fset.ids, images.ids)
        last = fset.manifest["last_pass"]
        return {"seconds": t1 - t0, "img_s": n / (t1 - t0), "img_s_steady": last["items_per_s_compute"],
                "startup_s": (t1 - t0) - last["compute_window_s"], "plan": last["plan"]}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="few images, one repeat (a smoke run)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--repeats", type=int, default=0, help="runs per configuration; the best is reported")
    ap.add_argument("--n64", type=int, default=0)
    ap.add_argument("--n224", type=int, default=0)
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    ap.add_argument("--rerender", metavar="JSON", help="only rewrite the .md of an earlier run's .json")
    ap.add_argument("--warm", action="store_true", help="warm actors vs Ray Data vs plain loop, 64 px")
    args = ap.parse_args()
    if args.rerender:
        rerender(Path(args.rerender))
        return
    if args.warm:
        return warm_main(args)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    n64 = args.n64 or (800 if args.quick else 40000 if cuda else 12000)
    n224 = args.n224 or (96 if args.quick else 10000 if cuda else 700)
    repeats = args.repeats or (1 if args.quick else 2)
    batch = 256 if cuda else 64
    autocast = "bf16" if cuda else "none"

    from raal.raylocal import init_local_ray

    cpus = os.cpu_count() or 1
    init_local_ray(num_cpus=None if cuda else 2, quiet=True)
    import ray
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    load0 = os.getloadavg()
    data = load_data(DataConfig(pool_size=min(max(n64, n224), 9000), test_size=100))
    rows = []
    for size, n in ((64, n64), (224, n224)):
        images = _head(data.pool, n)
        transform = ImageTransform(size=size)
        if cuda:
            configs = [("plain loop (cuda)", "plain", 1, cpus), ("Ray 1 GPU actor", "ray", 1, 0)]
        else:
            configs = [("plain loop × 2 threads", "plain", 1, 2), ("plain loop × 1 thread", "plain", 1, 1),
                       ("Ray 1 actor × 2 threads", "ray", 1, 2), ("Ray 2 actors × 1 thread", "ray", 2, 1)]
        best: dict[str, dict] = {}
        for rep in range(repeats):  # interleave the configurations so that load spikes hit all of them
            for name, kind, actors, threads in configs:
                if kind == "plain":
                    r = plain_loop(images, transform, args.device, threads, batch, autocast)
                else:
                    r = ray_pass(images, transform, args.device, actors, batch, max(batch, 256), autocast)
                print(f"{size}px n={n} rep {rep}: {name}: {r['img_s']:.1f} img/s end-to-end, "
                      f"{r['img_s_steady']:.1f} steady", flush=True)
                if name not in best or r["img_s"] > best[name]["img_s"]:
                    best[name] = r
        base = best[configs[0][0]]
        for name, kind, actors, threads in configs:
            r = best[name]
            rows.append({"size": size, "images": n, "config": name, "kind": kind, "actors": actors if kind == "ray"
                         else 0, "threads": r.get("plan", {}).get("torch_threads", threads),
                         "img_s": round(r["img_s"], 1), "img_s_steady": round(r["img_s_steady"], 1),
                         "ratio": round(r["img_s"] / base["img_s"], 3),
                         "ratio_steady": round(r["img_s_steady"] / base["img_s_steady"], 3),
                         "startup_s": round(r.get("startup_s", 0.0), 2), "plan": r.get("plan")})
    machine = {"cpus": cpus, "ray_cpus": ray.cluster_resources().get("CPU"), "gpu": torch.cuda.get_device_name(0)
               if cuda else None, "load_avg_start": [round(x, 2) for x in load0],
               "load_avg_end": [round(x, 2) for x in os.getloadavg()], "python": platform.python_version(),
               "torch": torch.__version__, "ray": ray.__version__, "device": args.device, "batch": batch,
               "autocast": autocast, "repeats": repeats, "quick": args.quick}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "embed" + (".cuda" if cuda else "") + (".quick" if args.quick else "")
    (out / f"{stem}.json").write_text(json.dumps({"machine": machine, "results": rows}, indent=2) + "\n")
    (out / f"{stem}.md").write_text(render(machine, rows))
    print(render(machine, rows))


def warm_main(args) -> None:
    """Warm actors at 64 px (the issue's bar: a later pass >= 0.9x the plain loop), interleaved per repeat."""
    from raal.features import _pool as embed_pool
    from raal.raylocal import init_local_ray

    n, repeats, batch = args.n64 or 4000, args.repeats or 3, 64
    init_local_ray(num_cpus=2, quiet=True)
    import ray

    load0 = os.getloadavg()
    data = load_data(DataConfig(pool_size=min(n, 9000), test_size=100))
    images, transform = _head(data.pool, n), ImageTransform(size=64)
    configs = [("plain loop × 2 threads", "plain"), ("plain loop × 1 thread", "plain"),
               ("Ray Data pass (before)", "ray"), ("warm actors, first pass", "warm"),
               ("warm actors, later pass", "warm")]
    runs: dict[str, list] = {c: [] for c, _ in configs}
    for rep in range(repeats):
        for name, kind in configs:
            if kind == "plain":
                r = plain_loop(images, transform, "cpu", 2 if "2" in name else 1, batch, "none")
            else:
                if name.endswith("first pass"):
                    embed_pool.release()
                r = ray_pass(images, transform, "cpu", 2, batch, 256, "none", warm=kind == "warm")
            r["load"] = os.getloadavg()[0]
            runs[name].append(r)
            print(f"rep {rep}: {name}: {r['img_s']:.1f} img/s (load {r['load']:.1f})", flush=True)
    embed_pool.release()
    rows = []
    for name, kind in configs:
        rs = runs[name]
        rows.append({"config": name, "kind": kind, "img_s": [round(r["img_s"], 1) for r in rs],
                     "startup_s": [round(r.get("startup_s", 0.0), 2) for r in rs],
                     "load": [round(r["load"], 1) for r in rs]})
    plain = [max(a, b, key=lambda r: r["img_s"]) for a, b in zip(runs[configs[0][0]], runs[configs[1][0]])]
    for row in rows:  # per repeat: against the faster plain loop of the same repeat
        row["ratio"] = [round(r["img_s"] / p["img_s"], 3) for r, p in zip(runs[row["config"]], plain)]
        row["ratio_median"] = float(np.median(row["ratio"]))
    machine = {"cpus": os.cpu_count(), "ray_cpus": ray.cluster_resources().get("CPU"), "images": n, "size": 64,
               "batch": batch, "repeats": repeats, "load_avg_start": [round(x, 2) for x in load0],
               "load_avg_end": [round(x, 2) for x in os.getloadavg()], "torch": torch.__version__,
               "ray": ray.__version__}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "embed.warm.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    lines = ["# Warm embedding actors vs the Ray Data pass vs a plain torch loop", "",
             f"{n} Animal-MNIST images at 64 px, MobileNetV2, batch {batch}, CPU, Ray with {machine['ray_cpus']} CPUs "
             f"(2 actors x 1 thread). {repeats} interleaved repeats; load average {machine['load_avg_start']} at "
             f"the start, {machine['load_avg_end']} at the end. Ratio = img/s over the faster plain loop of the same "
             "repeat (end-to-end: actor start-up, shard writes and manifest included).", "",
             "| configuration | img/s per repeat | ratio per repeat | median ratio | start-up s | load |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['config']} | {r['img_s']} | {r['ratio']} | {r['ratio_median']:.3f} | "
                     f"{r['startup_s'] if r['kind'] != 'plain' else ''} | {r['load']} |")
    (out / "embed.warm.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _head(images, n):
    """The first n images; beyond the pool's size the images repeat (with new ids) so that start-up amortises."""
    from raal.data.sources import ImageSet

    pos = np.arange(n) % len(images)
    return ImageSet(f"bench{n}", np.arange(n, dtype=np.int64), {"image": images.columns["image"][pos]},
                    images.class_names)


def render(machine: dict, rows: list[dict]) -> str:
    lines = ["# Embedding pass: Ray Data actor pool vs a plain torch loop", "",
             f"MobileNetV2 (ImageNet weights), Animal-MNIST images resized in the pipeline, batch {machine['batch']}, "
             f"device {machine['device']}" + (f" ({machine['gpu']}, autocast {machine['autocast']})"
                                              if machine["gpu"] else "") + ".",
             f"Machine: {machine['cpus']} cores, shared and noisy (load average {machine['load_avg_start']} at the "
             f"start, {machine['load_avg_end']} at the end); Python {machine['python']}, torch {machine['torch']}, "
             f"Ray {machine['ray']}. Best of {machine['repeats']} interleaved run(s) per configuration.",
             "Ray numbers include writing the checksummed feature shards and the manifest; *end-to-end* includes "
             "actor start-up; *steady* divides by the compute window (Ray: first batch started in any actor to the "
             "last one finished; plain loop: model built to the end); *start-up* is the rest of the Ray call (actor "
             "start, model build, consolidating the store after the last batch).", "",
             "Baseline = the plain loop × 2 threads (first row of each size); *× best plain* compares with the "
             "faster of the two plain loops, which is the honest bar on a loaded machine.", "",
             "| px | images | configuration | torch threads | img/s end-to-end | × baseline | × best plain "
             "| img/s steady | × baseline | start-up s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        best = max(q["img_s"] for q in rows if q["size"] == r["size"] and q["kind"] == "plain")
        lines.append(f"| {r['size']} | {r['images']} | {r['config']} | {r['threads']} | {r['img_s']} | {r['ratio']} "
                     f"| {r['img_s'] / best:.3f} | {r['img_s_steady']} | {r['ratio_steady']} "
                     f"| {r['startup_s'] if r['kind'] == 'ray' else ''} |")
    return "\n".join(lines) + "\n"


def rerender(path: Path) -> None:
    """Rewrite the .md of an earlier run from its .json (after a change to the table layout)."""
    data = json.loads(path.read_text())
    path.with_suffix(".md").write_text(render(data["machine"], data["results"]))


if __name__ == "__main__":
    main()
