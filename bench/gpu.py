"""The GPU run: what raal's device paths cost on one GPU, each against a plain baseline in the same run.

    bash bench/gpu.sh                         # on a GPU machine, <= 8 minutes -> bench/results/gpu.{json,md}
    bash bench/gpu.sh --tiny --out DIR/gpu    # CPU, tiny sizes, ~30 s (tests/test_gpu_script.py), so it does not rot

Sections (each timed and fenced: a failure is recorded in the results and the next section runs):
1. embed: images/s of raal's embedding pass (CUDA actors, bf16 autocast; the run's first pass, which starts the warm
   actors, and a later one) against a plain torch loop on the same device, Animal-MNIST at 64 and 224 px
   (bench/embed.py's two functions).
2. finetune: optimizer steps/s of MobileNetV2 fine-tuning, a plain loop and (full run) raal's Ray Train path with
   use_gpu (bench/train.py's `bench_ft`); tiny: the plain loop only (tests/train/test_train.py covers the Ray path).
3. search: a 1,280,000 x 2048 float32 pool generated on the device (class structure as bench/strategies.py),
   1,000 labeled: faiss-gpu k=1 search of the pool against the labeled set (coreset's start, `raal.index`) and
   against 10,000 queries, then k-center picks on the device (torch: min-distance update + argmax per pick), then
   ActiveFT's reference loss with autograd and torch's Adam, minibatches of 100,000 as raal, B = 10,000 centroids,
   and raal's `map_to_items`. Without faiss-gpu the searches are torch matmuls on the GPU (said in the results).
   Checks at a small size on the CPU: the first k-center picks equal raal's `kcenter_greedy`, ActiveFT's full-batch
   losses equal raal's `optimise_centroids`.
4. logme: LogME-PED at N = 100,000, D = 2048, C = 1,000: raal's `logme_ped` on the CPU, and the same call with its
   two N-sized passes (class sums + Gram matrix, class scatter) in float64 on the GPU; the scores must agree.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import torch  # noqa: E402

FULL = dict(embed=[(64, 8000), (224, 4000)], ft_images=800, search_n=1_280_000, search_d=2048, search_c=1000,
            labeled=1000, queries=10_000, picks=2000, aft_b=10_000, aft_batch=100_000, aft_iters=300,
            check_n=20_000, check_d=128, check_picks=50, check_b=64, check_iters=30,
            logme=(100_000, 2048, 1000))
TINY = dict(embed=[(32, 48)], ft_images=64, search_n=3000, search_d=32, search_c=10, labeled=20, queries=50,
            picks=20, aft_b=30, aft_batch=1000, aft_iters=5, check_n=500, check_d=16, check_picks=20, check_b=10,
            check_iters=10, logme=(2000, 64, 10))


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def _timer(out: dict, key: str, dev: torch.device):
    _sync(dev)
    t = time.perf_counter()
    yield
    _sync(dev)
    out[key] = round(time.perf_counter() - t, 4)


# ------------------------------------------------------------------------------------------------- 1. embedding
def section_embed(cfg: dict, dev: torch.device, tiny: bool) -> dict:
    from bench.embed import _head, plain_loop, ray_pass
    from raal.config import DataConfig
    from raal.data import ImageTransform, load_data
    from raal.features import _pool as embed_pool
    from raal.raylocal import init_local_ray

    init_local_ray(num_cpus=2 if tiny else None, quiet=True)
    n_max = max(n for _, n in cfg["embed"])
    data = load_data(DataConfig(pool_size=min(n_max, 9000), test_size=100))
    batch, autocast = (256, "bf16") if dev.type == "cuda" else (16, "none")
    threads = max(1, (os.cpu_count() or 2) - 1) if dev.type == "cuda" else 1
    rows = []
    for size, n in cfg["embed"]:
        images, transform = _head(data.pool, n), ImageTransform(size=size)
        plain = plain_loop(images, transform, dev.type, threads, batch, autocast)
        embed_pool.release()
        first = ray_pass(images, transform, dev.type, 1, batch, max(batch, 256), autocast, warm=True)
        ray_r = ray_pass(images, transform, dev.type, 1, batch, max(batch, 256), autocast, warm=True)
        rows.append({"size": size, "images": len(images), "plain_img_s": round(plain["img_s"], 1),
                     "ray_first_img_s": round(first["img_s"], 1), "ray_first_startup_s": round(first["startup_s"], 2),
                     "ray_img_s": round(ray_r["img_s"], 1), "ray_img_s_steady": ray_r["img_s_steady"],
                     "ray_startup_s": round(ray_r["startup_s"], 2), "ratio": round(ray_r["img_s"] / plain["img_s"], 3),
                     "plan": ray_r["plan"], "autocast": autocast})
    embed_pool.release()  # the fine-tune section needs the GPU
    return {"rows": rows}


# ------------------------------------------------------------------------------------------------- 2. fine-tune
def section_finetune(cfg: dict, dev: torch.device, tiny: bool) -> dict:
    from bench.train import bench_ft, plain_ft
    from raal.config import DataConfig, TrainConfig
    from raal.data import ImageTransform, load_data

    if not tiny:  # raal's Ray Train path with use_gpu, and the plain loop, as bench/train.py --device cuda runs them
        out: dict = {}
        bench_ft(argparse.Namespace(device=dev.type, quick=False), out)
        ft = out["ft"]
        steps = math.ceil(ft["images"] / ft["batch_size"])
        ft["plain_steps_per_s"] = round(steps / ft["plain_steady_s"], 2)
        ft["ray_steps_per_s"] = round(steps / ft["ray_steady_train_s"], 2)
        return ft
    data = load_data(DataConfig(pool_size=cfg["ft_images"], test_size=20))
    batch = data.pool.take(np.arange(len(data.pool)))
    x = torch.from_numpy(ImageTransform(size=32)({"image": batch["image"]}))
    y = torch.as_tensor([data.truth[int(i)] for i in batch["id"]], dtype=torch.int64)
    tc = TrainConfig(method="ft", lp_epochs=0, epochs=2, batch_size=16, augment=True)
    times = plain_ft(x, y, 2, tc, dev, 1)
    steps = math.ceil(len(y) / tc.batch_size)
    return {"images": len(y), "image_size": 32, "batch_size": tc.batch_size, "plain_epoch_s": times,
            "plain_steps_per_s": round(steps / times[-1], 2), "ray": "not run in --tiny (tests/train/test_train.py)"}


# ------------------------------------------------------------------------------------------------- 3. search
def _pool_on_device(n: int, d: int, c: int, dev: torch.device, seed: int = 0) -> torch.Tensor:
    """n x d float32 with class structure, generated on the device in blocks (no host copy)."""
    g = torch.Generator(device=dev).manual_seed(seed)
    centres = torch.randn(c, d, generator=g, device=dev)
    x = torch.empty(n, d, device=dev)
    for s in range(0, n, 65536):
        e = min(n, s + 65536)
        y = torch.randint(0, c, (e - s,), generator=g, device=dev)
        x[s:e] = centres[y] + 0.7 * torch.randn(e - s, d, generator=g, device=dev)
    return x


def kcenter_torch(x: torch.Tensor, labeled: torch.Tensor, picks: int, block: int = 1 << 18) -> list[int]:
    """Farthest-first traversal from the labeled centres: one min-distance update and one argmax per pick."""
    sqn = (x * x).sum(1)
    mind = torch.full((len(x),), float("inf"), device=x.device)
    for s in range(0, len(x), block):  # nearest labeled centre, in blocks of rows
        d = sqn[s:s + block, None] - 2 * x[s:s + block] @ x[labeled].T + sqn[labeled][None, :]
        mind[s:s + block] = d.clamp_min_(0).min(1).values
    mind[labeled] = -float("inf")
    out = []
    for _ in range(picks):
        j = int(torch.argmax(mind))
        out.append(j)
        mind = torch.minimum(mind, (sqn - 2 * (x @ x[j]) + sqn[j]).clamp_min_(0))
        mind[j] = -float("inf")
    return out


def activeft_torch(x: torch.Tensor, init: torch.Tensor, iters: int, batch: int, *, tau: float = 0.07,
                   seed: int = 0) -> tuple[list[float], torch.Tensor]:
    """ActiveFT's reference loss (raal.strategies.activeft's docstring) with autograd and torch's Adam."""
    c = torch.nn.functional.normalize(x[init], dim=1).clone().requires_grad_(True)
    opt = torch.optim.Adam([c], lr=1e-3)
    g = torch.Generator(device=x.device).manual_seed(seed)
    inv = 1.0 / x.norm(dim=1).clamp_min(1e-12)
    losses = []
    for _ in range(iters):
        rows = None if len(x) <= batch else torch.randperm(len(x), generator=g, device=x.device)[:batch]
        f = x if rows is None else x[rows]
        s = inv if rows is None else inv[rows]
        theta = torch.nn.functional.normalize(c, dim=1)
        sim, k = ((f @ theta.T) * s[:, None]).max(dim=1)
        cent = torch.exp(theta.detach() @ theta.T / tau).sum(dim=0)
        loss = (torch.nn.functional.softplus(torch.log(cent[k]) - sim / tau)).mean()  # = -log(e^s / (e^s + S))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses, torch.nn.functional.normalize(c.detach(), dim=1)


