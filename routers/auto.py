"""``--router auto``: the router family and its hyper-parameters chosen by cross-validation.

A user should get the best router for their table without knowing the families. For every
candidate ``(family, params)`` of :data:`CANDIDATES` (families that estimate per-expert
quality, so the cost knob applies), :func:`select` fits on part of the *training* prompts
and scores the held-out part with :func:`quality_cost_score`; the candidate with the best
mean score is refitted on all training prompts by :func:`fit_auto`. Validation and test
prompts of the caller are never looked at, so the caller can still set the cost knob on its
validation part and report on test.

Folds: 3-fold cross-validation up to :data:`CV_MAX_PROMPTS` training prompts (small tables
need every prompt to score a candidate), one 80/20 hold-out above (large tables give a
stable score from one split, at a third of the time).

The criterion is knob-free: with two experts the area under the deferral curve (quality as
the strong expert's share of the prompts grows, prompts taken by predicted advantage: it
depends on the ranking only, as APGR does); with more, the area under the realised
quality-vs-cost curve swept by the cost weight, between the cheapest and the most expensive
single expert's cost (AIQ, RouterBench). Both are in units of quality.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from routers.base import Router, RouterError, RoutingTable, make_router
from routers.tradeoff import strong_weak

__all__ = ["CANDIDATES", "Selection", "deferral_score", "fit_auto", "quality_cost_score",
           "select"]

#: (family, parameters) tried by ``auto``, cheapest to fit first
CANDIDATES: tuple[tuple[str, Mapping[str, Any]], ...] = (
    ("irt", {}),
    ("irt", {"text_stats": False}),
    ("irt", {"rank": 1}),
    ("knn", {"k": 20}),
    ("knn", {"k": 50, "prior_strength": 2.0}),
    ("classifier", {"C": 0.3}),
    ("classifier", {"C": 1.0}),
    ("mf", {}),
    # the per-category rule of the table's category column, the category inferred from the
    # embedding (a router that cannot beat it on held-out prompts should route as it does;
    # a table without categories leaves it out, said so)
    ("category", {"soft": True}),
    ("stack", {}),
)
CV_MAX_PROMPTS = 3000
_LAMBDAS = np.concatenate([[0.0], np.geomspace(1e-3, 1e3, 80)])


def deferral_score(Q: np.ndarray, S: np.ndarray, strong: int, weak: int,
                   points: int = 21) -> float:
    """Two experts: mean realised quality when the ``share`` of prompts with the largest
    predicted advantage ``Q[:, strong] - Q[:, weak]`` go to the strong expert, over shares
    0, 0.05, ..., 1 (the area under RouteLLM's deferral curve; it depends on the ranking
    only, as APGR does). Prompts missing either score are left out."""
    S = np.asarray(S, dtype=np.float64)
    ok = np.isfinite(S[:, strong]) & np.isfinite(S[:, weak])
    adv = (Q[:, strong] - Q[:, weak])[ok]
    s_s, s_w = S[ok, strong], S[ok, weak]
    if adv.size == 0:
        return float("nan")
    order = np.argsort(-adv, kind="stable")
    gain = np.concatenate([[0.0], np.cumsum((s_s - s_w)[order])])
    ks = np.rint(np.linspace(0, 1, points) * adv.size).astype(int)
    return float(np.mean((s_w.sum() + gain[ks]) / adv.size))


def quality_cost_score(Q: np.ndarray, S: np.ndarray, C: np.ndarray, points: int = 101) -> float:
    """Mean realised quality over cost budgets from the cheapest to the priciest expert.

    ``Q`` (n, m) predicted quality, ``S`` (n, m) true scores (NaN: missing; such a pair is
    never chosen), ``C`` (n, m) per-prompt costs. The cost weight λ sweeps the choices
    ``argmax Q - λ c / max c``; at each budget the best quality of a sweep point within it
    counts (the cheapest point's quality below it).
    """
    S = np.asarray(S, dtype=np.float64)
    avail = np.isfinite(S)
    C = np.where(avail, np.asarray(C, dtype=np.float64), np.nan)
    mc = np.nan_to_num(np.nanmean(C, axis=0), nan=0.0)
    c_norm = mc / mc.max() if mc.max() > 0 else mc
    rows = np.arange(len(S))
    cost, qual = [], []
    for lam in _LAMBDAS:
        U = np.where(avail, Q - (lam + 1e-9) * c_norm[None, :], -np.inf)
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
    """What :func:`select` chose and how every candidate scored (mean over folds)."""

    family: str
    params: dict[str, Any]
    score: float
    criterion: str = ("held-out training prompts: area under the deferral curve (two "
                      "experts) or under the quality-cost curve (AIQ, more experts)")
    folds: int = 1
    scores: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "params": self.params, "score": self.score,
                "criterion": self.criterion, "folds": self.folds, "candidates": self.scores}


def _predict(r: Router, X: np.ndarray, texts: Sequence[str], models: Sequence[str]
             ) -> np.ndarray:
    P = np.asarray(r.predict_quality(X, list(texts)), dtype=np.float64)
    col = {e: j for j, e in enumerate(r.experts_)}
    out = np.zeros((len(X), len(models)))
    for j, mname in enumerate(models):
        if mname in col:
            out[:, j] = P[:, col[mname]]
    return out


def _folds(n: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    if n <= CV_MAX_PROMPTS:
        k = 3
        parts = [np.sort(perm[i::k]) for i in range(k)]
        return [(np.sort(np.concatenate([parts[j] for j in range(k) if j != i])), parts[i])
                for i in range(k)]
    cut = round(n * 0.2)
    return [(np.sort(perm[cut:]), np.sort(perm[:cut]))]


def _score(Q: np.ndarray, V: RoutingTable) -> float:
    """The selection criterion: :func:`deferral_score` with two experts (the strong one is the
    dearer), :func:`quality_cost_score` with more."""
    if len(V.models) == 2:
        strong, weak = strong_weak(V.mean_costs())
        return deferral_score(Q, V.scores, strong, weak)
    return quality_cost_score(Q, V.scores, V.costs)


def _make(family: str, params: Mapping[str, Any], seed: int) -> Router:
    r = make_router(family, **dict(params))
    if "seed" in r.param_names() and "seed" not in params:
        r.set_params(seed=int(seed))
    return r


def select(X: np.ndarray, table: RoutingTable, *,
           candidates: Sequence[tuple[str, Mapping[str, Any]]] = CANDIDATES, seed: int = 0,
           log: Callable[[str], None] = lambda s: None) -> Selection:
    """Score every candidate by cross-validation on ``table`` (training prompts only)."""
    X = np.asarray(X, dtype=np.float32)
    if X.shape[0] != len(table):
        raise RouterError(f"need one embedding per prompt: {len(table)} prompts, X {X.shape}")
    if len(table) < 6:
        raise RouterError(f"auto needs at least 6 training prompts, got {len(table)}")
    folds = _folds(len(table), seed)
    rows: list[dict[str, Any]] = []
    for family, params in candidates:
        t0 = time.perf_counter()
        scores = []
        try:
            for tr, va in folds:
                T, V = table.subset(tr), table.subset(va)
                r = _make(family, params, seed).fit(X[tr], T)
                Q = _predict(r, X[va], V.prompts, table.models)
                scores.append(_score(Q, V))
        except RouterError as e:  # a family that cannot fit this table is left out, said so
            rows.append({"family": family, "params": dict(params), "score": None,
                         "error": str(e)})
            log(f"auto: {family} {dict(params)} skipped: {e}")
            continue
        s = float(np.mean(scores))
        rows.append({"family": family, "params": dict(params), "score": round(s, 6),
                     "fold_scores": [round(v, 6) for v in scores],
                     "seconds": round(time.perf_counter() - t0, 3)})
        log(f"auto: {family} {dict(params)} score {s:.4f} ({rows[-1]['seconds']:.1f} s)")
    ok = [r for r in rows if r["score"] is not None]
    if not ok:
        raise RouterError("auto: no candidate router could be fitted on this table: "
                          + "; ".join(f"{r['family']}: {r.get('error')}" for r in rows))
    # ties (within float noise) go to the earlier, cheaper-to-fit candidate
    best = max(ok, key=lambda r: (round(r["score"], 9), -ok.index(r)))
    return Selection(best["family"], best["params"], best["score"], folds=len(folds),
                     scores=rows)


def fit_auto(X: np.ndarray, table: RoutingTable, *,
             candidates: Sequence[tuple[str, Mapping[str, Any]]] = CANDIDATES, seed: int = 0,
             log: Callable[[str], None] = lambda s: None) -> tuple[Router, Selection]:
    """:func:`select`, then the chosen candidate fitted on every prompt of ``table``."""
    sel = select(X, table, candidates=candidates, seed=seed, log=log)
    return _make(sel.family, sel.params, seed).fit(X, table), sel
