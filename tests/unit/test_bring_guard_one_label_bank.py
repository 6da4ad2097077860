"""A one-route guard over thousands of rows builds its kNN bank by mini-batch k-means.

`expertgate eval guard --suite banking77-domain --embedder hashing` (one label, ~20,000
training rows with the default typo copies) did not finish in 10 minutes: every kNN candidate
ran a full k-means of 4,096 clusters over all rows of the one label (k-means++ start and up
to 50 Lloyd passes, each rows x 4,096 distances), minutes per fit, several fits per run.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import routers.guard as guard_mod
from evals.datasets.guard import guard_table_from_labels
from routers.guard import GuardRouter


def _one_label(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    X = 0.3 * np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    X[:, 0] += 1.0  # one topic: around the first axis
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def test_one_label_bank_past_the_work_bound_takes_mini_batch_kmeans(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import sklearn.cluster

    full_fits: list[int] = []
    real = sklearn.cluster.KMeans

    class CountingKMeans(real):  # type: ignore[misc, valid-type]
        def fit(self, X: Any, *a: Any, **kw: Any) -> Any:
            full_fits.append(int(self.n_clusters) * len(X))
            return super().fit(X, *a, **kw)

    monkeypatch.setattr(sklearn.cluster, "KMeans", CountingKMeans)
    # the real bound is 2e6 rows x prototypes; scaled down so the test stays small
    monkeypatch.setattr(guard_mod, "FULL_KMEANS_MAX_WORK", 10_000)
    X = _one_label(400)
    g = GuardRouter(method="knn", unsafe=False, k=5, bank_size=100, seed=0)
    g.fit(X, guard_table_from_labels([f"t{i}" for i in range(len(X))], ["bank"] * len(X)))
    assert full_fits == []  # 100 prototypes x 360 train rows is past the bound
    assert g.bank_.shape == (100, 16)
    assert np.allclose(np.linalg.norm(g.bank_, axis=1), 1.0, atol=1e-5)
    far = np.zeros((3, 16), np.float32)
    far[:, 0] = -1.0
    assert all(v.rejected for v in g.verdict(far))
    assert sum(not v.rejected for v in g.verdict(X[:50])) >= 40


def test_many_labels_below_the_bound_keep_full_kmeans(monkeypatch: pytest.MonkeyPatch) -> None:
    import sklearn.cluster

    full_fits: list[int] = []
    real = sklearn.cluster.KMeans

    class CountingKMeans(real):  # type: ignore[misc, valid-type]
        def fit(self, X: Any, *a: Any, **kw: Any) -> Any:
            full_fits.append(int(self.n_clusters))
            return super().fit(X, *a, **kw)

    monkeypatch.setattr(sklearn.cluster, "KMeans", CountingKMeans)
    X = _one_label(400)
    labels = [f"l{i % 4}" for i in range(len(X))]
    g = GuardRouter(method="knn", unsafe=False, k=5, bank_size=100, seed=0)
    g.fit(X, guard_table_from_labels([f"t{i}" for i in range(len(X))], labels))
    assert full_fits == [25, 25, 25, 25]  # the published suites' banks are built as before
    assert g.bank_.shape == (100, 16)
