"""Selection strategies: one module each, looked up by name.

    from raal import strategies
    s = strategies.get("badge")          # s.requires == frozenset({"probs", "embeddings"})
    picked = s.select(100, labeled_mask=mask, probs=p, embeddings=h, seed=0)

A new strategy is a `Strategy` subclass in its own module plus one entry in `_REGISTRY` and its name in
`raal.config.STRATEGIES` (the config owns the names it validates; the registry checks itself against them on
import); it then gets every contract test in tests/strategies/test_strategies.py.
"""
from __future__ import annotations

import inspect

from raal.config import BALANCED_STRATEGIES, STRATEGIES
from raal.strategies.activeft import ActiveFT
from raal.strategies.activeft_al import ActiveFTAL
from raal.strategies.badge import Badge
from raal.strategies.base import Strategy
from raal.strategies.cluster_margin import ClusterMargin
from raal.strategies.confidence import LeastConfidence
from raal.strategies.coreset import CoreSet
from raal.strategies.dropquery import DropQuery
from raal.strategies.entropy import Entropy
from raal.strategies.featdist import FeatDist
from raal.strategies.kmeans_centroid import KMeansCentroid
from raal.strategies.margin import Margin
from raal.strategies.probcover import ProbCover
from raal.strategies.random_sampling import RandomSampling
from raal.strategies.typiclust import TypiClust

_REGISTRY: dict[str, type[Strategy]] = {cls.name: cls for cls in (
    RandomSampling, Margin, LeastConfidence, Entropy, CoreSet, Badge, ActiveFT, ActiveFTAL, FeatDist, KMeansCentroid,
    TypiClust, ProbCover, DropQuery, ClusterMargin)}
_DEFAULTS: dict[str, Strategy] = {}

__all__ = ["Strategy", "accepting", "accepts", "check_names", "for_run", "get", "names"]


def names() -> list[str]:
    """Sorted names of all strategies."""
    return sorted(_REGISTRY)


def get(name: str, **options) -> Strategy:
    """The strategy called `name`; with options (e.g. iterations=100 for activeft) a new instance using them."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown strategy {name!r}; known: {', '.join(names())}")
    if options:
        try:
            return _REGISTRY[name](**options)
        except TypeError as e:
            raise ValueError(f"strategy {name!r}: bad option in {sorted(options)} ({e})") from None
    if name not in _DEFAULTS:
        _DEFAULTS[name] = _REGISTRY[name]()
    return _DEFAULTS[name]


def accepts(name: str, option: str) -> bool:
    """Whether strategy `name` takes the constructor option `option`."""
    return name in _REGISTRY and option in inspect.signature(_REGISTRY[name].__init__).parameters


def accepting(option: str) -> list[str]:
    """Sorted names of the strategies that take `option`."""
    return [n for n in names() if accepts(n, option)]


def for_run(name: str, **settings) -> Strategy:
    """The strategy `name` configured from the run-wide settings it takes (e.g. num_classes for probcover, balanced
    for the score strategies); settings it does not take are ignored, False/None ones are left at the default."""
    return get(name, **{k: v for k, v in settings.items() if accepts(name, k) and v not in (None, False)})


def check_names() -> None:
    """The registry holds the strategies the config allows, and those taking `balanced` are the config's."""
    if tuple(names()) != STRATEGIES or tuple(accepting("balanced")) != BALANCED_STRATEGIES:
        raise RuntimeError(f"raal.strategies has {names()} (balanced: {accepting('balanced')}), raal.config "
                           f"{list(STRATEGIES)} (balanced: {list(BALANCED_STRATEGIES)}): change both places")


check_names()
