"""``expertgate eval routing`` end to end on small generated long-format tables."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from evals import routing_eval as RE
from routers.base import RouterError, RoutingTable

TOPICS = {"math": "solve the equation for x and compute the integral",
          "law": "the court ruled on the contract dispute and the statute",
          "food": "bake the bread with flour butter and sugar in the oven"}


def _long_table(path: Path, models: dict[str, tuple[float, dict[str, float]]], n: int = 90,
                seed: int = 0, missing: float = 0.0,
                texts: dict[str, str] | None = None) -> Path:
    """A long-format CSV: each model has a cost and a success rate per topic (``texts``:
    each topic's words, default ``TOPICS``)."""
    rng = np.random.default_rng(seed)
    rows = []
    texts = texts or TOPICS
    topics = list(texts)
    for i in range(n):
        cat = topics[i % len(topics)]
        prompt = f"{texts[cat]} case {i} {rng.integers(1000)}"
        for mname, (cost, rate) in models.items():
            if rng.uniform() < missing:
                continue
            rows.append({"prompt_id": f"p{i}", "prompt": prompt, "model": mname,
                         "score": float(rng.uniform() < rate[cat]), "cost": cost,
                         "category": cat})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    RE.cli_register(parser)
    args = parser.parse_args(argv)
    return int(args.func(args))


TWO = {"big": (10.0, {"math": 0.9, "law": 0.8, "food": 0.9}),
       "small": (1.0, {"math": 0.2, "law": 0.7, "food": 0.85})}


def test_cli_quiet_shows_no_progress_bar(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    # enough prompts for the embedding step's bar (over one batch of 256); --quiet holds it
    # back too, so a log of a scripted run stays readable
    data = _long_table(tmp_path / "t.csv", TWO, n=300)
    argv = ["--data", str(data), "--embedder", "hashing", "--seeds", "1",
            "--routers", "category", "--cache-dir", str(tmp_path / "cache")]
    assert _run([*argv, "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "embedding (" not in err and "batch/s" not in err, err
    assert _run([*argv, "--cache-dir", str(tmp_path / "cache2")]) == 0
    assert "embedding (" in capsys.readouterr().err  # the bar the flag holds back


def test_cli_two_experts_writes_every_key(tmp_path: Path) -> None:
    data = _long_table(tmp_path / "t.csv", TWO)
    out = tmp_path / "r.json"
    rc = _run(["--data", str(data), "--embedder", "hashing", "--seeds", "2",
               "--routers", "knn,category", "--json", str(out), "--quiet",
               "--cache-dir", str(tmp_path / "cache")])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["seeds"] == [0, 1]
    assert res["table"]["strong"] == "big" and res["table"]["weak"] == "small"
    assert "expertgate eval routing" in res["command"] and "--refit" not in res["command"]
    assert res["selected"]["refit"]["mode"] == "auto"
    assert _run(["--data", str(data), "--embedder", "hashing", "--seeds", "1",
                 "--routers", "knn", "--json", str(out), "--quiet", "--refit", "never",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    never = json.loads(out.read_text())
    assert "--refit never" in never["command"] and not never["selected"]["refit"]["applied"]
    assert set(res["baselines"]) >= {"random", "oracle", "category", "big", "small"}
    assert res["routers"], res["skipped"]
    keys = {"apgr", "cpt20", "cpt50", "cpt80", "auc", "aiq", "quality", "cost",
            "cost_at_best_single_quality", "cost_at_best_single_quality_val"}
    for name, r in {**res["routers"], **res["baselines"]}.items():
        assert keys <= set(r), name
        assert {f"{k}_std" for k in keys} <= set(r), name
    oracle, rnd = res["baselines"]["oracle"], res["baselines"]["random"]
    assert oracle["apgr"] > rnd["apgr"]
    assert 0.0 <= rnd["apgr"] <= 1.0
    # the curves that the report plots travel with the JSON
    assert len(oracle["curve"]["share"]) == len(oracle["curve"]["pgr"]) == 11
    assert oracle["curve"]["share"][0] == 0.0 and oracle["curve"]["share"][-1] == 1.0
    # a single expert is a point, not a curve
    assert res["baselines"]["small"]["apgr"] is None
    assert res["baselines"]["big"]["quality"] > res["baselines"]["small"]["quality"]


def test_category_structure_is_learned(tmp_path: Path) -> None:
    # the weak model fails only on "math": knowing the category recovers most of the gap
    data = _long_table(tmp_path / "t.csv", TWO, n=150, seed=3)
    table = RE.load_routing_table(data)
    X, _ = RE.embed_table(table, "hashing", tmp_path / "cache")
    res = RE.evaluate(table, X, routers=["knn"], seeds=[0, 1], progress=False)
    assert res["baselines"]["category"]["apgr"] > res["baselines"]["random"]["apgr"] + 0.1
    assert res["routers"]["knn"]["apgr"] > res["baselines"]["random"]["apgr"]


def test_n_experts_with_missing_scores(tmp_path: Path) -> None:
    three = {**TWO, "mid": (4.0, {"math": 0.8, "law": 0.3, "food": 0.5})}
    data = _long_table(tmp_path / "t.csv", three, n=120, missing=0.1)
    table = RE.load_routing_table(data)
    assert np.isnan(table.scores).any()
    X, _ = RE.embed_table(table, "hashing", tmp_path / "cache")
    res = RE.evaluate(table, X, routers=["knn"], seeds=[0, 1], progress=False)
    r = res["routers"]["knn"]
    assert r["apgr"] is None  # RouteLLM's metrics are defined for two experts only
    assert 0.0 <= r["aiq"] <= 1.0
    assert r["missing_share"] == 0.0  # the sweep never picks a model without a score
    curve = r["qc_curve"]
    assert len(curve["cost"]) == len(RE.LAMBDAS)
    assert res["baselines"]["oracle"]["quality"] >= max(
        res["baselines"][m]["quality"] for m in three) - 1e-9


def test_unknown_strong_model_and_bad_format_fail_cleanly(tmp_path: Path) -> None:
    data = _long_table(tmp_path / "t.csv", TWO, n=30)
    rc = _run(["--data", str(data), "--embedder", "hashing", "--seeds", "1",
               "--routers", "knn", "--strong", "nope", "--quiet",
               "--cache-dir", str(tmp_path / "cache")])
    assert rc == 2
    with pytest.raises((RE.EvalError, RouterError, OSError)):
        RE.load_routing_table(tmp_path / "missing.csv")


def test_router_without_predict_quality_is_one_operating_point(tmp_path: Path) -> None:
    table = RoutingTable.from_long(pd.read_csv(_long_table(tmp_path / "t.csv", TWO, n=60)))
    X, _ = RE.embed_table(table, "hashing", tmp_path / "cache")
    res = RE.evaluate(table, X, routers=["semantic"], seeds=[0], progress=False)
    sem = res["routers"]["semantic"]
    assert sem["knob"] is False
    assert len(sem["qc_curve"]["cost"]) == 1
    assert sem["curve"]["share"][0] == 0.0 and sem["curve"]["share"][-1] == 1.0


def test_synthetic_table_spec() -> None:
    t = RE.load_routing_table("synthetic:50x4")
    assert len(t) == 50 and len(t.models) == 4 and t.categories is not None
    assert np.isfinite(t.scores).any(axis=1).all()
    with pytest.raises(RE.EvalError):
        RE.load_routing_table("synthetic:many")


def test_synthetic_fewshot_prompts_are_the_length_prompts_behind_five_same_topic_shots(
        ) -> None:
    length = RE.load_routing_table("synthetic:200x3:length")
    few = RE.load_routing_table("synthetic:200x3:fewshot")
    np.testing.assert_array_equal(np.isnan(few.scores), np.isnan(length.scores))
    np.testing.assert_array_equal(np.nan_to_num(few.scores), np.nan_to_num(length.scores))
    topic = dict(zip(length.prompts, length.categories or [], strict=True))
    for p, own, cat in zip(few.prompts, length.prompts, few.categories or [], strict=True):
        parts = p.split("\n\n")
        assert len(parts) == 6 and parts[-1] == f"{own}\nAnswer:"
        for shot in parts[:5]:
            text, answer = shot.rsplit("\nAnswer: ", 1)
            assert answer in "ABCD" and topic[text] == cat
    # priced by their tokens: the longer prompts cost more for every model
    assert (few.costs > length.costs).all()


def test_stack_router_learns_saves_and_loads(tmp_path: Path) -> None:
    from routers.stack import StackRouter, text_statistics

    table = RoutingTable.from_long(pd.read_csv(_long_table(tmp_path / "t.csv", TWO, n=150,
                                                           seed=5)))
    X, _ = RE.embed_table(table, "hashing", tmp_path / "cache")
    assert text_statistics(["12 + 3.5 = ?", ""]).shape == (2, 12)
    r = StackRouter(folds=3, k=10).fit(X, table)
    P = r.predict_quality(X[:20], table.prompts[:20])
    assert P.shape == (20, 2) and np.all((P >= 0) & (P <= 1))
    # the weak model fails on math prompts only: the router must see that
    small = table.models.index("small")
    is_math = np.array([c == "math" for c in table.categories or []])
    Pall = r.predict_quality(X, table.prompts)
    assert Pall[is_math, small].mean() < Pall[~is_math, small].mean() - 0.2
    with pytest.raises(RouterError):
        r.predict_quality(X[:2])
    r.save(tmp_path / "art")
    r2 = StackRouter.load(tmp_path / "art")
    np.testing.assert_allclose(r2.predict_quality(X[:20], table.prompts[:20]), P, atol=1e-6)
    assert [d.expert for d in r2.decide(X[:5], table.prompts[:5])] == \
        [d.expert for d in r.decide(X[:5], table.prompts[:5])]


def test_stack_warm_started_regression_reaches_the_same_optimum() -> None:
    from routers.stack import _fit_lr

    rng = np.random.default_rng(0)
    F = rng.normal(size=(400, 12))
    s = (F[:, 0] - F[:, 1] + rng.normal(size=400) > 0).astype(float)
    cold = _fit_lr(F, s, 1.0)
    start = _fit_lr(F[:300], s[:300], 1.0)  # a fit on related data, as stack's folds use
    warm = _fit_lr(F, s, 1.0, *start)
    np.testing.assert_allclose(warm[0], cold[0], atol=2e-3)
    assert warm[1] == pytest.approx(cold[1], abs=2e-3)
    assert not np.allclose(start[0], cold[0], atol=2e-3)  # it did move from the start


def test_stack_router_sweeps_in_the_evaluation(tmp_path: Path) -> None:
    import routers.stack  # noqa: F401  (registers "stack" until routers/families.py lists it)

    table = RoutingTable.from_long(pd.read_csv(_long_table(tmp_path / "t.csv", TWO, n=120)))
    X, _ = RE.embed_table(table, "hashing", tmp_path / "cache")
    res = RE.evaluate(table, X, routers=["stack"], seeds=[0], progress=False)
    assert res["routers"]["stack"]["knob"] is True, res["skipped"]
    assert res["routers"]["stack"]["apgr"] > res["baselines"]["random"]["apgr"]


def test_stack_lexical_views_find_the_category_from_the_words(tmp_path: Path) -> None:
    """Embeddings that carry no topic (random vectors), and topics of the same length in
    words and characters (the prompt statistics, which the stack also reads, cannot tell
    them apart): only the text's words say which prompts are math; the lexical category view
    and the lexical component must use them, and survive a save/load."""
    from routers.stack import StackRouter

    same_shape = {"math": "solve the equation and the integral now",
                  "law": "the court ruled on the contract dispute",
                  "food": "bake the bread with flour butter sugars"}
    table = RoutingTable.from_long(pd.read_csv(_long_table(tmp_path / "t.csv", TWO, n=150,
                                                           seed=5, texts=same_shape)))
    X = np.random.default_rng(0).normal(size=(len(table), 16)).astype(np.float32)
    small = table.models.index("small")
    is_math = np.array([c == "math" for c in table.categories or []])

    tr, te = np.arange(100), np.arange(100, len(table))
    T = table.subset(tr)

    def gap(r: StackRouter) -> float:  # on held-out prompts
        P = r.predict_quality(X[te], [table.prompts[i] for i in te])
        return float(P[~is_math[te], small].mean() - P[is_math[te], small].mean())

    dense = StackRouter(folds=3, k=10, lexical=False).fit(X[tr], T)
    lex = StackRouter(folds=3, k=10, lexical=True, C_lexical=1.0).fit(X[tr], T)
    assert lex.lex_centroids_.shape[0] == 3 and lex.lex_coef_.shape[0] == 2
    assert gap(lex) > 0.4 and gap(lex) > gap(dense) + 0.08
    lex.save(tmp_path / "art")
    back = StackRouter.load(tmp_path / "art")
    np.testing.assert_allclose(back.predict_quality(X[:30], table.prompts[:30]),
                               lex.predict_quality(X[:30], table.prompts[:30]), atol=1e-6)


@pytest.mark.parametrize("models", [2, 4])
def test_every_run_fits_the_simple_baselines_and_the_selection_says_its_margin(
        models: int) -> None:
    """Frozen-embedding LR and kNN on mean costs run beside the routers in every run; the
    selected router's headline figure is set against the better of them: the issue's bar
    (N experts: cost at the best single's quality, lower is better; two: APGR)."""
    from routers.embed import make_embedder

    table = RE.load_routing_table(f"synthetic:500x{models}:length")
    X = make_embedder("hashing").embed(table.prompts)
    res = RE.evaluate(table, X, routers=["knn", "classifier"], seeds=[0, 1], progress=False,
                      refit="never")
    assert {"simple-lr", "simple-knn"} <= set(res["baselines"]), res["skipped"]
    vs = res["selected"]["vs_simple"]
    assert vs["fitted_on"] == "train" and not res["selected"]["refit"]["applied"]
    two = models == 2
    key = "apgr" if two else "cost_at_best_single_quality_deployed"
    simple = {n: res["baselines"][n][key] for n in ("simple-lr", "simple-knn")}
    best = (max if two else min)(simple, key=simple.__getitem__)
    mine = res["routers"][res["selected"]["method"]][key]
    assert vs["metric"] == key and vs["baseline"] == best
    assert vs["margin"] == pytest.approx(mine - simple[best] if two else simple[best] - mine)
    # the simple LR is the classifier family on mean costs: with two experts APGR ranks by
    # the predicted advantage, which costs cannot change, so it equals the classifier router's
    if two:
        assert res["baselines"]["simple-lr"]["apgr"] == pytest.approx(
            res["routers"]["classifier"]["apgr"])


def test_refit_reading_fits_the_selection_and_the_baselines_on_train_and_validation() -> None:
    """``always``: the selected method and both simple baselines are refitted on train +
    validation and read on test at the knob the train fit set; the headline compares those."""
    from routers.embed import make_embedder

    table = RE.load_routing_table("synthetic:400x2")
    X = make_embedder("hashing").embed(table.prompts)
    res = RE.evaluate(table, X, routers=["classifier"], seeds=[0, 1], progress=False,
                      refit="always")
    sel, ref = res["selected"], res["selected"]["refit"]
    assert ref["applied"] and ref["mode"] == "always" and ref["method"] == "classifier"
    vs = sel["vs_simple"]
    assert vs["fitted_on"] == "train+validation" and vs["selected"] == ref["test"]["apgr"]
    # more prompts: not the train-only figure
    assert ref["test"]["apgr"] != pytest.approx(res["routers"]["classifier"]["apgr"], abs=1e-12)
    # the simple LR is the classifier on mean costs (two experts: the same APGR), refitted the
    # same way: it can tie the refitted selection, never beat it by being fitted on less
    assert vs["margin"] <= 1e-12
    if vs["baseline"] == "simple-lr":
        assert vs["margin"] == pytest.approx(0.0, abs=1e-12)
    assert {"apgr", "apgr_std", "aiq", "cost_at_best_single_quality_deployed"} <= set(ref["test"])
    never = RE.evaluate(table, X, routers=["classifier"], seeds=[0, 1], progress=False,
                        refit="never")
    assert not never["selected"]["refit"]["applied"] and "test" not in never["selected"]["refit"]
    assert never["selected"]["vs_simple"]["selected"] == never["routers"]["classifier"]["apgr"]
    with pytest.raises(RE.EvalError, match="refit"):
        RE.evaluate(table, X, routers=["classifier"], seeds=[0], progress=False, refit="yes")


@pytest.mark.parametrize("models", [2, 4])
def test_refit_is_decided_by_the_learning_curve_on_validation_never_by_test(models: int) -> None:
    from routers.embed import make_embedder

    table = RE.load_routing_table(f"synthetic:500x{models}:length")
    X = make_embedder("hashing").embed(table.prompts)
    res = RE.evaluate(table, X, routers=["knn", "classifier"], seeds=[0], progress=False)
    sel = res["selected"]
    ref = sel["refit"]
    crit = "val_apgr" if models == 2 else "val_aiq"
    lc = ref["learning_curve"]
    assert ref["mode"] == "auto" and lc["fraction"] == RE.REFIT_FRACTION
    assert lc["val_full"] == pytest.approx(res["routers"][sel["method"]][crit])
    assert ref["applied"] == (lc["val_full"] > lc["val_fraction"])
    assert sel["vs_simple"]["fitted_on"] == ("train+validation" if ref["applied"] else "train")
    # scramble every test score: the decision and the figures it rests on do not move
    _, _, te = table.split(seed=0, val=0.2, test=0.2)
    rng = np.random.default_rng(7)
    scores = table.scores.copy()
    scores[te] = rng.permutation(scores[te])
    other = RoutingTable(table.prompt_ids, table.prompts, table.models, scores, table.costs,
                         table.categories)
    res2 = RE.evaluate(other, X, routers=["knn", "classifier"], seeds=[0], progress=False)
    assert res2["selected"]["method"] == sel["method"]
    assert res2["selected"]["refit"]["learning_curve"] == lc
    assert res2["selected"]["refit"]["applied"] == ref["applied"]


def _seed_rows(cost: list[float]) -> list[dict[str, float]]:
    return [{"val_cost_at_best_single_quality_deployed": c} for c in cost]


def test_n_expert_selection_passes_over_a_better_curve_that_is_clearly_dearer_at_the_bar(
        ) -> None:
    """More than two experts: the table is judged by the cost at the best single model's
    quality. A method whose validation cost there is clearly (beyond one paired standard
    error over the seeds) above another's is not eligible, however good its AIQ; among the
    eligible ones AIQ decides."""
    per_seed = {"wide": _seed_rows([0.90, 0.92, 0.91]),   # best AIQ, dear at the bar
                "sharp": _seed_rows([0.80, 0.81, 0.79]),  # the cheapest at the bar
                "close": _seed_rows([0.81, 0.80, 0.80])}  # within noise of the cheapest
    rows = {"wide": {"val_aiq": 0.70}, "sharp": {"val_aiq": 0.60}, "close": {"val_aiq": 0.65}}
    chosen, score, figs = RE._select_n_experts(per_seed, rows, "wide")
    assert chosen == "close" and score == 0.65
    assert not figs["wide"]["eligible"] and figs["sharp"]["eligible"]
    assert figs["sharp"]["minus_lowest"] == 0.0
    assert figs["wide"]["minus_lowest"] == pytest.approx(0.11)


def test_n_expert_selection_keeps_the_aiq_choice_where_the_seeds_cannot_tell_costs_apart(
        ) -> None:
    per_seed = {"a": _seed_rows([0.90, 0.80, 0.95]), "b": _seed_rows([0.85, 0.86, 0.84])}
    rows = {"a": {"val_aiq": 0.70}, "b": {"val_aiq": 0.60}}
    # a's paired differences to b swing both ways: within one standard error
    assert RE._select_n_experts(per_seed, rows, "a")[0] == "a"
    # a method without the figure in every seed (a single point that never reached it...)
    # cannot be ranked on it: the AIQ choice stands
    per_seed["a"] = [{"val_cost_at_best_single_quality_deployed": None}] * 3
    assert RE._select_n_experts(per_seed, rows, "a") == ("a", 0.70, {})


def test_selection_in_a_run_says_its_rule_and_figures(tmp_path: Path) -> None:
    from routers.embed import make_embedder

    table = RE.load_routing_table("synthetic:600x4:length")
    X = make_embedder("hashing").embed(table.prompts)
    res = RE.evaluate(table, X, routers=["knn", "classifier"], seeds=[0, 1, 2],
                      progress=False)
    sel = res["selected"]
    assert "within one standard error" in sel["criterion"]
    figs = sel["cost_at_best_single_quality_val"]
    assert set(figs) == {"knn", "classifier"} and figs[sel["method"]]["eligible"]
    for name, f in figs.items():
        assert f["mean"] == pytest.approx(
            res["routers"][name]["val_cost_at_best_single_quality_deployed"])
        assert f["mean"] > 0.0  # a cost ratio (above 1 where the knob costs more)
    assert "val_cost_at_best_single_quality_deployed" in sel[
        "cost_at_best_single_quality_val_is"]  # the figure is named where it is listed
    # two experts: APGR decides, as before
    two = RE.load_routing_table("synthetic:400x2")
    res2 = RE.evaluate(two, make_embedder("hashing").embed(two.prompts), routers=["knn"],
                       seeds=[0], progress=False)
    assert res2["selected"]["criterion"].startswith("mean validation APGR")
    assert "cost_at_best_single_quality_val" not in res2["selected"]
    assert res2["routers"]["knn"]["val_cost_at_best_single_quality_deployed"] is None


@pytest.mark.parametrize("models", [TWO, {**TWO, "mid": (4.0, {"math": 0.8, "law": 0.3,
                                                                "food": 0.5})}])
def test_typos_read_routers_on_misspelt_test_prompts_and_never_select(
        tmp_path: Path, models: dict[str, tuple[float, dict[str, float]]]) -> None:
    data = _long_table(tmp_path / "t.csv", models, n=150, seed=5)
    argv = ["--data", str(data), "--embedder", "hashing", "--seeds", "2", "--quiet",
            "--routers", "knn,classifier,semantic", "--cache-dir", str(tmp_path / "cache")]
    assert _run([*argv, "--json", str(tmp_path / "clean.json")]) == 0
    assert _run([*argv, "--typos", "0.5", "--json", str(tmp_path / "typos.json")]) == 0
    clean = json.loads((tmp_path / "clean.json").read_text())
    res = json.loads((tmp_path / "typos.json").read_text())
    assert res["typos"]["rate"] == 0.5 and res["typos"]["seed"] == 0
    assert 0.5 < res["typos"]["prompts_changed"] <= 1.0 and "--typos 0.5" in res["command"]
    # a reading only: the selection and every clean figure are the clean run's
    assert res["selected"]["method"] == clean["selected"]["method"]
    rows = {**res["routers"], **{k: v for k, v in res["baselines"].items()
                                 if k.startswith("simple-")}}
    assert set(rows) >= {"knn", "classifier", "semantic", "simple-lr", "simple-knn"}
    for name, r in rows.items():
        c = {**clean["routers"], **clean["baselines"]}[name]
        assert r["aiq"] == c["aiq"] and r.get("val_aiq") == c.get("val_aiq"), name
        t = r["typos"]
        assert t["rate"] == 0.5 and 0.0 <= t["same_choice"] <= 1.0, name
        assert 0.0 <= t["aiq"] <= 1.0 and (t["apgr"] is None) == (len(models) > 2), name
    # hashed character n-grams move with the spelling: some choice changes somewhere
    assert min(r["typos"]["same_choice"] for r in rows.values()) < 1.0
    assert _run([*argv, "--typos", "0"]) == 2
