"""The stack's fit made faster and leaner must fit the same router: for fixed seeds its
predicted qualities on held-out prompts equal (rtol 1e-6) those of the implementation before
the speed work, saved in ``s20_stack_reference.npz`` beside this file.

The reference was written by ``python -m tests.unit.test_s20_stack_speed --write`` at commit
2bd65f2 (routers/stack.py before the speed work). Three tables cover the fit's paths: experts
each with missing scores and categories (one group per expert, the shared neighbour search
per fold, the trees reading the category rates, TF-IDF category centroids); a 0/1
strong/weak pair scored on every prompt (one group, the joint model of the pair); a routing
log with soft scores (one expert per prompt: each expert its own neighbour search, soft
labels as sample weights).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from evals.routing_eval import synthetic_table
from routers.base import RoutingTable
from routers.stack import StackRouter

REFERENCE = Path(__file__).with_name("s20_stack_reference.npz")
#: the trees' view needs this many training prompts here (the default's 2,000 would make the
#: test tables slow to fit)
TREES_MIN = 400


def _embed(table: RoutingTable, seed: int, dim: int = 24) -> np.ndarray:
    """Topic directions plus noise: an embedding that carries the table's topics."""
    rng = np.random.default_rng(seed)
    labels = sorted(set(table.categories or ["t"]))
    centre = rng.normal(size=(len(labels), dim))
    topic = [labels.index(c) for c in (table.categories or ["t"] * len(table.prompts))]
    return (centre[topic] + 0.8 * rng.normal(size=(len(topic), dim))).astype(np.float32)


def _tables() -> dict[str, tuple[np.ndarray, RoutingTable, RoutingTable, np.ndarray]]:
    """name -> (train embeddings, train table, test table, test embeddings)."""
    out = {}
    t = synthetic_table(1100, 6, seed=5, costs="length")  # 5 % of each expert's scores missing
    X = _embed(t, 5)
    out["missing"] = (X[:900], t.subset(np.arange(900)), t.subset(np.arange(900, 1100)),
                      X[900:])
    p = synthetic_table(900, 2, seed=6, costs="length")
    S = np.nan_to_num(p.scores, nan=0.0)  # a strong/weak pair scored on every prompt
    p = RoutingTable(p.prompt_ids, p.prompts, p.models, S, p.costs, None)
    X = _embed(p, 6)
    out["pair"] = (X[:700], p.subset(np.arange(700)), p.subset(np.arange(700, 900)), X[700:])
    g = synthetic_table(1200, 3, seed=7, costs="length")
    rng = np.random.default_rng(7)
    soft = np.clip(np.nan_to_num(g.scores, nan=0.5) * 0.8 + rng.uniform(0, 0.2, g.scores.shape),
                   0, 1)
    one = rng.integers(0, 3, size=len(g.prompts))  # a routing log: one expert per prompt
    S = np.full_like(soft, np.nan)
    S[np.arange(len(one)), one] = soft[np.arange(len(one)), one]
    g = RoutingTable(g.prompt_ids, g.prompts, g.models, S, g.costs, g.categories)
    X = _embed(g, 7)
    out["log"] = (X[:1000], g.subset(np.arange(1000)), g.subset(np.arange(1000, 1200)),
                  X[1000:])
    return out


def _predictions() -> dict[str, np.ndarray]:
    got = {}
    for name, (X, table, test, Xt) in _tables().items():
        r = StackRouter(seed=11, k=20).fit(X, table)
        got[name] = r.predict_quality(Xt, test.prompts)
    return got


def test_the_faster_fit_predicts_what_the_reference_fit_predicted(monkeypatch) -> None:
    monkeypatch.setattr(StackRouter, "trees_min_prompts", TREES_MIN)
    ref = np.load(REFERENCE, allow_pickle=False)
    got = _predictions()
    assert sorted(got) == sorted(ref.files)
    for name, P in got.items():
        assert P.shape == ref[name].shape, name
        np.testing.assert_allclose(P, ref[name], rtol=1e-6, atol=0, err_msg=name)


def test_an_error_in_one_groups_step_ends_the_fit_with_that_error(monkeypatch) -> None:
    """Every group's steps share one pool of threads: a failing fold fit is raised to the
    caller (not lost in a thread), and the fit does not hang."""
    import routers.stack
    from tests.unit.test_router_contract import synthetic_table as small_table

    monkeypatch.setattr(routers.stack, "FIT_THREADS", 2)
    base = StackRouter._base

    def failing(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if kwargs.get("init") is not None:  # a fold's fit (the final fits have no init)
            raise MemoryError("fold fit failed")
        return base(self, *args, **kwargs)

    monkeypatch.setattr(StackRouter, "_base", failing)
    X, table = small_table(120, models=["a", "b", "c"])
    S = table.scores.copy()
    S[::4, 2] = np.nan  # two groups of experts
    table = RoutingTable(table.prompt_ids, table.prompts, table.models, S, table.costs,
                         table.categories)
    with pytest.raises(MemoryError, match="fold fit failed"):
        StackRouter(lexical=False, trees=False).fit(X, table)


#: run in a fresh interpreter: scikit-learn and scipy's solvers not yet loaded, as in a CLI
_SOLVER_THREADS = """
from threadpoolctl import threadpool_info
import routers.stack
from routers.stack import StackRouter
from tests.unit.test_router_contract import synthetic_table

seen = []
fit_lr = routers.stack._fit_lr

def spy(*args, **kwargs):
    seen.append(sorted((i["filepath"].rsplit("/", 1)[-1], i["num_threads"])
                       for i in threadpool_info() if i["user_api"] == "blas"))
    return fit_lr(*args, **kwargs)

routers.stack._fit_lr = spy
routers.stack.FIT_THREADS = 1
X, table = synthetic_table(200)
StackRouter(lexical=False, trees=False).fit(X, table)
print(repr(seen))
"""


def test_the_solvers_blas_runs_one_thread_even_when_the_fit_loads_it() -> None:
    """scikit-learn's logistic regression runs on scipy's own OpenBLAS, which a process
    (a CLI) loads at the stack's first fit. The fit's one-BLAS-thread limit was set before
    that library was loaded, so it did not cover it: every solver step woke a pool of threads
    (the final and the meta-model fits, and every fit with ``FIT_THREADS`` 1, several times
    slower on two cores)."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", _SOLVER_THREADS], env=env, text=True,
                         capture_output=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[2], check=True)
    seen = eval(out.stdout.strip().splitlines()[-1])  # a list of lists of (name, threads)
    assert seen and all(libs for libs in seen)
    assert any("scipy_openblas" in name for name, _ in seen[0])
    assert all(n == 1 for libs in seen for _, n in libs), seen


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        raise SystemExit("usage: python -m tests.unit.test_s20_stack_speed --write")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(StackRouter, "trees_min_prompts", TREES_MIN)
        np.savez_compressed(REFERENCE, **_predictions())
    print(f"wrote {REFERENCE}")
