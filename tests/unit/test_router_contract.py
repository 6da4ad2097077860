"""One contract every registered router family meets (fit -> decide -> save -> load -> same).

Each router is fitted on a small synthetic table (random unit-vector clusters, three
categories, three experts of different cost, a few missing scores) with its class's
``example_params``: a new family is picked up from the registry, with nothing to add here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from routers.base import (
    Decision,
    Router,
    RouterError,
    RoutingTable,
    get_router_class,
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


def build(name: str, n: int = 60) -> tuple[Router, np.ndarray, RoutingTable]:
    X, table = synthetic_table(n)
    return make_router(name, **get_router_class(name).example_params), X, table


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
    assert router.decide(X[:0], []) == []  # an empty batch decides nothing, every family
    try:
        Q0 = router.predict_quality(X[:0], [])
    except RouterError:
        pass  # a family that estimates no quality
    else:
        assert Q0.shape[0] == 0


def test_unfitted_router_refuses() -> None:
    for name in registered_names():
        router, X, _ = build(name)
        with pytest.raises(RouterError):
            router.decide(X[:1], ["x"])


# --------------------------------------------------------------------------- family specifics


def test_tradeoff_knobs() -> None:
    from routers.tradeoff import choose, preference_order, strong_weak

    Q = np.array([[0.6, 0.9], [0.8, 0.85], [0.2, 0.2]])
    costs = np.array([0.01, 1.0])
    assert strong_weak(costs) == (1, 0)
    assert choose(Q, costs, cost_weight=0.0).tolist() == [1, 1, 0]  # tie -> cheaper
    assert choose(Q, costs, cost_weight=0.2).tolist() == [1, 0, 0]
    assert choose(Q, costs, threshold=0.1).tolist() == [1, 0, 0]
    assert choose(Q, costs, threshold=0.5).tolist() == [0, 0, 0]
    order = preference_order(Q, costs, cost_weight=0.2)
    assert order[:, 0].tolist() == [1, 0, 0] and sorted(order[0].tolist()) == [0, 1]
    three = np.array([[0.5, 0.7, 0.72]])
    assert choose(three, np.array([1.0, 2.0, 3.0]), threshold=0.05).tolist() == [1]


def test_knn_handles_missing_scores() -> None:
    X, table = synthetic_table(60)
    table.scores[:, 2] = np.nan
    table.scores[0, 2] = 1.0  # "strong" scored once only
    Q = make_router("knn", k=5).fit(X, table).predict_quality(X)
    assert np.all(np.isfinite(Q))
    with pytest.raises(RouterError, match="without any score"):
        table.scores[:, 2] = np.nan
        make_router("knn").fit(X, table)


def test_category_needs_categories() -> None:
    X, table = synthetic_table(30)
    table.categories = None
    with pytest.raises(RouterError, match="category"):
        make_router("category").fit(X, table)


def test_complexity_budget_and_quality_target() -> None:
    X, table = synthetic_table(120, missing=False)
    # here the best model ("cheap", column 0) is also the cheapest: it answers everything
    dominant = make_router("complexity", max_strong_share=0.2).fit(X, table)
    assert dominant.strong_ == dominant.cheap_ == 0
    assert {x.expert for x in dominant.decide(X, table.prompts)} == {"cheap"}
    table.costs = table.costs[:, ::-1].copy()  # now the best model costs the most
    r = make_router("complexity", max_strong_share=0.2).fit(X, table)
    assert r.calibration_["val_strong_share"] <= 0.2 + 1e-9
    d = r.decide(X, table.prompts)
    share = np.mean([x.expert == r.experts_[r.strong_] for x in d])
    assert 0.0 <= share <= 0.6  # calibrated on validation; loose on the full set
    t = make_router("complexity", max_strong_share=None, quality_target=0.0).fit(X, table)
    assert t.calibration_["target_met"] and t.calibration_["val_strong_share"] == 0.0
    with pytest.raises(RouterError, match="exactly one"):
        make_router("complexity", max_strong_share=0.3, quality_target=0.8).fit(X, table)


def test_skills_ensemble_and_aggregator() -> None:
    X, table = synthetic_table(60)
    r = make_router("skills", k=2, aggregator="mid").fit(X, table)
    d = r.decide(X[:3], table.prompts[:3])
    assert all(x.mode == "ensemble" and x.aggregator == "mid" and len(x.targets) == 2
               for x in d)
    single = make_router("skills", k=1, use_categories=False, n_skills=3).fit(X, table)
    assert single.decide(X[:1], ["x"])[0].mode == "single"
    assert single.skills_ == ["skill-0", "skill-1", "skill-2"]
    with pytest.raises(RouterError, match="aggregator"):
        make_router("skills", aggregator="nobody").fit(X, table)


def test_cluster_learns_online() -> None:
    X, table = synthetic_table(60)
    r = make_router("cluster", n_clusters=3, prior_strength=0.0).fit(X, table)
    before = r.predict_quality(X[:1])[0].copy()
    c = int(r.assign(X[:1])[0])
    cent = r.centroids_[c].copy()
    r.partial_fit(np.repeat(X[:1], 50, axis=0), ["cheap"] * 50, [1.0] * 50)
    after = r.predict_quality(X[:1])[0]
    assert after[0] > before[0] or before[0] == 1.0
    assert not np.allclose(r.centroids_[c], cent) or np.allclose(cent, X[0], atol=1e-6)
    assert r.decide(X[:1], ["x"])[0].expert == "cheap"
    with pytest.raises(RouterError, match="unknown expert"):
        r.partial_fit(X[:1], ["nobody"], [1.0])
    with pytest.raises(RouterError, match="rewards"):
        r.partial_fit(X[:1], ["cheap"], [2.0])


def test_lora_from_adapter_examples() -> None:
    from routers.lora import adapters_to_table

    adapters = [{"name": "sql", "examples": ["a", "b", "c"]},
                {"name": "legal", "description": "d", "examples": ["e", "f"]}]
    table = adapters_to_table(adapters)
    assert table.models == ["sql", "legal"] and len(table) == 6
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(2, DIM))
    X = np.stack([centres[0 if c == "sql" else 1] + 0.05 * rng.normal(size=DIM)
                  for c in table.categories or []]).astype(np.float32)
    r = make_router("lora", base_model="base", adapters=adapters, k=3,
                    min_similarity=0.5).fit(X, table)
    q = (centres[1] / np.linalg.norm(centres[1]))[None].astype(np.float32)
    d = r.decide(q, ["legal question"])[0]
    assert [t.expert for t in d.targets] == ["legal", "sql", "base"]
    far = -q
    assert r.decide(far, ["unrelated"])[0].targets[0].expert == "base"
    with pytest.raises(RouterError, match="not in 'adapters'"):
        make_router("lora", base_model="b", adapters=adapters[:1]).fit(X, table)
    with pytest.raises(RouterError, match="base_model"):
        make_router("lora").fit(X, table)


@pytest.mark.parametrize("params", [{"model": "mlp", "hidden": 8},
                                    {"calibration": "isotonic"}])
def test_classifier_variants(params: dict[str, Any]) -> None:
    X, table = synthetic_table(60)
    Q = make_router("classifier", **params).fit(X, table).predict_quality(X)
    assert Q.shape == (60, 3) and np.all((Q >= 0) & (Q <= 1))


def test_mf_learns_a_pattern() -> None:
    """Expert 'strong' succeeds exactly on one cluster: mf ranks it first there."""
    X, table = synthetic_table(90, missing=False)
    y = np.array([["math", "law", "chat"].index(c) for c in table.categories or []])
    table.scores[:] = 0.5
    table.scores[:, 2] = (y == 0).astype(float)
    r = make_router("mf", epochs=150, dim=8).fit(X, table)
    Q = r.predict_quality(X)
    assert Q[y == 0, 2].mean() > 0.7 and Q[y != 0, 2].mean() < 0.3


def test_parameters_are_read_from_the_constructor() -> None:
    """No hand-kept parameter list: ``param_names`` is ``__init__``'s keyword parameters, and a
    parameter a family adds to its constructor is saved, loaded and settable at once."""
    from routers.knn import KNNRouter

    assert KNNRouter.param_names() == ("k", "temperature", "prior_strength", "cost_weight",
                                       "threshold", "cost_model")

    class Wider(KNNRouter):
        name = ""  # never registered

        def __init__(self, k: int = 20, extra: float = 0.5) -> None:
            super().__init__(k=k)
            self.extra = extra

    assert Wider.param_names() == ("k", "extra")
    assert Wider(extra=0.25).get_params() == {"k": 20, "extra": 0.25}
    assert Wider().set_params(extra=0.75).extra == 0.75
    with pytest.raises(RouterError):
        Wider().set_params(temperature=1.0)  # not a parameter of this constructor


def test_every_family_declares_its_registry_facts() -> None:
    for name in registered_names():
        cls = get_router_class(name)
        assert cls.train_input, name
        assert set(cls.example_params) <= set(cls.param_names()), name
    assert {n for n in registered_names() if not get_router_class(n).trades_cost} == {
        "semantic", "guard", "lora"}


def test_complexity_on_n_models_follows_the_tables_quality_and_cost() -> None:
    names = ["m0", "m1", "m2", "m3", "m4", "m5"]
    X, table = synthetic_table(120, models=names, missing=False)
    cost = np.array([5.0, 0.1, 3.0, 0.05, 1.0, 8.0])  # columns not in cost order
    table.costs = np.tile(cost, (len(table), 1))
    quality = np.array([0.6, 0.3, 0.5, 0.2, 0.4, 0.9])
    table.scores = (np.random.default_rng(3).random(table.scores.shape) < quality).astype(float)
    r = make_router("complexity", max_strong_share=0.3).fit(X, table)
    assert r.experts_[r.strong_] == "m5" and r.experts_[r.cheap_] == "m3"
    d = r.decide(X, table.prompts)
    chosen = {x.expert for x in d}
    assert chosen <= {"m5", "m3"} and "m3" in chosen
    for x in d:
        if x.expert == "m3":
            assert "cheapest expert m3 (lowest mean cost" in x.reason
        else:
            assert "strongest expert m5 (best mean quality" in x.reason


def _count_checks(router: Any) -> list[int]:
    """Wraps ``router.check_X``; the returned list gets the row count of each call."""
    calls: list[int] = []
    check = router.check_X

    def counted(X: np.ndarray, texts: Any = None) -> np.ndarray:
        calls.append(len(X))
        return check(X, texts)

    router.check_X = counted
    return calls


@pytest.mark.parametrize("name", registered_names())
def test_a_decision_checks_its_embeddings_once(name: str) -> None:
    """``decide`` validates X once; the public helpers it calls (scores, profiles,
    assignments) do not check the same array again on the request path."""
    router, X, table = build(name)
    router.fit(X, table)
    calls = _count_checks(router)
    router.decide(X[:3], table.prompts[:3])
    assert calls == [3]


@pytest.mark.parametrize("name", registered_names())
def test_a_decision_with_predicted_costs_checks_its_embeddings_once(name: str) -> None:
    """Per-query predicted costs read the array ``decide`` checked, not a second check."""
    router, X, table = build(name)
    if "cost_model" not in router.get_params():
        pytest.skip(f"{name} trades mean costs only")
    router.set_params(cost_model="predicted").fit(X, table)
    calls = _count_checks(router)
    router.decide(X[:3], table.prompts[:3])
    assert calls == [3]


@pytest.mark.parametrize("name", registered_names())
def test_predicted_quality_checks_its_embeddings_once(name: str) -> None:
    router, X, table = build(name)
    router.fit(X, table)
    try:
        router.predict_quality(X[:2])
    except RouterError:
        pytest.skip(f"{name} does not estimate per-expert quality")
    calls = _count_checks(router)
    router.predict_quality(X[:3])
    assert calls == [3]
