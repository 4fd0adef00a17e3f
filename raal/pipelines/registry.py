"""The pipelines by name: where each class lives, for the experiment and preflight.

Pipeline modules import torch and Ray, so the registry names where each class lives and imports it on first use.
The names themselves belong to the config (`raal.config.PIPELINES`, which validation checks `al.pipeline`
against); this registry checks itself against them when imported.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from raal.config import PIPELINES

if TYPE_CHECKING:  # annotations only: importing the base pulls in the pipelines' dependencies
    from raal.pipelines.base import Pipeline

_WHERE = {
    "standard": ("raal.pipelines.standard", "StandardPipeline"),
    "svpp": ("raal.pipelines.svpp", "SVPpPipeline"),
    "asvp": ("raal.pipelines.asvp", "ASVPPipeline"),
    "activeft": ("raal.pipelines.activeft", "ActiveFTPipeline"),
    "peal": ("raal.pipelines.peal", "PEALPipeline"),
}
NAMES: tuple[str, ...] = tuple(_WHERE)


def check_names() -> None:
    """The registry lists the pipelines the config allows, in the same order (the order of its messages)."""
    if NAMES != PIPELINES:
        raise RuntimeError(f"raal.pipelines.registry has {NAMES}, raal.config.PIPELINES {PIPELINES}: "
                           "a pipeline is added or removed in both places")


check_names()


def get(name: str) -> type[Pipeline]:
    """The pipeline class called `name` (a `raal.pipelines.base.Pipeline` subclass)."""
    if name not in _WHERE:
        raise ValueError(f"unknown pipeline {name!r}; known: {', '.join(NAMES)}")
    module, cls = _WHERE[name]
    return getattr(importlib.import_module(module), cls)


def classes() -> dict[str, type[Pipeline]]:
    """Every pipeline class by name."""
    return {n: get(n) for n in NAMES}


def runnable(pipeline: type[Pipeline]) -> list[str]:
    """Sorted names of the strategies `pipeline` can run (its `mismatch` finds nothing)."""
    from raal import strategies  # lazy: light: strategies pull numpy/scipy

    return [n for n in strategies.names() if pipeline.mismatch(strategies.get(n)) is None]