def _faiss_gpu() -> bool:
    import faiss

    return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


def section_search(cfg: dict, dev: torch.device, tiny: bool) -> dict:
    from raal.index import kcenter_greedy, knn, min_sq_dist_to
    from raal.strategies.activeft import ActiveFTConfig, map_to_items, optimise_centroids

    out: dict = {"n": cfg["search_n"], "d": cfg["search_d"], "faiss_gpu": _faiss_gpu()}
    # correctness first, small and on the CPU: the device loops against raal's
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((cfg["check_n"], cfg["check_d"])).astype(np.float32)
    lab = np.zeros(len(xs), dtype=bool)
    lab[rng.choice(len(xs), 10, replace=False)] = True
    ref = kcenter_greedy(xs, cfg["check_picks"], labeled_mask=lab)
    got = kcenter_torch(torch.from_numpy(xs).to(dev), torch.from_numpy(np.flatnonzero(lab)).to(dev),
                        cfg["check_picks"])
    out["kcenter_same_picks"] = int(sum(a == b for a, b in zip(ref.tolist(), got)))
    out["kcenter_compared"] = cfg["check_picks"]
    init = rng.choice(len(xs), cfg["check_b"], replace=False)
    _, l_raal = optimise_centroids(xs, init, ActiveFTConfig(iterations=cfg["check_iters"]), np.random.default_rng(0))
    l_dev, _ = activeft_torch(torch.from_numpy(xs).to(dev), torch.from_numpy(init).to(dev), cfg["check_iters"],
                              10 ** 9)
    out["activeft_max_loss_rel_diff"] = float(np.max(np.abs(np.array(l_dev) - l_raal) / np.abs(l_raal)))

    with _timer(out, "generate_s", dev):
        x = _pool_on_device(cfg["search_n"], cfg["search_d"], cfg["search_c"], dev)
    labeled = torch.from_numpy(np.random.default_rng(1).choice(len(x), cfg["labeled"], replace=False)).to(dev)
    xh = x.cpu().numpy() if out["faiss_gpu"] or dev.type == "cpu" else None
    use = out["faiss_gpu"]
    with _timer(out, "nearest_labeled_s", dev):  # coreset's start: every row's distance to the labeled set
        if xh is not None:
            lab_np = labeled.cpu().numpy()
            min_sq_dist_to(xh, xh, centre_rows=lab_np, use_gpu=use)
        else:
            kcenter_torch(x, labeled, 0)
    q = torch.from_numpy(np.random.default_rng(2).choice(len(x), cfg["queries"], replace=False)).to(dev)
    with _timer(out, "knn10_queries_s", dev):
        if xh is not None:
            knn(xh[q.cpu().numpy()], xh, 10, metric="ip", use_gpu=use)
        else:
            for s in range(0, len(q), 256):  # 256 x N scores at a time
                torch.topk(x[q[s:s + 256]] @ x.T, 10, dim=1)
    out["search_backend"] = "faiss-gpu" if use else ("faiss-cpu" if dev.type == "cpu" else "torch matmul (no faiss-gpu)")
    with _timer(out, "kcenter_s", dev):
        kcenter_torch(x, labeled, cfg["picks"])
    out["kcenter_picks"] = cfg["picks"]
    out["kcenter_ms_per_pick"] = round(1000 * (out["kcenter_s"] - out["nearest_labeled_s"]) / cfg["picks"], 3)
    init = torch.from_numpy(np.random.default_rng(3).choice(len(x), cfg["aft_b"], replace=False)).to(dev)
    with _timer(out, "activeft_steps_s", dev):
        losses, theta = activeft_torch(x, init, cfg["aft_iters"], cfg["aft_batch"])
    out.update(activeft_b=cfg["aft_b"], activeft_iters=cfg["aft_iters"], activeft_batch=cfg["aft_batch"],
               activeft_loss=[round(losses[0], 5), round(losses[-1], 5)])
    if xh is not None:
        with _timer(out, "activeft_map_s", dev):
            map_to_items(xh, theta.cpu().numpy(), np.zeros(len(xh), dtype=bool))
    return out


