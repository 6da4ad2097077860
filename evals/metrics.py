"""Cost-quality metrics of routers: RouteLLM's (two experts) and RouterBench's (N experts).

Pure functions over numpy arrays; nothing here knows about routers or files.

Two experts (RouteLLM, ``routellm/evals/evaluate.py`` and ``benchmarks.py``):

* a router gives each query a *strong score* (its estimate that the strong model is needed);
  thresholds are the quantiles of those scores at ``num_results`` equal-count bins (RouteLLM
  uses ``pd.qcut(scores, 10, retbins=True)``); a query goes to the strong model when its score
  is ``>=`` the threshold (``>`` for the last, largest threshold, so that the curve reaches
  0 % strong calls);
* PGR (performance gap recovered) = ``(q_router - q_weak) / (q_strong - q_weak)``;
* the deferral curve is quality against the share of strong calls; AUC is its trapezoidal
  area over the share; APGR = ``(AUC - AUC_weak) / (AUC_strong - AUC_weak)`` with the constant
  weak/strong qualities integrated over the same shares, i.e. the area under the PGR curve
  when the shares span [0, 1];
* CPT(x) = the smallest strong-call share at which the (linearly interpolated) curve reaches
  PGR x. RouteLLM computes it with ``np.interp`` over the curve sorted by share, which equals
  this for a non-decreasing curve and is ill-defined otherwise; the first crossing is the
  well-defined reading. Shares are fractions in [0, 1] here (RouteLLM prints percent).

N experts (RouterBench, Hu et al. 2024):

* a quality-cost curve is the (mean cost, mean quality) of a router at each knob setting;
* AIQ = area under the non-decreasing upper convex hull of those points, cost normalised to
  [0, 1] between the cheapest and the most expensive single model (mean costs); points are
  clipped to that range; the hull is extended flat to both ends;
* cost at the best single model's quality: the lowest cost among curve points whose quality
  reaches that model's quality, as a fraction of that model's cost;
* best quality within a cost budget.

Missing scores (NaN: a prompt a model was not evaluated on): :func:`realised` averages quality
and cost over the prompts whose chosen model has a score and reports the share of the others
as ``missing_share``. The evaluation (``evals.routing_eval``) scores every method on the same
prompts, those every model answered, so that nothing a router could not know at training time
(which models have a *test* score) shapes a figure; two-expert metrics use only prompts that
both experts answered. A curve with no evaluable prompt at all raises :class:`MetricError`.

Protocol helpers: :func:`apgr_of_advantage` is the one APGR of a router's predicted advantage
(used by ``eval routing`` and ``expertgate train``); :func:`over_seeds` averages a figure over
seeds and says in how many seeds it exists (``reached k/n``); :func:`select_on_validation`
picks a candidate by its validation score alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "DeferralCurve",
    "MetricError",
    "aiq",
    "apgr",
    "apgr_of_advantage",
    "auc",
    "best_quality_at_budget",
    "category_choice",
    "choose",
    "column_means",
    "cost_at_quality",
    "cpt",
    "deferral_curve",
    "oracle_choice",
    "over_seeds",
    "pareto_front",
    "pgr",
    "quality_cost_curve",
    "realised",
    "routellm_thresholds",
    "select_on_validation",
    "upper_hull",
]


class MetricError(ValueError):
    """Inputs a metric cannot be computed from (empty, mismatched shapes, degenerate gaps)."""


# --------------------------------------------------------------------------- realised choices


def realised(choice: np.ndarray, scores: np.ndarray, costs: np.ndarray
             ) -> tuple[float, float, float]:
    """Mean quality and mean cost of routing query i to model ``choice[i]``.

    Returns ``(quality, cost, missing_share)``: means over the queries whose chosen model has a
    score; ``missing_share`` is the share of queries whose chosen model has none.
    """
    scores = np.asarray(scores, dtype=np.float64)
    costs = _costs_like(costs, scores)
    choice = np.asarray(choice, dtype=np.int64)
    if choice.shape != (scores.shape[0],):
        raise MetricError(f"need one choice per query: {scores.shape[0]} queries, "
                          f"{choice.shape} choices")
    if scores.shape[0] == 0:
        raise MetricError("no queries to evaluate")
    rows = np.arange(scores.shape[0])
    s = scores[rows, choice]
    c = costs[rows, choice]
    ok = np.isfinite(s)
    if not ok.any():
        raise MetricError("every chosen model lacks a score: nothing to evaluate")
    return float(s[ok].mean()), float(c[ok].mean()), float(1.0 - ok.mean())


def _costs_like(costs: np.ndarray | Sequence[float], scores: np.ndarray) -> np.ndarray:
    """Costs per query (n, m) or per model (m,) -> (n, m)."""
    c = np.asarray(costs, dtype=np.float64)
    if c.ndim == 1:
        if c.shape[0] != scores.shape[1]:
            raise MetricError(f"{c.shape[0]} per-model costs for {scores.shape[1]} models")
        c = np.broadcast_to(c, scores.shape)
    if c.shape != scores.shape:
        raise MetricError(f"costs of shape {c.shape} do not match scores {scores.shape}")
    if not np.all(np.isfinite(c[np.isfinite(scores)])):
        raise MetricError("costs must be finite where scores exist")
    return c


def choose(pred: np.ndarray, model_costs: np.ndarray, lam: float,
           available: np.ndarray | None = None) -> np.ndarray:
    """Per query, the model maximising ``pred - lam * cost`` (ties: the cheaper model).

    ``model_costs`` is per model (m,) or per query (n, m); ``available`` (n, m) bool masks
    models that cannot be chosen for a query.
    """
    pred = np.asarray(pred, dtype=np.float64)
    c = np.broadcast_to(np.asarray(model_costs, dtype=np.float64), pred.shape)
    # the tiny cost term breaks exact ties toward the cheaper model
    util = pred - (lam + 1e-9) * c
    if available is not None:
        util = np.where(available, util, -np.inf)
    return np.argmax(util, axis=1)


# --------------------------------------------------------------------------- two experts


def pgr(q_router: float | np.ndarray, q_weak: float, q_strong: float) -> float | np.ndarray:
    """Performance gap recovered: ``(q_router - q_weak) / (q_strong - q_weak)``."""
    gap = float(q_strong) - float(q_weak)
    if abs(gap) < 1e-12:
        raise MetricError("strong and weak models have the same quality: PGR is undefined")
    out = (np.asarray(q_router, dtype=np.float64) - q_weak) / gap
    return float(out) if np.ndim(out) == 0 else out


def routellm_thresholds(strong_score: np.ndarray, num_results: int = 10) -> np.ndarray:
    """RouteLLM's thresholds: the bin edges of ``pd.qcut(strong_score, num_results)``."""
    s = np.asarray(strong_score, dtype=np.float64)
    if s.size == 0:
        raise MetricError("no scores")
    if num_results < 1:
        raise MetricError("num_results must be at least 1")
    return np.quantile(s, np.linspace(0.0, 1.0, num_results + 1))


