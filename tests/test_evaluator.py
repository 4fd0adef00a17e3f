"""The one evaluator and its recipe (no Ray): partial split, converged probe, schedule, paired seeds, the cache."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from raal.config import DataConfig, EvalConfig, ModelConfig
from raal.data.sources import load_data
from raal.data.transforms import ImageTransform
from raal.evaluator import Evaluator, Recipe, eval_seed
from raal.models.backbones import build_backbone
from raal.recipe import default_freeze, fit_probe, lr_multiplier, random_shift, split_trunk, train_suffix
from raal.store import RunStore


@pytest.fixture(scope="module")
def data():
    return load_data(DataConfig(pool_size=400, test_size=300))


@pytest.fixture(scope="module")
def evaluator(data, tmp_path_factory):
    store = RunStore(tmp_path_factory.mktemp("ev"))
    return Evaluator.build(store=store, data=data, model_cfg=ModelConfig(), transform=ImageTransform(size=32),
                           freeze_blocks=-1, recipe=Recipe.from_config(EvalConfig(steps=60))), store


def test_split_trunk_composes_to_the_trunk():
    trunk = build_backbone(ModelConfig()).trunk.eval()
    assert default_freeze(trunk) == 17  # MobileNetV2: 19 blocks, the last 2 train
    prefix, suffix = split_trunk(trunk, 16)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(suffix.eval()(prefix(x)), trunk(x), atol=1e-5, rtol=1e-5)
    assert not any(p.requires_grad for p in prefix.parameters())
    with pytest.raises(ValueError, match="freeze_blocks"):
        split_trunk(trunk, 19)


def test_probe_is_converged_and_deterministic():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 16, generator=g)
    y = (x[:, 0] + 0.5 * torch.randn(200, generator=g) > 0).long()
    head = fit_probe(x, y, 2, l2=1e-2)
    head.zero_grad()
    loss = F.cross_entropy(head(x), y) + 0.5 * 1e-2 * head.weight.pow(2).sum()
    loss.backward()
    assert float(head.weight.grad.abs().max()) < 1e-4  # a stationary point: the probe is trained to convergence
    again = fit_probe(x, y, 2, l2=1e-2)
    torch.testing.assert_close(again.weight, head.weight, atol=0, rtol=0)


def test_warmup_then_cosine_to_zero():
    m = [lr_multiplier(s, 100, 10) for s in range(101)]
    assert m[0] == pytest.approx(0.1) and m[9] == pytest.approx(1.0) and m[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(m[10:], m[11:])) and m[100] == pytest.approx(0.0)
    assert lr_multiplier(0, 5, 0) == pytest.approx(1.0)


def test_frozen_batchnorm_statistics_do_not_move():
    trunk = build_backbone(ModelConfig()).trunk.eval()
    prefix, suffix = split_trunk(trunk, 16)
    before = {k: v.clone() for k, v in suffix.state_dict().items() if "running" in k}
    head = torch.nn.Linear(1280, 10)
    x = prefix(torch.randn(8, 3, 32, 32)).detach()
    train_suffix(suffix, head, x, torch.arange(8) % 10, steps=3, batch_size=4, backbone_lr=1e-3, head_lr=1e-3,
                 weight_decay=0.0, warmup_frac=0.0, augment=True, seed=0)
    after = suffix.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_paired_seeds_depend_on_size_not_arm():
    assert eval_seed(0, 200) == eval_seed(0, 200) != eval_seed(0, 300)
    assert eval_seed(1, 200) != eval_seed(0, 200)


@pytest.mark.slow  # minutes of CPU: left out of `make test-fast`, run by `make test`
def test_evaluator_is_deterministic_and_beats_chance(evaluator, data):
    ev, store = evaluator
    truth = np.asarray([data.truth[int(i)] for i in data.pool.ids])
    pos = np.arange(0, 400, 2)  # 200 labels
    a = ev.score(pos, truth[pos], seed=eval_seed(0, 200))
    b = ev.score(pos, truth[pos], seed=eval_seed(0, 200))
    assert not a["eval_memo"] and b["eval_memo"] and b["eval_seconds"] == a["eval_seconds"]  # trained once
    assert a["accuracy"] == b["accuracy"] and a["probe_accuracy"] == b["probe_accuracy"]
    # Measured over 10 evaluation seeds (eval_seed(0..9, 200)) on this set: accuracy 0.727-0.767, probe 0.747;
    # chance is 0.1, so 0.45 leaves a margin of > 0.27 below the worst seed.
    assert a["accuracy"] >= 0.45 and a["probe_accuracy"] >= 0.45, a
    # the cache is reused: a second build reads it instead of recomputing (same activations)
    again = Evaluator.build(store=store, data=data, model_cfg=ModelConfig(), transform=ImageTransform(size=32),
                            freeze_blocks=-1, recipe=ev.recipe)
    assert torch.equal(again.pool_acts, ev.pool_acts)
    assert len([f for f in store.listdir("eval_cache") if f.endswith(".f32")]) == 2
    # deterministic: a new evaluator (empty memory) trains the same fit again to the same accuracy; the rows'
    # order does not matter (they are put in pool order first)
    rerun = again.fit(pos[::-1], truth[pos][::-1], seed=eval_seed(0, 200))
    assert not rerun.memo_hit and rerun.accuracy == a["accuracy"]


def test_recipe_from_config_reads_eval_keys():
    r = Recipe.from_config(EvalConfig(steps=7, backbone_lr=1e-5), method="ft")
    assert r.steps == 7 and r.backbone_lr == 1e-5 and r.method == "ft"


@pytest.mark.slow  # minutes of CPU: left out of `make test-fast`, run by `make test`
def test_a_corrupt_cache_is_recomputed_not_read(evaluator, data):
    ev, store = evaluator
    name = next(n for n in store.listdir("eval_cache") if n.startswith("pool") and n.endswith(".f32"))
    raw = bytearray(store.read_bytes(f"eval_cache/{name}"))
    raw[0] ^= 0xFF
    store.write_bytes(f"eval_cache/{name}", bytes(raw))
    again = Evaluator.build(store=store, data=data, model_cfg=ModelConfig(), transform=ImageTransform(size=32),
                            freeze_blocks=-1, recipe=ev.recipe)
    assert torch.equal(again.pool_acts, ev.pool_acts)  # the checksum failed, so the activations were recomputed
    assert store.read_bytes(f"eval_cache/{name}") == ev.pool_acts.numpy().tobytes()


def test_full_split_trains_every_block():
    trunk = build_backbone(ModelConfig()).trunk.eval()
    prefix, suffix = split_trunk(trunk, 0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(suffix.eval()(prefix(x)), trunk(x), atol=1e-5, rtol=1e-5)
    assert len(list(prefix.parameters())) == 0
    assert sum(p.numel() for p in suffix.parameters()) == sum(p.numel() for p in trunk.parameters())


def test_random_shift_translates_each_image_within_bounds():
    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).view(2, 1, 8, 8)
    gen = torch.Generator().manual_seed(3)
    out = random_shift(x, 2, gen)
    assert out.shape == x.shape
    again = torch.Generator().manual_seed(3)
    dy = torch.randint(0, 5, (2,), generator=again)
    dx = torch.randint(0, 5, (2,), generator=again)
    padded = F.pad(x, (2, 2, 2, 2), mode="replicate")
    for i in range(2):  # each image is the window of its own offset in the edge-replicated image
        torch.testing.assert_close(out[i], padded[i, :, dy[i]:dy[i] + 8, dx[i]:dx[i] + 8])


@pytest.fixture(scope="module")
def full_evaluator(data, tmp_path_factory):
    store = RunStore(tmp_path_factory.mktemp("full"))
    return Evaluator.build(store=store, data=data, model_cfg=ModelConfig(), transform=ImageTransform(size=32),
                           freeze_blocks=0, recipe=Recipe.from_config(EvalConfig(method="ft", steps=4))), store


def test_full_evaluator_moves_every_block_and_keeps_bn_statistics(full_evaluator, data):
    ev, store = full_evaluator
    assert ev.full and "whole backbone" in ev.describe()
    assert ev.pool_acts.shape == (len(data.pool), 3, 32, 32) and store.listdir("eval_cache") == []
    truth = np.asarray([data.truth[int(i)] for i in data.pool.ids])
    pos = np.arange(0, 400, 4)
    f = ev.fit(pos, truth[pos], seed=1)
    before = ev.new_suffix()
    first_conv = next(m for m in f.suffix.modules() if isinstance(m, torch.nn.Conv2d))
    first_conv_before = next(m for m in before.modules() if isinstance(m, torch.nn.Conv2d))
    assert not torch.equal(first_conv.weight, first_conv_before.weight)  # the first block trained too
    bn = next(m for m in f.suffix.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn_before = next(m for m in before.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert torch.equal(bn.running_mean, bn_before.running_mean)  # frozen statistics (bn=frozen)
    assert not torch.equal(bn.weight, bn_before.weight)  # ... while the affine parameters train


def test_identical_fits_are_memoised_across_arms_and_evaluators(full_evaluator, data, monkeypatch):
    ev, store = full_evaluator
    truth = np.asarray([data.truth[int(i)] for i in data.pool.ids])
    pos = np.arange(1, 400, 5)
    first = ev.score(pos, truth[pos], seed=2)
    assert not first["eval_memo"]
    shuffled = np.random.default_rng(0).permutation(len(pos))
    again = ev.fit(pos[shuffled], truth[pos][shuffled], seed=2)  # another arm, another labeling order
    assert again.memo_hit and again.accuracy == first["accuracy"] and again.seconds == first["eval_seconds"]
    assert not ev.fit(pos, truth[pos], seed=3).memo_hit  # another seed is another fit
    other = Recipe(**{**ev.recipe.__dict__, "steps": 5})
    assert ev.memo_key(pos, truth[pos], seed=2, recipe=other) != ev.memo_key(pos, truth[pos], seed=2)
    flipped = truth[pos].copy()
    flipped[0] = (flipped[0] + 1) % 10
    assert ev.memo_key(pos, flipped, seed=2) != ev.memo_key(pos, truth[pos], seed=2)  # other labels, other fit
    # a resumed run (new evaluator, same store) reads the record instead of training
    fresh = Evaluator(model_cfg=ev.model_cfg, transform=ev.transform, freeze_blocks=0, recipe=ev.recipe,
                      num_classes=ev.num_classes, test_labels=ev.test_labels.numpy(), pool_acts=ev.pool_acts,
                      test_acts=ev.test_acts, base_trunk=ev._base_trunk, store=store, identity=ev.identity)
    monkeypatch.setattr(fresh, "_fit", lambda *a, **k: pytest.fail("trained again"))
    got = fresh.score(pos, truth[pos], seed=2)
    assert got["eval_memo"] and np.isnan(got.pop("probe_accuracy")) and np.isnan(first.pop("probe_accuracy"))
    assert got == {**first, "eval_memo": True}  # FT has no probe stage: its probe accuracy is NaN


def test_full_evaluator_refuses_inputs_larger_than_its_memory_bound(data, tmp_path, monkeypatch):
    from raal.errors import ConfigError

    monkeypatch.setenv("RAAL_EVAL_MEMORY_GB", "0.001")
    with pytest.raises(ConfigError, match="RAAL_EVAL_MEMORY_GB"):
        Evaluator.build(store=RunStore(tmp_path), data=data, model_cfg=ModelConfig(),
                        transform=ImageTransform(size=32), freeze_blocks=0, recipe=Recipe())


def test_holdout_switch_fits_both_methods_on_the_same_split_of_the_labeled_set(full_evaluator, data):
    from raal.pipelines.switch import holdout_choice, holdout_split

    train, held = holdout_split(100, seed=5)
    assert len(held) == 20 and len(train) == 80 and not set(train) & set(held)
    assert np.array_equal(holdout_split(100, seed=5)[1], held)  # seeded: a resumed run splits the same way
    with pytest.raises(ValueError, match=">= 4"):
        holdout_split(3, seed=0)
    ev, _ = full_evaluator
    truth = np.asarray([data.truth[int(i)] for i in data.pool.ids])
    pos = np.arange(2, 400, 4)
    got = holdout_choice(ev, pos, truth[pos], seed=9)
    assert got["method"] in ("ft", "lpft") and got["seconds"] > 0
    assert got["method"] == ("lpft" if got["lpft"] > got["ft"] else "ft")
    # the accuracies are on the held-out labeled rows, recomputed here from the same fits
    from raal.evaluator import Recipe

    part, held = holdout_split(len(pos), 9)
    fit = ev.fit(pos[part], truth[pos][part], seed=9, recipe=Recipe(**{**ev.recipe.__dict__, "method": "ft"}))
    assert fit.memo_hit
    assert ev.accuracy_on(fit, pos[held], truth[pos][held]) == got["ft"]


def test_kept_models_let_another_evaluator_reuse_a_fit_without_training(data, tmp_path, monkeypatch):
    truth = np.asarray([data.truth[int(i)] for i in data.pool.ids])
    pos = np.arange(3, 400, 4)
    store = RunStore(tmp_path / "donor")
    ev = Evaluator.build(store=store, data=data, model_cfg=ModelConfig(), transform=ImageTransform(size=32),
                         freeze_blocks=0, recipe=Recipe.from_config(EvalConfig(method="ft", steps=3)))
    ev.memo_models = True
    first = ev.fit(pos, truth[pos], seed=4)
    other = Evaluator(model_cfg=ev.model_cfg, transform=ev.transform, freeze_blocks=0, recipe=ev.recipe,
                      num_classes=ev.num_classes, test_labels=ev.test_labels.numpy(), pool_acts=ev.pool_acts,
                      test_acts=ev.test_acts, base_trunk=ev._base_trunk, store=store, identity=ev.identity)
    monkeypatch.setattr(other, "_fit", lambda *a, **k: pytest.fail("trained again"))
    again = other.fit(pos, truth[pos], seed=4)
    assert again.memo_hit and again.accuracy == first.accuracy and again.seconds == first.seconds
    rows = np.arange(0, 400, 7)  # the kept model is the model: same predictions as the fit that made it
    assert other.accuracy_on(again, rows, truth[rows]) == ev.accuracy_on(first, rows, truth[rows])


def test_class_recall_weights_back_to_the_accuracy(evaluator, data):
    """Recall per class is what a long-tailed pool is judged by; weighted by the test counts it is the accuracy."""
    ev, store = evaluator
    truth = np.asarray([data.truth[int(i)] for i in data.pool.ids])
    pos = np.arange(0, 400, 3)
    res = ev.score(pos, truth[pos], seed=5)
    recall = np.asarray(res["class_recall"])
    counts = np.bincount(ev.test_labels.numpy(), minlength=ev.num_classes)
    assert recall.shape == (ev.num_classes,) and np.all((recall >= 0) & (recall <= 1))
    assert float(recall @ counts / counts.sum()) == pytest.approx(res["accuracy"], abs=1e-6)
    again = ev.score(pos, truth[pos], seed=5)  # from the memo: the same recall
    assert again["eval_memo"] and again["class_recall"] == res["class_recall"]