# ------------------------------------------------------------------------------------------------- 4. LogME-PED
@contextlib.contextmanager
def _passes_on(dev: torch.device):
    """raal.transfer's two N-sized passes in float64 on `dev` (torch); everything class-level stays raal's.

    Patched where they are looked up: transfer_logme (class sums) and transfer_ped (class sums, scatter).
    """
    import raal.transfer._logme as tl
    import raal.transfer._ped as tp

    def class_sums(X, codes, n_classes, gram):
        xt = torch.as_tensor(X, device=dev).double()
        ct = torch.as_tensor(codes, device=dev)
        T = torch.zeros(n_classes, X.shape[1], dtype=torch.float64, device=dev).index_add_(0, ct, xt)
        return T.cpu().numpy(), ((xt.T @ xt).cpu().numpy() if gram else None)

    def class_scatter(X, codes, means):
        xt = torch.as_tensor(X, device=dev).double()
        ct = torch.as_tensor(codes, device=dev)
        r = xt - torch.as_tensor(means, device=dev)[ct]
        return torch.zeros_like(torch.as_tensor(means, device=dev)).index_add_(0, ct, r * r).cpu().numpy()

    old = tl._class_sums, tp._class_sums, tp._class_scatter
    tl._class_sums, tp._class_sums, tp._class_scatter = class_sums, class_sums, class_scatter
    try:
        yield
    finally:
        tl._class_sums, tp._class_sums, tp._class_scatter = old


