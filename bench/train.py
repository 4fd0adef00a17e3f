"""Benchmark: Ray Train fine-tuning against a plain single-process torch loop, and the MLP proxy's training time.

1. FT of MobileNetV2 (ImageNet weights) on real Animal-MNIST images, one Ray Train worker, against a plain loop doing
   the same work (same cached inputs, model, batch size, augmentation, optimizer, thread count). Per-epoch times are
   compared after the first epoch; the fixed cost of a `fit` (worker start, process group, data, evaluation) is
   reported separately.
2. The proxy (`train_proxy`, 50 epochs, batch 2048) on labeled rows of a CIFAR-10-scale feature pool (50,000 × 1280,
   10 classes, a read-only memmap), against a straightforward loop (whole pool copied to RAM, TensorDataset +
   DataLoader), plus scoring the whole pool with `predict`.
3. `--only warm`: the fixed cost of a fine-tune (wall minus epoch times) on the two paths: three small FT jobs back
   to back on the warm training actor, then the same three as Ray Train fits (`train.warm=off`), in one run; the
   figures of the 2nd and 3rd job of each path are the steady ones (the warm actor's first job starts it).
`--device cuda`: FT at 224 px with `use_gpu`, and the proxy at ImageNet scale (400,000 × 2048, 1,000 classes).

    python bench/train.py --only warm        # ~3 min on 2 cores -> bench/results/train.warm.json/.md
    python bench/train.py --quick            # ~3 min on 2 cores
    flock /tmp/raal-heavy.lock python bench/train.py
    python bench/train.py --device cuda      # on a GPU machine
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from raal.config import DataConfig, ModelConfig, ProxyConfig, TrainConfig  # noqa: E402
from raal.data.sources import load_data  # noqa: E402
from raal.data.transforms import ImageTransform  # noqa: E402
from raal.models.backbones import build_backbone  # noqa: E402
from raal.recipe import cosine_multiplier  # noqa: E402
from raal.train import ProxyMLP, finetune, predict, random_resized_crop_flip, train_proxy  # noqa: E402  # noqa: E402


def machine() -> dict:
    info = {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform()}
    try:
        info["load_avg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


# ---------------------------------------------------------------------------------------------------- 1. FT
def plain_ft(x: torch.Tensor, y: torch.Tensor, epochs: int, tc: TrainConfig, device: torch.device,
             threads: int) -> list[float]:
    """The baseline: one process, the same inputs already transformed, the same model, recipe and augmentation."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    backbone = build_backbone(ModelConfig())
    net = nn.Sequential(backbone.trunk, nn.Linear(backbone.feature_dim, int(y.max()) + 1)).to(device)
    opt = torch.optim.SGD([{"params": net[0].parameters(), "lr": tc.backbone_lr},
                           {"params": net[1].parameters(), "lr": tc.head_lr}],
                          momentum=tc.momentum, nesterov=True, weight_decay=tc.weight_decay)
    x, y = x.to(device), y.to(device)
    gen = torch.Generator().manual_seed(0)
    times = []
    for _ in range(epochs):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        net.train()
        perm = torch.randperm(len(y), generator=gen).to(device)
        for a in range(0, len(y), tc.batch_size):
            idx = perm[a:a + tc.batch_size]
            if len(idx) < 2:
                continue
            xb = random_resized_crop_flip(x.index_select(0, idx), gen) if tc.augment else x.index_select(0, idx)
            loss = F.cross_entropy(net(xb), y.index_select(0, idx))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def bench_ft(args, out: dict) -> None:
    from raal.raylocal import init_local_ray

    cuda = args.device == "cuda"
    n_images = 300 if args.quick else 800
    size = 224 if cuda else (32 if args.quick else 64)
    epochs = 4 if args.quick else 5
    data = load_data(DataConfig(pool_size=n_images, test_size=200))
    batch = data.pool.take(np.arange(len(data.pool)))
    batch["label"] = np.asarray([data.truth[int(i)] for i in batch["id"]], dtype=np.int64)
    transform = ImageTransform(size=size)
    threads = 1 if not cuda else max(1, (os.cpu_count() or 2) - 1)
    tc = TrainConfig(method="ft", lp_epochs=0, epochs=epochs, head_lr=0.01, backbone_lr=0.01, milestones=[1000],
                     batch_size=64, eval_batch_size=256, augment=True, num_workers=1, use_gpu=cuda,
                     cpus_per_worker=float(threads), warm="off")  # this section measures Ray Train's worker
    init_local_ray(quiet=True)
    with tempfile.TemporaryDirectory(prefix="raal-bench-train-") as d:
        t0 = time.perf_counter()
        res = finetune(batch, data.test, num_classes=data.pool.num_classes, model_cfg=ModelConfig(), train_cfg=tc,
                       transform=transform, method="ft", storage_path=d, name="bench")
        ray_total = time.perf_counter() - t0
    entries = [e for e in res.log if "stage" in e]
    ray_train = [e["train_time"] for e in entries]
    ray_epoch = [e.get("epoch_time", e["train_time"]) for e in entries]
    x = torch.from_numpy(np.concatenate([transform({"image": batch["image"][a:a + 512]})
                                         for a in range(0, len(batch["id"]), 512)]))
    y = torch.from_numpy(batch["label"])
    plain = plain_ft(x, y, epochs, tc, torch.device("cuda" if cuda else "cpu"), threads)
    steady_plain = statistics.median(plain[1:])
    steady_ray_train = statistics.median(ray_train[1:])
    steady_ray_epoch = statistics.median(ray_epoch[1:-1] if len(ray_epoch) > 2 else ray_epoch[1:])
    out["ft"] = {
        "images": n_images, "image_size": size, "epochs": epochs, "batch_size": tc.batch_size, "threads": threads,
        "device": args.device, "ray_workers": res.num_workers, "ray_cpus_per_worker": res.cpus_per_worker,
        "plain_epoch_s": [round(t, 3) for t in plain], "ray_train_s": [round(t, 3) for t in ray_train],
        "ray_epoch_with_checkpoint_s": [round(t, 3) for t in ray_epoch],
        "plain_steady_s": round(steady_plain, 3), "ray_steady_train_s": round(steady_ray_train, 3),
        "ray_steady_epoch_with_checkpoint_s": round(steady_ray_epoch, 3),
        "speed_ratio_train": round(steady_plain / steady_ray_train, 3),
        "speed_ratio_with_checkpoint": round(steady_plain / steady_ray_epoch, 3),
        "ray_fit_wall_s": round(res.wall_time, 2), "ray_call_wall_s": round(ray_total, 2),
        "ray_fixed_cost_s": round(res.wall_time - sum(ray_epoch), 2),
        "ray_test_accuracy": round(res.accuracy, 4),
    }


