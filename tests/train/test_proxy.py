"""The MLP proxy (docs/algorithms.md §3.3): shape (T-A2), schedule (T-A3), determinism, memmap input, accuracy."""
from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch

from raal.config import ProxyConfig
from raal.recipe import cosine_multiplier, epoch_batches
from raal.train import (
    ProxyMLP,
    load_proxy,
    num_parameters,
    predict,
    proxy_state_dict,
    train_proxy,
)

pytestmark = pytest.mark.timeout(120)

CPU = ProxyConfig(device="cpu")


def blobs(n: int, d: int, c: int, seed: int = 0, spread: float = 1.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4.0, size=(c, d))
    y = rng.integers(0, c, size=n)
    x = (centres[y] + rng.normal(0, spread, size=(n, d))).astype(np.float32)
    return x, y


def test_parameter_count_t_a2():
    for d, c in [(1280, 10), (2048, 1000), (7, 3)]:
        m = ProxyMLP(d, c)
        assert sum(p.numel() for p in m.parameters()) == d * d + d + 2 * d + d * c + c == num_parameters(d, c)
    m = ProxyMLP(16, 4)
    x = torch.randn(5, 16)
    m.eval()
    h = m.embed(x)
    assert h.shape == (5, 16) and bool((h >= 0).all())
    assert torch.equal(m(x), m.fc2(h))


def test_schedule_ends_at_0195_t_a3():
    x, y = blobs(300, 8, 3)
    cfg = ProxyConfig(device="cpu", epochs=7, batch_size=64, lr=0.1)
    m = train_proxy(x, y, 3, cfg)
    h = m.history
    assert h.steps == 7 * 5  # ceil(300/64) = 5 batches per epoch
    assert h.lr_first == pytest.approx(0.1, abs=1e-15)
    assert h.lr_final / 0.1 == pytest.approx(math.cos(7 * math.pi / 16), abs=1e-12)
    assert h.lr_final / 0.1 == pytest.approx(0.1951, abs=1e-4)
    assert h.lr_last == pytest.approx(0.1 * cosine_multiplier(h.steps - 1, h.steps), abs=1e-15)
    assert len(h.epoch_loss) == 7 and h.epoch_loss[-1] < h.epoch_loss[0]


def test_batches_partition_and_no_singleton():
    rng = np.random.default_rng(0)
    for n, b in [(10, 3), (4097, 2048), (2048, 2048), (2049, 2048), (5, 10), (2, 1)]:
        parts = epoch_batches(n, b, rng)
        assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(n))
        assert min(len(p) for p in parts) >= 2 or n < 2
    assert [len(p) for p in epoch_batches(2049, 2048, rng)] == [2049]
    assert [len(p) for p in epoch_batches(4097, 2048, rng)] == [2048, 2049]
    # a final batch of one row would crash BatchNorm; training on such a size must work
    x, y = blobs(65, 4, 2)
    train_proxy(x, y, 2, ProxyConfig(device="cpu", epochs=1, batch_size=64))


def test_deterministic_for_a_seed_and_leaves_global_rng():
    x, y = blobs(200, 12, 4)
    cfg = ProxyConfig(device="cpu", epochs=3, batch_size=64)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = train_proxy(x, y, 4, cfg, seed=5)
    after = torch.rand(1)
    assert torch.equal(before, after)
    b = train_proxy(x, y, 4, cfg, seed=5)
    c = train_proxy(x, y, 4, cfg, seed=6)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    assert not torch.equal(a.fc1.weight, c.fc1.weight)


def test_memmap_rows_equal_gathered_copy(tmp_path):
    x, y = blobs(500, 16, 5, seed=1)
    path = tmp_path / "f.npy"
    np.save(path, x)
    mm = np.load(path, mmap_mode="r")
    assert not mm.flags.writeable
    rows = np.random.default_rng(2).choice(500, size=150, replace=False)
    cfg = ProxyConfig(device="cpu", epochs=4, batch_size=32)
    a = train_proxy(mm, y[rows], 5, cfg, seed=0, rows=rows)
    b = train_proxy(x[rows], y[rows], 5, cfg, seed=0)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    out = predict(a, mm, batch_size=64)
    assert out["probs"].dtype == np.float32 and out["probs"].shape == (500, 5)
    assert out["embeddings"].shape == (500, 16)


def test_separable_features_reach_high_accuracy():
    x, y = blobs(3000, 32, 10, seed=3)
    m = train_proxy(x[:2000], y[:2000], 10, ProxyConfig(device="cpu", epochs=25, batch_size=512, lr=0.01))
    out = predict(m, x[2000:], want=("probs", "embeddings", "logits"))
    acc = float((out["probs"].argmax(1) == y[2000:]).mean())
    assert acc >= 0.97, acc  # measured over blob seeds 0-9 (this recipe): 1.000 every time
    np.testing.assert_allclose(out["probs"].sum(1), 1.0, atol=1e-5)
    assert (out["embeddings"] >= 0).all()
    assert np.array_equal(out["logits"].argmax(1), out["probs"].argmax(1))
    small = predict(m, x[2000:], batch_size=37, want=("probs",))
    np.testing.assert_allclose(small["probs"], out["probs"], atol=1e-6)


def test_state_dict_round_trip_is_picklable():
    x, y = blobs(100, 8, 3)
    m = train_proxy(x, y, 3, ProxyConfig(device="cpu", epochs=2, batch_size=32))
    state = pickle.loads(pickle.dumps(proxy_state_dict(m)))
    m2 = load_proxy(state)
    assert not m2.training
    a, b = predict(m, x), predict(m2, x)
    assert np.array_equal(a["probs"], b["probs"]) and np.array_equal(a["embeddings"], b["embeddings"])
    with pytest.raises(ValueError, match="proxy state"):
        load_proxy({"in_dim": 8})


def test_bad_input_is_one_value_error():
    x, y = blobs(50, 4, 3)
    with pytest.raises(ValueError, match="rows"):
        train_proxy(x, y[:10], 3, CPU)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        train_proxy(x, y, 2, CPU)
    with pytest.raises(ValueError, match="integer"):
        train_proxy(x, y.astype(float), 3, CPU)
    with pytest.raises(ValueError, match="at least 2"):
        train_proxy(x[:1], y[:1], 3, CPU)
    with pytest.raises(ValueError, match="2-D"):
        train_proxy(x[0], y, 3, CPU)
    with pytest.raises(ValueError, match="want"):
        predict(ProxyMLP(4, 3), x, want=("nope",))
    with pytest.raises(ValueError, match="N×4"):
        predict(ProxyMLP(4, 3), x[:, :3])
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda"):
            train_proxy(x, y, 3, ProxyConfig(device="cuda"))


@pytest.mark.parametrize("threads", [1, 2])
def test_a_rows_outputs_do_not_depend_on_how_the_pool_is_cut(threads):
    """Selection on workers (raal.pipelines.sharded) scores shard by shard and must see the bits one pass over the
    pool gives: short batches are padded, so one row alone, odd shards and the whole pool agree exactly."""
    x, _ = blobs(5000, 96, 7, seed=3)
    torch.manual_seed(0)
    model = ProxyMLP(96, 7).eval()
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        whole = predict(model, x, batch_size=4096, want=("probs", "embeddings", "logits"))
        for cut in (1, 7, 97, 1000):
            stop = 300 if cut < 97 else len(x)
            parts = [predict(model, x[s:min(stop, s + cut)], want=("probs", "embeddings", "logits"))
                     for s in range(0, stop, cut)]
            for k in whole:
                np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), whole[k][:stop], err_msg=k)
    finally:
        torch.set_num_threads(old)
