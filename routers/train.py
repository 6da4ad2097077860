"""Fit any registered router from a routing table, measure it on held-out prompts, save it.

This is the library side of ``expertgate train`` (the command line, with the data-set
loaders, lives in :mod:`expertgate.cli.train`; the routers package never imports ``evals``):

* :func:`parse_params` turns ``k=v`` strings into parameters (JSON values where they parse);
* :func:`split_table` splits by normalised prompt text with a seed (train / validation /
  test; duplicates never straddle parts);
* :func:`evaluate_router` measures decisions on a held-out table: realised mean quality,
  mean cost, share per expert, rejection share, oracle and single-expert references, and for
  two experts the APGR of the router's own predicted advantage, computed by the ``apgr``
  function the caller passes (the command passes ``evals.metrics.apgr_of_advantage``, the one
  definition every figure uses; this package does not import ``evals``);
* :func:`train_router` does fit -> evaluate -> save.
"""

from __future__ import annotations

import inspect
import json
import math
import re
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from routers.base import (
    MIN_EXPERT_SCORES,
    Decision,
    Router,
    RouterError,
    RoutingTable,
    make_router,
    normalise_text,
    without_thin_models,
)
from routers.tradeoff import QualityRouter, strong_weak

__all__ = [
    "ApgrFn",
    "TrainResult",
    "check_split",
    "decision_latency",
    "evaluate_router",
    "no_training_prompts",
    "parse_params",
    "split_table",
    "train_router",
]


def parse_params(items: Sequence[str] | None) -> dict[str, Any]:
    """``["k=5", "aggregator=gpt-4", "adapters=[...]"]`` -> dict; values parsed as JSON when
    they parse (numbers, booleans, null, lists, objects), else kept as strings."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise RouterError(f"--param expects key=value, got {item!r}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
        if not _finite(out[key]):
            # JSON's NaN/Infinity: a router.json stores them as null, so the artifact would
            # not reload as trained (the gateway's decisions then fail on every request)
            raise RouterError(f"--param {key}={raw}: parameters must be finite numbers")
    return out


def _finite(v: Any) -> bool:
    """No NaN or infinity in ``v`` (a number, or a list / object of them)."""
    if isinstance(v, float):
        return math.isfinite(v)
    if isinstance(v, list):
        return all(_finite(x) for x in v)
    if isinstance(v, dict):
        return all(_finite(x) for x in v.values())
    return True


def check_split(val: float, test: float) -> None:
    """The validation and test shares :func:`split_table` takes (checked before any work)."""
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise RouterError(f"--val {val:g} and --test {test:g} must be in [0, 1) with sum < 1")


def split_table(table: RoutingTable, *, seed: int = 0, val: float = 0.1, test: float = 0.2
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train / validation / test prompt indices (by prompt, seeded); checks the fractions."""
    check_split(val, test)
    return table.split(seed=seed, val=val, test=test)


def no_training_prompts(table: RoutingTable, val: float, test: float) -> str:
    """Why a split left no training prompt: the shares, or a table of too few distinct texts
    (the split keeps prompts that read the same in one part)."""
    texts = len({normalise_text(t) for t in table.prompts})
    if texts < 3:
        return (f"no training prompts left after the split: the table's {len(table)} prompts "
                f"hold {texts} distinct text{'s' if texts > 1 else ''} (prompts that read the "
                "same, case and spacing aside, stay in one part of the split so that a "
                "duplicate never sits in train and test at once); give each prompt its own "
                "text")
    return (f"no training prompts left after the split: --val {val:g} and --test {test:g} "
            f"hold out all {len(table)} prompts; lower them (--val 0 --test 0 trains on every "
            "prompt, with no held-out figures)")


#: (advantage, strong model's scores, weak model's scores) -> APGR
ApgrFn = Callable[[np.ndarray, np.ndarray, np.ndarray], float]


