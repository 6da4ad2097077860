"""Gradient-boosted trees per expert, stored as plain arrays and evaluated with numpy.

A logistic regression reads each prompt statistic (length, numbers, sentences, ...) and each
embedding direction on its own; whether a long prompt is hard depends on what it is about.
Boosted trees on the embedding's first principal components and the prompt statistics
find those interactions (``routers.stack`` uses them as one of its views). Fitting is
scikit-learn's :class:`~sklearn.ensemble.HistGradientBoostingClassifier` (log loss, early
stopping on a held-out tenth of the prompts); serving walks every tree of every expert at
once, level by level, from arrays: no pickle in the artifact, and no per-tree Python loop on
the request path.

Soft scores in [0, 1] are cut at 0.5 for the trees: scikit-learn's fit with sample weights
(the stack's logistic regressions weigh a positive and a negative copy of each prompt) was
about ten times slower, and the stack's meta-model, which combines the views, still reads the
soft scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["TREE_PARAMS", "TreeArrays", "fit_expert_trees", "pack_trees", "tree_depth",
           "tree_logits"]

#: the boosting settings (chosen on development seeds' validation parts; see routers/stack.py)
TREE_PARAMS = {"learning_rate": 0.1, "max_iter": 100, "max_leaf_nodes": 15, "max_bins": 63,
               "l2_regularization": 1.0, "min_samples_leaf": 20}
#: share of the prompts held out to stop the boosting
VAL_FRACTION = 0.1
#: fewer prompts than this (or one outcome only): no trees, the smoothed base rate
MIN_PROMPTS = 60


@dataclass
class ExpertTrees:
    """One expert's fitted ensemble: the raw score is ``base`` plus one leaf value per tree
    (``nodes``: the trees' node tables, scikit-learn's predictor records)."""

    base: float
    nodes: list[np.ndarray]


@dataclass
class TreeArrays:
    """Every expert's trees in one node table (see :func:`pack_trees`)."""

    feature: np.ndarray  # (nodes,) int32
    threshold: np.ndarray  # (nodes,) float64; +inf at leaves
    left: np.ndarray  # (nodes,) int32, a leaf points to itself
    right: np.ndarray  # (nodes,) int32
    value: np.ndarray  # (nodes,) float64; the leaf values (0 elsewhere)
    roots: np.ndarray  # (trees,) int32
    owner: np.ndarray  # (trees,) int32: the expert of each tree
    base: np.ndarray  # (experts,) float64


def _logit_rate(y: np.ndarray) -> float:
    rate = (float(np.sum(y)) + 0.5) / (y.size + 1.0)
    return float(np.log(rate / (1 - rate)))


def fit_expert_trees(F: np.ndarray, s: np.ndarray, seed: int) -> ExpertTrees:
    """Boosted trees of P(the expert answers well) on the features ``F`` (n, p), scores
    ``s`` in [0, 1] (soft scores cut at 0.5). Too few prompts, or one outcome only: no
    trees (the base rate)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    y = np.asarray(s, dtype=np.float64) >= 0.5
    if y.size < MIN_PROMPTS or y.all() or not y.any():
        return ExpertTrees(_logit_rate(y), [])
    from threadpoolctl import threadpool_limits

    h = HistGradientBoostingClassifier(**TREE_PARAMS, early_stopping=True,
                                       validation_fraction=VAL_FRACTION, random_state=seed)
    # one OpenMP thread: the stack fits its folds in threads and ``auto`` its candidates in
    # processes, and an OpenMP pool in each (its threads spin while they wait) made the fits
    # 10-40x slower on two cores; the import above has loaded the runtime this limits
    with threadpool_limits(1, user_api="openmp"):
        h.fit(F, y)
    return ExpertTrees(float(np.ravel(h._baseline_prediction)[0]),
                       [np.asarray(p[0].nodes) for p in h._predictors])


def pack_trees(experts: Sequence[ExpertTrees]) -> TreeArrays:
    """One node table for every expert's trees (indices made global; a leaf's children
    are itself and its threshold +inf, so a walk of fixed depth stays on it)."""
    feats, thr, left, right, val, roots, owner = [], [], [], [], [], [], []
    off = 0
    for j, e in enumerate(experts):
        for nodes in e.nodes:
            leaf = nodes["is_leaf"].astype(bool)
            idx = np.arange(len(nodes)) + off
            feats.append(np.where(leaf, 0, nodes["feature_idx"]).astype(np.int32))
            thr.append(np.where(leaf, np.inf, nodes["num_threshold"]).astype(np.float64))
            left.append(np.where(leaf, idx, nodes["left"].astype(np.int64) + off))
            right.append(np.where(leaf, idx, nodes["right"].astype(np.int64) + off))
            val.append(np.where(leaf, nodes["value"], 0.0).astype(np.float64))
            roots.append(off)
            owner.append(j)
            off += len(nodes)

    def cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)

    return TreeArrays(cat(feats, np.int32), cat(thr, np.float64), cat(left, np.int32),
                      cat(right, np.int32), cat(val, np.float64),
                      np.asarray(roots, np.int32), np.asarray(owner, np.int32),
                      np.asarray([e.base for e in experts], np.float64))


def tree_depth(t: TreeArrays) -> int:
    """Levels of the deepest tree (the walk's number of steps)."""
    idx, depth = t.roots.copy(), 0
    while idx.size:
        nxt = t.left[idx]
        inner = nxt != idx
        if not inner.any():
            break
        idx = np.concatenate([nxt[inner], t.right[idx][inner]])
        depth += 1
    return depth


def tree_logits(t: TreeArrays, F: np.ndarray, depth: int | None = None) -> np.ndarray:
    """Raw scores (log-odds) of every expert for the rows of ``F`` (n, p): (n, experts).
    ``depth``: :func:`tree_depth` of ``t``, when the caller keeps it."""
    F = np.asarray(F, dtype=np.float64)
    n, m = F.shape[0], t.base.size
    out = np.broadcast_to(t.base, (n, m)).copy()
    if not t.roots.size or not n:
        return out
    idx = np.broadcast_to(t.roots, (n, t.roots.size))
    for _ in range(tree_depth(t) if depth is None else depth):  # all trees a level down
        x = np.take_along_axis(F, t.feature[idx], axis=1)
        idx = np.where(x <= t.threshold[idx], t.left[idx], t.right[idx])
    return out + t.value[idx] @ (t.owner[:, None] == np.arange(m)).astype(np.float64)
