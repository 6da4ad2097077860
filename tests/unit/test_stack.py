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
