"""LoRA on torchvision ViT's fused qkv (PEAL, docs/algorithms.md §9): T-E1, T-E2, T-E3 and merging."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from raal.models.lora import (
    LoraQKV,
    apply_lora,
    lora_parameters,
    lora_state_dict,
    merge_lora,
    merge_lora_state_dict,
    num_lora_parameters,
    small_vit_backbone,
)
from raal.train import Classifier

pytestmark = pytest.mark.timeout(120)

D, BLOCKS, R = 32, 2, 16


def _vit_pair(seed: int = 0):
    frozen = small_vit_backbone(seed=seed).trunk
    adapted = apply_lora(copy.deepcopy(frozen), rank=R, alpha=16.0)
    return frozen, adapted


def test_starts_equal_to_the_frozen_model_bit_exact_t_e1():
    frozen, adapted = _vit_pair()
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    head = nn.Linear(D, 10)
    for train_mode in (False, True):
        frozen.train(train_mode)
        adapted.train(train_mode)
        with torch.no_grad():
            assert torch.equal(head(frozen(x)), head(adapted(x)))
        assert torch.equal(frozen(x), adapted(x))  # with autograd on as well
    assert sum(isinstance(m, LoraQKV) for m in adapted.modules()) == BLOCKS
    assert all(bool((m.lora_B == 0).all()) and m.scale == 1.0 for m in adapted.modules() if isinstance(m, LoraQKV))


def test_trainable_parameter_count_t_e2():
    _, adapted = _vit_pair()
    trainable = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    assert trainable == BLOCKS * R * (D + 3 * D) == num_lora_parameters(BLOCKS, R, D) == 4096
    assert sum(p.numel() for p in lora_parameters(adapted)) == trainable
    with pytest.raises(ValueError, match="MultiheadAttention"):
        apply_lora(nn.Sequential(nn.Linear(3, 3)))


def test_one_step_changes_only_adapters_and_head_t_e3():
    _, adapted = _vit_pair()
    net = Classifier(adapted, nn.Linear(D, 10))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    opt = torch.optim.Adam(lora_parameters(net.trunk) + list(net.head.parameters()), lr=1e-3)
    x = torch.randn(8, 3, 32, 32)
    y = torch.arange(8) % 10
    net.train()
    nn.functional.cross_entropy(net(x), y).backward()
    opt.step()
    changed = {k for k, v in net.state_dict().items() if not torch.equal(v, before[k])}
    assert changed, "nothing changed"
    assert all(k.startswith("head.") or k.endswith(("lora_A", "lora_B")) for k in changed), changed
    assert {"head.weight", "head.bias"} <= changed
    assert any(k.endswith("lora_B") for k in changed)  # A's first gradient is 0 because B = 0


def test_merge_gives_a_plain_model_with_the_same_outputs():
    frozen, adapted = _vit_pair()
    with torch.no_grad():
        for m in adapted.modules():
            if isinstance(m, LoraQKV):
                m.lora_B.normal_(0, 0.5)
    x = torch.randn(4, 3, 32, 32)
    adapted.eval()
    with torch.no_grad():
        want = adapted(x)
    plain_sd = merge_lora_state_dict({"trunk." + k: v for k, v in lora_state_dict(adapted).items()})
    plain = copy.deepcopy(frozen).eval()
    plain.load_state_dict({k[len("trunk."):]: v for k, v in plain_sd.items()}, strict=True)
    merged = merge_lora(adapted)
    assert not any(isinstance(m, LoraQKV) for m in merged.modules())
    assert set(merged.state_dict()) == set(frozen.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(merged(x), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(plain(x), want, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(frozen.eval()(x), want, atol=1e-3)  # the adapters did change the model
