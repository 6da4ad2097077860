"""The two-pass int8 bank search finds the same k neighbours as the float32 product, and a
guard's single-query verdicts (which use it) equal its batch verdicts (which do not)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from evals.datasets.guard import guard_table_from_labels
from routers import guard as guard_mod
from routers.guard import GuardRouter
from routers.simsearch import Int8Bank


def _unit(X: np.ndarray) -> np.ndarray:
    return (X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _topk_mean(bank: np.ndarray, q: np.ndarray, k: int) -> float:
    S = q @ bank.T
    return float(-np.partition(-S, k - 1)[:k].mean())


@pytest.mark.parametrize("nonneg", [False, True])
def test_topk_mean_equals_the_float32_product(nonneg: bool) -> None:
    rng = np.random.default_rng(0)
    # tight clusters (many near-equal similarities around the k-th), duplicated rows (ties)
    centres = rng.normal(size=(12, 48))
    B = centres[rng.integers(0, 12, 1500)] + 0.05 * rng.normal(size=(1500, 48))
    if nonneg:  # ReLU features, as an MLP head's hidden layer gives them
        B = np.maximum(B, 0.0)
    B = _unit(np.concatenate([B, B[:40]]))
    queries = _unit(np.concatenate([B[[0, 7, 1500]], centres[:4],
                                    rng.normal(size=(30, 48)),
                                    B[rng.integers(0, 1540, 30)] + 0.02 * rng.normal(
                                        size=(30, 48))]))
    for k in (1, 10):
        bank = Int8Bank(B, k)
        got = np.array([bank.topk_mean(q) for q in queries])
        want = np.array([_topk_mean(B, q, k) for q in queries])
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    # k beyond the bank's rows is every row; a zero query has zero similarity to all
    small = Int8Bank(B[:5], 10)
    assert small.k == 5
    assert small.topk_mean(queries[3]) == pytest.approx(float((B[:5] @ queries[3]).mean()),
                                                        abs=1e-6)
    assert bank.topk_mean(np.zeros(48, np.float32)) == 0.0


def test_bad_banks_are_refused() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        Int8Bank(np.zeros((0, 4), np.float32), 3)
    with pytest.raises(ValueError, match="k >= 1"):
        Int8Bank(np.ones((4, 4), np.float32), 0)


@pytest.mark.parametrize("head", [None, "mlp"])
def test_single_query_verdicts_equal_the_batch_ones(head: str | None) -> None:
    rng = np.random.default_rng(1)
    dim, n_per = 32, 700  # 2,100 rows: a bank large enough for the two-pass search
    X, y = [], []
    for c in range(3):
        centre = np.zeros(dim)
        centre[c] = 1.0
        X.append(centre + 0.3 * rng.normal(size=(n_per, dim)))
        y += [f"label{c}"] * n_per
    Xa = _unit(np.concatenate(X))
    g = GuardRouter(method="knn", head=head, unsafe=False, k=10, epochs=2, hidden=48,
                    bank_size=None, seed=0)
    g.fit(Xa, guard_table_from_labels([f"t{i}" for i in range(len(y))], y))
    assert g.bank_.shape[0] >= guard_mod._INT8_BANK_ROWS
    Q = _unit(np.concatenate([Xa[rng.integers(0, len(y), 40)] + 0.1 * rng.normal(
        size=(40, dim)), rng.normal(size=(20, dim))]))
    batch = g.verdict(Q)  # more rows than _FEW_QUERIES: the one-pass float32 product
    assert Q.shape[0] > guard_mod._FEW_QUERIES
    single = [g.verdict(Q[i:i + 1])[0] for i in range(Q.shape[0])]
    assert getattr(g, "_bank8", None) is not None  # the two-pass search ran
    np.testing.assert_allclose([v.ood_score for v in single], [v.ood_score for v in batch],
                               rtol=0, atol=1e-6)
    assert [(v.label, v.rejected) for v in single] == [(v.label, v.rejected) for v in batch]
    assert any(v.rejected for v in batch) and not all(v.rejected for v in batch)
    # another k or a refitted bank gets its own int8 copy
    g.k = 5
    s5 = g.verdict(Q[:1])[0].ood_score
    assert g._bank8[1].k == 5
    assert s5 == pytest.approx(1.0 - _topk_mean(g.bank_, g.features(Q[:1])[0], 5), abs=1e-6)


def test_a_loaded_guard_has_its_int8_bank_before_its_first_request(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    X = _unit(rng.normal(size=(1300, 16)))
    y = [f"l{i % 2}" for i in range(1300)]
    g = GuardRouter(method="knn", unsafe=False, bank_size=None).fit(
        X, guard_table_from_labels([f"t{i}" for i in range(1300)], y))
    assert g.bank_.shape[0] >= guard_mod._INT8_BANK_ROWS
    loaded = GuardRouter.load(g.save(tmp_path / "g", embedder="test"))
    assert loaded._bank8[0] is loaded.bank_
    assert loaded.verdict(X[:1])[0].ood_score == pytest.approx(g.verdict(X[:1])[0].ood_score,
                                                               abs=1e-6)
