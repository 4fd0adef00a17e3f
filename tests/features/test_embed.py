"""The Ray Data embedding pass (local Ray, CPU, tiny images).

Features must equal a plain single-process forward pass of the same model; ids keep the ImageSet's order; a pass
killed with SIGKILL resumes writing each missing shard once; a corrupt shard is recomputed; a refresh writes v1
beside v0; `file://` stores work; the pass also runs inside an actor holding num_cpus=0. v0 goes through the Ray
Data path (what parquet-backed sets use); the other passes through the warm actors (raal/features/_pool.py), which later
passes reuse, rebuilding the backbone for new weights.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from raal.config import DataConfig, EmbedConfig, ModelConfig
from raal.data import ImageTransform, load_data
from raal.features import FeatureStore, embed_images, plan_actors
from raal.models.backbones import build_backbone
from raal.store import RunStore

pytestmark = pytest.mark.timeout(150)

REPO = Path(__file__).resolve().parents[2]
SIZE = 32
POOL = 96
CFG = EmbedConfig(batch_size=16, shard_rows=16, warm=False)  # 6 shards, actors from the free CPUs (2 here), Ray Data
ONE = EmbedConfig(batch_size=16, shard_rows=16, num_actors=1)  # later passes: one actor starts faster
MODEL = ModelConfig()


@pytest.fixture(scope="module")
def pool():
    return load_data(DataConfig(pool_size=POOL, test_size=50)).pool


@pytest.fixture(scope="module")
def transform():
    return ImageTransform(size=SIZE)


def plain_forward(images, transform, state_dict=None):
    """The reference: one process, one model, no Ray."""
    model = build_backbone(MODEL, state_dict)
    x = torch.from_numpy(transform({"image": images.columns["image"]}))
    with torch.no_grad():
        f = model.features(x)
        return f.numpy(), model.head(f).numpy()


@pytest.fixture(scope="module")
def reference(pool, transform):
    return plain_forward(pool, transform)


@pytest.fixture(scope="module")
def v0(ray_local, pool, transform, tmp_path_factory):
    """v0 of the pool through a `file://` URI store."""
    root = tmp_path_factory.mktemp("embed") / "run"
    fs = FeatureStore(RunStore(f"file://{root}"))
    fset = embed_images(pool, model_cfg=MODEL, transform=transform, store=fs, version=0, split="pool",
                        embed_cfg=CFG, progress=False)
    return root, fs, fset


@pytest.mark.ray
def test_plan_actors_fits_two_cpus(ray_local):
    free = ray_local.available_resources().get("CPU", 0)
    p = plan_actors("cpu", 2)
    assert p.device == "cpu" and p.actors == 2 and p.num_gpus == 0
    assert p.actors * p.num_cpus <= max(0.0, free - 1.0) + 1e-9  # one CPU stays free for upstream tasks
    assert plan_actors("auto", 0).device == "cpu"  # no GPU here
    with pytest.raises(ValueError, match="no GPU"):
        plan_actors("cuda", 0)
    with pytest.raises(ValueError, match="embed.device"):
        plan_actors("tpu", 0)


def test_cpu_share_leaves_one_cpu_for_upstream_tasks():
    from raal.features._embed import _cpu_share

    assert _cpu_share(2.0, 2) == 0.5 and _cpu_share(2.0, 1) == 1.0  # 2 CPUs: 2×0.5 or 1×1, one CPU spare
    assert _cpu_share(1.0, 1) == 0.0 and _cpu_share(0.0, 3) == 0.0  # nothing spare: reserve none, never wait
    assert _cpu_share(16.0, 16) == 0.93  # 16 × 0.93 = 14.9 <= 15


@pytest.mark.ray
def test_features_equal_plain_forward_ids_in_order(v0, pool, reference):
    root, fs, fset = v0
    feats, logits = reference
    np.testing.assert_array_equal(fset.ids, pool.ids)
    assert fset.features.shape == (POOL, 1280) and fset.logits.shape == (POOL, 1000)
    np.testing.assert_allclose(np.asarray(fset.features), feats, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(fset.logits), logits, atol=1e-5, rtol=0)
    m = fset.manifest
    assert m["complete"] and m["version"] == 0 and m["split"] == "pool" and m["rows"] == POOL
    assert m["weights_id"].startswith("imagenet-offline:") and m["transform"]["size"] == SIZE
    assert m["num_shards"] == 6 and len(m["shards"]) == 6 and m["last_pass"]["computed_shards"] == list(range(6))
    assert (root / "features/v0/pool/features.f32").stat().st_size == POOL * 1280 * 4
    # a second call finds the set complete and computes nothing (the manifest is not even rewritten)
    stamp = (root / "features/v0/pool/manifest.json").stat().st_mtime_ns
    again = embed_images(pool, model_cfg=MODEL, transform=ImageTransform(size=SIZE), store=fs, version=0,
                         split="pool", embed_cfg=CFG, progress=False)
    assert again.manifest["last_pass"]["computed_shards"] == list(range(6))
    assert (root / "features/v0/pool/manifest.json").stat().st_mtime_ns == stamp


@pytest.mark.ray
def test_refresh_inside_a_zero_cpu_actor_writes_v1_beside_v0(v0, pool, transform, reference, tmp_path):
    """An ASVP refresh as the driver actor (num_cpus=0) runs it: a fine-tuned state dict, version 1."""
    import ray

    root, fs, fset0 = v0
    path = tmp_path / "tuned.pt"
    sd = _tuned_state_dict(path)

    class Driver:  # defined locally so that Ray ships it by value to the worker
        def refresh(self, images, transform, uri, state_path):
            fset = embed_images(images, model_cfg=ModelConfig(), transform=transform,
                                store=FeatureStore(RunStore(uri)), version=1, split="pool",
                                embed_cfg=EmbedConfig(batch_size=16, shard_rows=16, num_actors=1),
                                state_dict_path=state_path, progress=False)
            return fset.manifest["last_pass"]["plan"]

    actor = ray.remote(num_cpus=0)(Driver).remote()
    try:
        plan = ray.get(actor.refresh.remote(pool, transform, f"file://{root}", str(path)), timeout=120)
    finally:
        ray.kill(actor)
    assert plan["actors"] == 1 and plan["device"] == "cpu"
    feats1, _ = plain_forward(pool, transform, sd)
    assert not np.allclose(feats1, reference[0], atol=1e-3)
    assert fs.versions() == [0, 1] and fs.latest("pool") == 1
    fset1 = fs.open(1, "pool")
    assert fset1.manifest["weights_id"].startswith("state_dict:") and fset1.version == 1
    np.testing.assert_array_equal(fset1.ids, pool.ids)
    np.testing.assert_allclose(np.asarray(fset1.features), feats1, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(fs.open(0, "pool").features), reference[0], atol=1e-5, rtol=0)


KILLED_PASS = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {repo!r})  # Ray hands the driver's sys.path to this job's workers
    import ray
    ray.init(address=sys.argv[1], log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    from raal.config import DataConfig, EmbedConfig, ModelConfig
    from raal.data import ImageTransform, load_data
    from raal.features import embed_images
    from raal.features import FeatureStore
    from raal.store import RunStore
    pool = load_data(DataConfig(pool_size={pool}, test_size=50)).pool
    embed_images(pool, model_cfg=ModelConfig(), transform=ImageTransform(size={size}),
                 store=FeatureStore(RunStore(sys.argv[2])), version=0, split="pool",
                 embed_cfg=EmbedConfig(batch_size=16, shard_rows=16, num_actors=1), progress=False,
                 on_shard=lambda k: time.sleep(1.0))  # slow commits, so that the kill lands mid-pass
    print("FINISHED")
""")


