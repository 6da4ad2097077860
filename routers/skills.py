"""Skill-based router (Symbolic-MoE): skill profile -> top-k experts + an aggregator.

Skills are the table's categories when it has them, else ``n_skills`` k-means clusters of the
prompt embeddings. A query's skill profile is a soft assignment: a softmax over its cosine
similarity to each skill's centroid (``temperature``). Each expert's skill-specific quality
is its mean score on that skill's prompts (shrunk toward its overall mean), so the predicted
quality of expert m is ``profile · quality[:, m]``. The ``k`` best experts by the shared
cost/quality knob answer together: mode ``ensemble`` with ``aggregator`` (an expert that
merges their answers; default the best expert overall) when ``k > 1``, ``single`` when
``k == 1``. An ensemble decision's targets are exactly its k members (the gateway fans out to
all of them); a single decision lists every expert, best first, as the fallback chain.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from routers.base import Decision, Num, RouterError, RoutingTable, register
from routers.knn import unit_rows
from routers.tradeoff import QualityRouter, shrunk_group_quality

__all__ = ["SkillsRouter"]


@register
class SkillsRouter(QualityRouter):
    name = "skills"
    train_input = "a routing table with a category column (else k-means clusters)"
    _array_attrs = ("centroids_", "skill_quality_", "costs_")
    _json_attrs = ("experts_", "skills_", "aggregator_", "dim_")

    param_ranges: ClassVar[dict[str, Num]] = {
        "k": Num(1, integer=True),
        "n_skills": Num(1, integer=True),
        "temperature": Num(0, lo_open=True),
        "prior_strength": Num(0),
    }

    def __init__(self, k: int = 2, aggregator: str | None = None, n_skills: int = 8,
                 temperature: float = 0.05, prior_strength: float = 5.0,
                 use_categories: bool = True, cost_weight: float = 0.0,
                 threshold: float | None = None, cost_model: str = "auto", seed: int = 0) -> None:
        self.k = k
        self.aggregator = aggregator
        self.n_skills = n_skills
        self.temperature = temperature
        self.prior_strength = prior_strength
        self.use_categories = use_categories
        self.cost_weight = cost_weight
        self.threshold = threshold
        self.cost_model = cost_model
        self.seed = seed

    def fit(self, X: np.ndarray, table: RoutingTable) -> SkillsRouter:
        X, S = self._base_checks(X, table)
        if int(self.k) < 1 or int(self.n_skills) < 1 or not float(self.temperature) > 0:
            raise RouterError("skills: k and n_skills must be >= 1 and temperature > 0")
        if self.aggregator is not None and self.aggregator not in table.models:
            raise RouterError(f"skills: aggregator {self.aggregator!r} is not one of the "
                              f"table's models ({', '.join(table.models)})")
        Xn = unit_rows(X)
        if self.use_categories and table.categories is not None:
            skills = sorted(set(table.categories))
            groups = np.array([skills.index(c) for c in table.categories])
        else:
            from sklearn.cluster import KMeans

            n_sk = min(int(self.n_skills), len(table))
            km = KMeans(n_clusters=n_sk, n_init=3, random_state=int(self.seed)).fit(Xn)
            groups = km.labels_.astype(np.int64)
            skills = [f"skill-{i}" for i in range(n_sk)]
        cents = np.stack([Xn[groups == g].mean(axis=0) if np.any(groups == g)
                          else np.zeros(Xn.shape[1], np.float32) for g in range(len(skills))])
        self.centroids_ = unit_rows(cents)
        self.skill_quality_ = shrunk_group_quality(S, groups, len(skills),
                                                   float(self.prior_strength))
        self.skills_ = skills
        self.experts_ = list(table.models)
        self._fit_costs(X, table)
        glob = np.nanmean(S, axis=0)
        self.aggregator_ = self.aggregator or self.experts_[int(np.argmax(glob))]
        self.dim_ = int(X.shape[1])
        return self

    def skill_profile(self, X: np.ndarray) -> np.ndarray:
        """Soft assignment of each query to the skills, rows sum to 1, (n, n_skills)."""
        self.check_fitted()
        return self._skill_profile(self.check_X(X))

    def _skill_profile(self, X: np.ndarray) -> np.ndarray:
        """:meth:`skill_profile` of a checked X (decide checked it once)."""
        sims = unit_rows(X) @ np.asarray(self.centroids_).T
        z = (sims - sims.max(axis=1, keepdims=True)) / float(self.temperature)
        P = np.exp(z.astype(np.float64))
        return P / P.sum(axis=1, keepdims=True)

    def _quality(self, X: np.ndarray) -> np.ndarray:
        return self._skill_profile(X) @ np.asarray(self.skill_quality_)

    def decide(self, X: np.ndarray, texts: Sequence[str]) -> list[Decision]:
        self.check_fitted()
        X = self.check_X(X, texts)
        P = self._skill_profile(X)
        Q = np.clip(P @ np.asarray(self.skill_quality_), 0.0, 1.0)
        top = P.argmax(axis=1)
        notes = [f"skill '{self.skills_[t]}' ({P[i, t]:.2f})" for i, t in enumerate(top)]
        out = self.decisions_from_quality(Q, notes, costs=self._decision_costs(X, texts))
        k = min(int(self.k), len(self.experts_))
        if k > 1:
            for d in out:
                names = ", ".join(t.expert for t in d.targets[:k])
                d.targets = d.targets[:k]
                d.mode = "ensemble"
                d.aggregator = self.aggregator_
                d.reason = (f"{d.reason}; ensemble of top {k} ({names}) aggregated by "
                            f"{self.aggregator_}")
        return out
