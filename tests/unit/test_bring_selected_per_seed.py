"""An evaluator who brings a routing table reads the result JSON's ``selected`` entry: it
named the method, its rule, the mean validation score and the margin over the simple
baselines, but not one figure per seed (only means and spreads, in other entries), so the
seed-by-seed agreement the margin rests on could not be read from it. ``selected.per_seed``
lists, for every seed of the run, the selected method's validation score (what selected it)
and its test headline figure beside the best simple baseline's."""

from __future__ import annotations

import pytest

from evals import routing_eval as RE


@pytest.mark.parametrize("models", [2, 4])
def test_selected_lists_every_seeds_figures(models: int) -> None:
    from routers.embed import make_embedder

    table = RE.load_routing_table(f"synthetic:300x{models}:length")
    X = make_embedder("hashing").embed(table.prompts)
    res = RE.evaluate(table, X, routers=["knn", "classifier"], seeds=[3, 5], progress=False,
                      refit="never")
    sel = res["selected"]
    rows = sel["per_seed"]
    two = models == 2
    crit, key = ("val_apgr", "apgr") if two else ("val_aiq", "cost_at_best_single_quality_deployed")
    assert [r["seed"] for r in rows] == [3, 5]
    mean = res["routers"][sel["method"]]
    assert sum(r["validation_score"] for r in rows) / 2 == pytest.approx(sel["validation_score"])
    assert sum(r[key] for r in rows) / 2 == pytest.approx(mean[key])
    base = sel["vs_simple"]["baseline"]
    assert sum(r["baseline"][key] for r in rows) / 2 == pytest.approx(
        res["baselines"][base][key])
    assert all(r["baseline"]["name"] == base and r["fitted_on"] == "train" for r in rows)
    assert all(r["validation_criterion"] == crit for r in rows)


def test_a_refitted_headline_lists_its_seeds_too() -> None:
    from routers.embed import make_embedder

    table = RE.load_routing_table("synthetic:300x2")
    X = make_embedder("hashing").embed(table.prompts)
    res = RE.evaluate(table, X, routers=["classifier"], seeds=[0, 1], progress=False,
                      refit="always")
    ref, vs = res["selected"]["refit"], res["selected"]["vs_simple"]
    rows = ref["test"]["per_seed"]
    assert [r["seed"] for r in rows] == [0, 1]
    assert all(r["fitted_on"] == "train+validation" for r in rows)
    assert sum(r["apgr"] for r in rows) / 2 == pytest.approx(vs["selected"])
    assert sum(r["baseline"]["apgr"] for r in rows) / 2 == pytest.approx(vs["baseline_value"])
    assert all(r["baseline"]["name"] == vs["baseline"] for r in rows)