@dataclass(frozen=True)
class DeferralCurve:
    """Quality against strong-call share, sorted by share (ascending)."""

    share: np.ndarray
    quality: np.ndarray
    q_weak: float
    q_strong: float

    @property
    def pgr(self) -> np.ndarray:
        return np.asarray(pgr(self.quality, self.q_weak, self.q_strong))


def deferral_curve(strong_score: np.ndarray, s_strong: np.ndarray, s_weak: np.ndarray,
                   num_results: int = 10, thresholds: np.ndarray | None = None
                   ) -> DeferralCurve:
    """RouteLLM's deferral curve of a router giving ``strong_score`` to each query.

    ``s_strong``/``s_weak`` are the two models' scores per query. Queries lacking either score
    are dropped (the pair cannot be compared on them). ``thresholds`` overrides RouteLLM's
    quantile thresholds.
    """
    score = np.asarray(strong_score, dtype=np.float64)
    ss = np.asarray(s_strong, dtype=np.float64)
    sw = np.asarray(s_weak, dtype=np.float64)
    if not (score.shape == ss.shape == sw.shape) or score.ndim != 1:
        raise MetricError("strong_score, s_strong and s_weak must be 1-D of equal length")
    ok = np.isfinite(ss) & np.isfinite(sw)
    if not ok.any():
        raise MetricError("no query has scores for both the strong and the weak model")
    if not np.all(np.isfinite(score[ok])):
        raise MetricError("router scores contain NaN or infinity")
    score, ss, sw = score[ok], ss[ok], sw[ok]
    thr = routellm_thresholds(score, num_results) if thresholds is None else np.asarray(
        thresholds, dtype=np.float64)
    shares, quals = [], []
    for i, t in enumerate(thr):
        sel = score >= t if i != len(thr) - 1 else score > t
        shares.append(sel.mean())
        quals.append(np.where(sel, ss, sw).mean())
    order = np.argsort(np.asarray(shares), kind="stable")
    return DeferralCurve(np.asarray(shares)[order], np.asarray(quals)[order],
                         float(sw.mean()), float(ss.mean()))


def auc(share: np.ndarray, quality: np.ndarray) -> float:
    """Trapezoidal area under quality vs. strong-call share (RouteLLM's AUC)."""
    x = np.asarray(share, dtype=np.float64)
    y = np.asarray(quality, dtype=np.float64)
    if x.shape != y.shape or x.size < 2:
        raise MetricError("a curve needs at least two points of (share, quality)")
    order = np.argsort(x, kind="stable")
    return float(np.trapezoid(y[order], x[order]))


