#!/usr/bin/env python
"""The 2-worker FT test's recipe, replayed in one process over 10 seeds: full MobileNetV2 FT from a fresh head,
AdamW (backbone 1e-4, head 3e-3), 10% warm-up + cosine, frozen BN statistics, 40 steps of 64, 300 labels, 32 px.

It sets the margin of tests/train/test_train.py's accuracy assertion (10 Ray Train jobs would take ~10 min on 2 cores).
Output of the last run: bench/results/ft_margin.txt.    python bench/ft_margin.py
"""
import sys

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))
torch.set_num_threads(1)
from raal.config import DataConfig, ModelConfig, TrainConfig
from raal.data.sources import load_data
from raal.data.transforms import ImageTransform
from raal.models.backbones import build_backbone
from raal.recipe import freeze_batchnorm, lr_multiplier

data = load_data(DataConfig(pool_size=300, test_size=200))
tf = ImageTransform(size=32)
x = torch.from_numpy(tf(data.pool.take(np.arange(300))))
y = torch.as_tensor([data.truth[int(i)] for i in data.pool.ids])
xt = torch.from_numpy(tf(data.test.take(np.arange(len(data.test)))))
yt = torch.as_tensor(data.test.labels)
tc = TrainConfig()
accs = []
for seed in range(10):
    torch.manual_seed(seed)
    bb = build_backbone(ModelConfig())
    trunk = bb.trunk
    head = nn.Linear(1280, 10)
    opt = torch.optim.AdamW([{"params": trunk.parameters(), "lr": tc.backbone_lr}, {"params": head.parameters(), "lr": tc.head_lr}], weight_decay=tc.weight_decay)
    g = np.random.default_rng(seed)
    steps, warm = 40, 4
    for s in range(steps):
        for grp, lr in zip(opt.param_groups, (tc.backbone_lr, tc.head_lr)):
            grp["lr"] = lr * lr_multiplier(s, steps, warm)
        trunk.train()
        freeze_batchnorm(trunk)
        idx = g.choice(300, 64, replace=False)
        loss = F.cross_entropy(head(trunk(x[idx])), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    trunk.eval()
    with torch.no_grad():
        acc = float((head(trunk(xt)).argmax(1) == yt).float().mean())
    accs.append(acc)
    print(seed, acc, flush=True)
print("min", min(accs), "max", max(accs))