def section_logme(cfg: dict, dev: torch.device, tiny: bool) -> dict:
    from raal.transfer import logme_ped

    n, d, c = cfg["logme"]
    rng = np.random.default_rng(0)
    y = rng.integers(0, c, n)
    x = (rng.standard_normal((c, d), dtype=np.float32) * np.float32(0.5))[y]
    x += rng.standard_normal((n, d), dtype=np.float32)
    out: dict = {"n": n, "d": d, "c": c, "cpu_threads": torch.get_num_threads()}
    t = time.perf_counter()
    s_cpu, k_cpu = logme_ped(x, y)
    out["cpu_s"] = round(time.perf_counter() - t, 3)
    with _passes_on(dev):
        logme_ped(x[:200], y[:200])  # warm-up (CUDA context, kernels)
        with _timer(out, "device_s", dev):
            s_dev, k_dev = logme_ped(x, y)
    out.update(score_cpu=s_cpu, score_device=s_dev, ped_steps=[k_cpu, k_dev], speedup=round(out["cpu_s"] /
               out["device_s"], 2), score_rel_diff=abs(s_dev - s_cpu) / max(abs(s_cpu), 1e-12))
    return out


# ------------------------------------------------------------------------------------------------- driver
SECTIONS = {"embed": section_embed, "finetune": section_finetune, "search": section_search, "logme": section_logme}