def evaluate_router(router: Router, X: np.ndarray, table: RoutingTable,
                    texts: Sequence[str] | None = None, apgr: ApgrFn | None = None
                    ) -> dict[str, Any]:
    """Decision metrics of a fitted router on a (held-out) table; ``apgr`` computes the APGR
    of a two-expert router's predicted advantage over the prompts both experts answered."""
    if len(table) == 0:
        return {"n": 0}
    texts = list(texts if texts is not None else table.prompts)
    t0 = time.perf_counter()
    decisions = router.decide(X, texts)
    decide_ms = (time.perf_counter() - t0) * 1000 / len(table)
    col = {m: j for j, m in enumerate(table.models)}
    S, C = table.scores, table.costs
    got_q, got_c = [], []
    share: dict[str, int] = {}
    rejected = 0
    unknown = 0
    for i, d in enumerate(decisions):
        if d.mode == "reject" or d.expert is None:
            rejected += 1
            continue
        share[d.expert] = share.get(d.expert, 0) + 1
        j = col.get(d.expert)
        if j is None:
            unknown += 1
            continue
        got_q.append(S[i, j])
        got_c.append(C[i, j] if np.isfinite(S[i, j]) else np.nan)
    n = len(table)
    q = np.asarray(got_q, dtype=np.float64)
    c = np.asarray(got_c, dtype=np.float64)
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # an expert unscored on this part
        singles = {m: {"quality": _r(np.nanmean(S[:, j])), "cost": _r(np.nanmean(
            np.where(np.isfinite(S[:, j]), C[:, j], np.nan)))} for m, j in col.items()}
    out: dict[str, Any] = {
        "n": n,
        "mean_quality": _r(np.nanmean(q)) if np.isfinite(q).any() else None,
        "mean_cost": _r(np.nanmean(c)) if np.isfinite(c).any() else None,
        "scored_decisions": int(np.isfinite(q).sum()),
        "share": {e: round(k / n, 4) for e, k in sorted(share.items())},
        "reject_share": round(rejected / n, 4),
        "outside_table_share": round(unknown / n, 4),
        "oracle_quality": _r(np.nanmean(np.nanmax(np.where(np.isfinite(S), S, -np.inf), axis=1)
                                        .clip(min=0))),
        "single_expert": singles,
        "decide_ms_per_query": round(decide_ms, 4),
    }
    if len(table.models) == 2:
        strong, weak = strong_weak(table.mean_costs())
        out["strong"] = table.models[strong]
        out["strong_share"] = round(share.get(table.models[strong], 0) / n, 4)
    if len(table.models) == 2 and apgr is not None:
        try:
            Q = _decided_quality(router, decisions)
            if Q is None:
                Q = router.predict_quality(X, texts)
            experts = router.quality_experts()
            if Q.shape[1] == len(experts) and set(table.models) <= set(experts):
                adv = (Q[:, experts.index(table.models[strong])]
                       - Q[:, experts.index(table.models[weak])])
                ok = np.isfinite(S[:, strong]) & np.isfinite(S[:, weak])
                out["apgr"] = _r(apgr(adv[ok], S[ok, strong], S[ok, weak]))
        except (RouterError, ValueError) as e:
            # no advantage to rank by, or a degenerate part (equal qualities): no APGR, and
            # the metrics say why
            out["apgr"] = None
            out["apgr_skipped"] = str(e)
    return out


def _decided_quality(router: Router, decisions: Sequence[Decision]) -> np.ndarray | None:
    """A quality router's predicted quality, read back from its decisions (each lists every
    expert with its ``predict_quality`` score, the full fallback chain), so the evaluation
    does not predict every held-out prompt a second time; None for other routers."""
    if not isinstance(router, QualityRouter):
        return None
    col = {e: j for j, e in enumerate(router.quality_experts())}
    Q = np.full((len(decisions), len(col)), np.nan)
    for i, d in enumerate(decisions):
        for t in d.targets:
            if t.expert in col:
                Q[i, col[t.expert]] = t.score
    return None if np.isnan(Q).any() else Q


def _r(x: float | np.floating[Any]) -> float | None:
    x = float(x)
    return round(x, 6) if np.isfinite(x) else None


