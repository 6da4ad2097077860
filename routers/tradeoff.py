"""The shared cost/quality choice of every learned router, and a base class built on it.

A learned router estimates ``Q`` (n, m): the quality in [0, 1] each of m experts would reach
on each of n queries. This module turns ``Q`` and per-expert costs into a choice per query,
with one of two knobs:

* ``cost_weight`` λ >= 0 (any number of experts): maximise ``Q - λ · c / max(c)``, where
  ``c`` are the experts' mean costs. λ = 0 picks the best predicted quality; larger λ buys
  cheaper experts. Ties go to the cheaper expert.
* ``threshold`` t (RouteLLM style): call the strong (most expensive) expert only when its
  predicted advantage over the weak (cheapest) one exceeds t: ``Q_strong - Q_weak > t``.
  For more than two experts this generalises to "the cheapest expert whose predicted quality
  is within t of the best predicted quality"; with two experts both read the same.

These functions are the stable interface the offline evaluation sweeps (it calls
``router.predict_quality(X)`` once and then :func:`choose` for every knob value); keep their
signatures.

:class:`QualityRouter` is the base class of the families that estimate ``Q``: a subclass
implements ``fit`` (setting ``experts_``, ``costs_``, ``dim_``) and ``_quality(X)``; the base
class gives ``predict_quality`` and a batched ``decide`` that orders every expert by utility,
so each decision carries the full fallback chain.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from routers.base import Decision, Router, RouterError, RoutingTable, Target

__all__ = [
    "QualityRouter",
    "choose",
    "normalised_costs",
    "preference_order",
    "shrunk_group_quality",
    "strong_weak",
    "utilities",
    "validate_knobs",
    "validate_scores",
]


def normalised_costs(costs: np.ndarray | Sequence[float]) -> np.ndarray:
    """Costs scaled to [0, 1] by the largest; all-zero costs stay zero."""
    c = np.asarray(costs, dtype=np.float64)
    if c.ndim != 1:
        raise RouterError(f"costs must be 1-D (one per expert), got shape {c.shape}")
    if not np.all(np.isfinite(c)) or np.any(c < 0):
        raise RouterError("costs must be finite and non-negative")
    top = float(c.max()) if c.size else 0.0
    return c / top if top > 0 else np.zeros_like(c)


def strong_weak(costs: np.ndarray | Sequence[float]) -> tuple[int, int]:
    """Indices of the strong (most expensive) and weak (cheapest) experts."""
    c = np.asarray(costs, dtype=np.float64)
    order = np.lexsort((np.arange(c.size), c))
    return int(order[-1]), int(order[0])


def utilities(Q: np.ndarray, costs: np.ndarray | Sequence[float],
              cost_weight: float = 0.0) -> np.ndarray:
    """``Q - cost_weight · normalised cost``, shape (n, m)."""
    Q = np.asarray(Q, dtype=np.float64)
    c = normalised_costs(costs)
    if Q.ndim != 2 or Q.shape[1] != c.size:
        raise RouterError(f"Q must have shape (n, {c.size}), got {Q.shape}")
    return Q - float(cost_weight) * c[None, :]


def validate_knobs(cost_weight: Any, threshold: Any) -> None:
    if threshold is not None:
        t = float(threshold)
        if not np.isfinite(t):
            raise RouterError("threshold must be a finite number")
    if cost_weight is None or not np.isfinite(float(cost_weight)) or float(cost_weight) < 0:
        raise RouterError(f"cost_weight must be a number >= 0, got {cost_weight!r}")


def choose(Q: np.ndarray, costs: np.ndarray | Sequence[float], *, cost_weight: float = 0.0,
           threshold: float | None = None) -> np.ndarray:
    """Index of the chosen expert per row of ``Q`` (n,), with the knob described above."""
    Q = np.asarray(Q, dtype=np.float64)
    c = np.asarray(costs, dtype=np.float64)
    if threshold is None:
        U = utilities(Q, c, cost_weight)
        # ties (within float noise) go to the cheaper expert
        cheap_rank = np.argsort(np.argsort(c, kind="stable"), kind="stable")
        return np.argmax(U - 1e-9 * cheap_rank[None, :], axis=1)
    if Q.ndim != 2 or Q.shape[1] != c.size:
        raise RouterError(f"Q must have shape (n, {c.size}), got {Q.shape}")
    t = float(threshold)
    best = Q.max(axis=1, keepdims=True)
    ok = best - t <= Q
    by_cost = np.argsort(c, kind="stable")
    ok_sorted = ok[:, by_cost]
    first_ok = np.argmax(ok_sorted, axis=1)  # every row has at least its best expert
    return by_cost[first_ok]


def preference_order(Q: np.ndarray, costs: np.ndarray | Sequence[float], *,
                     cost_weight: float = 0.0, threshold: float | None = None) -> np.ndarray:
    """Every expert per row, best first: the chosen one, then the rest by utility (n, m)."""
    Q = np.asarray(Q, dtype=np.float64)
    chosen = choose(Q, costs, cost_weight=cost_weight, threshold=threshold)
    U = utilities(Q, costs, 0.0 if threshold is not None else cost_weight)
    U = U.copy()
    U[np.arange(len(U)), chosen] = np.inf
    return np.argsort(-U, axis=1, kind="stable")


def validate_scores(table: RoutingTable, *, name: str) -> np.ndarray:
    """The table's score matrix, checked: every model has at least one score.

    Missing (prompt, model) pairs stay NaN; families handle them.
    """
    S = np.asarray(table.scores, dtype=np.float64)
    empty = [m for j, m in enumerate(table.models) if not np.isfinite(S[:, j]).any()]
    if empty:
        raise RouterError(f"{name}: model(s) without any score: {', '.join(empty)}")
    return S


def shrunk_group_quality(S: np.ndarray, groups: np.ndarray, n_groups: int,
                         prior_strength: float = 1.0, weights: np.ndarray | None = None
                         ) -> np.ndarray:
    """Per-group, per-model mean score (n_groups, m), shrunk toward the model's overall mean.

    ``weights`` (n, n_groups) gives soft membership; otherwise ``groups`` (n,) is hard. A
    group with few scored prompts leans on the global mean (``prior_strength`` pseudo-counts).
    """
    S = np.asarray(S, dtype=np.float64)
    finite = np.isfinite(S)
    S0 = np.where(finite, S, 0.0)
    glob = S0.sum(0) / np.maximum(finite.sum(0), 1)
    if weights is None:
        W = np.zeros((S.shape[0], n_groups))
        W[np.arange(S.shape[0]), np.asarray(groups, dtype=np.int64)] = 1.0
    else:
        W = np.asarray(weights, dtype=np.float64)
    num = W.T @ S0 + prior_strength * glob[None, :]
    den = W.T @ finite.astype(np.float64) + prior_strength
    return num / den


class QualityRouter(Router):
    """Base class of routers that predict per-expert quality and choose with :func:`choose`.

    Subclasses set ``experts_`` (list), ``costs_`` (m,), ``dim_`` in ``fit`` and implement
    ``_quality(X) -> (n, m)``; they include ``cost_weight`` and ``threshold`` in their
    parameters. ``_explain(X, Q)`` may return one short text per row to prefix the reason.
    """

    _tradeoff_params: ClassVar[tuple[str, ...]] = ("cost_weight", "threshold")
    cost_weight: float
    threshold: float | None
    costs_: np.ndarray

    def _quality(self, X: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _explain(self, X: np.ndarray, Q: np.ndarray) -> list[str] | None:
        return None

    def _base_checks(self, X: np.ndarray, table: RoutingTable, *, min_prompts: int = 2
                     ) -> tuple[np.ndarray, np.ndarray]:
        """Shared fit-time checks: shapes, model count, knobs; returns (X, scores)."""
        X = self.check_table(X, table, min_prompts=min_prompts)
        validate_knobs(self.cost_weight, self.threshold)
        S = validate_scores(table, name=self.name)
        return X, S

    def predict_quality(self, X: np.ndarray, texts: Sequence[str] | None = None) -> np.ndarray:
        self.check_fitted()
        X = self.check_X(X, texts)
        Q = np.asarray(self._quality(X), dtype=np.float64)
        return np.clip(Q, 0.0, 1.0)

    def decide(self, X: np.ndarray, texts: Sequence[str]) -> list[Decision]:
        self.check_fitted()
        X = self.check_X(X, texts)
        Q = np.clip(np.asarray(self._quality(X), dtype=np.float64), 0.0, 1.0)
        return self.decisions_from_quality(Q, self._explain(X, Q))

    def decisions_from_quality(self, Q: np.ndarray, notes: Sequence[str] | None = None
                               ) -> list[Decision]:
        """Turn predicted quality into Decisions with the router's knob (full fallback chain)."""
        costs = np.asarray(self.costs_, dtype=np.float64)
        thr = None if self.threshold is None else float(self.threshold)
        cw = float(self.cost_weight)
        order = preference_order(Q, costs, cost_weight=cw, threshold=thr)
        knob = (f"threshold {thr:g} on predicted advantage" if thr is not None
                else f"cost weight {cw:g}")
        out: list[Decision] = []
        for i in range(Q.shape[0]):
            targets = [Target(self.experts_[j], float(Q[i, j])) for j in order[i]]
            best = targets[0]
            reason = (f"{self.name}: {best.expert} predicted quality {best.score:.2f} "
                      f"({knob}; next {targets[1].expert} {targets[1].score:.2f})"
                      if len(targets) > 1 else f"{self.name}: {best.expert}")
            if notes is not None:
                reason = f"{notes[i]}; {reason}"
            out.append(Decision("single", targets, reason, router=self.name))
        return out
