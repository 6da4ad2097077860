"""``expertgate eval routing``: cost-quality evaluation of every router family on a table.

Protocol (one command, every family, several seeds):

1. the table is loaded and checked (:func:`check_table`: two models at least, prompts every
   model answered, the strong model, the router names) *before* anything is embedded; then
   every prompt is embedded once (cached by content hash);
2. for each seed the prompts are split train / validation / test by normalised text
   (duplicates never straddle parts); each router is fitted on train; its cost knob is chosen
   on validation and everything is reported on test;
3. a router's knob is swept without refitting through ``predict_quality`` (n, m):
   with two experts by thresholding the predicted advantage ``q_strong - q_weak`` (RouteLLM's
   quantile thresholds for APGR/CPT; a finer grid for the quality-cost curve), with N experts
   by maximising ``q - λ · cost / max(cost)`` over a λ grid, ``cost`` the train mean cost of
   each expert, or, for a router that trades against a cost model (``cost_model``
   ``"predicted"``, or ``"auto"`` where some expert's cost is predictable), its own per-query cost
   predictions (``router.predict_costs``) over its one scale. A router without
   ``predict_quality`` is evaluated at its own decisions (one operating point; with two
   experts its curve joins that point to "all weak" and "all strong", the mixes a random
   share of extra calls reaches);
4. baselines: random, oracle, per-category (best expert per category on train, when the
   table has categories) and every single expert, through the same machinery.

Knob on validation: the cheapest setting whose validation quality reaches the best single
expert's validation quality (the setting with the best validation quality if none does).
``quality``/``cost`` and ``cost_at_best_single_quality_val`` are test figures at that setting;
``cost_at_best_single_quality_val`` with ``quality_gap_val`` is the headline cost figure, as
it exists in every seed. ``cost_at_best_single_quality`` (the cheapest point of the *test*
curve) is kept as a reference only, with ``cost_at_best_single_quality_reached`` = in how
many of the ``n_seeds`` seeds the router reached the best single model's test quality at all.

Method selection on validation: the result's top-level ``selected`` names the router family
with the best mean *validation* APGR (two experts) or validation AIQ (N experts) over the
seeds; test figures play no part in it. Seeds: ``--seed-set report`` uses
:data:`evals.provenance.REPORT_SEEDS` (never used in development; the published figures),
``dev`` uses 0, 1, 2, ... (see :mod:`evals.provenance`).

Availability: routers only know what train knows. Every method (routers, baselines, single
models) is scored on the same validation and test prompts: those every model answered; the
others are counted (``n_scored``) and left out, so no router is told which models have a test
score, and every single-model baseline averages over the same prompts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from evals import metrics as M
from evals.provenance import git_state, provenance, seed_list
from evals.report import figure
from routers.base import (
    Router,
    RouterError,
    RoutingTable,
    expert_columns,
    get_router_class,
    make_router,
    normalise_text,
    registered_names,
)
from routers.embed import EMBEDDER_KINDS

__all__ = [
    "EvalError",
    "check_table",
    "cli_register",
    "default_routers",
    "evaluate",
    "evaluate_predictions",
    "load_routing_table",
    "main",
    "synthetic_table",
]

#: strong-call shares of the fine two-expert quality-cost curve (and validation knob grid)
FINE_LEVELS = 101
#: λ grid (price of normalised cost) for N experts: 0, then geometric; the large end is
#: "cheapest expert everywhere"
LAMBDAS = np.concatenate([[0.0], np.geomspace(1e-3, 1e3, 160)])
RESULT_KEYS = ("apgr", "cpt20", "cpt50", "cpt80", "auc", "aiq", "quality", "cost",
               "cost_at_best_single_quality", "cost_at_best_single_quality_val",
               "quality_gap_val", "validation_reaches_best_single",
               "cost_at_best_single_quality_deployed", "quality_gap_deployed",
               "strong_share", "missing_share", "val_apgr", "val_aiq",
               "val_cost_at_best_single_quality_deployed")
#: figures that may not exist in a seed (target never reached): reported with ``reached k/n``
REACH_KEYS = ("cost_at_best_single_quality", "cpt20", "cpt50", "cpt80")


class EvalError(RuntimeError):
    """The evaluation cannot run on this input (bad table, unknown strong model, ...)."""


# --------------------------------------------------------------------------- loading


#: kinds of synthetic cost (``synthetic:NxM[:KIND]``)
SYNTHETIC_COSTS = ("random", "length", "fewshot")


def synthetic_table(n: int, m: int, seed: int = 0, costs: str = "random") -> RoutingTable:
    """A synthetic n-prompt x m-model table for scale tests: 20 topics, each model with its
    own success rate per topic, costs rising with the model index, 5 % of scores missing.

    ``costs="random"``: each prompt's costs are the models' prices times one random factor
    in [0.5, 1.5], unrelated to the prompt. ``costs="length"``: priced by tokens, as real
    providers bill: each prompt gets a log-normal number of extra context words (median 40,
    from 0 to 2,000; drawn as its first 14 words are, so the topic stays visible), and
    costs ``(input tokens · price + output tokens · 3 · price) / 1000``, input tokens the
    gateway's estimate (characters / 4) and output tokens a per-topic answer length times a
    per-model verbosity times log-normal noise. The scores are the same as ``random``'s for
    the same seed (the extra draws come from a second generator), so only prompts and costs
    differ: what a per-query cost model can use. ``costs="fewshot"``: ``length``'s prompts,
    each behind five others of its topic with their answers (``Answer: B``), priced the same
    way, as few-shot benchmark prompts are sent: long prompts, the question at the end.
    """
    if costs not in SYNTHETIC_COSTS:
        raise EvalError(f"synthetic costs must be one of {', '.join(SYNTHETIC_COSTS)}, "
                        f"got {costs!r}")
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
    price = np.geomspace(1.0, 50.0, m)
    cost_arr = np.outer(rng.uniform(0.5, 1.5, size=n), price)
    if costs in ("length", "fewshot"):
        r2 = np.random.default_rng([seed, 1])
        extra = np.minimum(np.rint(r2.lognormal(np.log(40.0), 1.2, size=n)), 2000).astype(int)
        prompts = [p + " " + " ".join([*r2.choice(topic_words[t], e * 8 // 14),
                                       *r2.choice(words, e - e * 8 // 14)])
                   if e else p for p, t, e in zip(prompts, topics, extra, strict=True)]
        if costs == "fewshot":  # five same-topic prompts with their answers before each
            r3 = np.random.default_rng([seed, 2])
            same = [np.flatnonzero(topics == t) for t in range(20)]
            base = prompts
            prompts = ["\n\n".join([*(f"{base[j]}\nAnswer: {'ABCD'[r3.integers(4)]}"
                                        for j in r3.choice(same[t], 5)),
                                      f"{base[i]}\nAnswer:"])
                       for i, t in enumerate(topics)]
        tokens_in = np.array([len(p) // 4 + 1 for p in prompts], dtype=np.float64)
        answer = r2.uniform(20.0, 200.0, size=20)[topics]
        verbosity = r2.uniform(0.6, 1.6, size=m)
        tokens_out = np.outer(answer, verbosity) * r2.lognormal(0.0, 0.5, size=(n, m))
        cost_arr = (tokens_in[:, None] * price + 3.0 * tokens_out * price) / 1000.0
    return RoutingTable([f"s{i}" for i in range(n)], prompts, [f"model-{j}" for j in range(m)],
                        scores, cost_arr, [f"topic-{t}" for t in topics])


#: the largest generated table (N prompts x M models): scale tests use 36,000 x 11
MAX_SYNTHETIC_CELLS = 10_000_000


def load_routing_table(path: str | Path, fmt: str | None = None) -> RoutingTable:
    """Load a routing table through ``evals.datasets.routing`` (every format it knows);
    ``synthetic:NxM`` builds :func:`synthetic_table` (scale tests), ``synthetic:NxM:length``
    the same with costs priced by prompt and answer length.
    """
    if str(path).startswith("synthetic:"):
        spec = str(path).split(":")[1:]
        try:
            if len(spec) > 2:
                raise ValueError
            n, m = (int(v) for v in spec[0].lower().split("x"))
        except ValueError:
            raise EvalError(f"bad synthetic table spec {path!r}; use synthetic:NxM or "
                            "synthetic:NxM:length|fewshot") from None
        if n < 1 or m < 1 or n * m > MAX_SYNTHETIC_CELLS:
            # a mistyped size (an extra zero or three) would build until memory ran out
            raise EvalError(f"synthetic table spec {path!r}: N prompts and M models must be "
                            f"at least 1 and N x M at most {MAX_SYNTHETIC_CELLS:,} cells")
        return synthetic_table(n, m, costs=spec[1] if len(spec) == 2 else "random")
    from evals.datasets.registry import resolve_table
    from evals.datasets.routing import load_table

    try:  # the one --data rule: a registry name (routellm:mmlu, ...) or a path
        where, fmt = resolve_table(path, fmt)
    except KeyError as e:
        raise EvalError(e.args[0]) from None
    return load_table(where, fmt)


def embed_table(table: RoutingTable, embedder: str, cache_dir: str | Path | None = None,
                progress: bool = True) -> tuple[np.ndarray, Any]:
    """Embeddings of every prompt, computed once and cached by (embedder, content).

    The cache key is the sorted set of distinct prompts, so that loaders which order or
    filter prompts differently (or a table's subsets) share the same cached vectors.
    """
    from routers.embed import make_embedder

    e = make_embedder(embedder)
    return embed_texts(e, embedder, table.prompts, cache_dir, progress), e


def embed_texts(e: Any, kind: str, texts: Sequence[str], cache_dir: str | Path | None = None,
                progress: bool = True) -> np.ndarray:
    """The rows of ``texts`` embedded by ``e``, each distinct text once, cached."""
    from routers.embed import announce_embedding, embed_cached

    uniq = sorted(set(texts))
    announce_embedding(e, kind, uniq, cache_dir)
    U = embed_cached(e, uniq, cache_dir, progress=progress)
    pos = {t: i for i, t in enumerate(uniq)}
    return U[[pos[t] for t in texts]]


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


def _cost_range(S: np.ndarray, C: np.ndarray) -> tuple[float, float]:
    c_single = M.column_means(np.where(np.isfinite(S), C, np.nan))
    return float(np.nanmin(c_single)), float(np.nanmax(c_single))


def _aiq(costs: Sequence[float], quals: Sequence[float], S: np.ndarray, C: np.ndarray
         ) -> float | None:
    c_min, c_max = _cost_range(S, C)
    return M.aiq(np.asarray(costs), np.asarray(quals), c_min, c_max) if c_max > c_min \
        else None


def evaluate_predictions(P_val: np.ndarray, P_test: np.ndarray, val: RoutingTable,
                         test: RoutingTable, *, strong: int, knob_costs: np.ndarray,
                         oracle_costs: bool = False,
                         router_costs: tuple[np.ndarray, np.ndarray] | None = None
                         ) -> dict[str, Any]:
    """Every metric of one router on one split, from its predicted qualities.

    ``P_val``/``P_test`` are (n, m) in the tables' model order; ``knob_costs`` (m,) are the
    per-model costs the router trades against (train means); ``oracle_costs`` makes the
    N-expert knob use each prompt's true cost instead (the oracle knows it);
    ``router_costs`` (validation, test), each (n, m) and already on the router's one scale,
    are a router's own per-query cost predictions (``cost_model="predicted"``). ``val_apgr``
    / ``val_aiq`` are the same figures on validation: what method selection may look at.
    """
    Sv, Cv, St, Ct = val.scores, val.costs, test.scores, test.costs
    m = St.shape[1]
    out: dict[str, Any] = {}
    qc_s: list[float] = []
    kc = _norm(knob_costs)
    jb_v, qb_v, cb_v = _best_single(Sv, Cv)
    jb_t, qb_t, cb_t = _best_single(St, Ct)
    if m == 2:
        w = 1 - strong
        okv, okt = _pairwise_ok(Sv, strong, w), _pairwise_ok(St, strong, w)
        adv_v = P_val[okv, strong] - P_val[okv, w]
        adv_t = P_test[okt, strong] - P_test[okt, w]
        Sv2, Cv2, St2, Ct2 = Sv[okv], Cv[okv], St[okt], Ct[okt]
        curve = M.deferral_curve(adv_t, St2[:, strong], St2[:, w], num_results=10)
        out["apgr"] = M.apgr(curve.share, curve.quality, curve.q_weak, curve.q_strong)
        out["val_apgr"] = M.apgr_of_advantage(adv_v, Sv2[:, strong], Sv2[:, w])
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
        vals = [M.realised(_two_expert_choices(adv_v, t, strong, w), Sv2, Cv2)
                for t in val_t]
        val_q = [v[0] for v in vals]
        out["val_aiq"] = _aiq([v[1] for v in vals], val_q, Sv2, Cv2)
        k = _first_reaching(val_q, qb_v)
        ch = _two_expert_choices(adv_t, float(val_t[k]), strong, w)
        q, c, miss = M.realised(ch, St2, Ct2)
        out["strong_share"] = float((ch == strong).mean())
        out["knob_setting"] = {"advantage_threshold": float(val_t[k])}
    else:
        lams = LAMBDAS[::-1]  # cheapest first
        kt = _per_query_knob(Ct) if oracle_costs else kc
        kv = _per_query_knob(Cv) if oracle_costs else kc
        if router_costs is not None:
            kv, kt = router_costs
        qc_c_arr, qc_q_arr = M.quality_cost_curve(P_test, St, Ct, lams, knob_costs=kt)
        qc_c, qc_q = qc_c_arr.tolist(), qc_q_arr.tolist()
        val_c_arr, val_q_arr = M.quality_cost_curve(P_val, Sv, Cv, lams, knob_costs=kv)
        out["val_aiq"] = _aiq(val_c_arr.tolist(), val_q_arr.tolist(), Sv, Cv)
        k = _first_reaching(val_q_arr.tolist(), qb_v)
        out["val_cost_at_best_single_quality_deployed"] = _val_deployed(
            bool(val_q_arr[k] >= qb_v - 1e-9), float(val_c_arr[k]), cb_v)
        ch = M.choose(P_test, kt, float(lams[k]))
        q, c, miss = M.realised(ch, St, Ct)
        out.update({"apgr": None, "val_apgr": None, "auc": None, "cpt20": None, "cpt50": None,
                    "cpt80": None, "strong_share": float((ch == strong).mean()),
                    "knob_setting": {"lambda": float(lams[k])}})
    out["knob_setting"]["reaches_best_single_on_validation"] = bool(
        val_q[k] >= qb_v - 1e-9 if m == 2 else val_q_arr[k] >= qb_v - 1e-9)
    out["qc_curve"] = {"cost": list(map(float, qc_c)), "quality": list(map(float, qc_q))}
    if qc_s:
        out["qc_curve"]["strong_share"] = qc_s
    out["aiq"] = _aiq(qc_c, qc_q, St, Ct)
    cab = M.cost_at_quality(np.asarray(qc_c), np.asarray(qc_q), qb_t)
    out["cost_at_best_single_quality"] = None if cab is None or cb_t <= 0 else cab / cb_t
    out["quality"], out["cost"], out["missing_share"] = q, c, miss
    out["cost_at_best_single_quality_val"] = c / cb_t if cb_t > 0 else None
    out["quality_gap_val"] = q - qb_t
    out.update(_deployed(bool(out["knob_setting"]["reaches_best_single_on_validation"]),
                         q, c, jb_v, test))
    out["best_single"] = {"val": int(jb_v), "test": int(jb_t), "test_quality": qb_t,
                          "test_cost": cb_t}
    return out


#: the figures a ``typos`` reading keeps (test side, at the clean validation's knob)
TYPO_KEYS = ("apgr", "aiq", "quality", "cost", "cost_at_best_single_quality_deployed",
             "quality_gap_deployed")


def _typo_keep(res: Mapping[str, Any], rate: float, same: float) -> dict[str, Any]:
    return {**{k: res.get(k) for k in TYPO_KEYS}, "rate": rate, "same_choice": same}


def _typo_reading(r: Router, res: Mapping[str, Any], pv: np.ndarray, pt: np.ndarray,
                  cv: np.ndarray | None, ct: np.ndarray | None, V: RoutingTable,
                  E: RoutingTable, te: np.ndarray, typos: tuple[float, list[str], np.ndarray],
                  strong: int, kc: np.ndarray, models: Sequence[str]) -> dict[str, Any]:
    """A router's test figures on the misspelt test prompts, its knob set on the clean
    validation (the deployed setting), and the share of test prompts whose choice at that
    knob did not change."""
    rate, texts_t, X_t = typos
    tt = [texts_t[i] for i in te]
    ptt = _predict(r, X_t[te], tt, models)
    ctt = _router_costs(r, X_t[te], tt, models) if cv is not None else None
    rt = evaluate_predictions(pv, ptt, V, E, strong=strong, knob_costs=kc,
                              router_costs=None if cv is None or ctt is None else (cv, ctt))
    knob = res["knob_setting"]
    if "advantage_threshold" in knob:
        w = 1 - strong
        thr = float(knob["advantage_threshold"])
        a = _two_expert_choices(pt[:, strong] - pt[:, w], thr, strong, w)
        b = _two_expert_choices(ptt[:, strong] - ptt[:, w], thr, strong, w)
    else:
        lam = float(knob["lambda"])
        a = M.choose(pt, _norm(kc) if ct is None else ct, lam)
        b = M.choose(ptt, _norm(kc) if ctt is None else ctt, lam)
    return _typo_keep(rt, rate, float(np.mean(a == b)))


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


def _point(choice: np.ndarray, part: RoutingTable, strong: int,
           single_expert: bool) -> dict[str, Any]:
    """Metrics of one operating point (a router's own decisions) on one part."""
    S, C = part.scores, part.costs
    m = S.shape[1]
    q, c, miss = M.realised(choice, S, C)
    _, qb, cb = _best_single(S, C)
    out: dict[str, Any] = {"quality": q, "cost": c, "missing_share": miss,
                           "strong_share": float((choice == strong).mean()),
                           "qc_curve": {"cost": [c], "quality": [q]},
                           "apgr": None, "auc": None, "cpt20": None, "cpt50": None,
                           "cpt80": None}
    if m == 2 and not single_expert:
        w = 1 - strong
        ok = _pairwise_ok(S, strong, w)
        share = float((choice[ok] == strong).mean())
        qr = float(np.where(choice[ok] == strong, S[ok, strong], S[ok, w]).mean())
        qw, qs = float(S[ok, w].mean()), float(S[ok, strong].mean())
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
    out["aiq"] = _aiq([c], [q], S, C)
    reach = q >= qb - 1e-9
    out["cost_at_best_single_quality"] = c / cb if reach and cb > 0 else None
    out["cost_at_best_single_quality_val"] = c / cb if cb > 0 else None
    out["quality_gap_val"] = q - qb
    return out


def _single_point(choice_t: np.ndarray, test: RoutingTable, strong: int,
                  single_expert: bool = False, choice_v: np.ndarray | None = None,
                  val: RoutingTable | None = None) -> dict[str, Any]:
    """Metrics of a router evaluated at its own decisions (no knob); with ``choice_v`` and
    ``val`` also its validation APGR / AIQ (for method selection).

    A single expert is a point, not a curve: its APGR/CPT are left undefined.
    """
    out = _point(choice_t, test, strong, single_expert)
    if choice_v is not None and val is not None:
        v = _point(choice_v, val, strong, single_expert)
        out["val_apgr"], out["val_aiq"] = v["apgr"], v["aiq"]
        jb_v, qb_v, cb_v = _best_single(val.scores, val.costs)
        reach = v["quality"] >= qb_v - 1e-9
        out.update(_deployed(reach, out["quality"], out["cost"], jb_v, test))
        if val.scores.shape[1] > 2:
            out["val_cost_at_best_single_quality_deployed"] = _val_deployed(reach, v["cost"],
                                                                            cb_v)
    return out


def _deployed(reach: bool, q: float, c: float, best_val: int, test: RoutingTable
              ) -> dict[str, Any]:
    """What a deployer runs for the best single model's quality: the router (its test
    quality ``q`` and cost ``c``) when it ``reach``-es that quality on validation, else the
    validation's best single model ``best_val``: one cost figure at one quality for every
    method, never the cheap setting of a router that cannot get there."""
    _, qb_t, cb_t = _best_single(test.scores, test.costs)
    if not reach:
        q, c, _ = M.realised(np.full(len(test), best_val), test.scores, test.costs)
    return {"validation_reaches_best_single": float(reach),
            "cost_at_best_single_quality_deployed": c / cb_t if cb_t > 0 else None,
            "quality_gap_deployed": q - qb_t}


def _val_deployed(reach: bool, cost: float, best_cost: float) -> float | None:
    """The validation side of ``cost_at_best_single_quality_deployed`` (what selection among
    methods may read): the validation ``cost`` in units of the validation's best single
    model's ``best_cost`` where the method ``reach``-es its quality, else 1 (that model)."""
    if best_cost <= 0:
        return None
    return cost / best_cost if reach else 1.0


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


def _router_costs(router: Router, X: np.ndarray, texts: Sequence[str],
                  models: Sequence[str]) -> np.ndarray | None:
    """The per-query costs (n, m) of a router that trades against a cost model, in the
    table's model order, over its one cost scale (what its knob trades against); None for a
    router that trades mean costs (``cost_model="mean"``, or ``"auto"`` where no expert's
    cost was predictable)."""
    if getattr(router, "cost_model", "mean") == "mean" or \
            getattr(router, "cost_model_", None) is None:
        return None
    C = np.asarray(router.predict_costs(X, texts), dtype=np.float64)  # type: ignore[attr-defined]
    scale = float(router.cost_scale)  # type: ignore[attr-defined]
    out = expert_columns(C, router.experts_, models)
    return out / scale if scale > 0 else np.zeros_like(out)


def _predict(router: Router, X: np.ndarray, texts: Sequence[str], models: Sequence[str]
             ) -> np.ndarray:
    """``predict_quality`` with its columns put in the table's model order."""
    P = np.asarray(router.predict_quality(X, texts), dtype=np.float64)
    experts = router.quality_experts() if hasattr(router, "experts_") else list(models)
    if P.shape != (X.shape[0], len(experts)):
        raise RouterError(f"router {router.name!r}: predict_quality gave shape {P.shape}")
    return np.nan_to_num(expert_columns(P, experts, models), nan=0.0)


# --------------------------------------------------------------------------- the sweep


def default_routers() -> list[str]:
    """The families the sweep runs by default: those that trade cost for quality (a family's
    ``trades_cost``); label and adapter routers may still be named in ``--routers``."""
    return [n for n in registered_names() if get_router_class(n).trades_cost]


#: default families that learn from the table's category column (cannot fit without one)
CATEGORY_FAMILIES = ("category",)


def left_out_by_default(table: RoutingTable) -> dict[str, str]:
    """Default families the table cannot run, with why (none named in ``--routers``)."""
    if table.categories is not None:
        return {}
    return {n: "the table has no category column (eval_name or category), which this "
               "family learns from" for n in default_routers() if n in CATEGORY_FAMILIES}


def default_routers_for(table: RoutingTable) -> list[str]:
    """:func:`default_routers` less those the table cannot run (:func:`left_out_by_default`)."""
    out = left_out_by_default(table)
    return [n for n in default_routers() if n not in out]


#: fewest prompts every model answered for a split into three non-empty parts
MIN_SCORED_PROMPTS = 10


def check_table(table: RoutingTable, *, strong: str | None = None,
                routers: Sequence[str] | None = None) -> list[str]:
    """Check a table before anything is embedded: raise :class:`EvalError` with a clear
    message, or return notes (printed to stderr) about what the evaluation will do."""
    notes: list[str] = []
    if len(table.models) < 2:
        raise EvalError(f"the table has {len(table.models)} model(s) "
                        f"({', '.join(table.models) or 'none'}); routing needs at least two")
    if strong is not None and strong not in table.models:
        raise EvalError(f"--strong {strong!r} is not a model of the table: "
                        f"{', '.join(table.models)}")
    if strong is not None and len(table.models) > 2:
        notes.append(f"--strong {strong!r}: with {len(table.models)} models no figure depends "
                     "on it (APGR, CPT and AUC are two-model figures; AIQ and the cost at the "
                     "best single model's quality read N models); it only names the model "
                     "whose call share the result reports as strong_share")
    if not routers:
        for name, why in left_out_by_default(table).items():
            notes.append(f"{name} is left out of the default routers: {why}")
    if routers:
        known = {*registered_names(), "auto"}
        unknown = [r for r in routers if r not in known]
        if unknown:
            raise EvalError(f"unknown router famil{'ies' if len(unknown) > 1 else 'y'} "
                            f"{', '.join(unknown)}; registered: {', '.join(sorted(known))}")
    have = np.isfinite(table.scores)
    never = [m for j, m in enumerate(table.models) if not have[:, j].any()]
    if never:
        raise EvalError(f"model(s) {', '.join(never)} have no score at all")
    costs = table.mean_costs()
    if np.ptp(costs) <= 1e-12 * max(1.0, float(np.max(np.abs(costs)))):
        same = f"every model has the same mean cost ({float(costs[0]):g}"
        same += ", as a table without a cost column has)" if costs[0] == 0 else ")"
        if len(table.models) > 2:
            raise EvalError(f"{same}: with more than two models every figure trades quality "
                            "against cost (AIQ, the cost at the best single model's quality), "
                            "so none can be computed and no router selected; give each model "
                            "its cost per prompt (the cost column)")
        if strong is None:
            notes.append(f"{same}: the strong model, by default the dearer one, is "
                         f"{table.models[int(np.argmax(costs))]!r} only by the table's order "
                         "(name it with --strong)")
    full = int(have.all(axis=1).sum())
    if full < MIN_SCORED_PROMPTS and full == len(table):
        raise EvalError(f"the table has {len(table)} prompt(s), every one scored by every "
                        f"model; an evaluation needs at least {MIN_SCORED_PROMPTS} (they "
                        "split into train, validation and test): add prompts")
    if full < MIN_SCORED_PROMPTS and (have.sum(axis=1) <= 1).all():
        raise EvalError(f"every one of the {len(table)} prompts is scored for one model only "
                        "(as in a routing log: the expert that served it); eval routing "
                        "compares methods on prompts every model answered. Judge a router "
                        "on logs with `expertgate eval offpolicy --logs FILE --router "
                        "ARTIFACT`")
    if full < MIN_SCORED_PROMPTS:
        raise EvalError(f"only {full} of {len(table)} prompts have a score from every model; "
                        f"every method is scored on those prompts, and at least "
                        f"{MIN_SCORED_PROMPTS} are needed (fill the missing (prompt, model) "
                        "pairs or drop the sparse models)")
    texts = len({normalise_text(table.prompts[i]) for i in np.flatnonzero(have.all(axis=1))})
    if texts < 3:
        raise EvalError(f"the {full} prompts every model answered hold {texts} distinct "
                        f"text{'s' if texts > 1 else ''} (prompts that read the same, case "
                        "and spacing aside, are one group of the split, so that a duplicate "
                        "never sits in train and test at once): the split into train, "
                        "validation and test needs at least three; give each prompt its own "
                        "text")
    if full < len(table):
        per_model = ", ".join(f"{m} {int((~have[:, j]).sum())}"
                              for j, m in enumerate(table.models) if not have[:, j].all())
        notes.append(f"{len(table) - full} of {len(table)} prompts lack a score from some "
                     f"model (missing per model: {per_model}); routers train on every train "
                     f"prompt, and every method is scored on the {full} prompts every model "
                     "answered")
    complete = have.all(axis=1)
    S = table.scores[complete]
    top = [j for j in range(len(table.models))
           if (S[:, j] >= S.max(axis=1)).all() and costs[j] <= costs.min()]
    if top:
        # nothing to route: every method can only match it, and the figures in units of the
        # best single model's cost are undefined when it is free
        notes.append(f"{table.models[top[0]]!r} scores at least as well as every other model "
                     f"on every prompt they all answered and costs the least "
                     f"({float(costs[top[0]]):g} on average): no router can beat calling it "
                     "alone, so every method's figures read as that model's or worse"
                     + (" (and the costs in units of its cost are undefined: it is free)"
                        if costs[top[0]] == 0 else ""))
    if len(table.models) == 2:
        # APGR / CPT measure the recovered share of the strong-minus-weak gap: a strong model
        # that scores lower makes that gap negative and the figures read backwards
        s = int(np.argmax(costs)) if strong is None else table.models.index(strong)
        both = have.all(axis=1)
        qs, qw = (float(table.scores[both, j].mean()) for j in (s, 1 - s))
        if qs < qw:
            notes.append(f"the strong model {table.models[s]!r} ("
                         f"{'--strong' if strong else 'the dearer one'}) scores lower than "
                         f"{table.models[1 - s]!r} on the table ({qs:.3f} against {qw:.3f}): "
                         "APGR and CPT measure the gap between them and read backwards; "
                         f"--strong {table.models[1 - s]} names the better one")
    return notes


#: fewer prompts than this in the validation or test part (those every model answered) is
#: said: a method is selected on the one and read on the other
MIN_PART_PROMPTS = 5


def _thin_parts(table: RoutingTable, seed: int, val: float, test: float) -> str:
    """A note when the first seed's validation or test part holds fewer than
    :data:`MIN_PART_PROMPTS` prompts every model answered ('' otherwise)."""
    _, va, te = table.split(seed=seed, val=val, test=test)
    complete = np.isfinite(table.scores).all(axis=1)
    v, t = int(complete[va].sum()), int(complete[te].sum())
    if min(v, t) >= MIN_PART_PROMPTS:
        return ""
    return (f"the validation part holds {v} prompt{'' if v == 1 else 's'} and the test part "
            f"holds {t} prompt{'' if t == 1 else 's'} every model answered (seed {seed}: "
            f"--val {val:g} and --test {test:g} of {len(table)} prompts): the selection rests "
            "on the one and every figure on the other; larger shares or a larger table "
            "steady them")


def parse_params(text: str | None, routers: Sequence[str] | None = None
                 ) -> dict[str, dict[str, Any]] | None:
    """``--params``: a JSON object of parameter objects keyed by router family. A key that
    names no family of the run is an error (its settings would be dropped silently: a typo
    such as ``"stak"`` read as a tuned run); so is ``auto``, which chooses its own."""
    if not text:
        return None
    shape = '{"ROUTER": {"PARAM": VALUE, ...}, ...}'
    try:
        params = json.loads(text)
    except ValueError as e:
        raise EvalError(f"--params is not JSON ({e}); it is a JSON object of objects: "
                        f"{shape}") from None
    if not (isinstance(params, dict) and all(isinstance(v, dict) for v in params.values())):
        raise EvalError(f"--params must be a JSON object of objects: {shape}")
    run = list(routers) if routers else default_routers()
    if "auto" in params:
        raise EvalError("--params: auto takes no parameters (it chooses the family and its "
                        "parameters by cross-validation); name the family instead")
    stray = [k for k in params if k not in run]
    if stray:
        raise EvalError(f"--params names {', '.join(repr(k) for k in stray)}, not among the "
                        f"routers this run evaluates ({', '.join(run)}); its settings would "
                        "be ignored")
    for family, values in params.items():
        # said before the table is embedded, not as the family's skip after every baseline
        known = get_router_class(family).param_names()
        bad = [k for k in values if k not in known]
        if bad:
            raise EvalError(f"--params {family}: no parameter {', '.join(map(repr, bad))} "
                            f"(its parameters: {', '.join(known)})")
        try:
            make_router(family, **values).check_params()
        except (RouterError, TypeError, ValueError) as e:
            raise EvalError(f"--params {family}: {e}") from None
    return params


def evaluate(table: RoutingTable, X: np.ndarray, *, routers: Sequence[str] | None = None,
             strong: str | None = None, seeds: Sequence[int] = (0, 1, 2, 3, 4),
             val: float = 0.2, test: float = 0.2,
             router_params: Mapping[str, Mapping[str, Any]] | None = None,
             progress: bool = True,
             typos: tuple[float, list[str], np.ndarray] | None = None,
             refit: str = "auto") -> dict[str, Any]:
    """Evaluate ``routers`` and the baselines on ``table`` over ``seeds``; the result JSON.

    ``refit`` (``auto``, ``always``, ``never``): whether the selected method and the simple
    baselines it is compared with are also fitted on train + validation for the headline
    reading (``selected.refit``, ``selected.vs_simple``); ``auto`` decides by the learning
    curve on validation (:func:`_refit_reading`).

    ``typos`` (rate, the table's prompts misspelt by :func:`evals.perturb.typos_all`, their
    embeddings): every router and simple baseline is also read on the misspelt test prompts
    at the knob chosen on clean validation (its row's ``typos``; never used to select)."""
    check_table(table, strong=strong, routers=routers)
    if X.shape[0] != len(table):
        raise EvalError(f"{X.shape[0]} embeddings for {len(table)} prompts")
    mean_costs = table.mean_costs()
    s_idx = int(np.argmax(mean_costs)) if strong is None else table.models.index(strong)
    left_out = {} if routers else left_out_by_default(table)
    names = list(routers) if routers else default_routers_for(table)
    params = dict(router_params or {})
    per_seed: dict[str, list[dict[str, Any]]] = {}
    base_seed: dict[str, list[dict[str, Any]]] = {}
    skipped: dict[str, str] = {}
    timing: dict[str, float] = {}
    scored: list[dict[str, int]] = []
    complete = np.isfinite(table.scores).all(axis=1)
    if refit not in REFIT_MODES:
        raise EvalError(f"refit {refit!r}: one of {', '.join(REFIT_MODES)}")
    # per seed: the split, and each method's validation side (for the refit reading)
    splits: list[_Split] = []
    val_side: dict[str, list[Any]] = {}
    from tqdm import tqdm

    bar = tqdm(total=len(seeds) * (len(names) + 1), desc="routing eval", unit="fit",
               disable=not progress, file=sys.stderr)
    for seed in seeds:
        tr, va_all, te_all = table.split(seed=int(seed), val=val, test=test)
        # every method is scored on the same prompts: those every model answered
        va, te = va_all[complete[va_all]], te_all[complete[te_all]]
        if not len(va) or not len(te):
            raise EvalError(f"seed {seed}: no validation or test prompt has a score from "
                            "every model; use larger --val/--test shares")
        scored.append({"seed": int(seed), "train": len(tr), "validation": len(va),
                       "validation_dropped": len(va_all) - len(va), "test": len(te),
                       "test_dropped": len(te_all) - len(te)})
        T, V, E = table.subset(tr), table.subset(va), table.subset(te)
        kc = T.mean_costs()
        splits.append(_Split(int(seed), tr, va, te, T, V, E, kc))
        rng = np.random.default_rng(int(seed))
        # baselines -----------------------------------------------------------------
        bl: dict[str, tuple[np.ndarray, np.ndarray, bool]] = {
            "random": (rng.uniform(size=V.scores.shape), rng.uniform(size=E.scores.shape),
                       False),
            # true scores, with a tiny random tie-break so equal-advantage prompts are not
            # all sent together
            "oracle": (V.scores + 1e-6 * rng.uniform(size=V.scores.shape),
                       E.scores + 1e-6 * rng.uniform(size=E.scores.shape), True),
        }
        if table.categories is not None:
            Tc = T.categories or []
            bl["category"] = (M.category_choice(Tc, T.scores, V.categories or []),
                              M.category_choice(Tc, T.scores, E.categories or []), False)
        for bname, (pv, pt, orc) in bl.items():
            try:
                base_seed.setdefault(bname, []).append(evaluate_predictions(
                    pv, pt, V, E, strong=s_idx, knob_costs=kc, oracle_costs=orc))
            except M.MetricError as e:  # no router can be scored on this split either
                full = table.scores[complete]
                if len(table.models) == 2 and np.array_equal(full[:, 0], full[:, 1]):
                    # no split of this table has a gap: the split advice cannot help
                    raise EvalError(
                        f"seed {seed}: {e}: {table.models[0]!r} and {table.models[1]!r} "
                        f"score the same on every prompt both answered ({int(complete.sum())}"
                        "), so there is nothing to route between them (APGR and CPT measure "
                        "the share of the gap between them a router recovers)") from None
                raise EvalError(f"seed {seed}: {e} on its validation or test part "
                                f"({len(va)} / {len(te)} prompts): use a larger table or "
                                "larger --val/--test shares") from None
        for bname, (family, kw) in SIMPLE_BASELINES.items():
            try:  # frozen-embedding LR and kNN on mean costs: the bar a router must clear
                sb = get_router_class(family)(**kw).fit(X[tr], T)
                sv = _predict(sb, X[va], V.prompts, table.models)
                st = _predict(sb, X[te], E.prompts, table.models)
                sres = evaluate_predictions(sv, st, V, E, strong=s_idx, knob_costs=kc)
                val_side.setdefault(bname, []).append((sv, None))
                if typos is not None:
                    sres["typos"] = _typo_reading(sb, sres, sv, st, None, None, V, E, te,
                                                  typos, s_idx, kc, table.models)
                base_seed.setdefault(bname, []).append(sres)
            except (RouterError, M.MetricError, ValueError) as e:
                skipped[bname] = f"{type(e).__name__}: {e}"
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
                r, choice = _fit_named(name, X[tr], T, int(seed), params)
                try:
                    pv = _predict(r, X[va], V.prompts, table.models)
                    pt = _predict(r, X[te], E.prompts, table.models)
                    cv_ = _router_costs(r, X[va], V.prompts, table.models)
                    ct_ = _router_costs(r, X[te], E.prompts, table.models)
                    res = evaluate_predictions(
                        pv, pt, V, E, strong=s_idx, knob_costs=kc,
                        router_costs=None if cv_ is None or ct_ is None else (cv_, ct_))
                    res["knob"] = True
                    res["cost_model"] = "mean" if cv_ is None else "predicted"
                    side: Any = (pv, cv_)
                    if typos is not None:
                        res["typos"] = _typo_reading(r, res, pv, pt, cv_, ct_, V, E, te,
                                                     typos, s_idx, kc, table.models)
                    if hasattr(r, "cost_model_summary"):
                        res["cost_model_summary"] = r.cost_model_summary()
                except RouterError as e:
                    if "does not estimate" not in str(e):
                        raise
                    ct = _choices_from_decisions(r, X[te], E.prompts, table.models)
                    cv = _choices_from_decisions(r, X[va], V.prompts, table.models)
                    res = _single_point(ct, E, s_idx, choice_v=cv, val=V)
                    res["knob"] = False
                    side = cv
                    if typos is not None:
                        rate, texts_t, X_t = typos
                        ctt = _choices_from_decisions(r, X_t[te], [texts_t[i] for i in te],
                                                      table.models)
                        res["typos"] = _typo_keep(_single_point(ctt, E, s_idx), rate,
                                                  float(np.mean(ct == ctt)))
            except (RouterError, M.MetricError, ValueError, TypeError) as e:
                # TypeError: a parameter the family does not take (--params)
                skipped[name] = f"{type(e).__name__}: {e}"
                per_seed.pop(name, None)
                val_side.pop(name, None)
                bar.update(1)
                continue
            timing[name] = timing.get(name, 0.0) + time.perf_counter() - t0
            if choice is not None:
                res["auto_choice"] = choice
            per_seed.setdefault(name, []).append(res)
            val_side.setdefault(name, []).append(side)
            bar.update(1)
    bar.close()
    routers_out = {n: _aggregate(rs, timing.get(n, 0.0) / max(len(rs), 1))
                   for n, rs in per_seed.items()}
    two = len(table.models) == 2
    crit = "val_apgr" if two else "val_aiq"
    try:
        chosen, score = M.select_on_validation({n: r[crit] for n, r in routers_out.items()})
    except M.MetricError:
        selected = None
    else:
        criterion = f"mean validation {'APGR' if two else 'AIQ'} over the seeds"
        near: dict[str, Any] = {}
        if not two:
            chosen, score, near = _select_n_experts(per_seed, routers_out, chosen)
            criterion = ("mean validation AIQ among the methods whose validation cost at the "
                         "best single model's quality is within one standard error (paired "
                         "over the seeds) of the lowest")
        selected = {"method": chosen,
                    "criterion": f"{criterion} (test figures play no part)",
                    "validation_score": score,
                    "cost_knob": "per seed, the cheapest setting whose validation quality "
                                 "reaches the best single model's validation quality",
                    "hyper_parameters": dict(params.get(chosen, {})) or "family defaults",
                    "candidates": {n: r[crit] for n, r in routers_out.items()}}
        if near:
            selected["cost_at_best_single_quality_val"] = near
            # not the routers' test-side key of the same name: say which figure it is
            selected["cost_at_best_single_quality_val_is"] = (
                "per method, the mean over the seeds of val_cost_at_best_single_quality_"
                "deployed (the validation cost at the validation's best single model's "
                "quality, in units of that model's cost; 1 where the knob does not reach it)")
    baselines_out = {n: _aggregate(rs, None) for n, rs in base_seed.items()}
    if selected is not None:
        vs = vs_simple(routers_out[chosen], baselines_out, two)
        if vs is not None:
            vs["fitted_on"] = "train"
        selected["vs_simple"] = vs
        selected["per_seed"] = _selected_per_seed(per_seed[chosen], base_seed, vs, splits,
                                                  two)
        if len(val_side.get(chosen, ())) == len(splits):
            reading = _refit_reading(chosen, refit, X, table, splits, val_side, per_seed,
                                     params, s_idx, two, progress)
            selected["refit"] = reading
            if reading["applied"] and reading.get("vs_simple") is not None:
                selected["vs_simple"] = reading.pop("vs_simple")
            else:
                reading.pop("vs_simple", None)
    return {
        "selected": selected,
        "table": {"n_prompts": len(table), "models": list(table.models),
                  "mean_costs": [float(c) for c in mean_costs],
                  "mean_scores": [float(q) for q in M.column_means(table.scores)],
                  "strong": table.models[s_idx],
                  "weak": table.models[1 - s_idx] if len(table.models) == 2 else None,
                  "content_hash": table.content_hash(),
                  "has_categories": table.categories is not None,
                  "n_scored_by_every_model": int(complete.sum())},
        "seeds": [int(s) for s in seeds],
        "split": {"train": round(1 - val - test, 4), "val": val, "test": test,
                  "by": "normalised prompt text (duplicates never straddle parts)"},
        "n_scored": scored,
        "routers": routers_out,
        "baselines": baselines_out,
        "skipped": skipped,
        "left_out": left_out,
    }


@dataclass(frozen=True)
class _Split:
    """One seed's split: the indices of its parts, the parts, the train mean costs."""

    seed: int
    tr: np.ndarray
    va: np.ndarray
    te: np.ndarray
    T: RoutingTable
    V: RoutingTable
    E: RoutingTable
    kc: np.ndarray


def _fit_named(name: str, X: np.ndarray, T: RoutingTable, seed: int,
               params: Mapping[str, Mapping[str, Any]]) -> tuple[Router, dict[str, Any] | None]:
    """Fit the router ``name`` (``auto``: family and parameters by cross-validation on ``T``
    alone) with ``params``' settings and the seed; the router and auto's choice."""
    if name == "auto":
        from routers.auto import fit_auto

        r, sel = fit_auto(X, T, seed=seed)
        return r, {"family": sel.family, "params": sel.params, "cost_model": sel.cost_model,
                   "cv_score": sel.score, "folds": sel.folds, "best_mean": sel.best_mean,
                   "seconds": sel.seconds, "candidates": sel.scores}
    r = get_router_class(name)(**dict(params.get(name, {})))
    if "seed" in r.param_names():
        r.set_params(seed=seed)
    r.fit(X, T)
    return r, None


#: ``--refit``: decide by the learning curve on validation, always, never
REFIT_MODES = ("auto", "always", "never")
#: the share of train the learning-curve check fits on
REFIT_FRACTION = 0.5
#: the figures ``selected.refit.test`` keeps (mean and std over the seeds)
REFIT_KEYS = ("apgr", "aiq", "quality", "cost", "cost_at_best_single_quality_val",
              "quality_gap_val", "cost_at_best_single_quality_deployed",
              "quality_gap_deployed", "validation_reaches_best_single")


def _reading(r: Router, side: Any, X: np.ndarray, sp: _Split, table: RoutingTable,
             s_idx: int, on: str) -> dict[str, Any]:
    """A fitted router's figures with the knob set on validation: ``side`` is what the
    method's train-only fit gave on validation (its predictions and costs, or its choices for
    a router without a knob). ``on`` "test": the router read on test at that knob; "val": the
    router's own validation figures (``val_apgr`` / ``val_aiq``)."""
    part, rows = (sp.E, sp.te) if on == "test" else (sp.V, sp.va)
    if isinstance(side, tuple):
        pv, cv_ = side
        p = _predict(r, X[rows], part.prompts, table.models)
        c = _router_costs(r, X[rows], part.prompts, table.models) if cv_ is not None else None
        if on == "val":
            pv, cv_ = p, c
        return evaluate_predictions(pv, p, sp.V, part, strong=s_idx, knob_costs=sp.kc,
                                    router_costs=None if cv_ is None or c is None
                                    else (cv_, c))
    ch = _choices_from_decisions(r, X[rows], part.prompts, table.models)
    return _single_point(ch, part, s_idx, choice_v=side if on == "test" else ch, val=sp.V)


def _refit_reading(chosen: str, mode: str, X: np.ndarray, table: RoutingTable,
                   splits: Sequence[_Split], val_side: Mapping[str, Sequence[Any]],
                   per_seed: Mapping[str, Sequence[Mapping[str, Any]]],
                   params: Mapping[str, Mapping[str, Any]], s_idx: int, two: bool,
                   progress: bool) -> dict[str, Any]:
    """The selected method fitted on train + validation, read on test at the knob its
    train-only fit set on validation (``selected.refit``): what a user deploys, since
    ``expertgate train`` fits on every labelled prompt it is given.

    Whether to refit is decided on validation alone (``mode`` "auto"): per seed the method is
    also fitted on a random :data:`REFIT_FRACTION` of train and read on validation; when the
    mean validation score (the selection criterion, APGR or AIQ) of the full train fit is
    above that of the half, the method still gains from more prompts at this size, so the
    validation prompts are added to its training set. The simple baselines are refitted the
    same way whenever the method is, so ``vs_simple`` compares like with like. Test plays no
    part in the decision."""
    crit = "val_apgr" if two else "val_aiq"
    out: dict[str, Any] = {
        "mode": mode, "method": chosen,
        "rule": f"auto: refit on train + validation when the mean validation {crit[4:].upper()}"
                f" of the train fit is above that of a fit on {REFIT_FRACTION:g} of train "
                "(the learning curve still rises); the knob stays where the train fit set it "
                "on validation; the simple baselines are refitted with it"}
    full = [r.get(crit) for r in per_seed[chosen]]
    if mode == "auto":
        from tqdm import tqdm

        sub_scores: list[float] = []
        for i, sp in enumerate(tqdm(splits, desc="refit check", unit="seed",
                                    disable=not progress, file=sys.stderr)):
            rng = np.random.default_rng(1_000_003 + sp.seed)
            sub = np.sort(rng.choice(sp.tr, max(2, round(REFIT_FRACTION * len(sp.tr))),
                                     replace=False))
            try:
                r, _ = _fit_named(chosen, X[sub], table.subset(sub), sp.seed, params)
                v = _reading(r, val_side[chosen][i], X, sp, table, s_idx,
                             "val").get(crit)
            except (RouterError, M.MetricError, ValueError, TypeError) as e:
                out.update(applied=False, why=f"the fit on {REFIT_FRACTION:g} of train failed "
                                              f"({type(e).__name__}: {e})")
                return out
            sub_scores.append(np.nan if v is None else float(v))
        a, b = np.asarray(sub_scores, dtype=float), np.asarray(
            [np.nan if v is None else float(v) for v in full], dtype=float)
        if not (np.isfinite(a).all() and np.isfinite(b).all()):
            out.update(applied=False, why="a validation score is missing")
            return out
        out["learning_curve"] = {"fraction": REFIT_FRACTION, "val_fraction": float(a.mean()),
                                 "val_full": float(b.mean()),
                                 "gain": float(b.mean() - a.mean()),
                                 "per_seed": [[float(x), float(y)] for x, y in zip(a, b,
                                                                                   strict=True)]}
        applied = bool(b.mean() > a.mean())
    else:
        applied = mode == "always"
    out["applied"] = applied
    if not applied:
        return out
    rows: list[dict[str, Any]] = []
    base: dict[str, list[dict[str, Any]]] = {}
    from tqdm import tqdm

    # as long as a seed's fits of the method and the baselines: never a silent stretch
    for i, sp in enumerate(tqdm(splits, desc="refit on train + validation", unit="seed",
                                disable=not progress, file=sys.stderr)):
        idx = np.concatenate([sp.tr, sp.va])
        TV = table.subset(idx)
        r, _ = _fit_named(chosen, X[idx], TV, sp.seed, params)
        rows.append(_reading(r, val_side[chosen][i], X, sp, table, s_idx, "test"))
        for bname, (family, kw) in SIMPLE_BASELINES.items():
            if len(val_side.get(bname, ())) == len(splits):
                sb = get_router_class(family)(**kw).fit(X[idx], TV)
                base.setdefault(bname, []).append(
                    _reading(sb, val_side[bname][i], X, sp, table, s_idx, "test"))
    row = _aggregate(rows, None)
    out["test"] = {}
    for k in REFIT_KEYS:
        out["test"][k], out["test"][f"{k}_std"] = row.get(k), row.get(f"{k}_std")
    vs = vs_simple(row, {n: _aggregate(v, None) for n, v in base.items()}, two)
    if vs is not None:
        vs["fitted_on"] = "train+validation"
    out["vs_simple"] = vs
    # the seeds behind the refitted headline (selected.per_seed holds the train fit's)
    out["test"]["per_seed"] = [
        {"seed": sp.seed, "fitted_on": "train+validation",
         **{k: _finite_or_none(r.get(k)) for k in REFIT_KEYS},
         **({} if vs is None else {"baseline": {
             "name": vs["baseline"],
             vs["metric"]: _finite_or_none(base[vs["baseline"]][i].get(vs["metric"]))}})}
        for i, (sp, r) in enumerate(zip(splits, rows, strict=True))]
    return out


def _finite_or_none(v: Any) -> float | None:
    """A figure for the result JSON, which is written without NaN: None where missing."""
    return None if v is None or not np.isfinite(v) else float(v)


def _select_n_experts(per_seed: Mapping[str, Sequence[Mapping[str, Any]]],
                      rows: Mapping[str, Mapping[str, Any]], by_aiq: str
                      ) -> tuple[str, float, dict[str, Any]]:
    """The method selected on a table of more than two experts, from validation only.

    The figure the table is judged by is the cost at the best single model's quality
    (``cost_at_best_single_quality_deployed``); its validation side
    (``val_cost_at_best_single_quality_deployed``) is one point of each seed's curve, so
    noisier than AIQ (the whole curve). Rule: the methods whose mean validation cost there is
    within one standard error of the paired per-seed differences of the lowest (the
    one-standard-error rule, as ``auto``'s) are eligible, and among them the highest mean
    validation AIQ wins: where the seeds cannot tell the costs apart AIQ decides (``by_aiq``,
    the AIQ choice, whenever it is eligible); a method clearly cheaper at that quality on
    validation is not passed over for a better curve elsewhere. Returns the method, its
    validation AIQ and the per-method figures (mean cost, standard error to the lowest,
    eligible)."""
    key = "val_cost_at_best_single_quality_deployed"
    vals: dict[str, np.ndarray] = {}
    for n, rs in per_seed.items():
        v = np.array([np.nan if r.get(key) is None else float(r[key]) for r in rs])
        aiq = rows[n].get("val_aiq")
        if v.size and np.isfinite(v).all() and aiq is not None and np.isfinite(aiq):
            vals[n] = v
    if by_aiq not in vals:
        return by_aiq, float(rows[by_aiq]["val_aiq"]), {}
    low = min(vals, key=lambda n: float(vals[n].mean()))
    out: dict[str, Any] = {}
    for n, v in vals.items():  # every method has a figure in every seed (a failed one left)
        d = v - vals[low]
        se = float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else 0.0
        gap = float(d.mean())
        out[n] = {"mean": float(v.mean()), "minus_lowest": gap, "se": se,
                  "eligible": bool(gap <= se + 1e-12)}
    eligible = [n for n in vals if out[n]["eligible"]]
    chosen = max(eligible, key=lambda n: (float(rows[n]["val_aiq"]), n == by_aiq))
    return chosen, float(rows[chosen]["val_aiq"]), out


def _selected_per_seed(rows: Sequence[Mapping[str, Any]],
                       base_seed: Mapping[str, Sequence[Mapping[str, Any]]],
                       vs: Mapping[str, Any] | None, splits: Sequence[_Split], two: bool
                       ) -> list[dict[str, Any]]:
    """``selected.per_seed``: per seed, the selected method's validation score (what selected
    it) and its test figures (train fit), beside the best simple baseline's headline figure
    (``vs_simple``'s baseline), so the seeds behind a mean and a margin can be read."""
    crit = "val_apgr" if two else "val_aiq"
    keys = (("apgr", "aiq") if two else ("aiq",)) + (
        "quality", "cost", "cost_at_best_single_quality_deployed", "quality_gap_deployed")
    base_name = None if vs is None else str(vs["baseline"])
    base_rows = list(base_seed.get(base_name, ())) if base_name else []
    num = _finite_or_none
    out: list[dict[str, Any]] = []
    for i, (sp, r) in enumerate(zip(splits, rows, strict=False)):
        row: dict[str, Any] = {"seed": sp.seed, "fitted_on": "train",
                               "validation_criterion": crit,
                               "validation_score": num(r.get(crit))}
        row.update({k: num(r.get(k)) for k in keys})
        if base_name is not None and vs is not None and i < len(base_rows):
            row["baseline"] = {"name": base_name,
                               str(vs["metric"]): num(base_rows[i].get(str(vs["metric"])))}
        out.append(row)
    return out


#: the simple baselines every routing run also fits (on the run's embeddings, mean costs,
#: family defaults): a frozen-embedding logistic regression per expert and a kNN
SIMPLE_BASELINES: dict[str, tuple[str, dict[str, Any]]] = {
    "simple-lr": ("classifier", {"cost_model": "mean"}),
    "simple-knn": ("knn", {"cost_model": "mean"}),
}


def vs_simple(row: Mapping[str, Any], baselines: Mapping[str, Mapping[str, Any]],
              two: bool) -> dict[str, Any] | None:
    """The selected router's headline figure against the best simple baseline's
    (:data:`SIMPLE_BASELINES`) of the same run: with two experts the test APGR (higher is
    better, ``margin`` = selected - baseline), with more the test cost at the best single
    model's quality with the knob set on validation (lower is better, ``margin`` = baseline -
    selected, in units of the best single model's cost). None without a simple baseline.

    With more than two experts the figure is ``cost_at_best_single_quality_deployed``: a
    method whose validation knob does not reach the best single model's validation quality
    counts at the best single model's cost (what would be deployed instead), so a baseline
    that is cheap only because it falls short of the quality does not set the bar; the
    validation-knob figures of both are kept beside it."""
    key = "apgr" if two else "cost_at_best_single_quality_deployed"
    got: dict[str, float] = {}
    for n in SIMPLE_BASELINES:
        v = (baselines.get(n) or {}).get(key)
        if v is not None and np.isfinite(v):
            got[n] = float(v)
    mine = row.get(key)
    if not got or mine is None or not np.isfinite(mine):
        return None
    best = (max if two else min)(got, key=got.__getitem__)
    margin = mine - got[best] if two else got[best] - mine
    out = {"metric": key, "selected": mine, "baseline": best, "baseline_value": got[best],
           "margin": margin, "better_is": "higher" if two else "lower"}
    if not two:  # the knob's own figures, whether or not they reach the quality
        b = baselines[best]
        out["val_knob"] = {
            who: {k: r.get(k) for k in ("cost_at_best_single_quality_val", "quality_gap_val",
                                        "validation_reaches_best_single")}
            for who, r in (("selected", row), ("baseline", b))}
    return out


def _aggregate(results: Sequence[dict[str, Any]], fit_s: float | None) -> dict[str, Any]:
    """Mean and std over seeds of every scalar, with ``<key>_reached`` (in how many of the
    ``n_seeds`` seeds the figure exists) for the figures of :data:`REACH_KEYS`; mean curves
    (point-wise, aligned by knob)."""
    out: dict[str, Any] = {}
    for k in RESULT_KEYS:
        agg = M.over_seeds([r.get(k) for r in results])
        out[k], out[f"{k}_std"] = agg["mean"], agg["std"]
        # a CPT exists only on a curve: a single model (no APGR) has none to reach
        curve = any(r.get("apgr") is not None for r in results)
        if k in REACH_KEYS and (curve or not k.startswith("cpt")):
            out[f"{k}_reached"] = agg["reached"]
    for ck in ("curve", "qc_curve"):
        curves = [r[ck] for r in results if ck in r]
        if curves:
            out[ck] = {f: np.mean([c[f] for c in curves], axis=0).round(6).tolist()
                       for f in curves[0] if all(len(c[f]) == len(curves[0][f]) for c in curves)}
    typo = [r["typos"] for r in results if "typos" in r]
    if typo:
        out["typos"] = {"rate": typo[0]["rate"]}
        for k in (*TYPO_KEYS, "same_choice"):
            agg = M.over_seeds([t.get(k) for t in typo])
            out["typos"][k], out["typos"][f"{k}_std"] = agg["mean"], agg["std"]
    if any("auto_choice" in r for r in results):
        out["auto_choices"] = [r.get("auto_choice") for r in results]
    if any("cost_model" in r for r in results):
        out["cost_models"] = [r.get("cost_model") for r in results]
    if any("cost_model_summary" in r for r in results):
        out["cost_model_summaries"] = [r.get("cost_model_summary") for r in results]
    out["knob"] = bool(results[0].get("knob", True)) if results else None
    out["n_seeds"] = len(results)
    if fit_s is not None:
        out["seconds_per_seed"] = round(fit_s, 3)
    return out


# --------------------------------------------------------------------------- CLI


def cli_register(parser: argparse.ArgumentParser) -> None:
    """Add the flags of ``expertgate eval routing`` and its handler."""
    parser.add_argument("--data", required=True,
                        help="a registry name (routellm:mmlu, routellm:gsm8k, llmrouter_nq), "
                        "a routing table file or folder, or synthetic:NxM for a scale test "
                        "(synthetic:NxM:length: costs priced by prompt and answer length; "
                        ":fewshot: the same, each prompt behind five same-topic shots)")
    parser.add_argument("--format", default=None,
                        help="long | wide (routerbench) | routellm | routellm-mmlu | "
                        "routellm-gsm8k | llmrouter | logs "
                        "(default: implied by a registry name, else long)")
    parser.add_argument("--routers", default=None,
                        help="comma-separated router families, 'auto' among them for the "
                             "family chosen per seed by cross-validation on train (default: "
                             "every registered "
                             "cost-quality family; not "
                             f"{', '.join(sorted({*registered_names()} - {*default_routers()}))}"
                             f"; {', '.join(CATEGORY_FAMILIES)} only on a table with categories)")
    parser.add_argument("--strong", default=None,
                        help="the strong model of a two-expert table (default: most expensive);"
                        " with more models it only names the model strong_share counts")
    parser.add_argument("--seeds", type=int, default=5, help="number of split seeds")
    parser.add_argument("--seed-set", default="dev", choices=("dev", "report"),
                        help="dev: seeds 0..N-1 (development); report: the first N report "
                             "seeds, never used in development (published figures)")
    parser.add_argument("--val", type=float, default=0.2, help="validation share of prompts")
    parser.add_argument("--test", type=float, default=0.2, help="test share of prompts")
    parser.add_argument("--json", default=None, help="write the result JSON here")
    parser.add_argument("--embedder", default="distilled", choices=EMBEDDER_KINDS,
                        help="embedder of the prompts (default distilled: as good for routing "
                        "as the minilm reference here, and ~50x faster)")
    parser.add_argument("--cache-dir", default=None, help="embedding cache folder")
    parser.add_argument("--params", default=None,
                        help='JSON of router parameters, e.g. \'{"knn": {"k": 30}}\'')
    parser.add_argument("--threads", type=int, default=1,
                        help="BLAS/torch threads (the machine is shared: default 1)")
    parser.add_argument("--refit", default="auto", choices=REFIT_MODES,
                        help="fit the selected method (and the simple baselines beside it) "
                        "on train + validation for the headline reading (selected.refit, "
                        "selected.vs_simple): auto = when its learning curve on validation "
                        "still rises (a fit on half of train scores below the full train "
                        "fit); the knob stays where the train fit set it on validation")
    parser.add_argument("--typos", type=float, default=None, metavar="RATE",
                        help="also read every router and simple baseline on the test prompts "
                        "with this share of their words (four letters or more) misspelt by "
                        "one keyboard slip (evals.perturb, seeded by the first seed), at the "
                        "knob chosen on clean validation: each row's 'typos' (never used to "
                        "select)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Run the evaluation; print a summary table; write the JSON. Returns an exit code."""
    from routers.embed import EmbedderError, set_thread_counts

    # torch is imported only for the embedder that needs it (its import alone takes seconds)
    set_thread_counts(torch_threads=args.threads if args.embedder == "minilm" else None,
                      blas_threads=args.threads)
    t0 = time.perf_counter()
    git = git_state()  # the code that runs, before anything can change the tree
    try:
        if args.json and os.path.exists(args.json) and os.path.exists(args.data) \
                and os.path.samefile(args.json, args.data):
            raise EvalError(f"--json {args.json} is the --data table: the result would be "
                            "written over it; name another file")
        if not (0 < args.val < 1 and 0 < args.test < 1 and args.val + args.test < 1):
            raise EvalError(f"--val {args.val} and --test {args.test} must be in (0, 1) with "
                            "a sum below 1")
        seeds = seed_list(args.seed_set, int(args.seeds))
        if args.format is None and not str(args.data).startswith("synthetic:"):
            from evals.datasets.registry import resolve_table

            try:
                args.format = resolve_table(args.data)[1]
            except KeyError as e:
                raise EvalError(e.args[0]) from None
        routers = [r.strip() for r in args.routers.split(",") if r.strip()] \
            if args.routers else None
        params = parse_params(args.params, routers)
        table = load_routing_table(args.data, args.format)
        # every check that can fail runs before the (minutes-long) embedding step
        for note in check_table(table, strong=args.strong, routers=routers):
            print(f"note: {note}", file=sys.stderr)
        thin = _thin_parts(table, seeds[0], args.val, args.test)
        if thin:
            print(f"note: {thin}", file=sys.stderr)
        if args.typos is not None and not 0 < args.typos <= 1:
            raise EvalError(f"--typos {args.typos}: a share of words in (0, 1]")
        X, embedder = embed_table(table, args.embedder, args.cache_dir,
                                  progress=not args.quiet)
        typos = None
        if args.typos is not None:
            from evals.perturb import typos_all

            texts_t = typos_all(table.prompts, args.typos, seeds[0])
            typos = (float(args.typos), texts_t,
                     embed_texts(embedder, args.embedder, texts_t, args.cache_dir,
                                 progress=not args.quiet))
        t_embed = time.perf_counter() - t0
        res = evaluate(table, X, routers=routers, strong=args.strong, seeds=seeds,
                       val=args.val, test=args.test, router_params=params,
                       progress=not args.quiet, typos=typos,
                       refit=getattr(args, "refit", "auto"))
        if typos is not None:
            res["typos"] = {"rate": args.typos, "seed": seeds[0],
                            "prompts_changed": float(np.mean([
                                a != b for a, b in zip(table.prompts, typos[1], strict=True)])),
                            "how": "evals.perturb.typos: each word of four letters or more "
                                   "misspelt with this probability by one keyboard slip"}
    except (EvalError, RouterError, EmbedderError, M.MetricError, OSError, ValueError) as e:
        print(f"expertgate eval routing: {e}", file=sys.stderr)
        return 2
    from evals.datasets.registry import resolve_table

    # a registry name is hashed as the folder it names
    data_paths = ([] if str(args.data).startswith("synthetic:") else
                  [resolve_table(args.data, args.format)[0]])
    res = {**{"selected": res.pop("selected")},
           "data": str(args.data), "format": args.format, "embedder": embedder.name,
           "command": _command(args), "seed_set": args.seed_set, **res,
           "provenance": provenance(data=data_paths, embedder=embedder,
                                    seeds={"used": seeds, "kind": args.seed_set},
                                    command=_command(args), git=git),
           "timing_s": {"embed": round(t_embed, 2),
                        "total": round(time.perf_counter() - t0, 2)},
           "machine": _machine(), "created": datetime.now(UTC).isoformat(timespec="seconds")}
    print(summary_table(res))
    # a requested router that could not be evaluated is said, not only in the JSON
    for name, why in res.get("skipped", {}).items():
        print(f"expertgate eval routing: warning: {name} was not evaluated: {why}",
              file=sys.stderr)
    if args.json:
        p = Path(args.json)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(res, indent=1, allow_nan=False))
        print(f"wrote {p}", file=sys.stderr)
    if not res.get("routers"):
        print("expertgate eval routing: error: none of the requested routers could be "
              "evaluated", file=sys.stderr)
        return 1
    return 0


def _command(args: argparse.Namespace) -> str:
    parts = ["expertgate eval routing", f"--data {args.data}"]
    if args.format:
        parts.append(f"--format {args.format}")
    if args.routers:
        parts.append(f"--routers {args.routers}")
    if args.strong:
        parts.append(f"--strong {args.strong}")
    parts += [f"--seeds {args.seeds}", f"--seed-set {args.seed_set}",
              f"--embedder {args.embedder}"]
    if args.threads != 1:
        parts.append(f"--threads {args.threads}")
    if (args.val, args.test) != (0.2, 0.2):
        parts.append(f"--val {args.val} --test {args.test}")
    if args.params:
        parts.append(f"--params '{args.params}'")
    if getattr(args, "typos", None) is not None:
        parts.append(f"--typos {args.typos:g}")
    if getattr(args, "refit", "auto") != "auto":
        parts.append(f"--refit {args.refit}")
    if args.json:
        parts.append(f"--json {args.json}")
    return " ".join(parts)


def _machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "python": platform.python_version(),
            "cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()}


def cell(r: Mapping[str, Any], key: str, fmt: Callable[..., str] = figure) -> str:
    """One figure as text: mean ± std, and ``(reached k/n)`` for figures a seed may lack."""
    s = fmt(r.get(key), r.get(f"{key}_std"))
    if f"{key}_reached" in r and r.get("n_seeds"):
        s += f" (reached {r[f'{key}_reached']}/{r['n_seeds']})"
    return s


def ordered_rows(res: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """Rows in report order: the selected router first (marked), the other routers by name
    (never ranked by a test figure), then the baselines in italics."""
    sel = (res.get("selected") or {}).get("method")
    rows: list[tuple[str, Mapping[str, Any]]] = []
    if sel in res["routers"]:
        rows.append((f"{sel} (selected on validation)", res["routers"][sel]))
    rows += [(n, r) for n, r in sorted(res["routers"].items()) if n != sel]
    rows += [(f"*{n}*", r) for n, r in res["baselines"].items()]
    return rows


def summary_table(res: Mapping[str, Any], fmt: Callable[..., str] = figure) -> str:
    """A Markdown table of the headline figures of every router and baseline."""
    two = len(res["table"]["models"]) == 2
    cols = (["val_apgr", "apgr", "cpt50", "cpt80"] if two else ["val_aiq"]) + [
        "aiq", "quality", "cost", "cost_at_best_single_quality_val", "quality_gap_val",
        "cost_at_best_single_quality"]
    head = "| router | " + " | ".join(cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 1)]
    for n, r in ordered_rows(res):
        lines.append(f"| {n} | " + " | ".join(cell(r, c, fmt) for c in cols) + " |")
    return "\n".join(lines)
