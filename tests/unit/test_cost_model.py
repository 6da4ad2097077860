"""Per-query cost models: a router that knows a long prompt costs more spends less for the same
quality; decisions, the offline sweep and artifacts agree; bad input is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from evals import metrics as M
from evals import routing_eval as RE
from routers.artifacts import load_router, save_router
from routers.auto import fit_auto
from routers.base import RouterError, RoutingTable, make_router
from routers.costmodel import CostModel, prompt_tokens
from routers.tradeoff import choose, utilities

DIM = 16
LAMBDAS = np.concatenate([[0.0], np.geomspace(1e-3, 1e3, 120)])[::-1]


def length_table(n: int, seed: int = 0) -> tuple[np.ndarray, RoutingTable]:
    """Three experts (prices 1, 4, 12 per token); prompts from 8 to ~4,000 characters; the
    dearer the expert the likelier it succeeds, more so on one of two topics; every cost is
    price times the prompt's tokens (the gateway's estimate) times a little noise."""
    rng = np.random.default_rng(seed)
    topic = rng.integers(0, 2, size=n)
    centres = rng.normal(size=(2, DIM))
    X = centres[topic] + 0.5 * rng.normal(size=(n, DIM))
    X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    words = np.minimum(np.rint(rng.lognormal(np.log(30), 1.3, size=n)), 800).astype(int) + 1
    prompts = [f"t{topic[i]} q{i} " + "word " * int(words[i]) for i in range(n)]
    rate = np.array([[0.3, 0.5, 0.8], [0.4, 0.6, 0.7]])[topic]
    S = (rng.uniform(size=(n, 3)) < rate).astype(np.float64)
    price = np.array([1.0, 4.0, 12.0])
    C = prompt_tokens(prompts)[:, None] * price * rng.lognormal(0, 0.1, size=(n, 3)) / 1000
    return X, RoutingTable([f"p{i}" for i in range(n)], prompts, ["cheap", "mid", "strong"],
                           S, C)


@pytest.fixture(scope="module")
def fitted() -> tuple:
    X, table = length_table(900)
    tr, te = np.arange(600), np.arange(600, 900)
    T, E = table.subset(tr), table.subset(te)
    mean = make_router("knn", k=30, cost_model="mean").fit(X[tr], T)
    pred = make_router("knn", k=30, cost_model="predicted").fit(X[tr], T)
    return X, table, T, E, tr, te, mean, pred


def _curve(router, X, E) -> tuple[np.ndarray, np.ndarray]:
    Q = router.predict_quality(X, E.prompts)
    kc = router.predict_costs(X, E.prompts) / router.cost_scale
    return M.quality_cost_curve(Q, E.scores, E.costs, LAMBDAS, knob_costs=kc)


def test_predicted_costs_buy_the_same_quality_for_less(fitted) -> None:
    X, _, _, E, _, te, mean, pred = fitted
    assert pred.cost_model_.fitted_.all()
    C_hat = pred.predict_costs(X[te], E.prompts)
    for j in range(3):  # the model sees length: predicted and true costs track each other
        assert np.corrcoef(np.log(C_hat[:, j]), np.log(E.costs[:, j]))[0, 1] > 0.9
    # a mean-cost router charges every query the same
    assert np.ptp(mean.predict_costs(X[te], E.prompts), axis=0).max() == 0
    target = float(M.column_means(E.scores)[1])  # the mid expert's quality
    c_mean, q_mean = _curve(mean, X[te], E)
    c_pred, q_pred = _curve(pred, X[te], E)
    at_mean = M.cost_at_quality(c_mean, q_mean, target)
    at_pred = M.cost_at_quality(c_pred, q_pred, target)
    assert at_mean is not None and at_pred is not None
    assert at_pred < 0.8 * at_mean, (at_pred, at_mean)


def test_decide_agrees_with_the_offline_sweep(fitted) -> None:
    X, table, _, E, _, te, _, pred = fitted
    Xe, texts = X[te], E.prompts
    Q = pred.predict_quality(Xe, texts)
    C = pred.predict_costs(Xe, texts)
    kc = RE._router_costs(pred, Xe, texts, table.models)
    np.testing.assert_allclose(kc, C / pred.cost_scale)
    seen = set()
    for lam in (0.0, 0.05, 0.3, 1.0, 5.0):
        pred.set_params(cost_weight=lam)
        got = [table.models.index(d.expert) for d in pred.decide(Xe, texts)]
        np.testing.assert_array_equal(got, choose(Q, C, cost_weight=lam,
                                                  scale=pred.cost_scale))
        np.testing.assert_array_equal(got, M.choose(Q, kc, lam))  # what the eval sweeps
        seen.add(tuple(got))
        # one query at a time (the gateway) decides as the batch does
        assert [pred.decide(Xe[i:i + 1], [texts[i]])[0].expert for i in range(20)] == \
            [table.models[g] for g in got[:20]]
    pred.set_params(cost_weight=0.0)
    assert len(seen) > 2  # the knob moves the choices
    d = pred.decide(Xe[:1], texts[:1])[0]
    assert "per-query predicted costs" in d.reason and len(d.targets) == 3


def test_artifacts_keep_the_cost_model_and_old_ones_load_as_mean(fitted, tmp_path: Path
                                                                 ) -> None:
    X, _, _, E, _, te, mean, pred = fitted
    Xe, texts = X[te], E.prompts
    pred.set_params(cost_weight=0.5)
    loaded = load_router(save_router(pred, tmp_path / "pred"))
    pred.set_params(cost_weight=0.0)
    assert loaded.cost_model == "predicted"
    np.testing.assert_allclose(loaded.predict_costs(Xe, texts), pred.predict_costs(Xe, texts))
    assert [d.expert for d in loaded.decide(Xe, texts)] == \
        [d.expert for d in pred.set_params(cost_weight=0.5).decide(Xe, texts)]
    pred.set_params(cost_weight=0.0)
    # an artifact written before cost models existed: no cost_model parameter, no arrays
    old = save_router(mean, tmp_path / "old")
    manifest = json.loads((old / "router.json").read_text())
    del manifest["params"]["cost_model"]
    (old / "router.json").write_text(json.dumps(manifest))
    with np.load(old / "arrays.npz") as npz:
        assert not [k for k in npz.files if k.startswith("cost_model.")]
    back = load_router(old)
    # the family default ("auto") without a model: mean costs, as before
    assert back.cost_model == "auto" and back.cost_model_ is None
    assert RE._router_costs(back, Xe, texts, back.experts_) is None
    assert [d.expert for d in back.decide(Xe, texts)] == \
        [d.expert for d in mean.decide(Xe, texts)]
    # ... and cannot be switched to predicted costs it never learned (a gateway policy's
    # params on that artifact are refused with this message)
    with pytest.raises(RouterError, match="fitted with mean costs"):
        back.set_params(cost_model="predicted")
    # an artifact that claims a cost model it does not hold
    manifest["params"]["cost_model"] = "predicted"
    (old / "router.json").write_text(json.dumps(manifest))
    with pytest.raises(RouterError, match="holds no cost model"):
        load_router(old)


def test_auto_predicts_the_experts_whose_cost_follows_the_prompt_and_only_those() -> None:
    X, table = length_table(900, seed=1)
    rng = np.random.default_rng(5)
    C = table.costs.copy()
    # the strong expert's bill no longer follows the prompt: a flat fee with noise
    C[:, 2] = 12.0 * rng.lognormal(0, 0.5, size=len(C))
    table = RoutingTable(table.prompt_ids, table.prompts, table.models, table.scores, C)
    tr, te = np.arange(600), np.arange(600, 900)
    T, E = table.subset(tr), table.subset(te)
    auto = make_router("knn", k=30).fit(X[tr], T)  # the family default
    assert auto.cost_model == "auto"
    summary = auto.cost_model_summary()
    assert summary["predicted"] == ["cheap", "mid"], summary
    assert summary["cv_r2"]["cheap"] > 0.8 and summary["cv_r2"]["strong"] < 0.25
    C_hat = auto.predict_costs(X[te], E.prompts)
    assert np.ptp(C_hat[:, 2]) == 0 and C_hat[0, 2] == pytest.approx(T.mean_costs()[2])
    assert np.corrcoef(np.log(C_hat[:, 0]), np.log(E.costs[:, 0]))[0, 1] > 0.9
    # the offline sweep trades against what decisions trade against
    np.testing.assert_allclose(RE._router_costs(auto, X[te], E.prompts, table.models),
                               C_hat / auto.cost_scale)
    # costs that follow nothing the router sees: no model, decisions exactly as mean costs
    flat = RoutingTable(table.prompt_ids, table.prompts, table.models, table.scores,
                        np.array([1.0, 4.0, 12.0]) * rng.lognormal(0, 0.5, size=C.shape))
    Tf = flat.subset(tr)
    a = make_router("knn", k=30, cost_weight=0.3).fit(X[tr], Tf)
    m = make_router("knn", k=30, cost_weight=0.3, cost_model="mean").fit(X[tr], Tf)
    assert a.cost_model_ is None and a.cost_model_summary()["predicted"] == []
    assert [d.expert for d in a.decide(X[te], E.prompts)] == \
        [d.expert for d in m.decide(X[te], E.prompts)]
    assert "per-query" not in a.decide(X[te][:1], E.prompts[:1])[0].reason


def test_bad_inputs_raise_router_errors(fitted) -> None:
    X, _, T, E, tr, te, _, pred = fitted
    with pytest.raises(RouterError, match="cost_model must be one of"):
        make_router("irt", cost_model="tokens").fit(X[tr], T)
    with pytest.raises(RouterError, match="need the query texts"):
        pred.predict_costs(X[te])
    with pytest.raises(RouterError, match="texts"):
        pred.predict_costs(X[te], E.prompts[:3])
    Q = np.zeros((4, 3))
    with pytest.raises(RouterError, match="shape"):
        utilities(Q, np.ones((5, 3)), 1.0, scale=1.0)
    with pytest.raises(RouterError, match="non-negative"):
        choose(Q, -np.ones((4, 3)), cost_weight=1.0, scale=1.0)
    with pytest.raises(RouterError, match="scale"):
        choose(Q, np.ones((4, 3)), cost_weight=1.0, scale=float("nan"))
    neg = RoutingTable(T.prompt_ids, T.prompts, T.models, T.scores, -T.costs)
    with pytest.raises(RouterError, match="non-negative"):
        make_router("knn", cost_model="predicted").fit(X[tr], neg)


def test_per_query_choice_by_hand() -> None:
    Q = np.array([[0.5, 0.8], [0.5, 0.8]])
    C = np.array([[1.0, 2.0], [1.0, 20.0]])  # the second query makes expert 1 dear
    # scale 10: utilities 0.4 / 0.6 on the first row, 0.4 / -1.2 on the second
    np.testing.assert_allclose(utilities(Q, C, 1.0, scale=10.0), [[0.4, 0.6], [0.4, -1.2]])
    assert choose(Q, C, cost_weight=1.0, scale=10.0).tolist() == [1, 0]
    # with one cost per expert (the mean, 11) both rows choose alike, as before
    assert choose(Q, [1.0, 11.0], cost_weight=1.0).tolist() == [0, 0]
    # threshold: the cheapest expert within t of the best, cheapest per query
    C2 = np.array([[1.0, 2.0], [3.0, 2.0]])
    assert choose(np.array([[0.7, 0.8]] * 2), C2, threshold=0.2, scale=1.0).tolist() == [0, 1]


def test_cost_model_survives_messy_tables() -> None:
    rng = np.random.default_rng(3)
    n = 120
    X = rng.normal(size=(n, 8))
    texts = ["x" * int(k) for k in rng.integers(1, 400, size=n)]
    S = rng.uniform(size=(n, 5))
    C = np.outer(prompt_tokens(texts), [1.0, 2.0, 3.0, 4.0, 5.0])
    C[:, 1] = 0.0  # a free expert
    C[:, 2] = 7.0  # a flat price
    S[10:, 3] = np.nan  # an expert seen on 10 prompts only
    C[10:, 3] = np.nan
    C[::7, 4] = 0.0  # some free answers (a cache hit)
    S[::11, 0] = np.nan  # missing cells: left out
    m = CostModel.fit(X, texts, C, S)
    assert m.fitted_.tolist() == [True, False, False, False, True]
    P = m.predict(X, texts)
    assert np.isfinite(P).all() and (P >= 0).all()
    np.testing.assert_allclose(P[:, 1], 0.0)
    np.testing.assert_allclose(P[:, 2], 7.0)
    np.testing.assert_allclose(P[:, 3], np.nanmean(C[:10, 3]))
    # the smearing keeps the mean prediction near the mean cost
    ok = np.isfinite(S[:, 0])
    assert abs(P[ok, 0].mean() / C[ok, 0].mean() - 1) < 0.1
    with pytest.raises(RouterError, match="dimension"):
        m.predict(X[:, :4], texts)
    back = CostModel.from_arrays(m.to_arrays())
    np.testing.assert_allclose(back.predict(X, texts), P)


def test_auto_chooses_predicted_costs_only_where_they_help() -> None:
    X, table = length_table(400, seed=1)
    r, sel = fit_auto(X, table, candidates=(("knn", {"k": 30}),), jobs=1)
    assert sel.cost_model["chosen"] == "predicted" and r.cost_model == "predicted"
    assert sel.params == {"k": 30, "cost_model": "predicted"}
    assert sel.cost_model["score_predicted_costs"] > sel.cost_model["score_mean_costs"]
    # every prompt costs the same per expert: nothing to model, mean costs
    flat = RoutingTable(table.prompt_ids, table.prompts, table.models, table.scores,
                        np.tile([1.0, 4.0, 12.0], (len(table), 1)))
    r, sel = fit_auto(X, flat, candidates=(("knn", {"k": 30}),), jobs=1)
    assert sel.cost_model["chosen"] == "mean" and r.cost_model == "mean"
    assert sel.params["cost_model"] == "mean"  # said, not left to the family default


def test_synthetic_length_costs() -> None:
    t = RE.load_routing_table("synthetic:400x5:length")
    base = RE.load_routing_table("synthetic:400x5")
    np.testing.assert_array_equal(np.isnan(t.scores), np.isnan(base.scores))
    np.testing.assert_array_equal(np.nan_to_num(t.scores), np.nan_to_num(base.scores))
    tokens = prompt_tokens(t.prompts)
    assert tokens.max() > 20 * np.median(tokens) / 4  # lengths vary widely
    assert np.corrcoef(np.log(tokens), np.log(t.costs[:, 0]))[0, 1] > 0.3
    with pytest.raises(RE.EvalError):
        RE.load_routing_table("synthetic:40x3:flat")
    with pytest.raises(RE.EvalError):
        RE.load_routing_table("synthetic:40x3:length:x")


def test_gateway_policy_serves_predicted_costs_and_refuses_them_on_a_mean_artifact(
        tmp_path: Path) -> None:
    from gateway.config import ConfigError, parse_config
    from gateway.pipeline import build_policy_set
    from routers.train import train_router

    X, table = length_table(300, seed=2)
    train_router("irt", table, X, params={"cost_model": "predicted", "cost_weight": 0.5},
                 out=tmp_path / "pred", embedder_name="test")
    train_router("irt", table, X, params={"cost_model": "mean"}, out=tmp_path / "mean",
                 embedder_name="test")
    experts = [{"name": m, "api_base": "http://127.0.0.1:9/v1"} for m in table.models]
    cfg = parse_config({"experts": experts, "policies": [
        {"name": "p", "router": "irt", "artifact": str(tmp_path / "pred")}]})
    router = build_policy_set(cfg, None).policies["p"].router
    short, long_ = table.prompts.index(min(table.prompts, key=len)), \
        table.prompts.index(max(table.prompts, key=len))
    C = router.predict_costs(X[[short, long_]], [table.prompts[short], table.prompts[long_]])
    assert (C[1] > 5 * C[0]).all()  # the long prompt is dearer with every expert
    d = router.decide(X[[long_]], [table.prompts[long_]])[0]
    assert "per-query predicted costs" in d.reason
    bad = parse_config({"experts": experts, "policies": [
        {"name": "m", "router": "irt", "artifact": str(tmp_path / "mean"),
         "params": {"cost_model": "predicted"}}]})
    with pytest.raises(ConfigError, match="fitted with mean costs"):
        build_policy_set(bad, None)


def test_experts_costed_on_the_same_prompts_share_one_regression_and_get_their_own_fit(
        ) -> None:
    """One multi-output ridge per group of experts with the same costed prompts gives each
    expert what a fit of its column alone gives (components, strength and R^2 included)."""
    X, table = length_table(700, seed=3)
    C = table.costs.copy()
    C[:, 2] = 12.0 * np.random.default_rng(1).lognormal(0, 0.5, size=len(C))  # flat fee
    together = CostModel.fit(X, table.prompts, C, table.scores)
    for j in range(3):
        alone = CostModel.fit(X, table.prompts, C[:, [j]], table.scores[:, [j]])
        np.testing.assert_allclose(together.coef_[j], alone.coef_[0], rtol=1e-7, atol=1e-10)
        np.testing.assert_allclose(together.r2_[j], alone.r2_[0], rtol=1e-7, atol=1e-10)
        np.testing.assert_allclose(together.smear_[j], alone.smear_[0], rtol=1e-9)
    assert together.r2_[0] > 0.8 and together.r2_[2] < 0.25
