"""Strategies that rank items by a per-item score of the probabilities, and their `balanced` option."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from raal.strategies.base import Pool, Strategy, check_inputs, check_option, is_flag, row_scores, top_by_score


def predicted_class(block: np.ndarray) -> np.ndarray:
    return block.argmax(axis=1).astype(np.float64)


def _class_rank(key: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Each candidate's rank within its class by (key, index): 0 for the class's best."""
    by_class = np.lexsort((np.arange(len(key)), key, classes))
    cls = classes[by_class]
    start = np.flatnonzero(np.r_[True, cls[1:] != cls[:-1]])
    rank = np.empty(len(key), dtype=np.int64)
    rank[by_class] = np.arange(len(key)) - np.repeat(start, np.diff(np.r_[start, len(key)]))
    return rank


def balanced_order(scores: np.ndarray, classes: np.ndarray, candidates: np.ndarray, budget: int, *,
                   largest: bool) -> np.ndarray:
    """The `budget` candidates picked round-robin over predicted classes.

    Round t takes every class's t-th best item (classes that still have one), best score first within the round;
    ties go to the lower index. After any number of picks, two classes that both still have candidates differ by
    at most one pick.
    """
    key = -scores if largest else scores
    rank = _class_rank(key, classes)
    order = np.lexsort((np.arange(len(key)), key, rank))[:budget]
    return candidates[order]


def keep_ranked(scores: np.ndarray, classes: np.ndarray, budget: int, *, largest: bool,
                balanced: bool) -> np.ndarray:
    """Indices (ascending) of the candidates, given in index order, that may be among the `budget` picks of any
    larger pool holding them: the `budget` best by (score, index), or with `balanced` each class's `budget` best.

    Why this is exact: a pick of the whole pool is among the `budget` best of the pool (of its class, with
    `balanced`: round-robin reaches rank `budget` only after `budget` picks), so it is among the `budget` best of
    every part holding it, and the parts' kept rows hold every pick with its rank among them unchanged.
    """
    key = -scores if largest else scores
    if not balanced:
        if len(key) <= budget:
            return np.arange(len(key))
        return np.sort(np.argsort(key, kind="stable")[:budget])
    return np.flatnonzero(_class_rank(key, classes) < budget)


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

    def ranked(self, budget: int, *, labeled_mask: np.ndarray, probs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One part's share of a selection spread over workers (raal.pipelines.sharded): the part's unlabeled rows
        that `keep_ranked` keeps, as (positions in the part, scores, predicted classes), after `select`'s checks of
        the inputs. Parts may be fully labeled or hold fewer than `budget` unlabeled rows."""
        unl = np.flatnonzero(~np.asarray(labeled_mask, dtype=bool))
        if len(unl) == 0:
            return np.empty(0, np.int64), np.empty(0, np.float64), np.empty(0, np.int64)
        pool = check_inputs(self, min(int(budget), len(unl)), labeled_mask=labeled_mask, probs=probs,
                            embeddings=None, seed=0)
        scores = row_scores(probs, pool.unlabeled, self.item_score)
        classes = row_scores(probs, pool.unlabeled, predicted_class).astype(np.int64)
        keep = keep_ranked(scores, classes, int(budget), largest=self.largest, balanced=self.balanced)
        return pool.unlabeled[keep], scores[keep], classes[keep]

    def merge_ranked(self, positions: np.ndarray, scores: np.ndarray, classes: np.ndarray, budget: int) -> np.ndarray:
        """The picks, in pick order, of the union of the parts' `ranked` rows (`positions` global and distinct):
        indices into the union. The same order `select` gives on the whole pool: (score, index), or round-robin."""
        order = np.argsort(positions, kind="stable")  # index order: the tie rule counts on it
        if len(order) < budget:
            raise ValueError(f"strategy {self.name!r}: budget {budget} exceeds the {len(order)} unlabeled items")
        if not self.balanced:
            return top_by_score(scores[order], order, budget, largest=self.largest)
        return balanced_order(scores[order], classes[order], order, budget, largest=self.largest)
