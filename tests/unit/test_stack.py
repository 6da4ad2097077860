"""The stack router's meta-model: what each expert's combination reads (routers/stack.py)."""

from __future__ import annotations

import numpy as np

from routers.base import RoutingTable, make_router
from routers.stack import StackRouter
from tests.unit.test_router_contract import synthetic_table


def _blocks(r, m: int) -> tuple[np.ndarray, np.ndarray]:
    """(experts, experts) mask of non-zero component blocks, and (experts,) whether the
    statistics' coefficients are non-zero."""
    n_comp = (r.meta_coef_.shape[1] - r.stat_coef_.shape[1]) // m
    blocks = np.array([[np.any(r.meta_coef_[j, k * n_comp:(k + 1) * n_comp] != 0)
                        for k in range(m)] for j in range(m)])
    return blocks, np.any(r.meta_coef_[:, m * n_comp:] != 0, axis=1)


def test_each_expert_reads_every_co_scored_expert_and_the_statistics() -> None:
    X, table = synthetic_table(240, models=["a", "b", "c"], missing=False)
    shared = make_router("stack", lexical=False).fit(X, table)
    blocks, stats = _blocks(shared, 3)
    assert blocks.all() and stats.all()
    own = make_router("stack", lexical=False, shared_meta=False).fit(X, table)
    blocks, stats = _blocks(own, 3)
    assert np.array_equal(blocks, np.eye(3, dtype=bool)) and not stats.any()
    P = shared.predict_quality(X[:30], table.prompts[:30])
    assert P.shape == (30, 3) and np.all((P > 0) & (P < 1))


def test_experts_scored_on_different_prompts_do_not_read_each_other() -> None:
    """Expert c's scores are missing on a third of the prompts: its meta-model is fitted on
    other prompts than a's and b's, so neither reads the other side's components."""
    X, table = synthetic_table(240, models=["a", "b", "c"], missing=False)
    S = table.scores.copy()
    S[::3, 2] = np.nan
    table = type(table)(table.prompt_ids, table.prompts, table.models, S, table.costs,
                        table.categories)
    r = make_router("stack", lexical=False).fit(X, table)
    blocks, _ = _blocks(r, 3)
    assert np.array_equal(blocks, np.array([[1, 1, 0], [1, 1, 0], [0, 0, 1]], bool))


def test_two_experts_scored_0_1_get_one_joint_model_whose_marginals_are_calibrated(
        tmp_path) -> None:
    """A strong/weak pair scored right/wrong on the same prompts: one multinomial model of
    the four joint outcomes serves both experts; its marginals match the success rates,
    and it survives a save/load."""
    from routers.base import get_router_class

    X, table = synthetic_table(600, models=["weak", "strong"], missing=False)
    r = make_router("stack", lexical=False).fit(X, table)
    assert r.pair_experts_.tolist() == [[0, 1]] and r.pair_coef_.shape[:2] == (1, 4)
    P = r.predict_quality(X, table.prompts)
    assert np.all((P > 0) & (P < 1))
    np.testing.assert_allclose(P.mean(axis=0), table.scores.mean(axis=0), atol=0.03)
    r.save(tmp_path / "s")
    back = get_router_class("stack").load(tmp_path / "s")
    assert np.array_equal(back.predict_quality(X[:40], table.prompts[:40]), P[:40])
    # without it, each expert keeps its own meta-model, whose figures these are not
    own = make_router("stack", lexical=False, joint_pairs=False).fit(X, table)
    assert own.pair_experts_.size == 0
    assert not np.allclose(own.predict_quality(X[:40], table.prompts[:40]), P[:40])


def test_no_joint_model_for_soft_scores_or_more_than_two_experts() -> None:
    X, table = synthetic_table(300, models=["weak", "strong"], missing=False)
    soft = type(table)(table.prompt_ids, table.prompts, table.models,
                       np.clip(table.scores * 0.8 + 0.1, 0, 1), table.costs, table.categories)
    assert make_router("stack", lexical=False).fit(X, soft).pair_experts_.size == 0
    X3, table3 = synthetic_table(300, models=["a", "b", "c"], missing=False)
    assert make_router("stack", lexical=False).fit(X3, table3).pair_experts_.size == 0


