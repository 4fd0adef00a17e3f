"""FT / LP-FT / LoRA jobs on a private local Ray (2 CPUs), tiny real Animal-MNIST data, through both paths.

Ray Train fits (~25 s fixed cost each): a 2-worker FT that must beat chance and whose saved weights must reproduce
the job's test accuracy; a 1-worker job with `train.warm=off` that must equal the warm actor's to the bit; the
crash-and-resume LP-FT on both paths. The warm actor's jobs (T-LP1/T-LP2 on the job's own digests, LoRA on a tiny
ViT whose merged weights load as a plain model, a killed job of a URI store) start in well under a second after
the first.
"""
from __future__ import annotations

import json
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from raal.config import DataConfig, LoraConfig, ModelConfig, TrainConfig
from raal.data.sources import load_data
from raal.data.transforms import ImageTransform
from raal.models.backbones import build_backbone
from raal.models.lora import small_vit_backbone
from raal.train import (
    CRASH_ENV,
    check_train_images,
    finetune,
    finetune_lora,
    random_resized_crop_flip,
    rank_order,
    state_digest,
    worker_resources,
)
from raal.train._parts import _build_classifier

pytestmark = pytest.mark.timeout(240)

SIZE = 32
TRANSFORM = ImageTransform(size=SIZE)


@pytest.fixture(scope="module")
def data():
    return load_data(DataConfig(pool_size=300, test_size=200))


def labeled(data, n: int) -> dict:
    batch = data.pool.take(np.arange(n))
    batch["label"] = np.asarray([data.truth[int(i)] for i in batch["id"]], dtype=np.int64)
    return batch


@torch.no_grad()
def accuracy_of(trunk: nn.Module, head_state: dict, test) -> float:
    """Re-score the test split in this process with the saved weights."""
    head = nn.Linear(head_state["weight"].shape[1], head_state["weight"].shape[0])
    head.load_state_dict(head_state)
    trunk.eval()
    x = torch.from_numpy(TRANSFORM(test.take(np.arange(len(test)))))
    pred = head(trunk(x)).argmax(1).numpy()
    return float((pred == test.labels).mean())


