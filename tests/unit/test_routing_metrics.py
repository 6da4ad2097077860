"""Routing metrics against hand-computed tiny cases (RouteLLM and RouterBench definitions)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from evals import metrics as M

# A 4-query, 2-model table worked by hand:
#   strong correct on queries 0, 1, 3 (q_strong 0.75); weak correct on query 1 (q_weak 0.25).
S_STRONG = np.array([1.0, 1.0, 0.0, 1.0])
S_WEAK = np.array([0.0, 1.0, 0.0, 0.0])
ROUTER = np.array([0.9, 0.1, 0.2, 0.8])
# RouteLLM thresholds with 4 bins: quantiles 0.1, 0.175, 0.5, 0.825, 0.9 ->
# strong shares 1, .75, .5, .25, 0 with qualities .75, .75, .75, .5, .25


def test_deferral_curve_follows_routellm_thresholds() -> None:
    c = M.deferral_curve(ROUTER, S_STRONG, S_WEAK, num_results=4)
    np.testing.assert_allclose(c.share, [0.0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(c.quality, [0.25, 0.5, 0.75, 0.75, 0.75])
    assert c.q_weak == 0.25 and c.q_strong == 0.75
    np.testing.assert_allclose(c.pgr, [0.0, 0.5, 1.0, 1.0, 1.0])


def test_pgr_apgr_auc_cpt_hand_computed() -> None:
    c = M.deferral_curve(ROUTER, S_STRONG, S_WEAK, num_results=4)
    assert M.pgr(0.5, 0.25, 0.75) == pytest.approx(0.5)
    assert M.auc(c.share, c.quality) == pytest.approx(0.625)
    assert M.apgr(c.share, c.quality, c.q_weak, c.q_strong) == pytest.approx(0.75)
    assert M.cpt(c.share, c.quality, c.q_weak, c.q_strong, 0.2) == pytest.approx(0.1)
    assert M.cpt(c.share, c.quality, c.q_weak, c.q_strong, 0.5) == pytest.approx(0.25)
    assert M.cpt(c.share, c.quality, c.q_weak, c.q_strong, 0.8) == pytest.approx(0.4)
    assert M.cpt(c.share, c.quality, c.q_weak, c.q_strong, 1.01) is None


def test_apgr_of_random_mix_line_is_one_half() -> None:
    share = np.linspace(0, 1, 11)
    q = 0.3 + 0.4 * share
    assert M.apgr(share, q, 0.3, 0.7) == pytest.approx(0.5)


def test_apgr_rejects_equal_qualities_and_degenerate_curves() -> None:
    with pytest.raises(M.MetricError):
        M.apgr([0, 1], [0.5, 0.5], 0.5, 0.5)
    with pytest.raises(M.MetricError):
        M.apgr([0.5, 0.5], [0.4, 0.6], 0.3, 0.7)


def test_deferral_curve_drops_queries_missing_either_model() -> None:
    ss = np.array([1.0, np.nan, 0.0, 1.0, 1.0])
    sw = np.array([0.0, 1.0, 0.0, 0.0, 1.0])
    c = M.deferral_curve(np.array([0.9, 0.5, 0.2, 0.8, 0.1]), ss, sw, num_results=4)
    # four usable queries: q_strong = 3/4, q_weak = 1/4
    assert c.q_strong == pytest.approx(0.75) and c.q_weak == pytest.approx(0.25)
    with pytest.raises(M.MetricError, match="both"):
        M.deferral_curve(np.ones(2), np.array([np.nan, 1.0]), np.array([0.0, np.nan]))


def test_realised_counts_missing_choices_apart() -> None:
    scores = np.array([[1.0, np.nan], [0.0, 1.0], [np.nan, 0.5]])
    q, c, miss = M.realised(np.array([0, 0, 0]), scores, np.array([2.0, 1.0]))
    assert q == pytest.approx(0.5) and c == pytest.approx(2.0)
    assert miss == pytest.approx(1 / 3)
    with pytest.raises(M.MetricError, match="every chosen model"):
        M.realised(np.array([1, 0, 0])[:1], scores[:1], np.array([2.0, 1.0]))


def test_realised_rejects_mismatched_costs() -> None:
    with pytest.raises(M.MetricError):
        M.realised(np.array([0]), np.array([[1.0, 0.0]]), np.array([1.0, 2.0, 3.0]))


def test_choose_masks_unavailable_models_and_breaks_ties_to_cheaper() -> None:
    pred = np.array([[0.9, 0.9, 0.1], [0.9, 0.2, 0.1]])
    cost = np.array([3.0, 1.0, 0.5])
    avail = np.array([[True, True, True], [False, True, True]])
    np.testing.assert_array_equal(M.choose(pred, cost, 0.0, avail), [1, 1])
    # a large price of cost sends everything to the cheapest model
    np.testing.assert_array_equal(M.choose(pred, cost, 100.0, avail), [2, 2])


def test_upper_hull_and_aiq_on_hand_drawn_points() -> None:
    cost = np.array([0.0, 0.5, 0.25, 1.0, 0.75])
    qual = np.array([0.2, 0.3, 0.5, 0.6, 0.55])
    hx, hy = M.upper_hull(cost, qual)
    np.testing.assert_allclose(hx, [0.0, 0.25, 1.0])
    np.testing.assert_allclose(hy, [0.2, 0.5, 0.6])
    # 0.25 * (0.2 + 0.5) / 2 + 0.75 * (0.5 + 0.6) / 2
    assert M.aiq(cost, qual, 0.0, 1.0) == pytest.approx(0.5)


def test_aiq_extends_flat_and_normalises_cost() -> None:
    # in cost units 10..20; hull (0.2, .4) -> (0.6, .8), flat to both ends
    cost = np.array([12.0, 16.0])
    qual = np.array([0.4, 0.8])
    assert M.aiq(cost, qual, 10.0, 20.0) == pytest.approx(0.2 * 0.4 + 0.4 * 0.6 + 0.4 * 0.8)
    with pytest.raises(M.MetricError):
        M.aiq(cost, qual, 5.0, 5.0)


def test_pareto_front_drops_dominated_points() -> None:
    idx = M.pareto_front(np.array([1.0, 2.0, 2.0, 3.0]), np.array([0.5, 0.4, 0.7, 0.7]))
    np.testing.assert_array_equal(idx, [0, 2])


def test_cost_at_quality_and_best_quality_at_budget() -> None:
    c = np.array([1.0, 2.0, 3.0])
    q = np.array([0.5, 0.7, 0.9])
    assert M.cost_at_quality(c, q, 0.7) == 2.0
    assert M.cost_at_quality(c, q, 0.95) is None
    assert M.best_quality_at_budget(c, q, 2.5) == 0.7
    assert M.best_quality_at_budget(c, q, 0.5) is None


def test_quality_cost_curve_spans_cheapest_to_best() -> None:
    scores = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    costs = np.array([10.0, 1.0])
    cs, qs = M.quality_cost_curve(scores, scores, costs, [0.0, 1e6])
    # lambda 0: oracle-like choice (all correct, cheaper model on ties)
    assert qs[0] == pytest.approx(1.0) and cs[0] == pytest.approx((10 + 1 + 1 + 10) / 4)
    # huge lambda: the cheap model everywhere
    assert qs[1] == pytest.approx(0.5) and cs[1] == pytest.approx(1.0)


def test_oracle_choice_is_cheapest_among_best() -> None:
    scores = np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [np.nan, 0.2, 0.9]])
    np.testing.assert_array_equal(M.oracle_choice(scores, np.array([3.0, 1.0, 2.0])), [1, 1, 2])


def test_category_choice_uses_train_means_and_global_fallback() -> None:
    train = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, np.nan]])
    pred = M.category_choice(["a", "b", "a"], train, ["a", "b", "zz"])
    np.testing.assert_allclose(pred[0], [1.0, 0.0])
    np.testing.assert_allclose(pred[1], [0.0, 1.0])
    np.testing.assert_allclose(pred[2], [2 / 3, 0.5])
    assert not np.isnan(pred).any() and math.isfinite(float(pred.sum()))