@pytest.mark.ray
def test_resume_after_sigkill_writes_each_shard_once_and_redoes_a_corrupt_one(ray_local, pool, transform,
                                                                              reference, tmp_path):
    script = tmp_path / "killed_pass.py"
    script.write_text(KILLED_PASS.format(pool=POOL, size=SIZE, repo=str(REPO)))
    run = tmp_path / "run"
    shards = run / "features/v0/pool/shards"
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_AUTH_MODE="disabled")
    gcs = ray_local.get_runtime_context().gcs_address
    proc = subprocess.Popen([sys.executable, str(script), gcs, str(run)], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 100
        while time.time() < deadline and proc.poll() is None:
            if len(list(shards.glob("*.json"))) >= 3:
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    done = sorted(int(p.name[:6]) for p in shards.glob("*.json"))
    assert 3 <= len(done) < 6 and not (run / "features/v0/pool/manifest.json").exists()
    # damage one committed shard: its checksum must catch it and the resumed pass must recompute it
    bad = done[1]
    victim = shards / f"{bad:06d}.features.f32"
    raw = bytearray(victim.read_bytes())
    raw[1000] ^= 0x55
    victim.write_bytes(bytes(raw))
    kept = [k for k in done if k != bad]
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in shards.iterdir()
              if p.name[:6].isdigit() and int(p.name[:6]) in kept}
    deadline = time.time() + 30  # let Ray reclaim the killed driver's actors
    while ray_local.available_resources().get("CPU", 0) < 2 and time.time() < deadline:
        time.sleep(0.2)
    fset = embed_images(pool, model_cfg=MODEL, transform=transform, store=FeatureStore(RunStore(run)), version=0,
                        split="pool", embed_cfg=ONE, progress=False)
    assert fset.manifest["last_pass"]["computed_shards"] == sorted(set(range(6)) - set(kept))
    after = {name: (shards / name).stat() for name in before}
    assert {n: (s.st_ino, s.st_mtime_ns) for n, s in after.items()} == before  # committed shards written once
    np.testing.assert_array_equal(fset.ids, pool.ids)
    np.testing.assert_allclose(np.asarray(fset.features), reference[0], atol=1e-5, rtol=0)


