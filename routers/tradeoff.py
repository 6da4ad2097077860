"""The shared cost/quality choice of every learned router, and a base class built on it.

A learned router estimates ``Q`` (n, m): the quality in [0, 1] each of m experts would reach
on each of n queries. This module turns ``Q`` and per-expert costs into a choice per query,
with one of two knobs:

* ``cost_weight`` λ >= 0 (any number of experts): maximise ``Q - λ · c / scale``, where
  ``c`` are the experts' mean costs (m,), or each query's predicted costs (n, m) with a
  router's cost model (:mod:`routers.costmodel`), and ``scale`` is one
  number (by default the largest mean cost). λ = 0 picks the best predicted quality; larger
  λ buys cheaper experts. Ties go to the cheaper expert.
* ``threshold`` t (RouteLLM style): call the strong (most expensive) expert only when its
  predicted advantage over the weak (cheapest) one exceeds t: ``Q_strong - Q_weak > t``.
  For more than two experts this generalises to "the cheapest expert whose predicted quality
  is within t of the best predicted quality"; with two experts both read the same.

These functions are the stable interface the offline evaluation sweeps (it calls
``router.predict_quality(X)`` and ``router.predict_costs(X, texts)`` once and then
:func:`choose` for every knob value); keep their signatures.

:class:`QualityRouter` is the base class of the families that estimate ``Q``: a subclass
implements ``fit`` (setting ``experts_``, ``costs_``, ``dim_``) and ``_quality(X)``; the base
class gives ``predict_quality`` and a batched ``decide`` that orders every expert by utility,
so each decision carries the full fallback chain.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Self

import numpy as np

from routers.base import Decision, Num, Router, RouterError, RoutingTable, Target
from routers.costmodel import CostModel, check_cost_model, fit_cost_model

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


def normalised_costs(costs: np.ndarray | Sequence[float], scale: float | None = None
                     ) -> np.ndarray:
    """Costs divided by one scale: per expert (m,) or per query (n, m).

    ``scale`` defaults to the largest per-expert cost (for (n, m): the largest column mean).
    A router passes its own (the largest mean training cost), so that with per-query costs
    ``cost_weight`` means the same on every query whatever the batch. Zero scale: all zero.
    """
    c = np.asarray(costs, dtype=np.float64)
    if c.ndim not in (1, 2):
        raise RouterError(f"costs must be 1-D (one per expert) or 2-D (one per query and "
                          f"expert), got shape {c.shape}")
    if not np.all(np.isfinite(c)) or np.any(c < 0):
        raise RouterError("costs must be finite and non-negative")
    if scale is None:
        top = float((c if c.ndim == 1 else c.mean(axis=0)).max()) if c.size else 0.0
    else:
        top = float(scale)
        if not np.isfinite(top) or top < 0:
            raise RouterError(f"cost scale must be a finite number >= 0, got {scale!r}")
    return c / top if top > 0 else np.zeros_like(c)


def strong_weak(costs: np.ndarray | Sequence[float]) -> tuple[int, int]:
    """Indices of the strong (most expensive) and weak (cheapest) experts."""
    c = np.asarray(costs, dtype=np.float64)
    order = np.lexsort((np.arange(c.size), c))
    return int(order[-1]), int(order[0])


def _per_query(Q: np.ndarray, costs: np.ndarray | Sequence[float],
               scale: float | None) -> tuple[np.ndarray, np.ndarray]:
    """(Q, normalised costs broadcast to Q's shape), checked."""
    Q = np.asarray(Q, dtype=np.float64)
    c = normalised_costs(costs, scale)
    m = c.shape[-1]
    if Q.ndim != 2 or Q.shape[1] != m or (c.ndim == 2 and c.shape[0] != Q.shape[0]):
        want = f"({c.shape[0]}, {m})" if c.ndim == 2 else f"(n, {m})"
        raise RouterError(f"Q must have shape {want}, got {Q.shape}")
    return Q, np.broadcast_to(c, Q.shape)


def utilities(Q: np.ndarray, costs: np.ndarray | Sequence[float],
              cost_weight: float = 0.0, scale: float | None = None) -> np.ndarray:
    """``Q - cost_weight · normalised cost``, shape (n, m); ``costs`` per expert (m,) or per
    query (n, m), normalised by :func:`normalised_costs` with ``scale``."""
    Q, c = _per_query(Q, costs, scale)
    return Q - float(cost_weight) * c


def validate_knobs(cost_weight: Any, threshold: Any) -> None:
    if threshold is not None:
        t = float(threshold)
        if not np.isfinite(t):
            raise RouterError("threshold must be a finite number")
    if cost_weight is None or not np.isfinite(float(cost_weight)) or float(cost_weight) < 0:
        raise RouterError(f"cost_weight must be a number >= 0, got {cost_weight!r}")


def choose(Q: np.ndarray, costs: np.ndarray | Sequence[float], *, cost_weight: float = 0.0,
           threshold: float | None = None, scale: float | None = None) -> np.ndarray:
    """Index of the chosen expert per row of ``Q`` (n,), with the knob described above;
    ``costs`` per expert (m,) or per query (n, m) (then "cheaper" is per query)."""
    Q, c = _per_query(Q, costs, scale)
    # rank of each expert by cost within its row (ties: the earlier column)
    by_cost = np.argsort(c, axis=1, kind="stable")
    if threshold is None:
        U = Q - float(cost_weight) * c
        cheap_rank = np.argsort(by_cost, axis=1, kind="stable")
        # ties (within float noise) go to the cheaper expert
        return np.argmax(U - 1e-9 * cheap_rank, axis=1)
    t = float(threshold)
    ok = Q.max(axis=1, keepdims=True) - t <= Q
    first_ok = np.argmax(np.take_along_axis(ok, by_cost, axis=1), axis=1)  # the best is ok
    return by_cost[np.arange(Q.shape[0]), first_ok]


def preference_order(Q: np.ndarray, costs: np.ndarray | Sequence[float], *,
                     cost_weight: float = 0.0, threshold: float | None = None,
                     scale: float | None = None) -> np.ndarray:
    """Every expert per row, best first: the chosen one, then the rest by utility (n, m)."""
    Q = np.asarray(Q, dtype=np.float64)
    chosen = choose(Q, costs, cost_weight=cost_weight, threshold=threshold, scale=scale)
    U = utilities(Q, costs, 0.0 if threshold is not None else cost_weight, scale)
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

    Subclasses call :meth:`_fit_costs` in ``fit`` (setting ``costs_`` and ``cost_model_``),
    set ``experts_`` and ``dim_``, and
    implement ``_quality(X) -> (n, m)``; they include ``cost_weight``, ``threshold`` and
    ``cost_model`` in their parameters. ``_explain(X, Q)`` may return one short text per row
    to prefix the reason.

    Costs: ``cost_model="mean"`` trades quality against each expert's mean training cost;
    ``"predicted"`` against :class:`routers.costmodel.CostModel`'s estimate for the query
    (:meth:`predict_costs`); ``"auto"`` (the families' default) against the estimate for the
    experts whose cost the model explains (:func:`routers.costmodel.fit_cost_model`), the mean
    for the others. All are divided by one scale, the largest mean training cost
    (:attr:`cost_scale`), so a cost weight means the same with any and on every query.
    """

    _tradeoff_params: ClassVar[tuple[str, ...]] = ("cost_weight", "threshold", "cost_model")
    #: ``threshold``: the cheapest expert within this much predicted quality (0..1) of the
    #: best; ``cost_weight``: quality given up per unit of normalised cost
    param_ranges: ClassVar[dict[str, Num]] = {
        "cost_weight": Num(0),
        "threshold": Num(0, 1, none_ok=True),
    }
    cost_weight: float
    threshold: float | None
    #: families without a ``cost_model`` parameter (complexity, lora) trade mean costs
    cost_model: str = "mean"
    costs_: np.ndarray
    cost_model_: CostModel | None

    def _quality(self, X: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _quality_texts(self, X: np.ndarray, texts: Sequence[str] | None) -> np.ndarray:
        """``Q`` of the checked ``X``; families whose features also read the query texts
        (irt, stack) override this instead of :meth:`predict_quality` and :meth:`decide`."""
        return self._quality(X)

    def _explain(self, X: np.ndarray, Q: np.ndarray) -> list[str] | None:
        return None

    def _base_checks(self, X: np.ndarray, table: RoutingTable, *, min_prompts: int = 2
                     ) -> tuple[np.ndarray, np.ndarray]:
        """Shared fit-time checks: shapes, model count, knobs; returns (X, scores)."""
        X = self.check_table(X, table, min_prompts=min_prompts)
        validate_knobs(self.cost_weight, self.threshold)
        check_cost_model(self.cost_model, self.name)
        S = validate_scores(table, name=self.name)
        return X, S

    def check_params(self) -> None:
        super().check_params()
        if "cost_model" in self.param_names():
            check_cost_model(self.cost_model, self.name)

    def set_params(self, **params: Any) -> Self:
        """Router.set_params; a fitted router can switch to ``cost_model="predicted"`` only
        when it was fitted with a cost model (a gateway policy's params on an artifact)."""
        super().set_params(**params)
        if "cost_model" in params and check_cost_model(self.cost_model, self.name) == \
                "predicted" and hasattr(self, "costs_") and \
                getattr(self, "cost_model_", None) is None:
            self.cost_model = "mean"
            raise RouterError(f"{self.name}: cost_model 'predicted' needs a router fitted with "
                              "it (this one was fitted with mean costs); train it again with "
                              "cost_model predicted")
        return self

    def _fit_costs(self, X: np.ndarray, table: RoutingTable) -> None:
        """``costs_`` (mean training cost per expert) and ``cost_model_`` (the per-query
        model, or None where decisions trade mean costs) from the training table."""
        self.costs_ = table.mean_costs()
        self.cost_model_, fitted = fit_cost_model(check_cost_model(self.cost_model, self.name),
                                                  X, table.prompts, table.costs, table.scores)
        # what the fit found, for the training report (not stored in an artifact)
        self._cost_fit = fitted

    def cost_model_summary(self) -> dict[str, Any]:
        """The ``cost_model`` parameter and what it gave: the experts whose cost is predicted
        per query (empty: mean costs) and each modelled expert's cross-validated R^2 (known
        after a fit, and from an artifact that holds a cost model)."""
        model = getattr(self, "cost_model_", None)
        found = getattr(self, "_cost_fit", None) or model
        out: dict[str, Any] = {"cost_model": self.cost_model, "predicted": [], "cv_r2": {}}
        if found is not None:
            out["cv_r2"] = found.summary(list(self.experts_))["cv_r2"]
        if model is not None:
            out["predicted"] = model.summary(list(self.experts_))["predicted"]
        return out

    @property
    def cost_scale(self) -> float:
        """The one scale every cost is divided by: the largest mean training cost."""
        c = np.asarray(self.costs_, dtype=np.float64)
        return float(c.max()) if c.size else 0.0

    def predict_costs(self, X: np.ndarray, texts: Sequence[str] | None = None) -> np.ndarray:
        """The cost of each expert for each query the router trades against, (n, m): the
        per-query prediction where the router has a cost model (``texts`` required: the
        prompt's length is a feature), else the mean training costs on every row."""
        self.check_fitted()
        X = self.check_X(X, texts)
        per_query = self._decision_costs(X, texts)
        if per_query is not None:
            return per_query
        return np.broadcast_to(np.asarray(self.costs_, dtype=np.float64),
                               (X.shape[0], len(self.costs_))).copy()

    def _decision_costs(self, X: np.ndarray, texts: Sequence[str] | None
                        ) -> np.ndarray | None:
        """Per-query predicted costs (n, m) of the already checked ``X`` where the router
        trades against its cost model; None with ``"mean"``, or ``"auto"`` without a model
        (decisions then use ``costs_``)."""
        mode = check_cost_model(self.cost_model, self.name)
        if mode == "mean":
            return None
        model = getattr(self, "cost_model_", None)
        if model is None and mode == "auto":
            return None
        if model is None:
            raise RouterError(f"{self.name}: cost_model 'predicted' but the fitted router "
                              "has no cost model (fit it again)")
        if texts is None:
            raise RouterError(f"{self.name}: predicted costs need the query texts")
        return model.predict(X, texts)

    def _extra_arrays(self) -> dict[str, np.ndarray]:
        """Arrays an artifact stores beside ``_array_attrs``: the cost model's."""
        model = getattr(self, "cost_model_", None)
        return {} if model is None else {f"cost_model.{k}": v
                                         for k, v in model.to_arrays().items()}

    def _restore_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """The cost model from an artifact's arrays; an artifact written before cost models
        existed has none and its ``cost_model`` parameter (absent) reads ``mean``."""
        got = {k.split(".", 1)[1]: v for k, v in arrays.items()
               if k.startswith("cost_model.")}
        self.cost_model_ = CostModel.from_arrays(got) if got else None
        if check_cost_model(self.cost_model, self.name) == "predicted" and not got:
            raise RouterError(f"{self.name}: artifact says cost_model 'predicted' but holds "
                              "no cost model")

    def predict_quality(self, X: np.ndarray, texts: Sequence[str] | None = None) -> np.ndarray:
        self.check_fitted()
        X = self.check_X(X, texts)
        if not len(X):  # an empty batch (some estimators refuse zero rows)
            return np.zeros((0, len(self.experts_)))
        Q = np.asarray(self._quality_texts(X, texts), dtype=np.float64)
        return np.clip(Q, 0.0, 1.0)

    def decide(self, X: np.ndarray, texts: Sequence[str]) -> list[Decision]:
        self.check_fitted()
        X = self.check_X(X, texts)  # once: quality and per-query costs read the checked X
        if not len(X):
            return []
        Q = np.clip(np.asarray(self._quality_texts(X, texts), dtype=np.float64), 0.0, 1.0)
        return self.decisions_from_quality(Q, self._explain(X, Q),
                                           costs=self._decision_costs(X, texts))

    def decisions_from_quality(self, Q: np.ndarray, notes: Sequence[str] | None = None,
                               costs: np.ndarray | None = None) -> list[Decision]:
        """Turn predicted quality into Decisions with the router's knob (full fallback chain);
        ``costs`` (n, m) per query (:meth:`predict_costs`), else the mean training costs."""
        c = np.asarray(self.costs_ if costs is None else costs, dtype=np.float64)
        thr = None if self.threshold is None else float(self.threshold)
        cw = float(self.cost_weight)
        order = preference_order(Q, c, cost_weight=cw, threshold=thr, scale=self.cost_scale)
        knob = (f"threshold {thr:g} on predicted advantage" if thr is not None
                else f"cost weight {cw:g}")
        if c.ndim == 2:
            knob += ", per-query predicted costs"
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
