"""The training switch, measured: pick the final model's method (FT or LP-FT) on the labeled data alone.

ASVP's paper aligns the final model's training with its features (LP-FT while they are the pre-trained ones, FT
after a refresh); on raal's benchmarks that rule picked the worse method (FT beat LP-FT on the same sets). The
`holdout` rule asks the data instead: both methods are fitted by the evaluator on the same seeded 80 % of the
labeled set and scored on the other 20 %, and the better one trains the final model (a tie keeps FT). Nothing
outside the labeled set is looked at; the two fits are the rule's cost.
"""
from __future__ import annotations

import numpy as np

METHODS = ("ft", "lpft")


def holdout_split(n: int, seed: int, frac: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """(train, held out) indices into the labeled set: a seeded permutation, `frac` held out (at least 2 each)."""
    if n < 4:
        raise ValueError(f"the holdout switch needs >= 4 labeled rows, got {n}")
    order = np.random.default_rng([int(seed), n, 11]).permutation(n)
    k = min(n - 2, max(2, int(round(frac * n))))
    return np.sort(order[k:]), np.sort(order[:k])


def holdout_choice(evaluator, positions, labels, *, seed: int, frac: float = 0.2) -> dict:
    """Fit FT and LP-FT (the evaluator's recipe otherwise) on the training part, score both on the held-out part.

    Returns {"method": "ft" | "lpft", "ft": accuracy, "lpft": accuracy, "seconds": both fits}."""
    from raal.evaluator import Recipe  # lazy: heavy: torch

    pos = np.asarray(positions, dtype=np.int64)
    y = np.asarray(labels, dtype=np.int64)
    train, held = holdout_split(len(pos), seed, frac)
    out: dict = {"seconds": 0.0}
    for method in METHODS:
        rc = Recipe(**{**evaluator.recipe.__dict__, "method": method})
        fit = evaluator.fit(pos[train], y[train], seed=seed, recipe=rc)
        out[method] = evaluator.accuracy_on(fit, pos[held], y[held])
        out["seconds"] += fit.seconds
    out["method"] = "lpft" if out["lpft"] > out["ft"] else "ft"
    return out
