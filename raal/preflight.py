"""Everything that can be wrong with a run's input, checked before Ray starts and before anything is written.

Each check raises one `ConfigError` (or `ImageDecodeError`) whose message names the key or the item, so the CLI
prints one line and exits 2 with the run dir untouched (and not even created). What cannot be checked here (an
image outside the decode sample) is still reported the same way when the embedding meets it, through Ray.
"""
from __future__ import annotations

import numpy as np

from raal.config import RunConfig, validate_against_pool
from raal.data.sources import Dataset, effective_roots, load_data
from raal.data.transforms import decode_images
from raal.errors import ConfigError
from raal.labeling.labelstudio import check_document_root
from raal.pipelines.experiment import arm_specs, check_resume, default_run_dir, validate_arms
from raal.store import RunStore


def preflight(cfg: RunConfig) -> Dataset:
    """Run dir, arms, data, budget, classes, backbone weights, a decode sample; returns the loaded data."""

    check_resume(RunStore(default_run_dir(cfg), create=False), cfg)
    validate_arms(arm_specs(cfg))
    data = load_data(cfg.data)
    check_classes(data)
    validate_against_pool(cfg, len(data.pool))
    check_backbone(cfg)
    check_document_root(cfg, default_run_dir(cfg))
    if not cfg.data.skip_undecodable:
        check_decode_sample(data, cfg)
    return data


def check_classes(data: Dataset) -> None:
    """Active learning among fewer than two classes is meaningless (and a classifier head of one class fails late)."""
    if len(data.test) == 0:
        raise ConfigError("data.test_size: the test split is empty; give data.test_size > 0 or data.test_root")
    names = data.class_names
    if len(names) < 2:
        raise ConfigError(f"the data has {len(names)} class{'es' if len(names) != 1 else ''} ({names}); "
                          "active learning needs at least 2")
    seen = set(np.unique(data.test.labels).tolist()) if data.test.labels is not None else set()
    if data.truth:
        seen |= set(np.unique(np.fromiter(data.truth.values(), dtype=np.int64)).tolist())
    if len(seen) == 1:
        raise ConfigError(f"every labelled item of the data is of one class ({names[next(iter(seen))]!r}); "
                          "active learning needs at least 2")


def check_backbone(cfg: RunConfig) -> None:
    """Build the backbone once: an unknown `model.arch`, a missing or non-state-dict weights file, or keys and
    shapes that do not match the architecture are one ConfigError each (raal.models.backbones says which)."""
    from raal.models.backbones import build_backbone  # lazy: heavy: torch

    build_backbone(cfg.model)


def check_decode_sample(data: Dataset, cfg: RunConfig) -> None:
    """Decode `data.check_images` images (a fixed-seed sample of pool and test) the way the embedding will; a broken
    one is an ImageDecodeError naming its id and path. In-memory arrays (Animal-MNIST) need no check."""

    k = cfg.data.check_images
    if k <= 0:
        return
    rng = np.random.default_rng(cfg.data.split_seed)
    for images in (data.pool, data.test):
        if "image" in images.columns or len(images) == 0:
            continue
        n = min(len(images), max(1, k // 2))
        pos = np.sort(rng.choice(len(images), size=n, replace=False))
        decode_images(images.take(pos), effective_roots(cfg.data))
