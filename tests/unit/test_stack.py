"""The stack router's meta-model: what each expert's combination reads (routers/stack.py)."""

from __future__ import annotations

import numpy as np

from routers.base import make_router
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