def apgr(share: np.ndarray, quality: np.ndarray, q_weak: float, q_strong: float) -> float:
    """Average performance gap recovered, exactly as RouteLLM computes it."""
    x = np.sort(np.asarray(share, dtype=np.float64))
    width = float(x[-1] - x[0]) if x.size else 0.0
    if width <= 0:
        raise MetricError("the curve spans no range of strong-call shares")
    gap = float(q_strong) - float(q_weak)
    if abs(gap) < 1e-12:
        raise MetricError("strong and weak models have the same quality: APGR is undefined")
    return (auc(share, quality) - q_weak * width) / (gap * width)


def cpt(share: np.ndarray, quality: np.ndarray, q_weak: float, q_strong: float,
        x: float) -> float | None:
    """Call-performance threshold: the least strong-call share reaching PGR ``x``.

    Linear interpolation between curve points (as RouteLLM's ``np.interp``); None if the curve
    never reaches PGR ``x``.
    """
    s = np.asarray(share, dtype=np.float64)
    order = np.argsort(s, kind="stable")
    s = s[order]
    p = np.asarray(pgr(np.asarray(quality, dtype=np.float64)[order], q_weak, q_strong))
    if p.size == 0:
        raise MetricError("empty curve")
    if p[0] >= x:
        return float(s[0])
    for i in range(1, p.size):
        if p[i] >= x:
            if p[i] == p[i - 1]:
                return float(s[i])
            frac = (x - p[i - 1]) / (p[i] - p[i - 1])
            return float(s[i - 1] + frac * (s[i] - s[i - 1]))
    return None


# --------------------------------------------------------------------------- N experts


