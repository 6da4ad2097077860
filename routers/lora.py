"""LoRA-adapter router (LoRA-Mixer, RouterRetriever): route among adapters of one base model.

Targets are adapter names, best first, with the ``base_model`` last as the fallback (or
first, when no adapter is similar enough: best centroid similarity below
``min_similarity``). The router learns from either

* a long routing table whose models are adapter names, with per-prompt scores: the
  similarity-weighted success of the ``k`` nearest training prompts per adapter, as the
  ``knn`` router (C3PO-style), traded against cost with the shared knob; or
* adapter descriptions / example prompts (RouterRetriever): ``adapters_to_table`` turns
  ``[{name, description?, examples?}]`` into a table with score 1 for the own adapter; the
  same estimator then behaves as a centroid-and-neighbour retriever over the examples.

Each adapter also gets a centroid (mean of its well-scored prompts' embeddings); the reason
names the nearest, and ``min_similarity`` uses it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from routers.base import (
    Decision,
    Num,
    RouterError,
    RoutingTable,
    Target,
    example_texts,
    examples_table,
    register,
)
from routers.knn import knn_quality, unit_rows
from routers.tradeoff import QualityRouter, preference_order

__all__ = ["LoraRouter", "adapters_to_table"]


def adapters_to_table(adapters: Sequence[Mapping[str, Any]]) -> RoutingTable:
    """``[{name, description?, examples?: [...]}]`` -> a RoutingTable over the adapters."""
    if not adapters:
        raise RouterError("lora: no adapters given")
    names = [str(a.get("name") or "") for a in adapters]
    if any(not n for n in names) or len(set(names)) != len(names):
        raise RouterError("lora: every adapter needs a unique non-empty name")
    groups = []
    for name, a in zip(names, adapters, strict=True):
        texts = example_texts(a)
        if not texts:
            raise RouterError(f"lora: adapter {name!r} has no description or examples")
        groups.append((name, name, texts))
    return examples_table(groups, names)


@register
class LoraRouter(QualityRouter):
    name = "lora"
    trades_cost = False  # routes among adapters of one base model
    example_params: ClassVar[dict[str, Any]] = {"base_model": "base-llm"}
    train_input = ("a routing table whose models are LoRA adapter names; needs "
                   "--param base_model=NAME (optional --param adapters='[...]')")
    _array_attrs = ("train_X_", "train_scores_", "prior_", "centroids_", "costs_")
    _json_attrs = ("adapters_", "experts_", "dim_")

    param_ranges: ClassVar[dict[str, Num]] = {
        "k": Num(1, integer=True),
        "temperature": Num(0, lo_open=True),
        "prior_strength": Num(0),
        "min_similarity": Num(-1, 1, none_ok=True),
    }

    def __init__(self, base_model: str = "", adapters: list[dict[str, Any]] | None = None,
                 k: int = 10, temperature: float = 0.05, prior_strength: float = 0.5,
                 min_similarity: float | None = None, cost_weight: float = 0.0,
                 threshold: float | None = None) -> None:
        self.base_model = base_model
        self.adapters = adapters
        self.k = k
        self.temperature = temperature
        self.prior_strength = prior_strength
        self.min_similarity = min_similarity
        self.cost_weight = cost_weight
        self.threshold = threshold

    def check_params(self) -> None:
        """The ranges, and the base model every decision falls back to: without it the
        router cannot fit, said before any prompt is embedded (``train``, ``eval routing``
        check parameters first)."""
        super().check_params()
        if not isinstance(self.base_model, str) or not self.base_model.strip():
            raise RouterError("lora: base_model (the adapters' base model) is required: "
                              "--param base_model=NAME")

    def fit(self, X: np.ndarray, table: RoutingTable) -> LoraRouter:
        X, S = self._base_checks(X, table, min_prompts=2)
        if not self.base_model:
            raise RouterError("lora: base_model (the adapters' base model) is required")
        if self.base_model in table.models:
            raise RouterError(f"lora: base model {self.base_model!r} must not be an adapter "
                              "name in the table")
        if self.adapters:
            declared = {str(a.get("name")) for a in self.adapters}
            extra = sorted(set(table.models) - declared)
            if extra:
                raise RouterError(f"lora: table names adapter(s) not in 'adapters': "
                                  f"{', '.join(extra)}")
        if int(self.k) < 1 or not float(self.temperature) > 0:
            raise RouterError("lora: k must be >= 1 and temperature > 0")
        Xn = unit_rows(X)
        good = np.nan_to_num(S, nan=0.0)
        cents = good.T @ Xn / np.maximum(good.sum(0), 1e-12)[:, None]
        self.centroids_ = unit_rows(cents)
        self.train_X_ = Xn
        self.train_scores_ = S.astype(np.float32)
        self.prior_ = np.nanmean(S, axis=0)
        self.adapters_ = list(table.models)
        self.experts_ = [*self.adapters_, self.base_model]
        self.costs_ = table.mean_costs()
        self.dim_ = int(X.shape[1])
        return self

    def _quality(self, X: np.ndarray) -> np.ndarray:
        """Predicted quality of each adapter (not the base model), (n, n_adapters)."""
        return knn_quality(X, np.asarray(self.train_X_), np.asarray(self.train_scores_,
                           np.float64), np.asarray(self.prior_, np.float64), k=int(self.k),
                           temperature=float(self.temperature),
                           prior_strength=float(self.prior_strength))

    def predict_quality(self, X: np.ndarray, texts: Sequence[str] | None = None) -> np.ndarray:
        """Quality of each adapter, (n, n_adapters); columns follow ``adapters_``."""
        return super().predict_quality(X, texts)

    def quality_experts(self) -> list[str]:
        """The adapters: the base model, the decisions' last target, has no score."""
        return list(self.adapters_)

    def decide(self, X: np.ndarray, texts: Sequence[str]) -> list[Decision]:
        self.check_fitted()
        X = self.check_X(X, texts)
        Q = np.clip(self._quality(X), 0.0, 1.0)
        sims = unit_rows(X) @ np.asarray(self.centroids_).T
        thr = None if self.threshold is None else float(self.threshold)
        order = preference_order(Q, np.asarray(self.costs_), cost_weight=float(self.cost_weight),
                                 threshold=thr)
        min_sim = self.min_similarity
        out = []
        for i in range(len(X)):
            near = int(np.argmax(sims[i]))
            targets = [Target(self.adapters_[j], float(Q[i, j])) for j in order[i]]
            base = Target(self.base_model, float("nan"))
            if min_sim is not None and sims[i, near] < float(min_sim):
                reason = (f"lora: no adapter similar enough (best {self.adapters_[near]} "
                          f"{sims[i, near]:.2f} < {float(min_sim):.2f}); base model")
                targets = [base, *targets]
            else:
                reason = (f"lora: adapter {targets[0].expert} predicted quality "
                          f"{targets[0].score:.2f} (nearest adapter centroid "
                          f"{self.adapters_[near]} {sims[i, near]:.2f}); base model as fallback")
                targets = [*targets, base]
            out.append(Decision("single", targets, reason, router=self.name))
        return out
