"""The pipelines by name: the one list that config validation, the experiment and preflight read.

Pipeline modules import torch and Ray, so the registry names where each class lives and imports it on first use;
`NAMES` costs nothing to import (`raal.config` checks `al.pipeline` against it).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

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
