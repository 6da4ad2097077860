"""Boosted trees as arrays (routers/trees.py) and the stack's trees view."""

from __future__ import annotations

import numpy as np
import pytest

from routers.trees import (
    MIN_PROMPTS,
    TREE_PARAMS,
    VAL_FRACTION,
    fit_expert_trees,
    pack_trees,
    tree_logits,
)


def _xor(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Success depends on an interaction (sign of x0 * x1) no linear model reads."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6))
    return X, (X[:, 0] * X[:, 1] > 0).astype(np.float64)


def test_the_array_walk_gives_scikit_learns_scores() -> None:
    from sklearn.ensemble import HistGradientBoostingClassifier

    X, y = _xor(1500, 0)
    e = fit_expert_trees(X, y, seed=3)
    assert e.nodes
    # the same fit by hand
    h = HistGradientBoostingClassifier(**TREE_PARAMS, early_stopping=True,
                                       validation_fraction=VAL_FRACTION, random_state=3)
    h.fit(X, y)
    Q = np.random.default_rng(1).normal(size=(200, 6))
    got = tree_logits(pack_trees([e]), Q)[:, 0]
    assert np.allclose(got, h._raw_predict(Q)[:, 0], atol=1e-12)
    # several experts share one node table; each keeps its own scores
    X2, y2 = _xor(800, 5)
    e2 = fit_expert_trees(X2, np.clip(1 - y2, 0.1, 0.8), seed=0)  # soft scores
    assert e2.nodes
    both = tree_logits(pack_trees([e, e2]), Q)
    assert np.allclose(both[:, 0], got)
    assert np.allclose(both[:, 1], tree_logits(pack_trees([e2]), Q)[:, 0])


def test_trees_read_an_interaction() -> None:
    from sklearn.metrics import roc_auc_score

    X, y = _xor(2000, 0)
    Q, yq = _xor(500, 1)
    assert roc_auc_score(yq, tree_logits(pack_trees([fit_expert_trees(X, y, 0)]), Q)[:, 0]) \
        > 0.9
    # soft scores are cut at 0.5: the same trees as the 0/1 outcome they round to
    soft = np.clip(y * 0.9 + 0.05, 0, 1)
    a = tree_logits(pack_trees([fit_expert_trees(X, soft, 0)]), Q)
    assert np.array_equal(a, tree_logits(pack_trees([fit_expert_trees(X, y, 0)]), Q))


def test_too_few_prompts_or_one_outcome_give_the_base_rate() -> None:
    X, y = _xor(MIN_PROMPTS - 1, 0)
    for s in (y, np.ones(len(y)), np.full(len(y), 0.3)):
        e = fit_expert_trees(X, s, 0)
        assert e.nodes == []
        rate = ((s >= 0.5).sum() + 0.5) / (len(s) + 1)
        out = tree_logits(pack_trees([e]), X[:3])
        assert np.allclose(out, np.log(rate / (1 - rate)))


def test_the_stack_reads_an_interaction_through_its_trees_view(monkeypatch) -> None:
    """A table whose expert succeeds on long prompts of one topic and short ones of the
    other: neither the topic nor the length alone says it, so the stack without its trees
    view ranks the prompts barely better than chance."""
    from sklearn.metrics import roc_auc_score

    from routers.base import RoutingTable, make_router
    from routers.stack import StackRouter

    monkeypatch.setattr(StackRouter, "trees_min_prompts", 500)  # the table has 900

    rng = np.random.default_rng(0)
    n = 1200
    topic = rng.integers(0, 2, n)
    long = rng.integers(0, 2, n)
    words = [["apple", "pear", "plum"], ["engine", "wheel", "brake"]]
    prompts = [" ".join(rng.choice(words[t], 30 if lg else 3)) + f" {i}"
               for i, (t, lg) in enumerate(zip(topic, long, strict=True))]
    X = np.eye(2)[topic] + 0.05 * rng.normal(size=(n, 2))
    ok = (topic == long).astype(np.float64)
    S = np.stack([ok, np.full(n, 0.5)], 1)
    table = RoutingTable([str(i) for i in range(n)], prompts, ["a", "b"], S, np.ones_like(S))
    tr, te = np.arange(900), np.arange(900, n)
    auc = {}
    for trees in (True, False):
        r = make_router("stack", trees=trees, lexical=False).fit(X[tr], table.subset(tr))
        P = r.predict_quality(X[te], [prompts[i] for i in te])
        auc[trees] = roc_auc_score(ok[te], P[:, 0])
    assert auc[True] > 0.95 and auc[False] < 0.75, auc


@pytest.mark.parametrize("trees", [True, False])
def test_a_stack_with_or_without_trees_saves_and_loads_the_same_decisions(
        tmp_path, monkeypatch, trees: bool) -> None:
    from routers.base import get_router_class, make_router
    from routers.stack import StackRouter
    from tests.unit.test_router_contract import synthetic_table

    X, table = synthetic_table(150, models=["cheap", "dear"], missing=False)
    # a table under the size the trees view needs: none fitted, whatever the parameter
    assert make_router("stack", trees=True).fit(X, table).tree_base_.size == 0
    monkeypatch.setattr(StackRouter, "trees_min_prompts", 100)
    r = make_router("stack", trees=trees).fit(X, table)
    assert bool(r.tree_roots_.size) is trees
    assert r.tree_category_ is trees  # the table has categories: the trees read their rates
    r.save(tmp_path / "s")
    loaded = get_router_class("stack").load(tmp_path / "s")
    P = r.predict_quality(X[:20], table.prompts[:20])
    assert np.array_equal(P, loaded.predict_quality(X[:20], table.prompts[:20]))
