"""Strategies that rank items by a per-item score of the probabilities, and their `balanced` option."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from raal.strategies.base import Pool, Strategy, check_option, is_flag, row_scores, top_by_score


def predicted_class(block: np.ndarray) -> np.ndarray:
    return block.argmax(axis=1).astype(np.float64)


def balanced_order(scores: np.ndarray, classes: np.ndarray, candidates: np.ndarray, budget: int, *,
                   largest: bool) -> np.ndarray:
    """The `budget` candidates picked round-robin over predicted classes.

    Round t takes every class's t-th best item (classes that still have one), best score first within the round;
    ties go to the lower index. After any number of picks, two classes that both still have candidates differ by
    at most one pick.
    """
    key = -scores if largest else scores
    by_class = np.lexsort((np.arange(len(key)), key, classes))
    cls = classes[by_class]
    start = np.flatnonzero(np.r_[True, cls[1:] != cls[:-1]])
    rank = np.empty(len(key), dtype=np.int64)
    rank[by_class] = np.arange(len(key)) - np.repeat(start, np.diff(np.r_[start, len(key)]))
    order = np.lexsort((np.arange(len(key)), key, rank))[:budget]
    return candidates[order]


class ScoreStrategy(Strategy):
    """Ascending (or, with `largest`, descending) `item_score` over the unlabeled items; ties go to the lower index.

    `balanced=True` picks round-robin over the predicted classes (argmax of probs) instead, so no predicted class
    falls more than one pick behind while it still has unlabeled items. What it costs: within a round a class's
    t-th best item is taken even when another class holds many better-scored ones, so the batch's mean score is
    worse than the plain ranking's (and a class the model over-predicts gets no more than its share); compute is
    one more argmax pass and a sort, O(N log N).
    """

    requires = frozenset({"probs"})
    largest = False
    item_score: Callable[[np.ndarray], np.ndarray]  # each subclass's per-item score of a block of probs

    def __init__(self, balanced: bool = False):
        check_option(self.name, "balanced", balanced, is_flag(balanced), "must be true or false")
        self.balanced = bool(balanced)

    def _select(self, budget: int, pool: Pool, *, probs, embeddings, seed: int) -> np.ndarray:
        scores = row_scores(probs, pool.unlabeled, self.item_score)
        if not self.balanced:
            return top_by_score(scores, pool.unlabeled, budget, largest=self.largest)
        classes = row_scores(probs, pool.unlabeled, predicted_class)
        return balanced_order(scores, classes, pool.unlabeled, budget, largest=self.largest)
