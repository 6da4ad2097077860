"""The shared-strength ``irt`` family and ``--router auto`` (routers.irt, routers.auto)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from routers.artifacts import read_manifest
from routers.auto import CANDIDATES, grouped_folds, quality_cost_score, select
from routers.base import RouterError, RoutingTable, make_router, normalise_text
from routers.irt import ridge_path
from routers.train import train_router
from tests.unit.test_router_contract import synthetic_table


def test_ridge_leave_one_out_matches_refitting() -> None:
    """The closed-form leave-one-out prediction equals refitting without the prompt (with
    its own centring), also with more features than prompts and a tiny ridge."""
    rng = np.random.default_rng(0)
    for n, d, alpha in ((30, 4, 0.5), (12, 20, 0.01)):
        F = rng.normal(size=(n, d))
        Y = F @ rng.normal(size=(d, 2)) + 0.3 * rng.normal(size=(n, 2))
        _, L = ridge_path(F - F.mean(0), Y - Y.mean(0), [alpha])
        i = 7
        keep = np.arange(n) != i
        Fk, Yk = F[keep] - F[keep].mean(0), Y[keep] - Y[keep].mean(0)
        B = np.linalg.solve(Fk.T @ Fk + alpha * np.eye(d), Fk.T @ Yk)
        want = (F[i] - F[keep].mean(0)) @ B + Y[keep].mean(0)
        np.testing.assert_allclose(L[0, i] + Y.mean(0), want, rtol=1e-6)


def test_irt_learns_a_pattern_and_is_calibrated() -> None:
    X, table = synthetic_table(240, missing=False)
    y = np.array([["math", "law", "chat"].index(c) for c in table.categories or []])
    rng = np.random.default_rng(1)
    table.scores[:, 0] = (rng.random(240) < 0.3).astype(float)
    table.scores[:, 1] = (rng.random(240) < 0.6).astype(float)
    table.scores[:, 2] = (rng.random(240) < np.where(y == 0, 0.9, 0.1)).astype(float)
    r = make_router("irt").fit(X, table)
    Q = r.predict_quality(X, table.prompts)
    assert Q[y == 0, 2].mean() > 0.75 and Q[y != 0, 2].mean() < 0.25
    # calibrated: the mean predicted probability is each expert's success rate
    np.testing.assert_allclose(Q.mean(0), table.scores.mean(0), atol=0.05)
    low = make_router("irt", rank=1).fit(X, table)
    assert low.abilities_.shape == (3, 1) and low.rank_ == 1
    with pytest.raises(RouterError, match="rank"):
        make_router("irt", rank=4).fit(X, table)
    with pytest.raises(RouterError, match="texts"):
        r.predict_quality(X)  # prompt statistics need the texts
    plain = make_router("irt", text_stats=False).fit(X, table)
    assert plain.predict_quality(X).shape == (240, 3)


def test_irt_fills_missing_scores() -> None:
    X, table = synthetic_table(90)
    table.scores[:60, 2] = np.nan
    Q = make_router("irt").fit(X, table).predict_quality(X, table.prompts)
    assert np.all(np.isfinite(Q)) and np.all((Q >= 0) & (Q <= 1))


def test_quality_cost_score_by_hand() -> None:
    S = np.array([[1.0, 0.0], [0.0, 1.0]])
    C = np.array([[0.0, 1.0], [0.0, 1.0]])
    # perfect predictions: (cost 0.5, quality 1) and (cost 0, quality 0.5) on the sweep;
    # budgets 0, 0.01, ..., 1: 50 of them below 0.5 reach 0.5, 51 reach 1.0
    assert quality_cost_score(S, S, C) == pytest.approx((50 * 0.5 + 51 * 1.0) / 101)
    # reversed predictions never do better than the cheap expert alone at low budgets
    assert quality_cost_score(1 - S, S, C) < quality_cost_score(S, S, C)


def test_auto_selects_on_training_prompts_only(tmp_path: Path) -> None:
    X, table = synthetic_table(150)
    cands = (("knn", {"k": 5}), ("irt", {"text_stats": False}))
    sel = select(X, table, candidates=cands, seed=0)
    assert sel.folds == 5 and len(sel.scores) == 2
    assert all(len(r["fold_scores"]) == 5 for r in sel.scores)
    best = max(sel.scores, key=lambda r: r["score"])
    assert sel.best_mean["family"] == best["family"]
    res = train_router("auto", table, X, seed=0, out=tmp_path / "a", auto_candidates=cands)
    m = res.metrics
    assert m["router"] == m["auto"]["family"] and m["auto"]["candidates"]
    # the artifact is an ordinary artifact of the chosen family
    assert read_manifest(tmp_path / "a")["type"] == m["router"]
    with pytest.raises(RouterError, match="no --param"):
        train_router("auto", table, X, params={"k": 3})


def test_auto_scores_do_not_depend_on_the_worker_count() -> None:
    X, table = synthetic_table(120)  # a few missing scores: stack's experts in two groups
    cands = (("knn", {"k": 5}), ("stack", {"folds": 3, "k": 10}))
    one = select(X, table, candidates=cands, seed=1, jobs=1)
    two = select(X, table, candidates=cands, seed=1, jobs=2)
    assert [r["fold_scores"] for r in one.scores] == [r["fold_scores"] for r in two.scores]
    assert (one.family, one.params, one.score) == (two.family, two.params, two.score)


def _blas_threads() -> int:
    from threadpoolctl import threadpool_info

    return max([p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"] or [1])


def test_auto_workers_run_blas_on_one_thread() -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from threadpoolctl import threadpool_limits

    from routers.auto import _one_blas_thread

    # the parent's BLAS pool as eval routing's --threads 2 sets it; the workers' stays at one
    with threadpool_limits(2), ProcessPoolExecutor(
            1, mp_context=multiprocessing.get_context("fork"),
            initializer=_one_blas_thread, initargs=(os.getpid(),)) as ex:
        assert ex.submit(_blas_threads).result() == 1


def test_auto_reports_families_that_cannot_fit() -> None:
    X, table = synthetic_table(40)
    one_cat = RoutingTable(table.prompt_ids, table.prompts, table.models, table.scores,
                           table.costs, None)
    sel = select(X, one_cat, candidates=(("category", {}), ("knn", {"k": 3})))
    assert sel.family == "knn"
    assert any(r["family"] == "category" and r["score"] is None for r in sel.scores)
    with pytest.raises(RouterError, match="no candidate"):
        select(X, one_cat, candidates=(("category", {}),))
    json.dumps(sel.to_dict())  # the selection report is JSON as it stands


def test_gateway_policy_router_auto_serves_the_chosen_family(tmp_path: Path) -> None:
    from gateway.config import parse_config
    from gateway.pipeline import build_policy_set

    X, table = synthetic_table(90)
    res = train_router("auto", table, X, out=tmp_path / "art", embedder_name="test",
                       auto_candidates=(("knn", {"k": 5}),))
    cfg = parse_config({"experts": [{"name": m, "api_base": "http://127.0.0.1:9/v1"}
                                    for m in table.models],
                        "policies": [{"name": "auto", "router": "auto",
                                      "artifact": str(tmp_path / "art")}]})
    pset = build_policy_set(cfg, None)
    assert type(pset.policies["auto"].router).name == res.metrics["router"] == "knn"


def test_deferral_score_by_hand() -> None:
    from routers.auto import deferral_score

    # strong wins on prompt 0 only; weak never wins; perfect ranking puts prompt 0 first
    S = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [1.0, 1.0]])
    Q = np.array([[0.9, 0.1], [0.5, 0.5], [0.5, 0.5], [0.5, 0.5]])
    # shares 0, .25, .5, .75, 1 (points=5): quality 0.5 then 0.75 from the first quarter on
    assert deferral_score(Q, S, 0, 1, points=5) == pytest.approx((0.5 + 4 * 0.75) / 5)
    # the reversed ranking sends prompt 0 to the strong expert last
    assert deferral_score(-Q, S, 0, 1, points=5) < deferral_score(Q, S, 0, 1, points=5)


def test_train_cli_writes_metrics_with_provenance(tmp_path: Path) -> None:
    import csv

    from expertgate.cli import main

    _, table = synthetic_table(60)
    data = tmp_path / "table.csv"
    with data.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["prompt_id", "prompt", "model", "score", "cost"])
        for row in table.to_long():
            w.writerow([row["prompt_id"], row["prompt"], row["model"], row["score"],
                        row["cost"]])
    out = tmp_path / "m.json"
    rc = main(["train", "--router", "irt", "--data", str(data), "--embedder", "hashing",
               "--out", str(tmp_path / "art"), "--cache-dir", str(tmp_path / "c"),
               "--metrics-json", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["router"] == "irt" and doc["embed_seconds"] >= 0
    assert doc["provenance"]["data"][0]["sha256"] and doc["provenance"]["git"]["commit"]


def _word_table(n: int, seed: int) -> tuple[np.ndarray, RoutingTable]:
    """Two experts; the strong one wins exactly on prompts naming one of three words. The
    embeddings are noise and every word has five letters, so only a family that reads the
    words (``stack``'s TF-IDF view) can rank the prompts."""
    rng = np.random.default_rng(seed)
    words = ["alpha", "bravo", "delta", "gamma", "sigma", "omega", "kappa", "theta"]
    w = rng.integers(0, len(words), n)
    hard = w < 3
    S = np.stack([np.where(hard, 1.0, rng.random(n) < 0.8), np.where(hard, 0.0,
                                                                     rng.random(n) < 0.8)], 1)
    X = rng.normal(size=(n, 16)).astype(np.float32)
    prompts = [f"tell me about {words[j]} now {i}" for i, j in enumerate(w)]
    return X, RoutingTable([f"p{i}" for i in range(n)], prompts, ["big", "small"],
                           S.astype(float), np.tile([1.0, 0.1], (n, 1)), None)


def _rule_choice(rows: list[dict]) -> dict:
    """The one-standard-error rule recomputed from the recorded fold scores."""
    ok = [r for r in rows if r["score"] is not None]
    f = [np.asarray(r["fold_scores"]) for r in ok]
    b = int(np.argmax([x.mean() for x in f]))
    for r, x in zip(ok, f, strict=True):
        d = f[b] - x
        if x.mean() >= f[b].mean() - d.std(ddof=1) / np.sqrt(d.size) - 1e-9:
            return r
    raise AssertionError("no candidate")


def test_auto_picks_the_clearly_best_family_in_every_seed() -> None:
    for seed in range(5):
        X, table = _word_table(300, seed)
        sel = select(X, table, candidates=CANDIDATES, seed=seed)
        assert sel.family == "stack", (seed, sel.to_dict())
        # the record: every candidate's five fold scores; no category column: left out
        cat = next(r for r in sel.scores if r["family"] == "category")
        assert cat["score"] is None and "error" in cat
        stack = next(r for r in sel.scores if r["family"] == "stack")
        assert len(stack["fold_scores"]) == 5
        assert stack["score"] > 0.1 + max(r["score"] for r in sel.scores
                                         if r["score"] is not None and r is not stack)
        assert _rule_choice(sel.scores)["family"] == sel.family
        json.dumps(sel.to_dict())


def test_auto_prefers_the_simpler_family_within_one_standard_error() -> None:
    # no signal anywhere: every family ranks by chance, so unless a dearer one is ahead by
    # more than the folds' noise the first candidate (the simplest) is kept
    rng = np.random.default_rng(3)
    n = 200
    S = (rng.random((n, 2)) < 0.5).astype(float)
    table = RoutingTable([f"p{i}" for i in range(n)], [f"question {i}" for i in range(n)],
                         ["big", "small"], S, np.tile([1.0, 0.1], (n, 1)), None)
    X = rng.normal(size=(n, 8)).astype(np.float32)
    cands = (("knn", {"k": 20}), ("classifier", {"C": 1.0}), ("irt", {}))
    sel = select(X, table, candidates=cands, seed=0)
    # two experts: the criterion ranks by predicted advantage, so the cost model is said mean
    params = dict(sel.params)
    assert params.pop("cost_model") == "mean"
    assert (sel.family, params) == (_rule_choice(sel.scores)["family"],
                                        _rule_choice(sel.scores)["params"])
    assert sel.family == "knn"


def test_folds_are_grouped_by_normalised_text() -> None:
    texts = [f"Question {i % 37}" if i % 3 else f"  question   {i % 37} " for i in range(300)]
    texts += [f"unique {i}" for i in range(100)]
    folds = grouped_folds(texts, 5, seed=1)
    assert len(folds) == 5
    held = np.concatenate([va for _, va in folds])
    assert sorted(held.tolist()) == list(range(len(texts)))  # each prompt held out once
    for tr, va in folds:
        assert set(tr) | set(va) == set(range(len(texts))) and not set(tr) & set(va)
        assert not {normalise_text(texts[i]) for i in tr} & {normalise_text(texts[i])
                                                               for i in va}
        assert 60 <= len(va) <= 100  # as even as the groups (~8 prompts each) allow
    assert len(grouped_folds(["a", "A", " a"], 5)) == 1  # one distinct text: one group