# ------------------------------------------------------------------------------------------------ no Ray needed
def test_rank_order_partitions_one_global_permutation():
    rng = np.random.default_rng(0)
    for n, world in [(300, 2), (7, 3), (10, 1)]:
        parts = [rank_order(n, world, r, np.random.default_rng(5)) for r in range(world)]
        assert len({len(p) for p in parts}) == 1 and len(parts[0]) == -(-n // world)
        assert set(np.concatenate(parts)) == set(range(n))  # nothing dropped; padding repeats rows
    labels = np.r_[np.zeros(900, int), np.ones(100, int)]
    draw = np.concatenate([rank_order(1000, 1, 0, rng, labels) for _ in range(20)])
    share = (labels[draw] == 1).mean()
    assert 0.47 < share < 0.53  # class-balanced: the 10 % class is drawn half the time


def test_step_budget_sets_the_epochs_and_lbfgs_lp_is_one_pass():
    from raal.train._parts import _stages

    tc = TrainConfig(lp_epochs=2, epochs=3, min_steps=200)
    ft = _stages("ft", tc, None, steps_per_epoch=2)  # 100 epochs of 2 steps reach the 200-step budget
    assert [(s.name, s.first_epoch, s.epochs) for s in ft] == [("ft", 0, 100)]
    lpft = _stages("lpft", tc, None, steps_per_epoch=50)  # enough steps already: the configured epochs stay
    assert [(s.name, s.first_epoch, s.epochs) for s in lpft] == [("lp", 0, 1), ("ft", 1, 4)]
    legacy = _stages("lpft", TrainConfig(lp_epochs=2, epochs=3, min_steps=0, lp_solver="sgd"), None, 2)
    assert [(s.name, s.epochs) for s in legacy] == [("lp", 2), ("ft", 3)]
    assert [s.name for s in _stages("lpft", TrainConfig(epochs=0), None, 2)] == ["lp"]  # linear probing alone


def test_augmentation_identity_flip_and_shape():
    x = torch.randn(6, 3, 16, 16)
    g = torch.Generator().manual_seed(0)
    same = random_resized_crop_flip(x, g, scale=(1, 1), ratio=(1, 1), flip=False)
    torch.testing.assert_close(same, x, atol=1e-5, rtol=0)
    flipped = random_resized_crop_flip(x, g, scale=(1, 1), ratio=(1, 1), flip=True)
    for i in range(6):
        assert min(float((flipped[i] - x[i]).abs().max()), float((flipped[i] - x[i].flip(-1)).abs().max())) < 1e-5
    a = random_resized_crop_flip(x, torch.Generator().manual_seed(3))
    b = random_resized_crop_flip(x, torch.Generator().manual_seed(3))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.allclose(a, x)


def test_bad_train_images_are_value_errors(data):
    good = labeled(data, 10)
    check_train_images(good, 10)
    with pytest.raises(ValueError, match="image column"):
        check_train_images({"id": good["id"], "label": good["label"]}, 10)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        check_train_images(good | {"label": good["label"] + 5}, 3)
    with pytest.raises(ValueError, match="unique"):
        check_train_images(good | {"id": np.zeros(10, np.int64)}, 10)
    with pytest.raises(ValueError, match="at least 2"):
        check_train_images({k: v[:1] for k, v in good.items()}, 10)


@pytest.mark.ray
def test_worker_cpus_fit_two_cpus(ray_local):
    free = ray_local.available_resources()["CPU"]
    workers, cpus = worker_resources(TrainConfig(num_workers=2, cpus_per_worker=1.0), 300)
    assert workers == 2 and workers * cpus <= 0.9 * free + 1e-9
    assert worker_resources(TrainConfig(num_workers=4), 5)[0] == 2  # each rank needs >= 2 rows (BatchNorm)
    assert worker_resources(TrainConfig(num_workers=1, cpus_per_worker=0.5), 300) == (1, 0.5)


# ------------------------------------------------------------------------------------------------ Ray Train fits
@pytest.mark.ray
def test_two_worker_ft_beats_chance_and_saved_weights_reproduce_it(ray_local, data, tmp_path):
    # the default recipe (AdamW, warm-up + cosine, frozen BatchNorm statistics) with a 40-step budget
    tc = TrainConfig(method="ft", lp_epochs=0, epochs=1, min_steps=40, batch_size=64, eval_batch_size=128,
                     augment=False, num_workers=2)
    res = finetune(labeled(data, 300), data.test, num_classes=10, model_cfg=ModelConfig(), train_cfg=tc,
                   transform=TRANSFORM, method="ft", storage_path=str(tmp_path), name="ft2")
    assert res.num_workers == 2 and res.epochs == 8  # 40 steps at 5 a epoch: the step budget sets the epochs
    assert res.steps == 8 * 5  # 150 rows per rank in batches of 32
    # This recipe replayed in one process (same data, model, optimiser, schedule, BN policy, 40 steps of 64) over
    # seeds 0-9 scored 0.765-0.800; 0.5 leaves a margin of 0.26 (chance is 0.1). The old recipe (SGD lr 0.01 on the
    # backbone, BatchNorm statistics re-estimated from 32-row batches) failed at 0.21 in a fresh clone.
    assert res.accuracy >= 0.5, res.accuracy
    assert res.lp_accuracy is None and res.restarts == 0
    assert len(res.epoch_times) == 8 and 0 < sum(res.epoch_times) < res.wall_time
    backbone = build_backbone(ModelConfig(), state_dict=torch.load(res.backbone_path, weights_only=True))
    assert abs(accuracy_of(backbone.trunk, res.head_state, data.test) - res.accuracy) <= 0.011
    saved = json.loads((tmp_path / "ft2" / "train_result.json").read_text())
    assert saved["steps"] == res.steps and saved["accuracy"] == res.accuracy
    with pytest.raises(ValueError, match="other inputs"):  # same folder, different job: refused before any work
        finetune(labeled(data, 300), data.test, num_classes=10, model_cfg=ModelConfig(), train_cfg=tc,
                 transform=TRANSFORM, method="ft", storage_path=str(tmp_path), name="ft2", seed=1)


@pytest.mark.ray
@pytest.mark.parametrize("warm", ["auto", "off"])
def test_lpft_worker_killed_mid_training_resumes_t_lp1_t_lp2(ray_local, data, tmp_path, monkeypatch, warm):
    marker = tmp_path / "crashed.txt"
    monkeypatch.setenv(CRASH_ENV, f"3:{marker}")  # rank 0 exits at the start of epoch index 3 (inside FT)
    tc = TrainConfig(method="lpft", lp_epochs=2, epochs=2, lp_lr=0.1, head_lr=0.01, backbone_lr=0.01,
                     optimizer="sgd", schedule="multistep", bn="train", lp_solver="sgd", min_steps=0,  # epoch-based
                     milestones=[1], batch_size=64, augment=True, num_workers=1, max_failures=2, warm=warm)
    res = finetune(labeled(data, 128), data.test, num_classes=10, model_cfg=ModelConfig(), train_cfg=tc,
                   transform=TRANSFORM, method="lpft", storage_path=str(tmp_path), name="lpft-crash", seed=3)
    assert marker.exists() and res.restarts == 1 and res.path == ("warm" if warm == "auto" else "ray_train")
    assert res.steps == 4 * 2 and res.epochs == 4  # 128 rows in batches of 64, the same as without the crash
    epochs = [e["epoch"] for e in res.log if "stage" in e]
    assert epochs == [1, 2, 3, 4]
    resume = [e for e in res.log if e.get("event") == "resume"]
    # normally the epoch-3 checkpoint; the controller may not have registered it before the worker died
    assert len(resume) == 1 and resume[0]["epoch"] in (2, 3) and resume[0]["step"] == 2 * resume[0]["epoch"]
    start = next(e for e in res.log if e.get("event") == "start")
    lp_end = next(e for e in res.log if e.get("epoch") == 2)
    ft_start = next(e for e in res.log if e.get("event") == "ft_start")
    assert lp_end["trunk_digest"] == start["trunk_digest"]  # T-LP1: weights and BatchNorm statistics untouched
    assert ft_start["head_digest"] == lp_end["head_digest"] != start["head_digest"]  # T-LP2
    assert res.lp_accuracy is not None and 0.0 <= res.lp_accuracy <= 1.0  # learning: the 2-worker FT test (margin
    # measured over 10 seeds); this test checks the resume mechanics only
    fresh = _build_classifier({"seed": 3, "backbone_factory": None, "init_state": None, "model_cfg": ModelConfig(),
                               "method": "lpft", "num_classes": 10})
    assert start["head_digest"] == state_digest(fresh.head.state_dict())  # the same fresh head for a seed
    assert start["trunk_digest"] == state_digest(fresh.trunk.state_dict())
    ft = [e for e in res.log if e.get("stage") == "ft"]
    assert [e["lr"] for e in ft] == [[0.01, 0.01], [0.001, 0.001]]  # milestone 1 of the FT stage; state restored


@pytest.mark.ray
def test_lora_job_merged_weights_load_as_a_plain_vit(ray_local, data, tmp_path):
    factory = partial(small_vit_backbone, seed=0)
    lc = LoraConfig(rank=16, alpha=16.0, lr=1e-3, epochs=3, batch_size=32)
    tc = TrainConfig(num_workers=1, augment=False, eval_batch_size=128)
    res = finetune_lora(labeled(data, 200), data.test, num_classes=10, model_cfg=ModelConfig(arch="vit_b_16"),
                        lora_cfg=lc, train_cfg=tc, transform=TRANSFORM, storage_path=str(tmp_path), name="peal",
                        backbone_factory=factory)
    assert res.method == "lora" and res.steps == 3 * 7 and res.epochs == 3
    plain = small_vit_backbone(seed=0).trunk
    state = torch.load(res.backbone_path, weights_only=True)
    assert set(state) == set(plain.state_dict())  # merged: no adapter keys left
    changed = [k for k, v in plain.state_dict().items() if not torch.equal(v, state[k])]
    assert changed and all(k.endswith("self_attention.in_proj_weight") for k in changed), changed
    plain.load_state_dict(state, strict=True)
    assert abs(accuracy_of(plain, res.head_state, data.test) - res.accuracy) <= 0.011
    assert Path(res.backbone_path).parent.name == "peal"


def test_a_run_folder_whose_newest_checkpoint_is_gone_is_moved_aside(tmp_path):
    import json

    from raal.train import STATE_FILE, rescue_damaged_run

    run = tmp_path / "job"
    for name in ("checkpoint_a", "checkpoint_b"):
        (run / name).mkdir(parents=True)
        (run / name / STATE_FILE).write_bytes(b"x")
    snap = {"checkpoint_results": [{"checkpoint_dir_name": "checkpoint_a"}, {"checkpoint_dir_name": "checkpoint_b"}]}
    (run / "checkpoint_manager_snapshot.json").write_text(json.dumps(snap))
    assert rescue_damaged_run(run) is None and run.is_dir()  # intact: Ray resumes it itself
    (run / "checkpoint_b" / STATE_FILE).unlink()
    rescued = rescue_damaged_run(run)
    assert not run.exists() and rescued is not None and rescued.endswith("checkpoint_a")
    assert (tmp_path / rescued).parent.name.startswith("job.damaged-")
    (run / "checkpoint_c").mkdir(parents=True)
    (run / "checkpoint_manager_snapshot.json").write_text("{not json")
    assert rescue_damaged_run(run) is None and not run.exists()  # unreadable snapshot, nothing intact: scratch


@pytest.mark.ray
def test_a_killed_job_of_a_uri_store_resumes_from_checkpoints_under_the_store(ray_local, data, tmp_path, monkeypatch):
    """Issue #16, item 10: Ray Train's state lives under the run store (here a file:// URI, written through the
    store's pyarrow filesystem as for S3), not in a local temp dir per call; a job that died resumes from there."""
    import glob
    import tempfile

    from raal.store import RunStore

    scratch = set(glob.glob(f"{tempfile.gettempdir()}/raal-train-*"))
    jobs = RunStore(f"file://{tmp_path}/run").child("ray_train")
    marker = tmp_path / "killed.txt"
    monkeypatch.setenv(CRASH_ENV, f"2:{marker}")  # rank 0 dies at the start of epoch index 2; no retries left
    tc = TrainConfig(method="ft", lp_epochs=0, epochs=3, min_steps=0, batch_size=64, augment=False, num_workers=1,
                     max_failures=0)
    job = dict(num_classes=10, model_cfg=ModelConfig(), train_cfg=tc, transform=TRANSFORM, method="ft",
               storage_path=jobs, name="ft-uri", seed=1)
    with pytest.raises(Exception):  # noqa: B017 - whichever error Ray Train wraps the dead worker in
        finetune(labeled(data, 128), data.test, **job)
    assert marker.exists()
    folder = tmp_path / "run" / "ray_train" / "ft-uri"
    assert any(p.name.startswith("checkpoint_") for p in folder.iterdir()), sorted(folder.iterdir())
    res = finetune(labeled(data, 128), data.test, **job)  # a new call (a resumed run) finds them
    resume = [e for e in res.log if e.get("event") == "resume"]
    assert res.restarts == 1 and len(resume) == 1 and resume[0]["epoch"] in (1, 2), res.log
    assert res.epochs == 3 and res.steps == 3 * 2  # 128 rows in batches of 64, as without the kill
    assert Path(res.backbone_path).parent == folder
    assert set(glob.glob(f"{tempfile.gettempdir()}/raal-train-*")) == scratch  # no local scratch dir left behind


# ------------------------------------------------------------------------------------------------ the two paths
@pytest.mark.ray
def test_warm_actor_and_ray_train_give_the_same_job_to_the_bit(ray_local, data, tmp_path):
    """One loop for both paths: a seed gives the same weights, log and accuracy on the warm actor and in Ray Train."""
    tc = TrainConfig(method="lpft", lp_epochs=1, epochs=2, min_steps=0, batch_size=32, eval_batch_size=64,
                     augment=True, num_workers=1)
    job = dict(num_classes=10, model_cfg=ModelConfig(), transform=TRANSFORM, method="lpft",
               storage_path=str(tmp_path), seed=5)
    warm = finetune(labeled(data, 96), data.test, train_cfg=tc, name="warm", **job)
    again = finetune(labeled(data, 96), data.test, train_cfg=tc, name="warm2", **job)  # the actor is warm now
    ray_train = finetune(labeled(data, 96), data.test, train_cfg=replace(tc, warm="off"), name="rt", **job)
    assert (warm.path, again.path, ray_train.path) == ("warm", "warm", "ray_train")
    saved = json.loads((tmp_path / "rt" / "train_result.json").read_text())
    assert saved["path"] == "ray_train" and saved["path_reason"] == "train.warm=off"

    def digest(res):
        return state_digest(torch.load(res.backbone_path, weights_only=True)), state_digest(res.head_state)

    assert digest(warm) == digest(again) == digest(ray_train)
    assert warm.accuracy == again.accuracy == ray_train.accuracy and warm.steps == ray_train.steps
    strip = ("train_time", "epoch_time")
    assert ([{k: v for k, v in e.items() if k not in strip} for e in warm.log]
            == [{k: v for k, v in e.items() if k not in strip} for e in ray_train.log])
    # a finished job found in its folder is not trained again, on either path
    stored = finetune(labeled(data, 96), data.test, train_cfg=tc, name="rt", **job)
    assert stored.path == "stored" and stored.path_reason.endswith("(trained on the ray_train path)")
    assert digest(stored) == digest(ray_train) and stored.accuracy == ray_train.accuracy


@pytest.mark.ray
def test_bad_images_inside_the_warm_actor_are_one_line_exit_2(ray_local, data, tmp_path, capsys):
    from raal import cli_errors

    batch = {"id": np.arange(8), "label": np.arange(8) % 2, "bytes": np.array([b"not an image"] * 8, dtype=object)}
    tc = TrainConfig(method="ft", lp_epochs=0, epochs=1, min_steps=0, batch_size=4, num_workers=1)
    with pytest.raises(Exception) as err:
        finetune(batch, data.test, num_classes=10, model_cfg=ModelConfig(), train_cfg=tc, transform=TRANSFORM,
                 storage_path=str(tmp_path), name="bad")
    assert cli_errors.report(err.value, str(tmp_path)) == 2
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and "cannot read the image" in line, line


@pytest.mark.ray
def test_the_warm_actor_dies_with_its_owner_and_on_release(ray_local):
    import os
    import time

    from raal.train import _warm as train_warm

    def gone(pid: int, within: float = 30.0) -> bool:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except OSError:
                return True
            time.sleep(0.2)
        return False

    @ray_local.remote(num_cpus=0)
    class Owner:  # the pipeline's driver actor owns the run's warm actor
        def start(self):
            from raal.train import _warm as train_warm

            return ray_local.get(train_warm._actor(False).pid.remote())

    owner = Owner.remote()
    pid = ray_local.get(owner.start.remote())
    ray_local.kill(owner)
    assert gone(pid)
    mine = ray_local.get(train_warm._actor(False).pid.remote())
    train_warm.release()
    assert gone(mine)