def decision_latency(router: Router, X: np.ndarray, texts: Sequence[str], *,
                     batch_sizes: Sequence[int] = (1, 32), max_queries: int = 256,
                     min_calls: int = 20) -> dict[str, dict[str, float]]:
    """Router-only decision time per query (embeddings precomputed), per batch size.

    Calls ``decide`` on consecutive batches of ``X`` (cycling, at least ``min_calls`` calls
    and ``max_queries`` queries per size) and reports p50 and p99 of the time per query
    in milliseconds, plus the mean.
    """
    X = np.asarray(X, dtype=np.float32)
    n = len(X)
    if n == 0:
        return {}
    out: dict[str, dict[str, float]] = {}
    router.decide(X[:1], list(texts[:1]))  # warm caches
    for bs in batch_sizes:
        calls = max(min_calls, -(-max_queries // bs))
        per_query = []
        for c in range(calls):
            idx = (np.arange(bs) + c * bs) % n
            batch_texts = [texts[int(i)] for i in idx]
            t0 = time.perf_counter()
            router.decide(X[idx], batch_texts)
            per_query.append((time.perf_counter() - t0) * 1000 / bs)
        a = np.asarray(per_query)
        out[f"batch_{bs}"] = {"p50_ms": round(float(np.percentile(a, 50)), 4),
                              "p99_ms": round(float(np.percentile(a, 99)), 4),
                              "mean_ms": round(float(a.mean()), 4), "calls": calls}
    return out


def _too_few_to_train(error: str, need: int, n_train: int, table: RoutingTable, val: float,
                      test: float, auto: bool = False) -> str:
    """A family's (or auto's) minimum of prompts, said of the training part, not the user's
    table, with what to do."""
    if n_train == len(table):
        return error + ": add prompts" + (", or train one family (--router knn, ...)"
                                          if auto else "")
    return (f"{error} in the training part ({n_train} of the table's {len(table)} prompts; "
            f"--val {val:g} and --test {test:g} hold out the rest): add prompts"
            + (", or --val 0 --test 0 to train on them all (no held-out figures)"
               if len(table) >= need else "")
            + (", or train one family (--router knn, ...)" if auto else ""))


class TrainResult:
    """What :func:`train_router` returns: the fitted router, the metrics, the artifact path."""

    def __init__(self, router: Router, metrics: dict[str, Any], path: Path | None) -> None:
        self.router = router
        self.metrics = metrics
        self.path = path


def _fit(router: Any, X: np.ndarray, table: RoutingTable, embedder: Any) -> Any:
    """``router.fit(X, table)``, with ``embedder`` for the routers whose fit takes one."""
    if embedder is not None and "embedder" in inspect.signature(router.fit).parameters:
        router.fit(X, table, embedder=embedder)
    else:
        router.fit(X, table)
    return router


def train_router(name: str, table: RoutingTable, X: np.ndarray, *,
                 params: Mapping[str, Any] | None = None, seed: int = 0, val: float = 0.1,
                 test: float = 0.2, out: str | Path | None = None,
                 embedder: Any = None, embedder_name: str | None = None,
                 embedder_spec: Mapping[str, Any] | None = None, latency: bool = False,
                 apgr: ApgrFn | None = None,
                 auto_candidates: Sequence[tuple[str, Mapping[str, Any]]] | None = None,
                 refit: bool = False, provenance: Mapping[str, Any] | None = None,
                 log: Callable[[str], None] = lambda s: None) -> TrainResult:
    """Split by prompt, fit on train, measure on validation and test, save to ``out``.

    ``refit``: after the measurement, fit the same family with the same parameters (auto's
    choice included) again on every prompt of the table and save that router: what a user
    deploys, with the figures of the train fit under ``validation`` / ``test`` and the refit
    recorded under ``refit`` (the figures describe a router fitted on fewer prompts).

    ``name`` ``auto`` chooses the family and parameters by cross-validation on the training
    prompts (:mod:`routers.auto`; ``auto_candidates`` narrows the candidates) and records the
    choice under ``metrics["auto"]``.

    ``X`` holds one embedding per prompt of ``table``. ``embedder`` is passed to ``fit`` of
    routers that accept it (the guard embeds its unsafe seeds with it). ``latency`` adds
    :func:`decision_latency` on the test (else validation, else train) prompts. ``apgr``
    is passed to :func:`evaluate_router`. ``provenance`` (the commit, the command line, the
    data's sha256) goes into the artifact's ``router.json``, outside its version.
    """
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2 or X.shape[0] != len(table):
        raise RouterError(f"need one embedding per prompt: {len(table)} prompts, X {X.shape}")
    tr, va, te = split_table(table, seed=seed, val=val, test=test)
    if len(tr) == 0:
        raise RouterError(no_training_prompts(table, val, test))
    selection = None
    fit_table, thin = without_thin_models(table.subset(tr))
    if thin:
        log("note: left out of the router (too few scored training prompts to learn from; "
            "log more of their answers, e.g. with exploration, and retrain): " +
            ", ".join(f"{m} ({c})" for m, c in thin.items()))
    t0 = time.perf_counter()
    if name == "auto":
        from routers.auto import CANDIDATES, fit_auto

        if params:
            raise RouterError("--router auto takes no --param: it chooses the parameters")
        try:
            router, sel = fit_auto(X[tr], fit_table, seed=seed,
                                   candidates=auto_candidates or CANDIDATES, log=log)
        except RouterError as e:
            need = re.search(r"^auto needs at least (\d+) training prompts", str(e))
            if need is None:
                raise
            raise RouterError(_too_few_to_train(str(e), int(need.group(1)), len(tr), table,
                                                val, test, auto=True)) from None
        selection = sel.to_dict()
        name = sel.family
    else:
        router = make_router(name, **dict(params or {}))
        router.check_params()
        try:
            router = _fit(router, X[tr], fit_table, embedder)
        except RouterError as e:
            need = re.search(r"prompt\(s\); need at least (\d+)$", str(e))
            if need is None or len(tr) == len(table):
                raise
            raise RouterError(_too_few_to_train(str(e), int(need.group(1)), len(tr), table,
                                                val, test)) from None
    fit_s = time.perf_counter() - t0
    metrics: dict[str, Any] = {
        "router": name, "seed": seed, "n_train": len(tr), "n_val": len(va),
        "n_test": len(te), "fit_seconds": round(fit_s, 3), "models": list(table.models),
    }
    if thin:
        metrics["left_out_models"] = {"scored_training_prompts": thin,
                                      "min_scores": MIN_EXPERT_SCORES}
    if selection is not None:
        metrics["auto"] = selection
    if hasattr(router, "cost_model_summary"):  # which experts' costs are predicted per query
        metrics["costs"] = router.cost_model_summary()
    if len(va):
        metrics["validation"] = evaluate_router(router, X[va], table.subset(va), apgr=apgr)
    if len(te):
        metrics["test"] = evaluate_router(router, X[te], table.subset(te), apgr=apgr)
    if refit and (len(va) or len(te)):
        all_table, thin_all = without_thin_models(table)
        t1 = time.perf_counter()
        router = _fit(type(router)(**router.get_params()), X, all_table, embedder)
        metrics["refit"] = {
            "n_prompts": len(table), "fit_seconds": round(time.perf_counter() - t1, 3),
            "family": name, "params": json.loads(json.dumps(router.get_params(), default=str)),
            "note": "the saved router is this fit on every prompt (train, validation and "
                    "test); the validation and test figures are the train fit's"}
        if thin_all:
            metrics["refit"]["left_out_models"] = thin_all
    if latency:
        part = te if len(te) else va if len(va) else tr
        metrics["latency"] = decision_latency(router, X[part], [table.prompts[i] for i in part])
    path = None
    if out is not None:
        from routers.artifacts import save_router

        path = save_router(router, out, metrics=metrics, data_hash=table.content_hash(),
                           embedder=embedder_name, embedder_spec=embedder_spec,
                           provenance=provenance)
    return TrainResult(router, metrics, path)