# ---------------------------------------------------------------------------------------------------- 2. proxy
def plain_proxy(pool: np.ndarray, rows: np.ndarray, labels: np.ndarray, c: int, cfg: ProxyConfig,
                device: torch.device) -> ProxyMLP:
    """The straightforward version: copy the pool to RAM, TensorDataset + DataLoader(shuffle=True)."""
    x = torch.from_numpy(np.array(pool))[torch.from_numpy(rows)]  # whole-pool copy, then the labeled rows
    ds = torch.utils.data.TensorDataset(x, torch.from_numpy(labels))
    loader = torch.utils.data.DataLoader(ds, batch_size=cfg.batch_size, shuffle=True, drop_last=len(ds) % cfg.batch_size == 1)
    torch.manual_seed(0)
    model = ProxyMLP(pool.shape[1], c).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True)
    total = cfg.epochs * len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_multiplier(s, total))
    model.train()
    for _ in range(cfg.epochs):
        for xb, yb in loader:
            loss = F.cross_entropy(model(xb.to(device)), yb.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return model.eval()


def bench_proxy(args, out: dict) -> None:
    cuda = args.device == "cuda"
    n, d, c = (400_000, 2048, 1000) if cuda else (50_000, 1280, 10)
    if args.quick and not cuda:
        labeled_sizes = [1000, 2000]
    elif cuda:
        labeled_sizes = [10_000, 100_000, 400_000]
    else:
        labeled_sizes = [1000, 10_000, 50_000]
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 0.05, size=(c, d)).astype(np.float32)
    truth = rng.integers(0, c, size=n)
    with tempfile.TemporaryDirectory(prefix="raal-bench-proxy-") as tmp:
        path = Path(tmp) / "features.npy"
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
        for a in range(0, n, 50_000):  # class centre + noise, non-negative like post-ReLU pooled features
            b = min(n, a + 50_000)
            mm[a:b] = np.maximum(0, centres[truth[a:b]] + rng.normal(0, 1.0, size=(b - a, d)).astype(np.float32))
        mm.flush()
        del mm
        pool = np.load(path, mmap_mode="r")
        cfg = ProxyConfig(device=args.device, epochs=50, batch_size=2048, lr=0.01)
        device = torch.device(args.device)
        if not cuda:
            torch.set_num_threads(os.cpu_count() or 1)
        rows_all = rng.permutation(n)
        warm = np.sort(rows_all[:4096])  # thread pools and allocator warm before anything is timed
        train_proxy(pool, truth[warm], c, ProxyConfig(device=args.device, epochs=2), rows=warm)
        plain_proxy(pool, warm, truth[warm], c, ProxyConfig(device=args.device, epochs=2), device)
        results = []
        for m in labeled_sizes:
            rows = np.sort(rows_all[:m])
            labels = truth[rows]
            t0 = time.perf_counter()
            model = train_proxy(pool, labels, c, cfg, seed=0, rows=rows)
            if cuda:
                torch.cuda.synchronize()
            t_raal = time.perf_counter() - t0
            t_plain = None
            if cuda or m <= 20_000:  # on 2 CPU cores the 50,000-row baseline would add ~10 minutes
                t0 = time.perf_counter()
                plain_proxy(pool, rows, labels, c, cfg, device)
                t_plain = time.perf_counter() - t0
            t0 = time.perf_counter()
            scores = predict(model, pool, batch_size=16384)
            t_pred = time.perf_counter() - t0
            acc = float((scores["probs"].argmax(1) == truth).mean())
            results.append({"labeled": m, "steps": model.history.steps, "train_s": round(t_raal, 2),
                            "plain_train_s": None if t_plain is None else round(t_plain, 2),
                            "speed_ratio": None if t_plain is None else round(t_plain / t_raal, 3),
                            "score_pool_s": round(t_pred, 2), "round_s": round(t_raal + t_pred, 2),
                            "pool_accuracy": round(acc, 4)})
            print(f"proxy labeled={m}: {results[-1]}", flush=True)
    out["proxy"] = {"pool": n, "dim": d, "classes": c, "epochs": 50, "batch_size": 2048, "device": args.device,
                    "threads": torch.get_num_threads(), "runs": results}