def quality_cost_curve(pred: np.ndarray, scores: np.ndarray, costs: np.ndarray,
                       lambdas: Sequence[float] | np.ndarray, knob_costs: np.ndarray | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Realised (cost, quality) at each ``lambda`` of ``argmax pred - lambda * knob_cost``.

    ``knob_costs`` is what the router believes each model costs (per model, or per query for
    an oracle); it defaults to the per-model mean of ``costs``. Models without a score for a
    query are never chosen for it.
    """
    scores = np.asarray(scores, dtype=np.float64)
    c = _costs_like(costs, scores)
    avail = np.isfinite(scores)
    if not avail.any(axis=1).all():
        raise MetricError("some query has no model with a score")
    if knob_costs is None:
        knob_costs = np.array([c[avail[:, j], j].mean() if avail[:, j].any() else 0.0
                               for j in range(scores.shape[1])])
    cs, qs = [], []
    for lam in lambdas:
        q, cost, _ = realised(choose(pred, knob_costs, float(lam), avail), scores, c)
        cs.append(cost)
        qs.append(q)
    return np.asarray(cs), np.asarray(qs)


def pareto_front(costs: np.ndarray, qualities: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated points (no other point is cheaper-or-equal and better),
    sorted by cost."""
    c = np.asarray(costs, dtype=np.float64)
    q = np.asarray(qualities, dtype=np.float64)
    order = np.lexsort((-q, c))
    out: list[int] = []
    best = -np.inf
    for i in order:
        if q[i] > best:
            out.append(int(i))
            best = q[i]
    return np.asarray(out, dtype=np.int64)


def upper_hull(costs: np.ndarray, qualities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The non-decreasing upper convex hull of the points, as its vertices sorted by cost."""
    c = np.asarray(costs, dtype=np.float64)
    q = np.asarray(qualities, dtype=np.float64)
    if c.size == 0 or c.shape != q.shape:
        raise MetricError("need matching, non-empty costs and qualities")
    idx = pareto_front(c, q)
    hull: list[tuple[float, float]] = []
    for i in idx:
        p = (float(c[i]), float(q[i]))
        # drop the last vertex while it lies on or below the chord to the new point
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) >= 0:
                hull.pop()
            else:
                break
        hull.append(p)
    h = np.asarray(hull)
    return h[:, 0], h[:, 1]


def aiq(costs: np.ndarray, qualities: np.ndarray, c_min: float, c_max: float) -> float:
    """RouterBench AIQ: area under the non-decreasing convex hull, cost scaled to [0, 1].

    ``c_min``/``c_max`` are the mean costs of the cheapest and the most expensive single model.
    Costs outside that range are clipped to it; the hull is extended flat to both ends.
    """
    if not c_max > c_min:
        raise MetricError("the most expensive model must cost more than the cheapest")
    x = np.clip((np.asarray(costs, dtype=np.float64) - c_min) / (c_max - c_min), 0.0, 1.0)
    hx, hy = upper_hull(x, np.asarray(qualities, dtype=np.float64))
    hx = np.concatenate([[0.0], hx, [1.0]])
    hy = np.concatenate([[hy[0]], hy, [hy[-1]]])
    return float(np.trapezoid(hy, hx))


def cost_at_quality(costs: np.ndarray, qualities: np.ndarray, target: float,
                    tol: float = 1e-9) -> float | None:
    """The lowest cost among points whose quality reaches ``target``; None if none does."""
    c = np.asarray(costs, dtype=np.float64)
    q = np.asarray(qualities, dtype=np.float64)
    ok = q >= target - tol
    return float(c[ok].min()) if ok.any() else None


def best_quality_at_budget(costs: np.ndarray, qualities: np.ndarray, budget: float
                           ) -> float | None:
    """The best quality among points costing at most ``budget``; None if none does."""
    c = np.asarray(costs, dtype=np.float64)
    q = np.asarray(qualities, dtype=np.float64)
    ok = c <= budget
    return float(q[ok].max()) if ok.any() else None


# --------------------------------------------------------------------------- baselines


def oracle_choice(scores: np.ndarray, costs: np.ndarray) -> np.ndarray:
    """Per query, the cheapest model among those with the best score."""
    s = np.asarray(scores, dtype=np.float64)
    c = _costs_like(costs, s)
    best = np.nanmax(np.where(np.isfinite(s), s, -np.inf), axis=1, keepdims=True)
    cand = np.isfinite(s) & (s >= best - 1e-12)
    if not cand.any(axis=1).all():
        raise MetricError("some query has no model with a score")
    return np.argmin(np.where(cand, c, np.inf), axis=1)


def category_choice(train_categories: Sequence[str], train_scores: np.ndarray,
                    categories: Sequence[str]) -> np.ndarray:
    """Per-category mean score of each model on train, as a quality estimate per query.

    Returns (n, m) predicted qualities: the train mean of the query's category, or the global
    train mean for a category not seen in training. Missing scores are ignored in the means.
    """
    s = np.asarray(train_scores, dtype=np.float64)
    if len(train_categories) != s.shape[0]:
        raise MetricError("one category per training query is needed")
    glob = np.nan_to_num(column_means(s), nan=0.0)
    cats = np.asarray(train_categories, dtype=object)
    table: dict[str, np.ndarray] = {}
    for cat in set(train_categories):
        rows = s[cats == cat]
        mean = column_means(rows) if rows.size else glob
        table[cat] = np.where(np.isfinite(mean), mean, glob)
    return np.stack([table.get(c, glob) for c in categories]) if len(categories) else \
        np.zeros((0, s.shape[1]))


def column_means(a: np.ndarray) -> np.ndarray:
    """Column means ignoring NaN; NaN (without a warning) for an all-NaN column."""
    ok = np.isfinite(a)
    n = ok.sum(axis=0)
    tot = np.where(ok, a, 0.0).sum(axis=0)
    return np.where(n > 0, tot / np.maximum(n, 1), np.nan)


# --------------------------------------------------------------------------- protocol helpers


def apgr_of_advantage(advantage: np.ndarray, s_strong: np.ndarray, s_weak: np.ndarray,
                      num_results: int = 10) -> float:
    """APGR of a router that sends the queries with the largest predicted advantage
    (``q_strong - q_weak``) to the strong model: RouteLLM's deferral curve and area."""
    c = deferral_curve(advantage, s_strong, s_weak, num_results=num_results)
    return apgr(c.share, c.quality, c.q_weak, c.q_strong)


def over_seeds(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean and std of a per-seed figure over the seeds where it exists, *and* how many those
    are: ``{"mean", "std", "reached", "n"}``. A figure that does not exist in a seed (a router
    that never reaches the target quality) is not silently dropped: ``reached < n`` says so,
    and the reader must see ``reached k/n`` beside the mean."""
    got = [float(v) for v in values if v is not None and np.isfinite(float(v))]
    return {"mean": float(np.mean(got)) if got else None,
            "std": (float(np.std(got)) if len(got) > 1 else 0.0) if got else None,
            "reached": len(got), "n": len(values)}


def select_on_validation(scores: Mapping[str, float | None]) -> tuple[str, float]:
    """The candidate with the highest validation score (ties: the first given); candidates
    without a finite score cannot be selected."""
    best: tuple[str, float] | None = None
    for name, v in scores.items():
        if v is None or not np.isfinite(float(v)):
            continue
        if best is None or float(v) > best[1]:
            best = (name, float(v))
    if best is None:
        raise MetricError("no candidate has a validation score to select on")
    return best
