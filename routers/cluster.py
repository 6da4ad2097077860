"""Cluster router (online k-means): cluster of the query -> best expert by observed reward.

``fit`` seeds ``n_clusters`` k-means centroids from the training prompts and, per cluster
and expert, the sum and count of observed scores. ``partial_fit(X, experts, rewards)`` learns
online from gateway feedback: each query is assigned to its nearest centroid, the centroid
moves toward it (step ``1 / count`` — a running mean — or a fixed ``learning_rate``), and the
reward is added to that cluster's statistics for the expert that answered. Predicted quality
is the cluster's mean reward per expert, shrunk toward the expert's overall mean by
``prior_strength`` pseudo-observations; the choice uses the shared knob of
:mod:`routers.tradeoff`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from routers.base import Num, RouterError, RoutingTable, register
from routers.knn import unit_rows
from routers.tradeoff import QualityRouter

__all__ = ["ClusterRouter"]


@register
class ClusterRouter(QualityRouter):
    name = "cluster"
    _array_attrs = ("centroids_", "centroid_counts_", "reward_sum_", "reward_count_",
                    "costs_")
    _json_attrs = ("experts_", "dim_")

    param_ranges: ClassVar[dict[str, Num]] = {
        "n_clusters": Num(1, integer=True),
        "prior_strength": Num(0),
        "learning_rate": Num(0, 1, lo_open=True, none_ok=True),
    }

    def __init__(self, n_clusters: int = 16, prior_strength: float = 2.0,
                 learning_rate: float | None = None, cost_weight: float = 0.0,
                 threshold: float | None = None, cost_model: str = "auto", seed: int = 0) -> None:
        self.n_clusters = n_clusters
        self.prior_strength = prior_strength
        self.learning_rate = learning_rate
        self.cost_weight = cost_weight
        self.threshold = threshold
        self.cost_model = cost_model
        self.seed = seed

    def fit(self, X: np.ndarray, table: RoutingTable) -> ClusterRouter:
        from sklearn.cluster import KMeans

        X, S = self._base_checks(X, table)
        if int(self.n_clusters) < 1 or float(self.prior_strength) < 0:
            raise RouterError("cluster: n_clusters must be >= 1 and prior_strength >= 0")
        if self.learning_rate is not None and not 0 < float(self.learning_rate) <= 1:
            raise RouterError("cluster: learning_rate must lie in (0, 1] or be None")
        Xn = unit_rows(X)
        k = min(int(self.n_clusters), len(table))
        km = KMeans(n_clusters=k, n_init=3, random_state=int(self.seed)).fit(Xn)
        labels = km.labels_.astype(np.int64)
        finite = np.isfinite(S)
        self.centroids_ = unit_rows(km.cluster_centers_).astype(np.float64)
        self.centroid_counts_ = np.bincount(labels, minlength=k).astype(np.float64)
        onehot = np.zeros((len(labels), k))
        onehot[np.arange(len(labels)), labels] = 1.0
        self.reward_sum_ = onehot.T @ np.where(finite, S, 0.0)
        self.reward_count_ = onehot.T @ finite.astype(np.float64)
        self.experts_ = list(table.models)
        self._fit_costs(X, table)
        self.dim_ = int(X.shape[1])
        return self

    def assign(self, X: np.ndarray) -> np.ndarray:
        """Nearest centroid per query, (n,)."""
        self.check_fitted()
        return self._assign(self.check_X(X))

    def _assign(self, X: np.ndarray) -> np.ndarray:
        """:meth:`assign` of a checked X (decide checked it once)."""
        return np.argmax(unit_rows(X) @ np.asarray(self.centroids_).T, axis=1)

    def _quality(self, X: np.ndarray) -> np.ndarray:
        rs, rc = np.asarray(self.reward_sum_), np.asarray(self.reward_count_)
        glob = rs.sum(0) / np.maximum(rc.sum(0), 1e-12)
        ps = float(self.prior_strength)
        Qc = (rs + ps * glob[None, :]) / (rc + ps) if ps > 0 else rs / np.maximum(rc, 1e-12)
        return Qc[self._assign(X)]

    def _explain(self, X: np.ndarray, Q: np.ndarray) -> list[str]:
        c = self._assign(X)
        return [f"cluster {int(ci)} ({int(self.centroid_counts_[ci])} prompts)" for ci in c]

    def partial_fit(self, X: np.ndarray, experts: Sequence[str],
                    rewards: Sequence[float]) -> None:
        """Online update from feedback: one (query embedding, expert, reward) per row."""
        self.check_fitted()
        X = unit_rows(self.check_X(X))
        if len(experts) != len(X) or len(rewards) != len(X):
            raise RouterError(f"partial_fit: {len(X)} embeddings, {len(experts)} experts and "
                              f"{len(rewards)} rewards")
        unknown = sorted(set(experts) - set(self.experts_))
        if unknown:
            raise RouterError(f"partial_fit: unknown expert(s): {', '.join(unknown)}")
        r = np.asarray(rewards, dtype=np.float64)
        if not np.all(np.isfinite(r)) or np.any((r < 0) | (r > 1)):
            raise RouterError("partial_fit: rewards must be finite and in [0, 1]")
        cents = np.array(self.centroids_, dtype=np.float64)
        counts = np.array(self.centroid_counts_, dtype=np.float64)
        rs = np.array(self.reward_sum_, dtype=np.float64)
        rc = np.array(self.reward_count_, dtype=np.float64)
        for x, e, rew in zip(X, experts, r, strict=True):
            c = int(np.argmax(cents @ x))
            counts[c] += 1.0
            eta = float(self.learning_rate) if self.learning_rate is not None else 1 / counts[c]
            cents[c] += eta * (x - cents[c])
            cents[c] /= max(float(np.linalg.norm(cents[c])), 1e-12)
            j = self.experts_.index(e)
            rs[c, j] += rew
            rc[c, j] += 1.0
        self.centroids_, self.centroid_counts_ = cents, counts
        self.reward_sum_, self.reward_count_ = rs, rc