# ---------------------------------------------------------------------------------------------------- 3. warm
def bench_warm(args, out: dict, jobs: int = 3) -> None:
    from raal.raylocal import init_local_ray

    cuda = args.device == "cuda"
    data = load_data(DataConfig(pool_size=128, test_size=200))
    batch = data.pool.take(np.arange(len(data.pool)))
    batch["label"] = np.asarray([data.truth[int(i)] for i in batch["id"]], dtype=np.int64)
    transform = ImageTransform(size=64 if cuda else 32)
    tc = TrainConfig(method="ft", lp_epochs=0, epochs=2, min_steps=0, batch_size=64, eval_batch_size=256,
                     augment=True, num_workers=1, use_gpu=cuda)
    init_local_ray(quiet=True)
    runs = {}
    with tempfile.TemporaryDirectory(prefix="raal-bench-warm-") as d:
        for warm in ("auto", "off"):
            rows = []
            for i in range(jobs):
                t0 = time.perf_counter()
                res = finetune(batch, data.test, num_classes=data.pool.num_classes, model_cfg=ModelConfig(),
                               train_cfg=dataclasses.replace(tc, warm=warm), transform=transform, method="ft",
                               storage_path=d, name=f"{warm}{i}", seed=i)
                call = time.perf_counter() - t0
                rows.append({"job": i + 1, "path": res.path, "call_wall_s": round(call, 2),
                             "wall_s": round(res.wall_time, 2), "epochs_s": round(sum(res.epoch_times), 2),
                             "fixed_s": round(res.wall_time - sum(res.epoch_times), 2),
                             "accuracy": round(res.accuracy, 4), "load_avg": [round(x, 2) for x in os.getloadavg()]})
                print(f"warm={warm}: {rows[-1]}", flush=True)
            runs[res.path] = rows
    steady = {p: statistics.mean(r["fixed_s"] for r in rows[1:]) for p, rows in runs.items()}
    out["warm"] = {"images": len(batch["id"]), "test_images": len(data.test), "image_size": transform.size,
                   "epochs": tc.epochs, "batch_size": tc.batch_size, "device": args.device, "runs": runs,
                   "steady_fixed_s": {p: round(v, 2) for p, v in steady.items()},
                   "fixed_cost_ratio": round(steady["ray_train"] / max(steady["warm"], 1e-9), 1),
                   "bar_s": 3.0, "load_avg_at_end": [round(x, 2) for x in os.getloadavg()]}