def render(res: dict) -> str:
    m = res["machine"]
    lines = [f"# GPU run ({'tiny, CPU' if res['tiny'] else m.get('gpu', 'no GPU')})", "",
             f"device {res['device']}, {m['cpus']} CPUs, torch {m['torch']}, total {res['total_s']:.0f} s; "
             f"faiss: {res.get('faiss_note', '')}", ""]
    for name, r in res["sections"].items():
        lines.append(f"## {name} ({r.get('section_s', 0):.1f} s)")
        lines.append("")
        if "error" in r:
            lines += ["FAILED: " + r["error"].splitlines()[-1], ""]
            continue
        if name == "embed":
            lines += ["| px | images | plain img/s | Ray first pass img/s (start-up s) | Ray warm pass img/s | "
                      "warm / plain |", "|---|---|---|---|---|---|"]
            lines += [f"| {w['size']} | {w['images']} | {w['plain_img_s']} | {w['ray_first_img_s']} "
                      f"({w['ray_first_startup_s']}) | {w['ray_img_s']} | {w['ratio']} |" for w in r["rows"]]
        else:
            lines += [f"- {k}: {v}" for k, v in r.items() if k not in ("section_s",) and not isinstance(v, dict)]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", default=os.environ.get("RAAL_GPU_TINY") == "1",
                    help="CPU, tiny sizes (also RAAL_GPU_TINY=1)")
    ap.add_argument("--sections", default=",".join(SECTIONS))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu"), help="path stem of .json/.md")
    args = ap.parse_args()
    if not args.tiny and not torch.cuda.is_available():
        raise SystemExit("bench/gpu.py: torch sees no CUDA device (use --tiny for the CPU smoke run)")
    dev = torch.device("cpu" if args.tiny else "cuda")
    cfg = TINY if args.tiny else FULL
    t0 = time.perf_counter()
    res = {"tiny": args.tiny, "device": dev.type, "faiss_note": os.environ.get("RAAL_FAISS_NOTE", ""),
           "machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
                       "gpu": torch.cuda.get_device_name(0) if dev.type == "cuda" else None,
                       "load_avg": list(os.getloadavg())}, "sections": {}}
    stem = Path(args.out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    for name in args.sections.split(","):
        t = time.perf_counter()
        try:
            r = SECTIONS[name](cfg, dev, args.tiny)
        except Exception:  # recorded, and the next section still runs
            r = {"error": traceback.format_exc()[-2000:]}
        r["section_s"] = round(time.perf_counter() - t, 2)
        print(f"[gpu] {name}: {r['section_s']} s{' FAILED' if 'error' in r else ''}", flush=True)
        res["sections"][name] = r
        res["total_s"] = time.perf_counter() - t0
        for suffix, text in ((".json", json.dumps(res, indent=1, default=float)), (".md", render(res))):
            tmp = stem.with_name(stem.name + suffix + ".tmp")
            tmp.write_text(text)
            os.replace(tmp, stem.with_name(stem.name + suffix))
    failed = [k for k, v in res["sections"].items() if "error" in v]
    if failed:
        print(f"[gpu] failed sections: {failed}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