def test_the_stack_fits_with_one_blas_thread_and_gives_the_callers_pool_back(
        monkeypatch) -> None:
    from threadpoolctl import threadpool_info, threadpool_limits

    from routers.stack import StackRouter

    def blas() -> list[int]:
        return [int(i["num_threads"]) for i in threadpool_info() if i["user_api"] == "blas"]

    seen: list[list[int]] = []
    fit = StackRouter._fit

    def spy(self, *args):  # type: ignore[no-untyped-def]
        seen.append(blas())
        return fit(self, *args)

    monkeypatch.setattr(StackRouter, "_fit", spy)
    X, table = synthetic_table(60)
    with threadpool_limits(2, user_api="blas"):
        before = blas()
        make_router("stack").fit(X, table)
        assert blas() == before
    assert seen and seen[0] and all(n == 1 for n in seen[0])


def test_one_shared_neighbour_search_per_fold_gives_each_groups_own_estimates(
        monkeypatch) -> None:
    """Experts scored on different prompts (5% of scores missing: every expert its own
    group) share one neighbour search per fold; the fitted router is the one each group's
    own search gives."""
    import routers.stack as RS

    X, table = synthetic_table(400, models=["a", "b", "c", "d"], missing=True)
    assert len({np.isfinite(table.scores[:, j]).tobytes() for j in range(4)}) == 4
    searches: list[int] = []
    real = RS.neighbour_lists
    monkeypatch.setattr(RS, "neighbour_lists",
                        lambda *a, **kw: searches.append(1) or real(*a, **kw))
    kw = {"lexical": False, "trees": False, "k": 20}
    shared = make_router("stack", **kw).fit(X, table)
    assert len(searches) == 5  # one per fold, not one per fold and expert
    own = make_router("stack", **kw)
    own.shared_search_min_coverage = 1.01  # every group searches its own neighbours
    own.fit(X, table)
    assert len(searches) == 5
    for a in ("meta_coef_", "meta_bias_", "emb_coef_", "stat_coef_"):
        np.testing.assert_allclose(getattr(shared, a), getattr(own, a), atol=1e-6)
    np.testing.assert_allclose(shared.predict_quality(X[:50], table.prompts[:50]),
                               own.predict_quality(X[:50], table.prompts[:50]), atol=1e-6)
    # lists one longer than k: a prompt with two unscored neighbours in its list (about a
    # quarter of them) takes the group's own search, the others the list
    monkeypatch.setattr(RS, "neighbour_lists", lambda Xq, Xt, depth: real(Xq, Xt, 21))
    short = make_router("stack", **kw).fit(X, table)
    np.testing.assert_allclose(short.meta_coef_, own.meta_coef_, atol=1e-6)


def test_a_routing_log_keeps_each_experts_own_search() -> None:
    """One expert per prompt (a routing log's shape): no expert is scored on half of the
    prompts, so there is no shared search to filter."""
    X, table = synthetic_table(300, models=["a", "b", "c"], missing=False)
    S = np.full_like(table.scores, np.nan)
    S[np.arange(300), np.arange(300) % 3] = table.scores[np.arange(300), np.arange(300) % 3]
    table = type(table)(table.prompt_ids, table.prompts, table.models, S, table.costs,
                        table.categories)
    r = make_router("stack", lexical=False, trees=False)
    groups = {np.isfinite(S[:, j]).tobytes(): [j] for j in range(3)}
    assert r._fold_neighbours(X.astype(np.float64), np.arange(300) % 5, S, groups) is None
    P = r.fit(X, table).predict_quality(X[:10], table.prompts[:10])
    assert P.shape == (10, 3) and np.all((P > 0) & (P < 1))


def test_prompts_without_a_word_leave_out_the_lexical_view() -> None:
    # no prompt has a token for TF-IDF: the stack fits on its other views (it failed with
    # scikit-learn's "0 feature(s)")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(160, 16)).astype(np.float32)
    S = (rng.random((160, 2)) > 0.5).astype(float)
    t = RoutingTable([f"p{i}" for i in range(160)], [""] * 160, ["a", "b"], S,
                     np.array([[1.0, 5.0]] * 160))
    r = StackRouter().fit(X, t)
    assert len(r.lex_terms_) == 0 and r.lex_coef_.size == 0
    assert len(r.decide(X[:3], ["", "a word", ""])) == 3
