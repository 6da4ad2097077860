"""``expertgate eval routing``: cost-quality evaluation of every router family on a table.

Protocol (one command, every family, several seeds):

1. the table is loaded and every prompt embedded once (cached by content hash);
2. for each seed the prompts are split train / validation / test; each router is fitted on
   train; its cost knob is chosen on validation and everything is reported on test;
3. a router's knob is swept without refitting through ``predict_quality`` (n, m):
   with two experts by thresholding the predicted advantage ``q_strong - q_weak`` (RouteLLM's
   quantile thresholds for APGR/CPT; a finer grid for the quality-cost curve), with N experts
   by maximising ``q - λ · cost / max(cost)`` over a λ grid. A router without
   ``predict_quality`` is evaluated at its own decisions (one operating point; with two
   experts its curve joins that point to "all weak" and "all strong", the mixes a random
   share of extra calls reaches);
4. baselines: random, oracle, per-category (best expert per category on train, when the
   table has categories) and every single expert, through the same machinery.

Knob on validation: the cheapest setting whose validation quality reaches the best single
expert's validation quality (the setting with the best validation quality if none does).
``quality``/``cost`` and ``cost_at_best_single_quality_val`` are test figures at that setting.

Two-expert metrics use the prompts both experts answered; with N experts a router never
chooses a model that lacks a score for the prompt (see :mod:`evals.metrics`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from evals import metrics as M
from routers.base import Router, RouterError, RoutingTable, get_router_class, registered_names

__all__ = [
    "DEFAULT_EXCLUDED",
    "EvalError",
    "cli_register",
    "evaluate",
    "evaluate_predictions",
    "load_routing_table",
    "main",
    "synthetic_table",
]

#: families that route by label or adapter rather than trading cost for quality; a user can
#: still name them in ``--routers``
DEFAULT_EXCLUDED = frozenset({"semantic", "guard", "lora"})
#: strong-call shares of the fine two-expert quality-cost curve (and validation knob grid)
FINE_LEVELS = 101
#: λ grid (price of normalised cost) for N experts: 0, then geometric; the large end is
#: "cheapest expert everywhere"
LAMBDAS = np.concatenate([[0.0], np.geomspace(1e-3, 1e3, 160)])
RESULT_KEYS = ("apgr", "cpt20", "cpt50", "cpt80", "auc", "aiq", "quality", "cost",
               "cost_at_best_single_quality", "cost_at_best_single_quality_val",
               "quality_gap_val", "strong_share", "missing_share")


class EvalError(RuntimeError):
    """The evaluation cannot run on this input (bad table, unknown strong model, ...)."""


# --------------------------------------------------------------------------- loading


def synthetic_table(n: int, m: int, seed: int = 0) -> RoutingTable:
    """A synthetic n-prompt x m-model table for scale tests: 20 topics, each model with its
    own success rate per topic, costs rising with the model index, 5 % of scores missing."""
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(400)]
    topics = rng.integers(0, 20, size=n)
    topic_words = rng.choice(words, size=(20, 12))
    prompts = [" ".join([*rng.choice(topic_words[t], 8), *rng.choice(words, 6)]) + f" #{i}"
               for i, t in enumerate(topics)]
    rate = rng.uniform(0.1, 0.9, size=(20, m)) * np.linspace(0.7, 1.0, m)
    scores = (rng.uniform(size=(n, m)) < rate[topics]).astype(np.float64)
    scores[rng.uniform(size=(n, m)) < 0.05] = np.nan
    scores[np.isnan(scores).all(axis=1), 0] = 0.0
    costs = np.outer(rng.uniform(0.5, 1.5, size=n), np.geomspace(1.0, 50.0, m))
    return RoutingTable([f"s{i}" for i in range(n)], prompts, [f"model-{j}" for j in range(m)],
                        scores, costs, [f"topic-{t}" for t in topics])


def load_routing_table(path: str | Path, fmt: str = "long") -> RoutingTable:
    """Load a routing table through ``evals.datasets.routing`` (every format it knows);
    ``synthetic:NxM`` builds
    :func:`synthetic_table` (scale tests).
    """
    if str(path).startswith("synthetic:"):
        try:
            n, m = (int(v) for v in str(path).split(":", 1)[1].lower().split("x"))
        except ValueError:
            raise EvalError(f"bad synthetic table spec {path!r}; use synthetic:NxM") from None
        return synthetic_table(n, m)
    from evals.datasets.routing import load_table

    if not Path(path).exists():
        raise EvalError(f"no such file or folder: {path}")
    return load_table(path, fmt)


def embed_table(table: RoutingTable, embedder: str, cache_dir: str | Path | None = None
                ) -> tuple[np.ndarray, str]:
    """Embeddings of every prompt, computed once and cached by (embedder, content).

    The cache key is the sorted set of distinct prompts, so that loaders which order or
    filter prompts differently (or a table's subsets) share the same cached vectors.
    """
    from routers.embed import embed_cached, make_embedder

    e = make_embedder(embedder)
    uniq = sorted(set(table.prompts))
    U = embed_cached(e, uniq, cache_dir, progress=True)
    pos = {t: i for i, t in enumerate(uniq)}
    return U[[pos[t] for t in table.prompts]], e.name


# --------------------------------------------------------------------------- one split


def _pairwise_ok(S: np.ndarray, s: int, w: int) -> np.ndarray:
    return np.isfinite(S[:, s]) & np.isfinite(S[:, w])


def _two_expert_choices(adv: np.ndarray, thr: float, s: int, w: int) -> np.ndarray:
    return np.where(adv >= thr, s, w)


def _best_single(S: np.ndarray, C: np.ndarray) -> tuple[int, float, float]:
    """Index, quality and cost of the best single expert (ties: the cheaper)."""
    q = M.column_means(S)
    c = M.column_means(np.where(np.isfinite(S), C, np.nan))
    q = np.where(np.isfinite(q), q, -np.inf)
    j = int(np.lexsort((c, -q))[0])
    return j, float(q[j]), float(c[j])


def evaluate_predictions(P_val: np.ndarray, P_test: np.ndarray, val: RoutingTable,
                         test: RoutingTable, *, strong: int, knob_costs: np.ndarray,
                         oracle_costs: bool = False) -> dict[str, Any]:
    """Every metric of one router on one split, from its predicted qualities.

    ``P_val``/``P_test`` are (n, m) in the tables' model order; ``knob_costs`` (m,) are the
    per-model costs the router trades against (train means); ``oracle_costs`` makes the
    N-expert knob use each prompt's true cost instead (the oracle knows it).
    """
    Sv, Cv, St, Ct = val.scores, val.costs, test.scores, test.costs
    m = St.shape[1]
    out: dict[str, Any] = {}
    qc_s: list[float] = []
    kc = _norm(knob_costs)
    jb_v, qb_v, _ = _best_single(Sv, Cv)
    jb_t, qb_t, cb_t = _best_single(St, Ct)
    c_single = M.column_means(np.where(np.isfinite(St), Ct, np.nan))
    c_min, c_max = float(np.nanmin(c_single)), float(np.nanmax(c_single))
    if m == 2:
        w = 1 - strong
        okv, okt = _pairwise_ok(Sv, strong, w), _pairwise_ok(St, strong, w)
        adv_v = P_val[okv, strong] - P_val[okv, w]
        adv_t = P_test[okt, strong] - P_test[okt, w]
        Sv2, Cv2, St2, Ct2 = Sv[okv], Cv[okv], St[okt], Ct[okt]
        curve = M.deferral_curve(adv_t, St2[:, strong], St2[:, w], num_results=10)
        out["apgr"] = M.apgr(curve.share, curve.quality, curve.q_weak, curve.q_strong)
        out["auc"] = M.auc(curve.share, curve.quality)
        for x in (20, 50, 80):
            out[f"cpt{x}"] = M.cpt(curve.share, curve.quality, curve.q_weak, curve.q_strong,
                                   x / 100)
        out["curve"] = {"share": curve.share.tolist(), "quality": curve.quality.tolist(),
                        "pgr": curve.pgr.tolist()}
        # fine curve on test: thresholds at the quantiles of the test advantages
        levels = np.linspace(1.0, 0.0, FINE_LEVELS)
        fine_t = np.concatenate([[np.inf], np.quantile(adv_t, levels[1:])]) if adv_t.size \
            else np.array([np.inf])
        qc_c, qc_q = [], []
        for t in fine_t:
            ch = _two_expert_choices(adv_t, t, strong, w)
            q, c, _ = M.realised(ch, St2, Ct2)
            qc_c.append(c)
            qc_q.append(q)
            qc_s.append(float((ch == strong).mean()))
        # knob on validation: thresholds at validation quantiles, cheapest first
        val_t = np.concatenate([[np.inf], np.quantile(adv_v, levels[1:])]) if adv_v.size \
            else np.array([np.inf])
        val_q = [M.realised(_two_expert_choices(adv_v, t, strong, w), Sv2, Cv2)[0]
                 for t in val_t]
        k = _first_reaching(val_q, qb_v)
        ch = _two_expert_choices(adv_t, float(val_t[k]), strong, w)
        q, c, miss = M.realised(ch, St2, Ct2)
        out["strong_share"] = float((ch == strong).mean())
    else:
        lams = LAMBDAS[::-1]  # cheapest first
        kt = _per_query_knob(Ct) if oracle_costs else kc
        kv = _per_query_knob(Cv) if oracle_costs else kc
        qc_c_arr, qc_q_arr = M.quality_cost_curve(P_test, St, Ct, lams, knob_costs=kt)
        qc_c, qc_q = qc_c_arr.tolist(), qc_q_arr.tolist()
        _, val_q_arr = M.quality_cost_curve(P_val, Sv, Cv, lams, knob_costs=kv)
        k = _first_reaching(val_q_arr.tolist(), qb_v)
        ch = M.choose(P_test, kt, float(lams[k]), np.isfinite(St))
        q, c, miss = M.realised(ch, St, Ct)
        out.update({"apgr": None, "auc": None, "cpt20": None, "cpt50": None, "cpt80": None,
                    "strong_share": float((ch == strong).mean())})
    out["qc_curve"] = {"cost": list(map(float, qc_c)), "quality": list(map(float, qc_q))}
    if qc_s:
        out["qc_curve"]["strong_share"] = qc_s
    out["aiq"] = M.aiq(np.asarray(qc_c), np.asarray(qc_q), c_min, c_max) if c_max > c_min \
        else None
    cab = M.cost_at_quality(np.asarray(qc_c), np.asarray(qc_q), qb_t)
    out["cost_at_best_single_quality"] = None if cab is None or cb_t <= 0 else cab / cb_t
    out["quality"], out["cost"], out["missing_share"] = q, c, miss
    out["cost_at_best_single_quality_val"] = c / cb_t if cb_t > 0 else None
    out["quality_gap_val"] = q - qb_t
    out["best_single"] = {"val": int(jb_v), "test": int(jb_t), "test_quality": qb_t,
                          "test_cost": cb_t}
    return out


def _norm(costs: np.ndarray) -> np.ndarray:
    """Per-model costs scaled by the largest (the routers' cost knob units)."""
    c = np.asarray(costs, dtype=np.float64)
    top = float(np.max(c)) if c.size else 0.0
    return c / top if top > 0 else np.zeros_like(c)


def _per_query_knob(C: np.ndarray) -> np.ndarray:
    """Per-prompt costs scaled by the largest (what an oracle trades against)."""
    top = float(np.nanmax(C)) if C.size else 0.0
    return np.nan_to_num(C / top if top > 0 else C, nan=0.0)


def _first_reaching(qualities: Sequence[float], target: float) -> int:
    """Index of the first (cheapest) knob setting reaching ``target``, else the best one."""
    q = np.asarray(qualities, dtype=np.float64)
    hit = np.flatnonzero(q >= target - 1e-9)
    return int(hit[0]) if hit.size else int(np.argmax(q))


def _single_point(choice_t: np.ndarray, test: RoutingTable, strong: int,
                  single_expert: bool = False) -> dict[str, Any]:
    """Metrics of a router evaluated at its own decisions (no knob).

    A single expert is a point, not a curve: its APGR/CPT are left undefined.
    """
    St, Ct = test.scores, test.costs
    m = St.shape[1]
    q, c, miss = M.realised(choice_t, St, Ct)
    _, qb_t, cb_t = _best_single(St, Ct)
    c_single = M.column_means(np.where(np.isfinite(St), Ct, np.nan))
    out: dict[str, Any] = {"quality": q, "cost": c, "missing_share": miss,
                           "strong_share": float((choice_t == strong).mean()),
                           "qc_curve": {"cost": [c], "quality": [q]},
                           "apgr": None, "auc": None, "cpt20": None, "cpt50": None,
                           "cpt80": None}
    if m == 2 and not single_expert:
        w = 1 - strong
        ok = _pairwise_ok(St, strong, w)
        share = float((choice_t[ok] == strong).mean())
        qr = float(np.where(choice_t[ok] == strong, St[ok, strong], St[ok, w]).mean())
        qw, qs = float(St[ok, w].mean()), float(St[ok, strong].mean())
        xs = np.array(sorted({0.0, share, 1.0}))
        ys = np.array([qw if x == 0.0 else qs if x == 1.0 else qr for x in xs])
        if share in (0.0, 1.0):
            ys[xs == share] = qr
        out["apgr"] = M.apgr(xs, ys, qw, qs)
        out["auc"] = M.auc(xs, ys)
        for x in (20, 50, 80):
            out[f"cpt{x}"] = M.cpt(xs, ys, qw, qs, x / 100)
        out["curve"] = {"share": xs.tolist(), "quality": ys.tolist(),
                        "pgr": np.asarray(M.pgr(ys, qw, qs)).tolist()}
    cmin, cmax = float(np.nanmin(c_single)), float(np.nanmax(c_single))
    out["aiq"] = M.aiq(np.array([c]), np.array([q]), cmin, cmax) if cmax > cmin else None
    reach = q >= qb_t - 1e-9
    out["cost_at_best_single_quality"] = c / cb_t if reach and cb_t > 0 else None
    out["cost_at_best_single_quality_val"] = c / cb_t if cb_t > 0 else None
    out["quality_gap_val"] = q - qb_t
    return out


def _choices_from_decisions(router: Router, X: np.ndarray, texts: Sequence[str],
                            models: Sequence[str]) -> np.ndarray:
    index = {mname: j for j, mname in enumerate(models)}
    out = np.empty(len(texts), dtype=np.int64)
    for i, d in enumerate(router.decide(X, texts)):
        e = d.expert
        if e is None or e not in index:
            # a rejection or an expert the table does not know: fall back to its next target
            e = next((t.expert for t in d.targets if t.expert in index), None)
        if e is None:
            raise RouterError(f"router {router.name!r} chose {d.expert!r}, not in the table")
        out[i] = index[e]
    return out


def _predict(router: Router, X: np.ndarray, texts: Sequence[str], models: Sequence[str]
             ) -> np.ndarray:
    """``predict_quality`` with its columns put in the table's model order."""
    P = np.asarray(router.predict_quality(X, texts), dtype=np.float64)
    experts = list(getattr(router, "experts_", models))
    if P.shape != (X.shape[0], len(experts)):
        raise RouterError(f"router {router.name!r}: predict_quality gave shape {P.shape}")
    out = np.zeros((X.shape[0], len(models)))
    col = {e: j for j, e in enumerate(experts)}
    for j, mname in enumerate(models):
        if mname in col:
            out[:, j] = P[:, col[mname]]
    return np.nan_to_num(out, nan=0.0)


# --------------------------------------------------------------------------- the sweep


def _default_routers(table: RoutingTable) -> list[str]:
    return [n for n in registered_names() if n not in DEFAULT_EXCLUDED]


def evaluate(table: RoutingTable, X: np.ndarray, *, routers: Sequence[str] | None = None,
             strong: str | None = None, seeds: Sequence[int] = (0, 1, 2, 3, 4),
             val: float = 0.2, test: float = 0.2,
             router_params: Mapping[str, Mapping[str, Any]] | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Evaluate ``routers`` and the baselines on ``table`` over ``seeds``; the result JSON."""
    if len(table.models) < 2:
        raise EvalError("a routing table needs at least two models")
    if X.shape[0] != len(table):
        raise EvalError(f"{X.shape[0]} embeddings for {len(table)} prompts")
    mean_costs = table.mean_costs()
    if strong is None:
        s_idx = int(np.argmax(mean_costs))
    elif strong in table.models:
        s_idx = table.models.index(strong)
    else:
        raise EvalError(f"--strong {strong!r} is not a model of the table: "
                        f"{', '.join(table.models)}")
    names = list(routers) if routers else _default_routers(table)
    params = dict(router_params or {})
    per_seed: dict[str, list[dict[str, Any]]] = {}
    base_seed: dict[str, list[dict[str, Any]]] = {}
    skipped: dict[str, str] = {}
    timing: dict[str, float] = {}
    from tqdm import tqdm

    bar = tqdm(total=len(seeds) * (len(names) + 1), desc="routing eval", unit="fit",
               disable=not progress, file=sys.stderr)
    for seed in seeds:
        tr, va, te = table.split(seed=int(seed), val=val, test=test)
        T, V, E = table.subset(tr), table.subset(va), table.subset(te)
        kc = T.mean_costs()
        rng = np.random.default_rng(int(seed))
        # baselines -----------------------------------------------------------------
        bl: dict[str, tuple[np.ndarray, np.ndarray, bool]] = {
            "random": (rng.uniform(size=V.scores.shape), rng.uniform(size=E.scores.shape),
                       False),
            # true scores, with a tiny random tie-break so equal-advantage prompts are not
            # all sent together
            "oracle": (np.nan_to_num(V.scores) + 1e-6 * rng.uniform(size=V.scores.shape),
                       np.nan_to_num(E.scores) + 1e-6 * rng.uniform(size=E.scores.shape),
                       True),
        }
        if table.categories is not None:
            Tc = T.categories or []
            bl["category"] = (M.category_choice(Tc, T.scores, V.categories or []),
                              M.category_choice(Tc, T.scores, E.categories or []), False)
        for bname, (pv, pt, orc) in bl.items():
            base_seed.setdefault(bname, []).append(evaluate_predictions(
                pv, pt, V, E, strong=s_idx, knob_costs=kc, oracle_costs=orc))
        for j, mname in enumerate(table.models):
            base_seed.setdefault(mname, []).append(
                _single_point(np.full(len(E), j), E, s_idx, single_expert=True))
        bar.update(1)
        # routers ---------------------------------------------------------------------
        for name in names:
            if name in skipped:
                bar.update(1)
                continue
            t0 = time.perf_counter()
            try:
                r = get_router_class(name)(**dict(params.get(name, {})))
                if "seed" in r._param_names:
                    r.set_params(seed=int(seed))
                r.fit(X[tr], T)
                try:
                    pv = _predict(r, X[va], V.prompts, table.models)
                    pt = _predict(r, X[te], E.prompts, table.models)
                    res = evaluate_predictions(pv, pt, V, E, strong=s_idx, knob_costs=kc)
                    res["knob"] = True
                except RouterError as e:
                    if "does not estimate" not in str(e):
                        raise
                    ct = _choices_from_decisions(r, X[te], E.prompts, table.models)
                    res = _single_point(ct, E, s_idx)
                    res["knob"] = False
            except (RouterError, M.MetricError, ValueError) as e:
                skipped[name] = f"{type(e).__name__}: {e}"
                per_seed.pop(name, None)
                bar.update(1)
                continue
            timing[name] = timing.get(name, 0.0) + time.perf_counter() - t0
            per_seed.setdefault(name, []).append(res)
            bar.update(1)
    bar.close()
    return {
        "table": {"n_prompts": len(table), "models": list(table.models),
                  "mean_costs": [float(c) for c in mean_costs],
                  "mean_scores": [float(q) for q in M.column_means(table.scores)],
                  "strong": table.models[s_idx],
                  "weak": table.models[1 - s_idx] if len(table.models) == 2 else None,
                  "content_hash": table.content_hash(),
                  "has_categories": table.categories is not None},
        "seeds": [int(s) for s in seeds],
        "split": {"train": round(1 - val - test, 4), "val": val, "test": test},
        "routers": {n: _aggregate(rs, timing.get(n, 0.0) / max(len(rs), 1))
                    for n, rs in per_seed.items()},
        "baselines": {n: _aggregate(rs, None) for n, rs in base_seed.items()},
        "skipped": skipped,
    }


def _aggregate(results: Sequence[dict[str, Any]], fit_s: float | None) -> dict[str, Any]:
    """Mean and std over seeds of every scalar; mean curves (point-wise, aligned by knob)."""
    out: dict[str, Any] = {}
    for k in RESULT_KEYS:
        vals = [r.get(k) for r in results]
        got = [float(v) for v in vals if v is not None and math.isfinite(float(v))]
        out[k] = float(np.mean(got)) if got else None
        out[f"{k}_std"] = float(np.std(got)) if len(got) > 1 else (0.0 if got else None)
        if k.startswith(("cost_at", "cpt")):
            # a seed where the target was never reached is left out of the mean: say how many
            out[f"{k}_reached"] = len(got) / max(len(vals), 1)
    for ck in ("curve", "qc_curve"):
        curves = [r[ck] for r in results if ck in r]
        if curves:
            out[ck] = {f: np.mean([c[f] for c in curves], axis=0).round(6).tolist()
                       for f in curves[0] if all(len(c[f]) == len(curves[0][f]) for c in curves)}
    out["knob"] = bool(results[0].get("knob", True)) if results else None
    out["n_seeds"] = len(results)
    if fit_s is not None:
        out["seconds_per_seed"] = round(fit_s, 3)
    return out


# --------------------------------------------------------------------------- CLI


def cli_register(parser: argparse.ArgumentParser) -> None:
    """Add the flags of ``expertgate eval routing`` and its handler."""
    parser.add_argument("--data", required=True,
                        help="routing table file or folder (synthetic:NxM for a scale test)")
    parser.add_argument("--format", default="long",
                        help="long | routellm | routellm-mmlu | routellm-gsm8k | llmrouter | logs")
    parser.add_argument("--routers", default=None,
                        help="comma-separated router families (default: every registered "
                             f"cost-quality family; not {', '.join(sorted(DEFAULT_EXCLUDED))})")
    parser.add_argument("--strong", default=None,
                        help="the strong model of a two-expert table (default: most expensive)")
    parser.add_argument("--seeds", type=int, default=5, help="number of split seeds (0..N-1)")
    parser.add_argument("--val", type=float, default=0.2, help="validation share of prompts")
    parser.add_argument("--test", type=float, default=0.2, help="test share of prompts")
    parser.add_argument("--json", default=None, help="write the result JSON here")
    parser.add_argument("--embedder", default="minilm",
                        choices=["minilm", "onnx", "static", "hashing"])
    parser.add_argument("--cache-dir", default=None, help="embedding cache folder")
    parser.add_argument("--params", default=None,
                        help='JSON of router parameters, e.g. \'{"knn": {"k": 30}}\'')
    parser.add_argument("--threads", type=int, default=1,
                        help="BLAS/torch threads (the machine is shared: default 1)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Run the evaluation; print a summary table; write the JSON. Returns an exit code."""
    from routers.embed import set_thread_counts

    # torch is imported only for the embedder that needs it (its import alone takes seconds)
    set_thread_counts(torch_threads=args.threads if args.embedder == "minilm" else None,
                      blas_threads=args.threads)
    t0 = time.perf_counter()
    try:
        table = load_routing_table(args.data, args.format)
        X, emb_name = embed_table(table, args.embedder, args.cache_dir)
        t_embed = time.perf_counter() - t0
        params = json.loads(args.params) if args.params else None
        routers = [r.strip() for r in args.routers.split(",") if r.strip()] \
            if args.routers else None
        res = evaluate(table, X, routers=routers, strong=args.strong,
                       seeds=list(range(int(args.seeds))), val=args.val, test=args.test,
                       router_params=params, progress=not args.quiet)
    except (EvalError, RouterError, M.MetricError, OSError, json.JSONDecodeError) as e:
        print(f"expertgate eval routing: {e}", file=sys.stderr)
        return 2
    res = {"data": str(args.data), "format": args.format, "embedder": emb_name,
           "command": _command(args), **res,
           "timing_s": {"embed": round(t_embed, 2),
                        "total": round(time.perf_counter() - t0, 2)},
           "machine": _machine(), "created": datetime.now(UTC).isoformat(timespec="seconds")}
    print(summary_table(res))
    if args.json:
        p = Path(args.json)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(res, indent=1, allow_nan=False))
        print(f"wrote {p}", file=sys.stderr)
    return 0


def _command(args: argparse.Namespace) -> str:
    parts = ["expertgate eval routing", f"--data {args.data}", f"--format {args.format}"]
    if args.routers:
        parts.append(f"--routers {args.routers}")
    if args.strong:
        parts.append(f"--strong {args.strong}")
    parts += [f"--seeds {args.seeds}", f"--embedder {args.embedder}"]
    if (args.val, args.test) != (0.2, 0.2):
        parts.append(f"--val {args.val} --test {args.test}")
    if args.params:
        parts.append(f"--params '{args.params}'")
    if args.json:
        parts.append(f"--json {args.json}")
    return " ".join(parts)


def _machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "python": platform.python_version(),
            "cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()}


def _fmt(v: Any, std: Any = None, pct: bool = False) -> str:
    if v is None:
        return "-"
    small = v != 0 and abs(v) < 0.01  # USD costs per query
    s = f"{v:.3g}" if small else f"{v:.3f}"
    if std is not None and std > 0:
        s += f" ± {std:.3g}" if small else f" ± {std:.3f}"
    return s


def summary_table(res: Mapping[str, Any], fmt: Callable[..., str] = _fmt) -> str:
    """A Markdown table of the headline figures of every router and baseline."""
    two = len(res["table"]["models"]) == 2
    cols = (["apgr", "cpt50", "cpt80"] if two else []) + [
        "aiq", "quality", "cost", "cost_at_best_single_quality",
        "cost_at_best_single_quality_val"]
    head = "| router | " + " | ".join(cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 1)]
    rows = [(n, r) for n, r in res["routers"].items()]
    rows.sort(key=lambda nr: -(nr[1].get("apgr" if two else "aiq") or -1))
    rows += [(f"*{n}*", r) for n, r in res["baselines"].items()]
    for n, r in rows:
        cells = [fmt(r.get(c), r.get(f"{c}_std")) for c in cols]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
