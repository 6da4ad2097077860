"""One contract every registered router family meets (fit -> decide -> save -> load -> same).

Each router is fitted on a small synthetic table (random unit-vector clusters, three
categories, three experts of different cost, a few missing scores) built by
``TABLE_BUILDERS`` / ``PARAMS``: to add a family that needs another kind of table or
required parameters, add one entry there.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from routers.base import (
    Decision,
    Router,
    RouterError,
    RoutingTable,
    make_router,
    registered_names,
)

DIM = 16
MODELS = ["cheap", "mid", "strong"]


def synthetic_table(n: int = 60, seed: int = 0, models: list[str] | None = None,
                    missing: bool = True) -> tuple[np.ndarray, RoutingTable]:
    """Three categories as clusters of unit vectors; each model is good at some of them."""
    models = models or MODELS
    rng = np.random.default_rng(seed)
    cats = ["math", "law", "chat"]
    centres = rng.normal(size=(len(cats), DIM))
    y = np.arange(n) % len(cats)
    X = centres[y] + 0.3 * rng.normal(size=(n, DIM))
    X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    skill = rng.uniform(0.2, 0.9, size=(len(cats), len(models)))
    S = (rng.random((n, len(models))) < skill[y]).astype(float)
    if missing:
        S[rng.random(S.shape) < 0.05] = np.nan
        S[np.isnan(S).all(axis=1), 0] = 1.0
    costs = np.tile(np.linspace(0.1, 1.0, len(models)), (n, 1))
    table = RoutingTable([f"p{i}" for i in range(n)], [f"{cats[c]} question {i}"
                         for i, c in enumerate(y)], list(models), S, costs,
                         [cats[c] for c in y])
    return X, table


def default_builder(n: int = 60) -> tuple[np.ndarray, RoutingTable]:
    return synthetic_table(n)


#: per-name table builders (default: ``default_builder``)
TABLE_BUILDERS: dict[str, Callable[..., tuple[np.ndarray, RoutingTable]]] = {}
#: per-name required parameters
PARAMS: dict[str, dict[str, Any]] = {
    "lora": {"base_model": "base-llm"},
}


def build(name: str, n: int = 60) -> tuple[Router, np.ndarray, RoutingTable]:
    X, table = TABLE_BUILDERS.get(name, default_builder)(n)
    return make_router(name, **PARAMS.get(name, {})), X, table


def _same(a: list[Decision], b: list[Decision]) -> None:
    assert len(a) == len(b)
    for da, db in zip(a, b, strict=True):
        assert da.mode == db.mode
        assert [t.expert for t in da.targets] == [t.expert for t in db.targets]
        np.testing.assert_allclose([t.score for t in da.targets],
                                   [t.score for t in db.targets], rtol=1e-5, atol=1e-6)
        assert da.aggregator == db.aggregator
        assert da.reason == db.reason


@pytest.mark.parametrize("name", registered_names())
def test_fit_decide_save_load(name: str, tmp_path: Path) -> None:
    router, X, table = build(name)
    assert router.fit(X, table) is router
    known = set(router.experts_)
    texts = table.prompts
    decisions = router.decide(X, texts)
    assert len(decisions) == len(X)
    for d in decisions:
        assert isinstance(d, Decision)
        assert d.mode in ("single", "chain", "ensemble", "reject")
        assert d.targets, "every decision names at least one target"
        assert {t.expert for t in d.targets} <= known
        assert len({t.expert for t in d.targets}) == len(d.targets)
        assert d.reason
        assert d.aggregator is None or d.aggregator in known
    # batched == one at a time
    single = [router.decide(X[i:i + 1], texts[i:i + 1])[0] for i in range(5)]
    _same(single, decisions[:5])
    path = router.save(tmp_path / name, metrics={"n": len(table)}, data_hash="abc",
                       embedder="test")
    loaded = type(router).load(path)
    assert loaded.get_params() == router.get_params()
    _same(loaded.decide(X, texts), decisions)
    # predicted quality, where offered, is (n, n_experts-it-scores) in [0, 1]
    try:
        Q = router.predict_quality(X)
    except RouterError:
        return
    assert Q.shape[0] == len(X)
    assert np.all((Q >= 0) & (Q <= 1))
    np.testing.assert_allclose(loaded.predict_quality(X), Q, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", registered_names())
def test_input_validation(name: str) -> None:
    router, X, table = build(name)
    with pytest.raises(RouterError):
        make_router(name, no_such_param=1)
    with pytest.raises(RouterError):
        router.set_params(no_such_param=1)
    empty = table.subset(np.array([], dtype=np.int64))
    with pytest.raises(RouterError):
        router.fit(X[:0], empty)
    with pytest.raises(RouterError):  # embeddings and table disagree in length
        router.fit(X[:-1], table)
    if router.needs_scores:
        one = RoutingTable(table.prompt_ids, table.prompts, table.models[:1],
                           np.ones((len(table), 1)), np.ones((len(table), 1)),
                           table.categories)
        with pytest.raises(RouterError):
            router.fit(X, one)
    router.fit(X, table)
    with pytest.raises(RouterError):  # wrong embedding dimension
        router.decide(np.ones((2, DIM + 1), np.float32), ["a", "b"])
    with pytest.raises(RouterError):  # texts and embeddings disagree
        router.decide(X[:2], ["only one"])


def test_unfitted_router_refuses() -> None:
    for name in registered_names():
        router, X, _ = build(name)
        with pytest.raises(RouterError):
            router.decide(X[:1], ["x"])