# ---------------------------------------------------------------------------------------------------- report
def write_report(out: dict, path_md: Path) -> None:
    m = out["machine"]
    lines = [f"# Training benchmark ({'quick' if out['quick'] else 'full'}, {out['device']})", "",
             f"Machine: {m['cpus']} CPUs, {m.get('gpu', 'no GPU')}, torch {m['torch']}; load average at start "
             f"{m.get('load_avg_at_start')} (a shared, noisy box: read ratios, not absolute times).", ""]
    if "ft" in out:
        f = out["ft"]
        lines += ["## FT: Ray Train (1 worker) vs a plain torch loop", "",
                  f"MobileNetV2 (ImageNet weights), {f['images']} Animal-MNIST images at {f['image_size']} px, "
                  f"batch {f['batch_size']}, augmentation on, {f['epochs']} epochs, {f['threads']} thread(s) in "
                  f"both (the worker got {f['ray_cpus_per_worker']} CPU).", "",
                  "| | plain loop | Ray Train | ratio (plain / Ray, target ≥ 0.8) |", "|---|---|---|---|",
                  f"| steady epoch, training only (s) | {f['plain_steady_s']} | {f['ray_steady_train_s']} | "
                  f"**{f['speed_ratio_train']}** |",
                  f"| steady epoch incl. checkpoint + report (s) | {f['plain_steady_s']} | "
                  f"{f['ray_steady_epoch_with_checkpoint_s']} | **{f['speed_ratio_with_checkpoint']}** |",
                  f"| fixed cost per fit (s) | 0 | {f['ray_fixed_cost_s']} | |", "",
                  f"Per epoch (s): plain {f['plain_epoch_s']}; Ray {f['ray_epoch_with_checkpoint_s']}. Whole fit "
                  f"{f['ray_fit_wall_s']} s (test accuracy {f['ray_test_accuracy']}).", ""]
    if "warm" in out:
        w = out["warm"]
        lines += ["## Fixed cost per fine-tune: warm training actor vs Ray Train", "",
                  f"Three FT jobs back to back per path in one run (MobileNetV2, {w['images']} images at "
                  f"{w['image_size']} px, {w['epochs']} epochs of batch {w['batch_size']}, {w['test_images']} test "
                  "images scored in the job). Fixed cost = the job's wall time minus its epoch times (start-up, "
                  "data, test scoring, the last checkpoint's read-back).", "",
                  "| path | job | wall (s) | epochs (s) | fixed cost (s) | test accuracy | load average |",
                  "|---|---|---|---|---|---|---|"]
        for path, rows in w["runs"].items():
            lines += [f"| {path} | {r['job']} | {r['wall_s']} | {r['epochs_s']} | {r['fixed_s']} | {r['accuracy']} | "
                      f"{r['load_avg']} |" for r in rows]
        lines += ["", f"Steady fixed cost (mean of jobs 2-3): warm **{w['steady_fixed_s']['warm']} s** (bar ≤ "
                  f"{w['bar_s']} s), Ray Train {w['steady_fixed_s']['ray_train']} s: **{w['fixed_cost_ratio']}×** "
                  f"less. Load average at the end {w['load_avg_at_end']}.", ""]
    if "proxy" in out:
        p = out["proxy"]
        lines += [f"## Proxy: {p['pool']:,} × {p['dim']} features (memmap), {p['classes']} classes, "
                  f"{p['epochs']} epochs, batch {p['batch_size']}, {p['device']}, {p['threads']} threads", "",
                  "| labeled rows | steps | train_proxy (s) | plain DataLoader loop (s) | ratio (plain / raal) | "
                  "score whole pool (s) | round = train + score (s) |", "|---|---|---|---|---|---|---|"]
        for r in p["runs"]:
            plain = "not run" if r["plain_train_s"] is None else r["plain_train_s"]
            ratio = "–" if r["speed_ratio"] is None else f"**{r['speed_ratio']}**"
            lines.append(f"| {r['labeled']:,} | {r['steps']} | {r['train_s']} | {plain} | {ratio} | "
                         f"{r['score_pool_s']} | {r['round_s']} |")
        lines += ["", "The plain loop copies the whole pool into RAM first; at 50,000 labeled rows it is not run on "
                  "CPU (it would add ~6 minutes). Pool accuracy is on synthetic class-centre + noise features.", ""]
    path_md.write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--only", choices=("ft", "proxy", "warm"), default=None)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--render", metavar="JSON", help="only re-write the .md from an earlier .json")
    args = ap.parse_args()
    if args.render:
        src = Path(args.render)
        write_report(json.loads(src.read_text()), src.with_suffix(".md"))
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    out = {"quick": args.quick, "device": args.device, "machine": machine()}
    if args.only in (None, "ft"):
        bench_ft(args, out)
        print(json.dumps(out["ft"], indent=1), flush=True)
    if args.only in (None, "proxy"):
        bench_proxy(args, out)
    if args.only in (None, "warm"):
        bench_warm(args, out)
    stem = "train" if args.device == "cpu" else "train-cuda"
    if args.only == "warm":
        stem += ".warm"
    if args.quick:
        stem += "-quick"
    outdir = Path(args.out)
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / f"{stem}.json").write_text(json.dumps(out, indent=1))
    write_report(out, outdir / f"{stem}.md")
    print(f"wrote {outdir / stem}.md/.json")


if __name__ == "__main__":
    main()
