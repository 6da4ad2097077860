"""``--router auto``: the router family and its hyper-parameters chosen by cross-validation.

A user should get the best router for their table without knowing the families. For every
candidate ``(family, params)`` of :data:`CANDIDATES` (families that estimate per-expert
quality, so the cost knob applies), :func:`select` runs ``K``-fold cross-validation on the
*training* prompts and :func:`fit_auto` refits the chosen candidate on all of them.
Validation and test prompts of the caller are never looked at, so the caller can still set
the cost knob on its validation part and report on test.

Folds (:func:`grouped_folds`): :data:`K_FOLDS` folds of prompts grouped by normalised text,
so a duplicated question never sits on both sides of a fold. One 80/20 hold-out (the
previous rule above 3,000 prompts) picked ``stack`` on MMLU in only 2 of 5 report seeds: a
two-expert table's candidates differ by less than one hold-out's noise.

Criterion, per fold and knob-free: with two experts the APGR of the deferral curve (quality
as the strong expert's share of the prompts grows, prompts taken by predicted advantage;
the area above the random ranking's as a share of the oracle ranking's, so it depends on
the ranking only and a fold's difficulty cancels); with more experts the area under the
realised quality-vs-cost curve swept by the cost weight, between the cheapest and the most
expensive single expert's cost (AIQ, RouterBench).

Rule: the candidate with the best mean fold score, unless an earlier one (simpler, cheaper
to fit and serve: :data:`CANDIDATES` is in that order) is within one standard error of the
paired fold differences to it (the one-standard-error rule: a difference the folds cannot
tell from noise does not buy the dearer family).

Costs: with more than two experts each fold also fits a per-query cost model
(:class:`routers.costmodel.CostModel`) on its training part and scores every candidate a
second time trading against the held-out prompts' predicted costs. The chosen candidate gets
``cost_model="predicted"`` when that beats its mean-cost score by more than one standard error
of the paired fold differences, and ``cost_model="mean"`` otherwise (not the families' default
``"auto"``: the folds measured that the prediction does not pay; ``Selection.cost_model`` says
which and why). With two experts the criterion ranks by predicted advantage, which costs
cannot change: mean costs.

Cost: the table is embedded once by the caller and every candidate fits on rows of it;
``stack``'s TF-IDF views are fitted once on the training prompts, every text's row computed
in the same pass (the vocabulary and IDF are label-free, so sharing them across folds leaks
no score). The (candidate, fold) fits run in :func:`default_jobs` forked processes that
share those inputs, the dearest candidates first (the measured time:
docs/results/encoder/train-mmlu-auto.json, ``auto.seconds``).
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from routers.base import (
    Router,
    RouterError,
    RoutingTable,
    expert_columns,
    make_router,
    normalise_text,
)
from routers.costmodel import CostModel
from routers.tradeoff import strong_weak

__all__ = ["CANDIDATES", "K_FOLDS", "MAX_JOBS", "Selection", "default_jobs", "deferral_apgr",
           "deferral_score", "fit_auto", "grouped_folds", "quality_cost_score", "select"]

#: (family, parameters) tried by ``auto``, simplest and cheapest first (the order the
#: one-standard-error rule prefers)
CANDIDATES: tuple[tuple[str, Mapping[str, Any]], ...] = (
    # the per-category rule, the category inferred from the embedding (a router that cannot
    # beat it on held-out prompts should route as it does; a table without categories
    # leaves it out, said so)
    ("category", {"soft": True}),
    ("knn", {"k": 20}),
    ("knn", {"k": 50, "prior_strength": 2.0}),
    ("classifier", {"C": 0.3}),
    ("classifier", {"C": 1.0}),
    ("irt", {"rank": 1}),
    ("irt", {}),
    ("stack", {}),
)
#: cross-validation folds. Chosen on development seeds' validation (0-4, distilled): with 3
#: folds auto's choice scored val APGR 0.624 on GSM8K against 0.631 with 5; 10 folds chose as
#: 5 did at twice the time; on NQ the three were within the seeds' spread (val AIQ 0.434-0.445)
K_FOLDS = 5
#: most worker processes for the folds (each holds its own fits; the inputs are shared)
MAX_JOBS = 4
_LAMBDAS = np.concatenate([[0.0], np.geomspace(1e-3, 1e3, 80)])


def _deferral_areas(Q: np.ndarray, S: np.ndarray, strong: int, weak: int, points: int
                    ) -> tuple[float, float, float]:
    """(area of Q's ranking, of the oracle ranking, of a random ranking) under the deferral
    curve; NaN without a prompt scored by both experts."""
    S = np.asarray(S, dtype=np.float64)
    ok = np.isfinite(S[:, strong]) & np.isfinite(S[:, weak])
    adv = (Q[:, strong] - Q[:, weak])[ok]
    s_s, s_w = S[ok, strong], S[ok, weak]
    if adv.size == 0:
        return float("nan"), float("nan"), float("nan")
    d = s_s - s_w
    ks = np.rint(np.linspace(0, 1, points) * adv.size).astype(int)

    def area(order: np.ndarray) -> float:
        gain = np.concatenate([[0.0], np.cumsum(d[order])])
        return float(np.mean((s_w.sum() + gain[ks]) / adv.size))

    rand = float(np.mean((s_w.sum() + d.sum() * ks / adv.size) / adv.size))
    return area(np.argsort(-adv, kind="stable")), area(np.argsort(-d, kind="stable")), rand


def deferral_score(Q: np.ndarray, S: np.ndarray, strong: int, weak: int,
                   points: int = 21) -> float:
    """Two experts: mean realised quality when the ``share`` of prompts with the largest
    predicted advantage ``Q[:, strong] - Q[:, weak]`` go to the strong expert, over shares
    0, 0.05, ..., 1 (the area under RouteLLM's deferral curve; it depends on the ranking
    only, as APGR does). Prompts missing either score are left out."""
    return _deferral_areas(Q, S, strong, weak, points)[0]


def deferral_apgr(Q: np.ndarray, S: np.ndarray, strong: int, weak: int,
                  points: int = 21) -> float:
    """:func:`deferral_score` above a random ranking's, as a share of the oracle ranking's
    (1: the true advantage's order, 0: no better than chance); the raw area when no ranking
    can beat chance (every prompt has the same advantage)."""
    a, oracle, rand = _deferral_areas(Q, S, strong, weak, points)
    return a if not oracle - rand > 1e-12 else (a - rand) / (oracle - rand)


def quality_cost_score(Q: np.ndarray, S: np.ndarray, C: np.ndarray, points: int = 101,
                       knob_costs: np.ndarray | None = None) -> float:
    """Mean realised quality over cost budgets from the cheapest to the priciest expert.

    ``Q`` (n, m) predicted quality, ``S`` (n, m) true scores (NaN: missing; such a pair is
    never chosen), ``C`` (n, m) per-prompt costs. The cost weight λ sweeps the choices
    ``argmax Q - λ c``, ``c`` the experts' mean costs over their largest (or ``knob_costs``:
    what the router believes, e.g. its per-query predictions over one scale); at each budget
    the best quality of a sweep point within it counts (the cheapest point's quality below it).
    """
    S = np.asarray(S, dtype=np.float64)
    avail = np.isfinite(S)
    C = np.where(avail, np.asarray(C, dtype=np.float64), np.nan)
    mc = np.nan_to_num(np.nanmean(C, axis=0), nan=0.0)
    c_norm = (np.broadcast_to(mc / mc.max() if mc.max() > 0 else mc, S.shape)
              if knob_costs is None else np.asarray(knob_costs, dtype=np.float64))
    rows = np.arange(len(S))
    cost, qual = [], []
    for lam in _LAMBDAS:
        U = np.where(avail, Q - (lam + 1e-9) * c_norm, -np.inf)
        ch = U.argmax(axis=1)
        cost.append(float(np.nanmean(C[rows, ch])) if np.isfinite(C[rows, ch]).any() else 0.0)
        qual.append(float(np.nanmean(S[rows, ch])))
    cost_a, qual_a = np.asarray(cost), np.asarray(qual)
    lo, hi = float(np.nanmin(mc)), float(np.nanmax(mc))
    if hi <= lo:  # costs carry no information: the best quality reached
        return float(qual_a.max())
    grid = np.linspace(lo, hi, points)
    best = [qual_a[cost_a <= b + 1e-12].max() if (cost_a <= b + 1e-12).any()
            else qual_a[cost_a.argmin()] for b in grid]
    return float(np.mean(best))


@dataclass
class Selection:
    """What :func:`select` chose and how every candidate scored (per fold and mean)."""

    family: str
    params: dict[str, Any]
    score: float
    criterion: str = ("K-fold cross-validation on the training prompts (folds grouped by "
                      "normalised text): mean fold APGR of the deferral curve (two experts) "
                      "or area under the quality-cost curve (AIQ, more experts); the simplest "
                      "candidate within one standard error of the paired fold differences to "
                      "the best mean")
    folds: int = K_FOLDS
    best_mean: dict[str, Any] = field(default_factory=dict)
    scores: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    #: mean or predicted per-query costs for the chosen candidate (:func:`_choose_cost_model`)
    cost_model: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "params": self.params, "score": self.score,
                "criterion": self.criterion, "folds": self.folds, "best_mean": self.best_mean,
                "seconds": self.seconds, "candidates": self.scores,
                "cost_model": self.cost_model}


def _predict(r: Router, X: np.ndarray, texts: Sequence[str], models: Sequence[str]
             ) -> np.ndarray:
    P = np.asarray(r.predict_quality(X, list(texts)), dtype=np.float64)
    return expert_columns(P, r.quality_experts(), models)


def grouped_folds(prompts: Sequence[str], k: int = K_FOLDS, seed: int = 0
                  ) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` (train, held-out) index pairs; prompts with the same normalised text
    (:func:`routers.base.normalise_text`) share a fold. Groups are shuffled and each goes to
    the fold with the fewest prompts so far, so the folds are as even as the groups allow.
    Fewer folds when there are fewer than ``k`` distinct texts."""
    groups: dict[str, list[int]] = {}
    for i, t in enumerate(prompts):
        groups.setdefault(normalise_text(t), []).append(i)
    members = list(groups.values())
    k = max(1, min(int(k), len(members)))
    sizes = np.zeros(k, dtype=np.int64)
    fold = np.empty(len(prompts), dtype=np.int64)
    for g in np.random.default_rng(seed).permutation(len(members)):
        f = int(sizes.argmin())
        fold[members[g]] = f
        sizes[f] += len(members[g])
    return [(np.flatnonzero(fold != f), np.flatnonzero(fold == f)) for f in range(k)]


def _score(Q: np.ndarray, V: RoutingTable, knob_costs: np.ndarray | None = None) -> float:
    """The selection criterion on one fold: :func:`deferral_apgr` with two experts (the
    strong one is the dearer), :func:`quality_cost_score` with more (trading against
    ``knob_costs`` when given)."""
    if len(V.models) == 2:
        strong, weak = strong_weak(V.mean_costs())
        return deferral_apgr(Q, V.scores, strong, weak)
    return quality_cost_score(Q, V.scores, V.costs, knob_costs=knob_costs)


def _fold_costs(X: np.ndarray, table: RoutingTable, tr: np.ndarray, va: np.ndarray
                ) -> np.ndarray | None:
    """A fold's held-out per-query predicted costs over the training part's largest mean
    cost (what a ``cost_model="predicted"`` router trades against), or None where a cost
    model cannot change a choice: two experts (the criterion ranks by predicted advantage),
    or no expert's cost could be modelled."""
    if len(table.models) <= 2:
        return None
    T = table.subset(tr)
    try:
        model = CostModel.fit(X[tr], T.prompts, T.costs, T.scores)
    except RouterError:
        return None
    scale = float(T.mean_costs().max())
    if not model.fitted_.any() or scale <= 0:
        return None
    return model.predict(X[va], [table.prompts[i] for i in va]) / scale


def _make(family: str, params: Mapping[str, Any], seed: int, *, fold: bool = False
          ) -> Router:
    """The candidate router; in a fold (``fold``) with mean costs, as the criterion trades
    against the fold's own cost model (:func:`_fold_costs`), so a family's default
    ``cost_model="auto"`` would fit a model no score reads."""
    r = make_router(family, **dict(params))
    if "seed" in r.param_names() and "seed" not in params:
        r.set_params(seed=int(seed))
    if fold and "cost_model" in r.param_names() and "cost_model" not in params:
        r.set_params(cost_model="mean")
    return r


class _SharedViews:
    """Label-free views of the training prompts computed once for every fit: ``stack``'s
    TF-IDF (vocabulary and IDF of all training prompts, each text's row once)."""

    def __init__(self, prompts: Sequence[str]) -> None:
        self.prompts = list(prompts)
        self._lexical: Any = None

    def fit_kwargs(self, r: Router) -> dict[str, Any]:
        from routers.stack import StackRouter

        if not isinstance(r, StackRouter) or not r.uses_lexical():
            return {}
        if self._lexical is None:
            from routers.lexical import MemoLexical

            self._lexical = MemoLexical(StackRouter.new_lexical(), self.prompts)
        return {"lexical": self._lexical}

    def release(self) -> None:
        """Drop the cached rows (a fitted router keeps the vocabulary, as if fitted alone)."""
        if self._lexical is not None:
            self._lexical.forget()


@dataclass
class _Work:
    """What every (candidate, fold) fit reads; forked workers inherit it."""

    X: np.ndarray
    table: RoutingTable
    candidates: Sequence[tuple[str, Mapping[str, Any]]]
    folds: list[tuple[np.ndarray, np.ndarray]]
    seed: int
    views: _SharedViews
    #: per fold, the held-out prompts' predicted costs (:func:`_fold_costs`) or None
    fold_costs: list[np.ndarray | None]


#: the work of the running selection, set before its worker processes are forked
_WORK: list[_Work] = []


def _fold_score(task: tuple[int, int]
                ) -> tuple[int, int, float | str, float | None, float]:
    """(candidate, fold, held-out score or the RouterError's message, the score trading
    against predicted per-query costs (None without a fold cost model), seconds)."""
    w = _WORK[-1]
    c, f = task
    family, params = w.candidates[c]
    tr, va = w.folds[f]
    t0 = time.perf_counter()
    predicted: float | None = None
    try:
        r = _make(family, params, w.seed, fold=True)
        r.fit(w.X[tr], w.table.subset(tr), **w.views.fit_kwargs(r))
        V = w.table.subset(va)
        Q = _predict(r, w.X[va], V.prompts, w.table.models)
        score: float | str = _score(Q, V)
        if w.fold_costs[f] is not None:
            predicted = _score(Q, V, w.fold_costs[f])
    except RouterError as e:  # a family that cannot fit this table is left out, said so
        score = str(e)
    return c, f, score, predicted, time.perf_counter() - t0


def default_jobs() -> int:
    """Worker processes for the folds: the usable cores, at most :data:`MAX_JOBS`."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(MAX_JOBS, cores))


def _one_blas_thread(parent: int) -> None:
    """A worker's BLAS pool to one thread, and one thread for a stack's fold fits: ``jobs``
    workers with the parent's pool size each would oversubscribe the cores (spinning BLAS
    threads made the folds several times slower)."""
    from threadpoolctl import threadpool_limits

    import routers.stack
    from routers.workers import die_with_parent

    die_with_parent(parent)  # not left behind if the parent is killed
    # the pools loaded now, and (read when a library loads) those loaded later: a second
    # BLAS or an OpenMP runtime first imported by a fit kept its default pool size
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    threadpool_limits(1)
    routers.stack.FIT_THREADS = 1  # the workers already fill the cores


def _run(work: _Work, jobs: int) -> list[tuple[int, int, float | str, float | None, float]]:
    """Every (candidate, fold) fit, in ``jobs`` forked processes (in this one when 1 or
    where fork is unavailable); dearer candidates (later in the list) start first, so the
    cheap ones fill the gaps at the end. The scores do not depend on ``jobs``."""
    tasks = [(c, f) for c in reversed(range(len(work.candidates)))
             for f in range(len(work.folds))]
    _WORK.append(work)
    try:
        if jobs <= 1 or "fork" not in multiprocessing.get_all_start_methods():
            return [_fold_score(t) for t in tasks]
        # fork: the workers share the embeddings and TF-IDF rows with this process instead
        # of receiving copies
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork"),
                                 initializer=_one_blas_thread,
                                 initargs=(os.getpid(),)) as ex:
            return list(ex.map(_fold_score, tasks))
    finally:
        _WORK.pop()


def _select(X: np.ndarray, table: RoutingTable, candidates: Sequence[tuple[str, Mapping[str,
            Any]]], seed: int, k: int, log: Callable[[str], None], views: _SharedViews,
            jobs: int | None) -> Selection:
    X = np.asarray(X, dtype=np.float32)
    if X.shape[0] != len(table):
        raise RouterError(f"need one embedding per prompt: {len(table)} prompts, X {X.shape}")
    if len(table) < 6:
        raise RouterError(f"auto needs at least 6 training prompts, got {len(table)}")
    t_all = time.perf_counter()
    folds = grouped_folds(table.prompts, k, seed)
    if len(folds) < 2:
        raise RouterError("auto needs at least 2 distinct training prompts to cross-validate")
    seen = np.isfinite(table.scores)
    for j, m in enumerate(table.models):
        if any(not seen[tr, j].any() for tr, _ in folds):
            # every family would fail that fold: say why once, not each family's error
            raise RouterError(
                f"auto cross-validates in {len(folds)} folds, and model {m!r} has a score "
                f"on {int(seen[:, j].sum())} training prompt(s): some fold's training part "
                "has none; score it on more prompts, or train one family (--router knn, "
                "...) instead of auto")
    for family, params in candidates:  # computed once here, before any worker starts
        views.fit_kwargs(_make(family, params, seed))
    fold_costs = [_fold_costs(X, table, tr, va) for tr, va in folds]
    done = _run(_Work(X, table, candidates, folds, seed, views, fold_costs),
                default_jobs() if jobs is None else int(jobs))
    rows: list[dict[str, Any]] = []
    per_fold: list[np.ndarray] = []
    per_fold_pred: list[np.ndarray | None] = []
    for c, (family, params) in enumerate(candidates):
        mine = sorted((f, s, p, sec) for cc, f, s, p, sec in done if cc == c)
        errors = [s for _, s, _, _ in mine if isinstance(s, str)]
        if errors:
            rows.append({"family": family, "params": dict(params), "score": None,
                         "error": errors[0]})
            log(f"auto: {family} {dict(params)} skipped: {errors[0]}")
            continue
        scores = [float(s) for _, s, _, _ in mine]
        s = float(np.mean(scores))
        per_fold.append(np.asarray(scores))
        rows.append({"family": family, "params": dict(params), "score": round(s, 6),
                     "fold_scores": [round(v, 6) for v in scores],
                     "seconds": round(sum(sec for _, _, _, sec in mine), 3)})
        pred = [p for _, _, p, _ in mine]
        if all(p is not None for p in pred):
            arr = np.asarray(pred, dtype=np.float64)
            rows[-1]["fold_scores_predicted_costs"] = [round(float(v), 6) for v in arr]
            per_fold_pred.append(arr)
        else:
            per_fold_pred.append(None)
        log(f"auto: {family} {dict(params)} score {s:.4f} ({rows[-1]['seconds']:.1f} s)")
    ok = [r for r in rows if r["score"] is not None]
    if not ok:
        raise RouterError("auto: no candidate router could be fitted on this table: "
                          + "; ".join(f"{r['family']}: {r.get('error')}" for r in rows))
    if not any(np.isfinite(np.mean(f)) for f in per_fold):
        # the score reads every model's outcome on each held-out prompt: a table with none
        # such (a routing log: one served expert per prompt) leaves nothing to compare
        full = int(seen.all(axis=1).sum())
        raise RouterError(
            f"auto: no candidate could be scored in cross-validation: the score needs held-out "
            f"prompts scored by every model, and {full} of {len(table)} training prompts are "
            "(a routing log scores only the expert that served each prompt); train on the "
            "logs with --correction dr or dr_target (every expert's outcome filled), or one "
            "family (--router knn, ...)")
    means = np.array([float(np.mean(f)) for f in per_fold])
    b = int(means.argmax())  # ties go to the earlier, simpler candidate
    for row, f in zip(ok, per_fold, strict=True):
        row["se_to_best"] = round(_paired_se(per_fold[b] - f), 6)
    chosen = next(i for i, row in enumerate(ok)
                  if means[i] >= means[b] - row["se_to_best"] - 1e-12)
    params = dict(ok[chosen]["params"])
    costs = _choose_cost_model(ok[chosen]["family"], per_fold[chosen], per_fold_pred[chosen])
    if "cost_model" in make_router(ok[chosen]["family"]).param_names():
        params["cost_model"] = costs["chosen"]
    log(f"auto: cost model {costs['chosen']} ({costs})")
    return Selection(ok[chosen]["family"], params, float(means[chosen]),
                     folds=len(folds),
                     best_mean={"family": ok[b]["family"], "params": ok[b]["params"],
                                "score": float(means[b])},
                     scores=rows, seconds=round(time.perf_counter() - t_all, 3),
                     cost_model=costs)


def _paired_se(d: np.ndarray) -> float:
    """Standard error of the mean of paired fold differences ``d`` (inf with one fold)."""
    return float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else float("inf")


def _choose_cost_model(family: str, mean_folds: np.ndarray, pred_folds: np.ndarray | None
                       ) -> dict[str, Any]:
    """``predicted`` per-query costs for the chosen candidate when its mean fold score with
    them beats the score with mean costs by more than one standard error of the paired fold
    differences (the one-standard-error rule again: mean costs are the simpler choice)."""
    if pred_folds is None or "cost_model" not in make_router(family).param_names():
        return {"chosen": "mean", "why": "no fold cost model (two experts, or no expert's "
                "cost could be modelled)"}
    d = pred_folds - mean_folds
    se = _paired_se(d)
    gain = float(d.mean())
    return {"chosen": "predicted" if gain > se else "mean",
            "score_mean_costs": round(float(mean_folds.mean()), 6),
            "score_predicted_costs": round(float(pred_folds.mean()), 6),
            "gain": round(gain, 6), "se": round(se, 6)}


def select(X: np.ndarray, table: RoutingTable, *,
           candidates: Sequence[tuple[str, Mapping[str, Any]]] = CANDIDATES, seed: int = 0,
           k: int = K_FOLDS, log: Callable[[str], None] = lambda s: None,
           jobs: int | None = None) -> Selection:
    """Score every candidate by grouped ``k``-fold cross-validation on ``table`` (training
    prompts only) and apply the one-standard-error rule (module doc); ``jobs`` worker
    processes fit the folds (default :func:`default_jobs`)."""
    views = _SharedViews(table.prompts)
    try:
        return _select(X, table, candidates, seed, k, log, views, jobs)
    finally:
        views.release()


def fit_auto(X: np.ndarray, table: RoutingTable, *,
             candidates: Sequence[tuple[str, Mapping[str, Any]]] = CANDIDATES, seed: int = 0,
             k: int = K_FOLDS, log: Callable[[str], None] = lambda s: None,
             jobs: int | None = None) -> tuple[Router, Selection]:
    """:func:`select`, then the chosen candidate fitted on every prompt of ``table`` (with
    the views the selection already computed)."""
    views = _SharedViews(table.prompts)
    try:
        sel = _select(X, table, candidates, seed, k, log, views, jobs)
        r = _make(sel.family, sel.params, seed)
        r.fit(np.asarray(X, dtype=np.float32), table, **views.fit_kwargs(r))
        return r, sel
    finally:
        views.release()
