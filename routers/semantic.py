"""Semantic route router: routes defined by example utterances in the config.

Each route has a name, a target expert and a handful of examples (or a description). A query
is scored against every route by cosine similarity: the mean of its ``top_k`` most similar
examples, blended with the similarity to the route's centroid (robust to one odd example).
Above ``threshold`` the best route's expert answers; below it the decision is a rejection
(``reason`` says so) and the policy's fallback or rejection answer applies.

Routes come from examples, not from a fixed label set, so adding a route is a config edit and
a reload, not a retraining (cf. vLLM Semantic Router #310).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from routers.base import (
    Decision,
    GuardVerdict,
    Num,
    Router,
    RouterError,
    RoutingTable,
    Target,
    example_texts,
    examples_table,
    register,
)

__all__ = ["SemanticRouter", "routes_to_table"]


def routes_to_table(routes: Sequence[Mapping[str, Any]]) -> RoutingTable:
    """Config routes ``[{name, expert, examples: [...], description?}]`` -> a RoutingTable.

    One row per example utterance, category = route name, score 1 for the route's expert.
    """
    if not routes:
        raise RouterError("semantic router: no routes given")
    experts = sorted({str(r["expert"]) for r in routes})
    groups = []
    for r in routes:
        texts = example_texts(r)
        if not texts:
            raise RouterError(f"semantic route {r.get('name')!r} has no examples or description")
        groups.append((str(r["name"]), str(r["expert"]), texts))
    return examples_table(groups, experts)


@register
class SemanticRouter(Router):
    name = "semantic"
    trades_cost = False  # routes by label
    train_input = "a routing table with a category column"
    _array_attrs = ("examples_", "example_route_", "centroids_")
    _json_attrs = ("routes_", "route_expert_", "experts_", "dim_")
    needs_scores = False
    param_ranges: ClassVar[dict[str, Num]] = {
        "threshold": Num(-1, 1),
        "top_k": Num(1, integer=True),
        "centroid_weight": Num(0, 1),
    }

    def __init__(self, threshold: float = 0.45, top_k: int = 3,
                 centroid_weight: float = 0.5) -> None:
        self.threshold = threshold
        self.top_k = top_k
        self.centroid_weight = centroid_weight

    def fit(self, X: np.ndarray, table: RoutingTable) -> SemanticRouter:
        X = self.check_table(X, table, min_prompts=1, need_scores=False)
        if table.categories is None:
            raise RouterError("semantic router needs a category (route name) per example")
        if not 0.0 <= float(self.centroid_weight) <= 1.0:
            raise RouterError("centroid_weight must lie in [0, 1]")
        if int(self.top_k) < 1:
            raise RouterError("top_k must be at least 1")
        routes = sorted(set(table.categories))
        cat = np.array([routes.index(c) for c in table.categories])
        scores = np.nan_to_num(table.scores, nan=0.0)
        route_expert = {}
        for i, r in enumerate(routes):
            best = int(np.argmax(scores[cat == i].mean(axis=0)))
            route_expert[r] = table.models[best]
        Xn = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
        cents = np.stack([Xn[cat == i].mean(axis=0) for i in range(len(routes))])
        cents /= np.maximum(np.linalg.norm(cents, axis=1, keepdims=True), 1e-12)
        self.routes_ = routes
        self.route_expert_ = route_expert
        self.experts_ = sorted(set(route_expert.values()))
        self.examples_ = Xn.astype(np.float32)
        self.example_route_ = cat.astype(np.int32)
        self.centroids_ = cents.astype(np.float32)
        self.dim_ = int(X.shape[1])
        return self

    def route_scores(self, X: np.ndarray) -> np.ndarray:
        """Similarity of each query to each route, shape (n, n_routes)."""
        self.check_fitted()
        return self._route_scores(self.check_X(X))

    def _route_scores(self, X: np.ndarray) -> np.ndarray:
        """:meth:`route_scores` of a checked X (decide checked it once)."""
        sims = X @ self.examples_.T
        n_routes = len(self.routes_)
        out = np.empty((X.shape[0], n_routes), dtype=np.float32)
        k = int(self.top_k)
        for r in range(n_routes):
            s = sims[:, self.example_route_ == r]
            kk = min(k, s.shape[1])
            top = -np.partition(-s, kk - 1, axis=1)[:, :kk]
            out[:, r] = top.mean(axis=1)
        w = float(self.centroid_weight)
        return w * (X @ self.centroids_.T) + (1.0 - w) * out

    def decide(self, X: np.ndarray, texts: Sequence[str]) -> list[Decision]:
        self.check_fitted()
        S = self._route_scores(self.check_X(X, texts))
        out: list[Decision] = []
        thr = float(self.threshold)
        for row in S:
            order = np.argsort(-row)
            best = int(order[0])
            route = self.routes_[best]
            seen: dict[str, float] = {}
            for r in order:
                e = self.route_expert_[self.routes_[int(r)]]
                seen.setdefault(e, float(row[r]))
            targets = [Target(e, s) for e, s in seen.items()]
            sc = float(row[best])
            verdict = GuardVerdict(label=route, ood_score=1.0 - sc, threshold=1.0 - thr,
                                   rejected=sc < thr, reject_reason="ood" if sc < thr else None)
            if sc >= thr:
                out.append(Decision("single", targets, f"route '{route}' (similarity {sc:.3f} "
                                    f">= {thr:.3f})", router=self.name, guard=verdict))
            else:
                out.append(Decision("reject", targets, f"no route above threshold: best "
                                    f"'{route}' at {sc:.3f} < {thr:.3f}", router=self.name,
                                    guard=verdict))
        return out
