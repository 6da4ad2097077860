"""Per-expert success classifier: P(expert answers well | query), one model per expert.

Each expert's scores are binarised at ``success_threshold`` (scores in [0, 1]; missing pairs
are left out of that expert's training set) and a classifier on prompt embeddings predicts
success: ``logreg`` (logistic regression, default) or ``mlp`` (a small multi-layer
perceptron). ``calibration`` ``sigmoid`` or ``isotonic`` wraps each model in a
cross-validated calibrator (scikit-learn ``CalibratedClassifierCV``) so the probabilities can
be compared across experts; ``none`` keeps the raw probabilities (logistic regression is
already reasonably calibrated). An expert that always (or never) succeeded in training gets
that constant rate. Optimiser non-convergence is recorded in ``fit_notes_`` (and the
artifact) instead of raised. The choice uses the shared knob of :mod:`routers.tradeoff`.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import numpy as np

from routers.base import Num, RouterError, RoutingTable, register
from routers.tradeoff import QualityRouter

__all__ = ["ClassifierRouter", "make_success_classifier"]

MODELS = ("logreg", "mlp")
CALIBRATIONS = ("none", "sigmoid", "isotonic")


def make_success_classifier(model: str, *, C: float, hidden: int, calibration: str,
                            n_pos: int, n_neg: int, seed: int) -> Any:
    """A fresh binary classifier for one expert, calibrated where asked and possible."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    if model == "logreg":
        base: Any = LogisticRegression(C=C, max_iter=500, random_state=seed)
    else:
        base = MLPClassifier(hidden_layer_sizes=(hidden,), alpha=1.0 / C, max_iter=200,
                             early_stopping=False, random_state=seed)
    folds = min(3, n_pos, n_neg)
    if calibration == "none" or folds < 2:
        return base
    from sklearn.calibration import CalibratedClassifierCV

    return CalibratedClassifierCV(base, method=calibration, cv=folds)


@register
class ClassifierRouter(QualityRouter):
    name = "classifier"
    _array_attrs = ("constant_", "costs_")
    _json_attrs = ("experts_", "dim_", "fit_notes_")
    _skops_attrs = ("models_",)

    param_ranges: ClassVar[dict[str, Num]] = {
        "C": Num(0, lo_open=True),
        "hidden": Num(1, integer=True),
        "success_threshold": Num(0, 1),
    }

    def __init__(self, model: str = "logreg", C: float = 1.0, hidden: int = 64,
                 calibration: str = "none", success_threshold: float = 0.5,
                 cost_weight: float = 0.0, threshold: float | None = None, cost_model: str = "auto",
                 seed: int = 0) -> None:
        self.model = model
        self.C = C
        self.hidden = hidden
        self.calibration = calibration
        self.success_threshold = success_threshold
        self.cost_weight = cost_weight
        self.threshold = threshold
        self.cost_model = cost_model
        self.seed = seed

    def fit(self, X: np.ndarray, table: RoutingTable) -> ClassifierRouter:
        X, S = self._base_checks(X, table)
        if self.model not in MODELS:
            raise RouterError(f"classifier: model must be one of {', '.join(MODELS)}")
        if self.calibration not in CALIBRATIONS:
            raise RouterError(f"classifier: calibration must be one of {', '.join(CALIBRATIONS)}")
        if not float(self.C) > 0 or int(self.hidden) < 1:
            raise RouterError("classifier: C must be > 0 and hidden >= 1")
        from sklearn.exceptions import ConvergenceWarning

        models: list[Any] = []
        notes: list[str] = []
        const = np.full(S.shape[1], np.nan)
        for j in range(S.shape[1]):
            rows = np.isfinite(S[:, j])
            y = (S[rows, j] >= float(self.success_threshold)).astype(np.int64)
            n_pos = int(y.sum())
            n_neg = int(len(y) - n_pos)
            if n_pos == 0 or n_neg == 0:
                const[j] = float(n_pos > 0)
                models.append(None)
                continue
            clf = make_success_classifier(self.model, C=float(self.C), hidden=int(self.hidden),
                                          calibration=self.calibration, n_pos=n_pos,
                                          n_neg=n_neg, seed=int(self.seed))
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConvergenceWarning)
                clf.fit(X[rows], y)
            for w in caught:
                if issubclass(w.category, ConvergenceWarning):
                    notes.append(f"{table.models[j]}: optimiser stopped before converging")
                else:  # only the convergence note is recorded instead of raised
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            models.append(clf)
        self.models_ = models
        self.fit_notes_ = notes
        self.constant_ = const
        self.experts_ = list(table.models)
        self._fit_costs(X, table)
        self.dim_ = int(X.shape[1])
        return self

    def _quality(self, X: np.ndarray) -> np.ndarray:
        Q = np.empty((X.shape[0], len(self.experts_)))
        for j, clf in enumerate(self.models_):
            if clf is None:
                Q[:, j] = float(self.constant_[j])
            else:
                Q[:, j] = clf.predict_proba(X)[:, 1]
        return Q
