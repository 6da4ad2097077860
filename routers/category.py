"""Category two-step router (Composition of Experts).

Step 1: a logistic-regression classifier on prompt embeddings predicts the query's category
(the table's ``category`` column). Step 2: a category -> expert table, learned from each
expert's mean quality per category (shrunk toward its overall mean for small categories),
chooses the expert with the shared cost/quality knob of :mod:`routers.tradeoff`.

``soft=True`` mixes the category rows by the classifier's probabilities instead of taking
the most probable category (smoother when categories overlap).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from routers.base import Num, RouterError, RoutingTable, register
from routers.tradeoff import QualityRouter, shrunk_group_quality

__all__ = ["CategoryRouter", "fit_category_classifier", "softmax_rows"]


def fit_category_classifier(X: np.ndarray, labels: np.ndarray, n_classes: int, *, C: float,
                            seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression on embeddings as plain arrays: logits = X W^T + b.

    Kept as arrays (not a pickled or skops estimator) so that loading is data only and
    inference is one matrix product. One class only: all-zero weights.
    """
    from sklearn.linear_model import LogisticRegression

    W = np.zeros((n_classes, X.shape[1]))
    b = np.zeros(n_classes)
    classes = np.unique(labels)
    if len(classes) < 2:
        return W, b
    clf = LogisticRegression(C=float(C), max_iter=500, random_state=int(seed)).fit(X, labels)
    if len(classes) == 2:  # sklearn keeps one row for the positive class
        W[classes[1]], b[classes[1]] = clf.coef_[0], clf.intercept_[0]
    else:
        W[classes], b[classes] = clf.coef_, clf.intercept_
        missing = np.setdiff1d(np.arange(n_classes), classes)
        b[missing] = -np.inf
    return W, b


def softmax_rows(Z: np.ndarray) -> np.ndarray:
    Z = Z - Z.max(axis=1, keepdims=True)
    P = np.exp(Z)
    return P / P.sum(axis=1, keepdims=True)


@register
class CategoryRouter(QualityRouter):
    name = "category"
    train_input = "a routing table with a category column"
    _array_attrs = ("coef_", "intercept_", "category_quality_", "costs_")
    _json_attrs = ("experts_", "categories_", "dim_")

    param_ranges: ClassVar[dict[str, Num]] = {
        "C": Num(0, lo_open=True),
        "prior_strength": Num(0),
    }

    def __init__(self, C: float = 1.0, prior_strength: float = 5.0, soft: bool = False,
                 cost_weight: float = 0.0, threshold: float | None = None, cost_model: str = "auto",
                 seed: int = 0) -> None:
        self.C = C
        self.prior_strength = prior_strength
        self.soft = soft
        self.cost_weight = cost_weight
        self.threshold = threshold
        self.cost_model = cost_model
        self.seed = seed

    def fit(self, X: np.ndarray, table: RoutingTable) -> CategoryRouter:
        X, S = self._base_checks(X, table)
        if table.categories is None:
            raise RouterError("category router needs a 'category' column in the routing table")
        if not float(self.C) > 0:
            raise RouterError("category: C must be > 0")
        cats = sorted(set(table.categories))
        y = np.array([cats.index(c) for c in table.categories])
        self.coef_, self.intercept_ = fit_category_classifier(X, y, len(cats), C=float(self.C),
                                                              seed=int(self.seed))
        self.category_quality_ = shrunk_group_quality(S, y, len(cats),
                                                      float(self.prior_strength))
        self.categories_ = cats
        self.experts_ = list(table.models)
        self._fit_costs(X, table)
        self.dim_ = int(X.shape[1])
        return self

    def category_proba(self, X: np.ndarray) -> np.ndarray:
        """P(category | x), shape (n, n_categories)."""
        self.check_fitted()
        return self._category_proba(self.check_X(X))

    def _category_proba(self, X: np.ndarray) -> np.ndarray:
        """:meth:`category_proba` of a checked X (decide checked it once)."""
        Z = X.astype(np.float64) @ np.asarray(self.coef_).T + np.asarray(self.intercept_)
        return softmax_rows(Z)

    def _quality(self, X: np.ndarray) -> np.ndarray:
        P = self._category_proba(X)
        if not self.soft:
            hard = np.zeros_like(P)
            hard[np.arange(len(P)), P.argmax(axis=1)] = 1.0
            P = hard
        return P @ np.asarray(self.category_quality_)

    def _explain(self, X: np.ndarray, Q: np.ndarray) -> list[str]:
        P = self._category_proba(X)
        best = P.argmax(axis=1)
        return [f"category '{self.categories_[b]}' (p={P[i, b]:.2f})"
                for i, b in enumerate(best)]