def _tuned_state_dict(path):
    """A "fine-tuned" MobileNetV2: its last conv block scaled, saved as a torchvision state dict."""
    tuned = build_backbone(MODEL)
    with torch.no_grad():
        for name, p in tuned.named_parameters():
            if name.startswith("trunk.features.18"):
                p.mul_(1.5)
    sd = {k.replace("trunk.", "", 1).replace("head.", "classifier.1.", 1): v for k, v in tuned.state_dict().items()}
    torch.save(sd, path)
    return sd


@pytest.mark.ray
def test_warm_actors_persist_across_passes_and_rebuild_for_new_weights(ray_local, pool, transform, reference,
                                                                       tmp_path):
    from raal.features import _pool as embed_pool

    embed_pool.release()
    fs = FeatureStore(RunStore(tmp_path / "run"))
    a = embed_images(pool, model_cfg=MODEL, transform=transform, store=fs, version=0, split="pool", embed_cfg=ONE,
                     progress=False)
    warm = embed_pool._POOL
    assert a.manifest["last_pass"]["warm"] and warm is not None and len(warm.actors) == 1
    np.testing.assert_allclose(np.asarray(a.features), reference[0], atol=1e-5, rtol=0)
    sd = _tuned_state_dict(tmp_path / "tuned.pt")
    b = embed_images(pool, model_cfg=MODEL, transform=transform, store=fs, version=1, split="pool", embed_cfg=ONE,
                     state_dict_path=str(tmp_path / "tuned.pt"), progress=False)
    assert embed_pool._POOL is warm  # the same actors: no start-up
    np.testing.assert_allclose(np.asarray(b.features), plain_forward(pool, transform, sd)[0], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(b.ids, pool.ids)
    embed_pool.release(gpu_only=True)  # CPU actors hold no GPU: kept
    assert embed_pool._POOL is warm
    embed_pool.release()
    assert embed_pool._POOL is None
