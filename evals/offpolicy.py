"""Off-policy evaluation: a candidate router's value estimated from another router's logs.

A routing log holds, per request, the served expert ``a``, its outcome ``r`` (feedback
quality, cost) and, with exploration (:mod:`routers.explore`), the logging policy's
probabilities ``π0(·|x)`` over the request's candidate experts. For a candidate policy
``π(·|x)`` (a router's choice among the same candidates) the importance weight of a record is
``w = π(a|x) / π0(a|x)`` and

* **IPS** (inverse propensity scoring) ``mean(w · r)``: unbiased, high variance;
* **SNIPS** (self-normalised IPS) ``sum(w · r) / sum(w)``: slightly biased, lower variance;
* **DR** (doubly robust) ``mean(Σ_a π(a|x) q̂(x, a) + w · (r − q̂(x, a)))`` with a reward
  model ``q̂`` (one ridge regression per expert on the request features, its penalty chosen by
  leave-one-out cross-validation) fitted on the logs with K-fold *cross-fitting*: each
  record's ``q̂`` comes from a model that never saw it. Unbiased when the propensities are
  right, and low variance when ``q̂`` is good.

Every estimate comes with a percentile bootstrap interval (records resampled with
replacement; the cross-fitted ``q̂`` is held fixed, as its estimation error is of lower order)
and the effective sample size ``ESS = (Σ w)² / Σ w²``. Quality, cost and their trade-off
``quality − λ · cost / max cost`` are estimated alike.

*Overlap.* Where the candidate puts probability on an expert the logging policy could not
have chosen for that request (``π0 = 0``: never explored there), no reweighting can recover
its outcome. When that unsupported mass exceeds ``max_unsupported`` (default 1 %) the verdict
is ``no_overlap`` and no estimate is given, with a message naming the experts. So is it when
the logs hold no request served by the candidate's choice at all (ESS 0: every weight zero).

:func:`simulate` proves the estimators on any full-information table (every prompt scored
for every expert): it replays a logging router with exploration to produce logs, estimates a
candidate router off-policy, and compares with the candidate's true value from the table.
:func:`simulate_training` measures bias-corrected training from such logs
(:func:`debiased_table`) against naive training. ``expertgate eval offpolicy`` is the command
line (:mod:`expertgate.cli.offpolicy` resolves gateway policies; this module never imports the
gateway).
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from evals.datasets.routing import (
    ENSEMBLE_NOTE,
    given,
    log_costs,
    log_ratings,
    read_log_export,
)
from routers.base import (
    MIN_EXPERT_SCORES,
    Router,
    RouterError,
    RoutingTable,
    make_router,
)
from routers.explore import Exploration, exploration_matrix, record_probs, sample_actions
from routers.logrecord import (
    NO_POLICY,
    TRAINING_COLUMNS,
    UNSERVED_ENDPOINTS,
    json_field,
    policy_groups,
    policy_label,
    policy_mix_warning,
    repeated_requests,
    repeated_requests_note,
)

__all__ = [
    "CORRECTIONS",
    "DR_REWARD_WEIGHTS",
    "ESTIMATORS",
    "REWARD_WEIGHTS",
    "LoggedData",
    "OffPolicyError",
    "choose_clip",
    "choose_correction",
    "choose_reward_weights",
    "crossfit_reward_model",
    "debiased_table",
    "estimate",
    "load_logged",
    "policy_matrix",
    "reward_model_weights",
    "simulate",
    "simulate_training",
    "subset_logged",
    "summary_markdown",
]

ESTIMATORS = ("ips", "snips", "dr", "sndr", "dr_clip")
#: the clipped DR's weight cap, chosen on the development-seed simulations in
#: docs/results/offpolicy/dev by :func:`choose_clip` (never on the report seeds)
DR_CLIP = 10.0
#: caps whose clipped DR every simulation also reports (the development runs choose from them)
CLIP_GRID = (1.5, 2.0, 3.0, 5.0, 10.0, 20.0)
OUTCOMES = ("quality", "cost", "tradeoff")


class OffPolicyError(RuntimeError):
    """The logs or the candidate cannot be evaluated (bad file, no feedback, no experts)."""


# --------------------------------------------------------------------------- data


@dataclass
class LoggedData:
    """Logged requests in array form.

    ``probs`` (n, m) is the logging policy's probability of each expert for each request:
    0 for experts outside the request's candidate set (or, for records logged before
    exploration existed, every expert but the served one, which gets its propensity 1).
    """

    experts: list[str]
    X: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    costs: np.ndarray
    probs: np.ndarray
    texts: list[str] | None = None
    #: (n, m) the experts each request could be sent to (its logged candidate set)
    allowed: np.ndarray | None = None
    #: the gateway policy that logged each request (:func:`routers.logrecord.policy_label`)
    policies: list[str] | None = None

    def __post_init__(self) -> None:
        n, m = len(self.actions), len(self.experts)
        self.allowed = (np.ones((n, m), bool) if self.allowed is None
                        else np.asarray(self.allowed, dtype=bool))
        self.actions = np.asarray(self.actions, dtype=np.int64)
        self.rewards = np.asarray(self.rewards, dtype=np.float64)
        self.costs = np.asarray(self.costs, dtype=np.float64)
        self.probs = np.asarray(self.probs, dtype=np.float64)
        if self.rewards.shape != (n,) or self.costs.shape != (n,):
            raise OffPolicyError("rewards and costs need one value per logged request")
        if self.probs.shape != (n, m):
            raise OffPolicyError(f"probs must have shape ({n}, {m}), got {self.probs.shape}")
        if len(self.X) != n:
            raise OffPolicyError(f"{len(self.X)} feature rows for {n} logged requests")
        if self.policies is not None and len(self.policies) != n:
            raise OffPolicyError(f"{len(self.policies)} policies for {n} logged requests")
        if n and (self.actions.min() < 0 or self.actions.max() >= m):
            raise OffPolicyError("an action index lies outside the expert list")
        p = self.probs[np.arange(n), self.actions]
        if n and not (np.all(np.isfinite(p)) and p.min() > 0):
            raise OffPolicyError("every served expert needs a logged propensity > 0")

    def __len__(self) -> int:
        return len(self.actions)

    @property
    def propensity(self) -> np.ndarray:
        return self.probs[np.arange(len(self)), self.actions]


class Decides(Protocol):
    """What :func:`policy_matrix` reads of a candidate: its decisions."""

    def decide(self, X: np.ndarray, texts: Sequence[str]) -> Sequence[Any]: ...


def policy_matrix(router: Decides, X: np.ndarray, texts: Sequence[str], experts: Sequence[str],
                  allowed: np.ndarray | None = None) -> np.ndarray:
    """A router's deterministic choice as a probability matrix (n, m) over ``experts``: the
    first expert of its preference order inside the request's allowed set (the gateway skips
    an expert that was no candidate of the request). A choice of an expert the logs do not
    know at all, before any allowed one (a new expert, or a table model no ``models:`` maps
    to an expert), and a preference order with no allowed expert, put the mass on an extra
    last column (counted as unsupported by :func:`estimate`): the logs say nothing of it."""
    experts = list(experts)
    col = {e: j for j, e in enumerate(experts)}
    n = len(texts)
    ok = np.ones((n, len(experts)), bool) if allowed is None else np.asarray(allowed, bool)
    P = np.zeros((n, len(experts) + 1))
    for i, d in enumerate(router.decide(X, list(texts))):
        pick = len(experts)  # "outside the logged experts"
        for t in d.targets if d.mode != "reject" else []:
            j = col.get(t.expert)
            if j is None:
                break
            if ok[i, j]:
                pick = j
                break
        P[i, pick] = 1.0
    return P


# --------------------------------------------------------------------------- reward model


def _reduce(X: np.ndarray, max_dim: int) -> np.ndarray:
    """Top principal directions of the features (unsupervised: no outcome is used)."""
    X = np.asarray(X, dtype=np.float64)
    if X.shape[1] <= max_dim:
        return X
    Xc = X - X.mean(axis=0)
    _, _, vt = np.linalg.svd(Xc[: min(len(Xc), 4000)], full_matrices=False)
    return Xc @ vt[:max_dim].T


def _ridge_loo(Z: np.ndarray, y: np.ndarray, sw: np.ndarray, alphas: np.ndarray
               ) -> tuple[np.ndarray, float]:
    """Weighted ridge with intercept; the penalty by exact leave-one-out error (one eigh)."""
    s = np.sqrt(sw / sw.mean())
    mu = np.average(Z, axis=0, weights=sw)
    ym = float(np.average(y, weights=sw))
    A = (Z - mu) * s[:, None]
    b = (y - ym) * s
    G = A.T @ A
    ev, V = np.linalg.eigh(G)
    Ab = A @ V
    best, best_err = None, math.inf
    for a in alphas:
        inv = 1.0 / (ev + a)
        coef_v = inv * (Ab.T @ b)
        fit = Ab @ coef_v
        h = np.einsum("ij,j,ij->i", Ab, inv, Ab)
        loo = (b - fit) / np.maximum(1.0 - h, 1e-6)
        err = float(np.mean(loo ** 2))
        if err < best_err:
            best, best_err = coef_v, err
    assert best is not None
    coef = V @ best
    return coef, ym - float(mu @ coef)


ALPHAS = np.logspace(-2, 4, 13)
#: neighbours behind the reward model's outcome features (development seed 0, NQ: the
#: features cut the squared error of the candidate's imputed quality from 0.15 to 0.09, NQ's
#: traffic repeating prompts; on MMLU they change little. 20 is the only k tried)
NEIGHBOURS = 20


def _unit(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def _neighbour_outcomes(U_q: np.ndarray, U_r: np.ndarray, a_r: np.ndarray, y_r: np.ndarray,
                        m: int, k: int, *, same: bool = False, chunk: int = 1024
                        ) -> np.ndarray:
    """(n_q, 1 + m) mean outcome of the ``k`` most similar reference records (cosine), over
    all records and then per served expert; ``same`` (queries = references) leaves each
    record out of its own neighbours. An expert with fewer than two references gets the
    overall mean. Computed in chunks of queries (memory ``chunk`` x references)."""
    n_q, n_r = len(U_q), len(U_r)
    F = np.empty((n_q, 1 + m))
    glob = float(y_r.mean()) if n_r else 0.0
    cols = [np.flatnonzero(a_r == j) for j in range(m)]
    for s0 in range(0, n_q, chunk):
        sim = U_q[s0:s0 + chunk] @ U_r.T
        if same:
            i = np.arange(s0, min(s0 + chunk, n_q))
            sim[i - s0, i] = -np.inf
        for j, c in enumerate((None, *cols)):
            ref = n_r - int(same) if c is None else len(c)
            if ref < 2:
                F[s0:s0 + chunk, j] = glob
                continue
            kk = min(k, ref - 1)
            sub = sim if c is None else sim[:, c]
            idx = np.argpartition(-sub, kk - 1, axis=1)[:, :kk]
            F[s0:s0 + chunk, j] = (y_r if c is None else y_r[c])[idx].mean(axis=1)
    return F


def crossfit_reward_model(X: np.ndarray, actions: np.ndarray, y: np.ndarray, m: int, *,
                          folds: int = 2, seed: int = 0, weights: np.ndarray | None = None,
                          max_dim: int = 64, min_rows: int = 5,
                          neighbours: int = NEIGHBOURS) -> np.ndarray:
    """Out-of-fold predictions ``q̂`` (n, m): for each fold, one ridge per expert fitted on the
    other folds' records of that expert (``weights`` optional, e.g. importance weights);
    experts with fewer than ``min_rows`` records there predict their (or the overall) mean.

    Features: the top ``max_dim`` principal directions of ``X`` and, with ``neighbours``
    k > 0, two outcome features from the training folds: the mean outcome of the k most
    similar records (any expert: how hard the request is) and of the k most similar records
    of the expert itself. A training record's own features leave it out; a held-out record's
    come from the training folds only, so cross-fitting holds. Repeated prompts (real
    traffic repeats) find each other's outcomes this way. Predictions are clipped to the
    range of ``y``."""
    if not int(folds) >= 2:
        raise OffPolicyError(f"cross-fitting needs at least 2 folds (got {folds})")
    Z = _reduce(X, max_dim)
    n = len(y)
    y = np.asarray(y, dtype=np.float64)
    actions = np.asarray(actions, dtype=np.int64)
    sw = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    lo, hi = (float(y.min()), float(y.max())) if n else (0.0, 1.0)
    fold = np.random.default_rng(seed).permutation(n) % int(folds)
    U = _unit(X) if neighbours > 0 else None
    Q = np.empty((n, m))
    for k in range(int(folds)):
        te, tr = np.flatnonzero(fold == k), np.flatnonzero(fold != k)
        glob = (float(np.average(y[tr], weights=sw[tr])) if sw[tr].sum() > 0
                else float(y[tr].mean()) if len(tr) else 0.0)
        if U is not None and len(tr) > 2:
            F_tr = _neighbour_outcomes(U[tr], U[tr], actions[tr], y[tr], m, neighbours,
                                       same=True)
            F_te = _neighbour_outcomes(U[te], U[tr], actions[tr], y[tr], m, neighbours)
        else:
            F_tr, F_te = np.zeros((len(tr), 1 + m)), np.zeros((len(te), 1 + m))
        for a in range(m):
            # a zero weight (e.g. a record the candidate would not send there) drops the row
            sel = (actions[tr] == a) & (sw[tr] > 0)
            rows = tr[sel]
            if len(rows) < min_rows:
                Q[te, a] = float(np.average(y[rows], weights=sw[rows])) if len(rows) else glob
                continue
            own = [0, 1 + a] if U is not None else []
            A_tr = np.hstack([Z[rows], F_tr[sel][:, own]])
            A_te = np.hstack([Z[te], F_te[:, own]])
            coef, icpt = _ridge_loo(A_tr, y[rows], sw[rows], ALPHAS)
            Q[te, a] = A_te @ coef + icpt
    return np.clip(Q, lo, hi)


#: how the DR reward model weights the logged records it is fitted on (the names follow Open
#: Bandit Pipeline's ``fitting_method``): ``none`` every record alike; ``ips`` ``1 / π0(a|x)``
#: (each expert's fit targets the whole request distribution, not the requests the logging
#: policy happens to send it); ``iw`` ``π(a|x) / π0(a|x)`` (the requests the candidate sends
#: to that expert: where the estimate uses ``q̂``); ``mrdr`` ``π(a|x) (1 − π0(a|x)) /
#: π0(a|x)²`` (Farajtabar et al. 2018, "More Robust Doubly Robust Off-policy Evaluation": the
#: fit that minimises DR's variance)
REWARD_WEIGHTS = ("none", "ips", "iw", "mrdr")
#: the weighting :func:`estimate` uses unless told otherwise (compared on the development
#: seeds in docs/results/offpolicy/dev/reward-weights)
DR_REWARD_WEIGHTS = "none"


def _check_reward_weights(kind: str) -> None:
    if kind not in REWARD_WEIGHTS:
        raise OffPolicyError(f"unknown reward_weights {kind!r}; use {', '.join(REWARD_WEIGHTS)}")


def reward_model_weights(data: LoggedData, target: np.ndarray, kind: str) -> np.ndarray | None:
    """Per-record fitting weights of the reward model (:data:`REWARD_WEIGHTS`) for the
    candidate ``target`` (n, m[+1]); None for ``none``."""
    _check_reward_weights(kind)
    if kind == "none":
        return None
    p = data.propensity
    if kind == "ips":
        return 1.0 / p
    pi = np.asarray(target, dtype=np.float64)[np.arange(len(data)), data.actions]
    return pi / p if kind == "iw" else pi * (1.0 - p) / p ** 2


# --------------------------------------------------------------------------- estimation


def _boot_counts(n: int, B: int, rng: np.random.Generator) -> np.ndarray:
    idx = rng.integers(0, n, size=(B, n)) + (np.arange(B) * n)[:, None]
    return np.bincount(idx.ravel(), minlength=B * n).reshape(B, n).astype(np.float64)


def _sig(x: float) -> float:
    """``x`` to six significant digits (a cost of 3e-7 USD keeps its digits; an absolute
    number of decimals would round it to 0)."""
    return float(f"{float(x):.6g}")


def _summary(value: float, boots: np.ndarray, alpha: float) -> dict[str, float | None]:
    boots = boots[np.isfinite(boots)]
    if not np.isfinite(value) or boots.size == 0:
        return {"value": None, "ci_low": None, "ci_high": None, "se": None}
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return {"value": _sig(value), "ci_low": _sig(lo), "ci_high": _sig(hi),
            "se": _sig(boots.std(ddof=1))}


def _bounded(d: dict[str, Any], lo: float, hi: float) -> dict[str, Any]:
    """A :func:`_summary` with its estimate and interval bounds clipped to the outcome's range
    ``[lo, hi]`` (IPS and DR can leave it: weights above 1 scale an outcome past its largest
    value); ``clipped`` says whether that changed any of them, and ``unclipped`` then holds
    the raw figures. The standard error is kept."""
    raw = {k: d.get(k) for k in ("value", "ci_low", "ci_high")}
    changed = False
    for k, v in raw.items():
        if v is not None and not lo <= v <= hi:
            d[k] = _sig(min(max(v, lo), hi))
            changed = True
    d["clipped"] = changed
    if changed:
        d["unclipped"] = raw
    return d


def _clipped_summary(value: float, boots: np.ndarray, dr_boots: np.ndarray, alpha: float
                     ) -> dict[str, float | None]:
    """The clipped DR's estimate with an interval that spans its own bootstrap interval and
    DR's. Its own alone under-covers: with the reward model held fixed across resamples, the
    bootstrap misses the model's fitting noise, which clipping leaves in the estimate (on the
    development seed, 82 % coverage at cap 2 on MMLU), and it ignores the clipping bias. DR's
    interval has neither problem, so the span covers at least as often as DR's."""
    out = _summary(value, boots, alpha)
    b = dr_boots[np.isfinite(dr_boots)]
    lo, hi = out["ci_low"], out["ci_high"]
    if lo is not None and hi is not None and b.size:
        dlo, dhi = np.quantile(b, [alpha / 2, 1 - alpha / 2])
        out["ci_low"], out["ci_high"] = _sig(min(lo, float(dlo))), _sig(max(hi, float(dhi)))
    return out


def _outcome_ranges(data: LoggedData, lam: float) -> dict[str, tuple[float, float]]:
    """The range each outcome's mean can lie in: quality [0, 1] (the feedback scale; widened
    to the logged rewards where a table scores on another scale), cost the logged costs'
    range (the reward model's predictions are clipped to it too), and the trade-off
    ``quality − lam · cost`` the range those two give it."""
    r = data.rewards
    q_lo, q_hi = (min(0.0, float(r.min())), max(1.0, float(r.max()))) if len(r) else (0.0, 1.0)
    c_lo, c_hi = (float(data.costs.min()), float(data.costs.max())) if len(r) else (0.0, 0.0)
    ends = (q_lo - lam * c_hi, q_lo - lam * c_lo, q_hi - lam * c_hi, q_hi - lam * c_lo)
    return {"quality": (q_lo, q_hi), "cost": (c_lo, c_hi),
            "tradeoff": (min(ends), max(ends))}


def _logging_policy(data: LoggedData) -> str:
    names = sorted(set(data.policies or []))
    return (f"logging policy {names[0]!r}" if len(names) == 1 and names[0] != NO_POLICY
            else "logging policies" if len(names) > 1 else "logging policy")


def _overlap_advice(data: LoggedData, lacking: np.ndarray) -> str:
    """What to do about a ``no_overlap`` verdict: which policy's records lack support, and
    whether that policy explores at all (a policy that explores needs more logs or a higher
    rate; one that does not needs exploration; a mix of policies needs ``--policy``)."""
    explore = "exploration (policy explore: {rate: 0.05})"
    if not data.policies:
        return f"Log with {explore} and retry."
    pols = np.asarray(data.policies, dtype=object)
    groups = policy_groups(data.policies)
    # a policy explores when some of its records spread probability over several experts
    spread = (data.probs > 0).sum(axis=1) > 1
    parts, silent = [], []
    for q in groups:
        mine = pols == q
        k = int((lacking & mine).sum())
        if not k:
            continue
        how = "explored" if spread[mine].any() else "logged without exploration"
        parts.append(f"{q} ({k} of {int(mine.sum())}, {how})")
        if not spread[mine].any():
            silent.append(q)
    text = "The requests without support come from " + ", ".join(parts) + "."
    if len(groups) > 1:
        text += (" The log mixes policies (" + ", ".join(
            f"{q} {sum(v.values())}" for q, v in groups.items()) + "): pass --policy NAME to "
                 "estimate on one policy's records.")
    if silent:
        named = ", ".join(q for q in silent if q != NO_POLICY)
        if named:
            text += f" Log {named} with {explore} and retry."
        if NO_POLICY in silent:
            text += f" Requests without a policy ({NO_POLICY}) named their expert."
    elif parts:
        text += (" Its exploration never reached those experts for those requests: log more "
                 "requests or raise its explore rate.")
    return text


def _no_overlap(out: dict[str, Any], why: str) -> dict[str, Any]:
    """``out`` as the verdict that these logs support no estimate (no number, ``why``)."""
    out["verdict"] = "no_overlap"
    out["message"] = f"no overlap: {why}"
    out["estimates"] = {o: dict.fromkeys(ESTIMATORS) for o in OUTCOMES}
    return out


def estimate(data: LoggedData, target: np.ndarray, *, cost_weight: float = 0.0,
             folds: int = 2, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0,
             max_unsupported: float = 0.01, min_ess: float = 30.0,
             q_hat: Mapping[str, np.ndarray] | None = None, clip: float = DR_CLIP,
             clip_grid: Sequence[float] = (), reward_weights: str = DR_REWARD_WEIGHTS
             ) -> dict[str, Any]:
    """IPS, SNIPS, DR, SNDR and clipped-DR estimates of the candidate ``target`` (n, m[+1]).

    * **SNDR** (self-normalised DR) ``mean(Σ_a π q̂) + Σ w (r − q̂) / Σ w``;
    * **clipped DR** ``mean(Σ_a π q̂ + min(w, clip) · (r − q̂))``: the correction of a record
      whose weight exceeds ``clip`` is shrunk toward the reward model's prediction. It trades
      a bias (the reward model's error on the clipped records, scaled by ``1 − clip / w``) for
      much less variance; ``clip`` = max weight gives DR. Its interval spans its own
      bootstrap interval and DR's (see :func:`_clipped_summary`). ``clip_grid`` adds the quality
      estimate for each of those caps under ``out["clip_grid"]`` (the simulations that choose
      :data:`DR_CLIP`).

    ``reward_weights`` (:data:`REWARD_WEIGHTS`) weights the records the cross-fitted reward
    model is fitted on (ignored with ``q_hat``).

    ``target`` rows are the candidate's probabilities over ``data.experts``; an extra last
    column holds mass on experts outside the logs. Returns ``{"verdict", "message",
    "overlap": {...}, "ess", "n", "estimates": {outcome: {estimator: {value, ci_low,
    ci_high, se, clipped}}}, "outcome_range", "clipped_to_range"}``; under ``no_overlap``
    the estimates are None. Each estimate and interval bound is clipped to its outcome's
    range (:func:`_outcome_ranges`: quality [0, 1]), ``clipped`` saying where that changed it
    (``clipped_to_range`` lists them): an IPS or DR estimate of a mean rating above 1 says
    only that the sample is small or the weights large. Figures keep six significant digits.
    """
    n, m = len(data), len(data.experts)
    if not (int(n_boot) >= 2 and 0 < alpha < 1 and int(folds) >= 2
            and 0 <= max_unsupported <= 1):
        raise OffPolicyError(f"n_boot must be at least 2 (got {n_boot}), alpha in (0, 1) (got "
                             f"{alpha}), folds at least 2 (got {folds}) and max_unsupported "
                             f"in [0, 1] (got {max_unsupported})")
    if n == 0:
        raise OffPolicyError("no logged requests to evaluate on")
    if n < 2 * int(folds):
        # the reward model is cross-fitted in ``folds`` folds and the intervals bootstrapped:
        # from fewer requests an estimate (and a zero-width "interval") means nothing
        raise OffPolicyError(f"{n} logged request(s) with a rating: an estimate needs at "
                             f"least {2 * int(folds)} (two per cross-fitting fold, --folds "
                             f"{folds})")
    _check_reward_weights(reward_weights)
    T = np.asarray(target, dtype=np.float64)
    if T.shape not in ((n, m), (n, m + 1)):
        raise OffPolicyError(f"target must have shape ({n}, {m}) or ({n}, {m + 1})")
    outside = T[:, m] if T.shape[1] == m + 1 else np.zeros(n)
    T = T[:, :m]
    unsupported = outside + (T * (data.probs <= 0)).sum(axis=1)
    per_expert = {e: int(np.sum((T[:, j] > 0) & (data.probs[:, j] <= 0)))
                  for j, e in enumerate(data.experts)}
    per_expert = {e: k for e, k in per_expert.items() if k}
    if outside.any():
        per_expert["(experts absent from the logs)"] = int(np.sum(outside > 0))
    uns_share = float(unsupported.mean())
    rows = np.arange(n)
    w = T[rows, data.actions] / data.propensity
    ess = float(w.sum() ** 2 / max(float((w ** 2).sum()), 1e-300))
    overlap = {"unsupported_share": round(uns_share, 6), "unsupported_by_expert": per_expert,
               "max_weight": round(float(w.max()), 4), "max_unsupported": max_unsupported}
    out: dict[str, Any] = {"n": n, "ess": round(ess, 2), "overlap": overlap,
                           "experts": list(data.experts)}
    if data.policies is not None:
        pols = np.asarray(data.policies, dtype=object)
        overlap["unsupported_by_policy"] = {q: int(np.sum((unsupported > 0) & (pols == q)))
                                            for q in sorted(set(data.policies))}
    if uns_share > max_unsupported:
        named = ", ".join(f"{e} ({k} requests)" for e, k in per_expert.items())
        return _no_overlap(
            out, f"the candidate sends {uns_share:.1%} of requests to experts the "
            f"{_logging_policy(data)} never explored for them ({named}); these logs cannot "
            f"support an estimate. {_overlap_advice(data, unsupported > 0)}")
    if not np.any(w > 0):
        # the logger could have served the candidate's choices but served none of them: an
        # IPS of 0 with a zero-width interval, and a DR that is the reward model's guess for
        # experts it never saw, would look like estimates
        picks = ", ".join(e for j, e in enumerate(data.experts) if np.any(T[:, j] > 0))
        return _no_overlap(
            out, f"the expert the candidate chooses ({picks}) served none of the {n} "
            f"logged requests (effective sample size 0); these logs cannot support an "
            f"estimate. Explore more (a larger explore rate, or more traffic) and export again")
    if ess < min_ess:
        out["verdict"] = "low_ess"
        out["message"] = (f"weak overlap: effective sample size {ess:.0f} of {n} requests; "
                          "the intervals are wide and the bootstrap may under-cover")
    else:
        out["verdict"] = "ok"
        out["message"] = f"effective sample size {ess:.0f} of {n} requests"
    cmax = float(np.max(data.costs)) if n else 0.0
    scale = cmax if cmax > 0 else 1.0
    if q_hat is None:
        fw = reward_model_weights(data, T, reward_weights)
        qr = crossfit_reward_model(data.X, data.actions, data.rewards, m, folds=folds, seed=seed,
                                   weights=fw)
        qc = crossfit_reward_model(data.X, data.actions, data.costs, m, folds=folds, seed=seed,
                                   weights=fw)
    else:
        qr, qc = q_hat["quality"], q_hat["cost"]
    ys = {"quality": (data.rewards, qr), "cost": (data.costs, qc),
          "tradeoff": (data.rewards - cost_weight * data.costs / scale,
                       qr - cost_weight * qc / scale)}
    bounds = _outcome_ranges(data, cost_weight / scale)
    C = _boot_counts(n, int(n_boot), np.random.default_rng(seed + 1))
    sw_b = C @ w
    sw_safe = np.where(sw_b > 0, sw_b, np.nan)
    ws = float(w.sum())
    est: dict[str, Any] = {}
    for name, (y, q) in ys.items():
        ips_i = w * y
        dm_i = (T * q).sum(axis=1)
        res_i = y - q[rows, data.actions]
        dr_i = dm_i + w * res_i
        clip_i = dm_i + np.minimum(w, clip) * res_i
        est[name] = {
            "ips": _summary(ips_i.mean(), C @ ips_i / n, alpha),
            "snips": _summary(ips_i.sum() / ws if ws > 0 else math.nan,
                              (C @ ips_i) / sw_safe, alpha),
            "dr": _summary(dr_i.mean(), C @ dr_i / n, alpha),
            "sndr": _summary(dm_i.mean() + (w * res_i).sum() / ws if ws > 0 else math.nan,
                             C @ dm_i / n + (C @ (w * res_i)) / sw_safe, alpha),
            "dr_clip": _clipped_summary(clip_i.mean(), C @ clip_i / n, C @ dr_i / n, alpha),
        }
        lo, hi = bounds[name]
        for e in est[name]:
            _bounded(est[name][e], lo, hi)
        if name == "quality" and clip_grid:
            out["clip_grid"] = {
                f"{c:g}": _bounded(_clipped_summary(float(np.mean(v)), C @ v / n, C @ dr_i / n,
                                                    alpha), lo, hi)
                for c in clip_grid for v in [dm_i + np.minimum(w, c) * res_i]}
    out["estimates"] = est
    out["outcome_range"] = {o: [_sig(lo), _sig(hi)] for o, (lo, hi) in bounds.items()}
    out["clipped_to_range"] = [f"{o} {e}" for o, ests in est.items()
                               for e, d in ests.items() if d["clipped"]]
    out["clip"] = clip
    out["reward_weights"] = reward_weights if q_hat is None else "given"
    out["cost_scale"] = scale
    out["cost_weight"] = cost_weight
    return out


# --------------------------------------------------------------------------- logs


def load_logged(path: str | Path, embed: Any, *, experts: Sequence[str] | None = None,
                policy: str | None = None) -> LoggedData:
    """Read an exported routing log (``expertgate logs export``: Parquet or JSONL) into
    :class:`LoggedData`. ``embed(texts) -> (n, d)`` gives the features. Records without text
    or without feedback, failed requests no expert served, those a fallback served, a
    canary's requests, ensemble answers (the rating of several experts' combined answer) and
    shadow records are dropped (counted on stderr), and so is a record
    repeating an earlier one's ``request_id`` (the same request logged twice); with ``policy``
    only that policy's records are read, without one a log that mixes policies (or router
    versions) is said so with a count per policy. Records logged without propensities
    count as deterministic (propensity 1 for the served expert, 0 elsewhere)."""
    import pandas as pd

    p = Path(path)
    if not p.exists():
        raise OffPolicyError(f"no such log file: {p}")
    try:
        df = read_log_export(p)
    except RouterError as e:
        raise OffPolicyError(str(e)) from None
    need = set(TRAINING_COLUMNS) - {"request_id"} - set(df.columns)
    if need:
        raise OffPolicyError(f"{p}: log export lacks column(s): {', '.join(sorted(need))} "
                             "(log prompts with the policy's log_prompts: true; join feedback "
                             "with `expertgate logs export`)")
    if policy is not None:
        pol = df["policy"] if "policy" in df.columns else pd.Series(None, index=df.index)
        if not (pol == policy).any():
            held = policy_groups(pol)
            raise OffPolicyError(f"{p}: no record of policy {policy!r} (records by policy: "
                                 + ", ".join(f"{k} {sum(v.values())}"
                                             for k, v in held.items()) + ")")
        print(f"offpolicy: {int((pol == policy).sum())} of {len(df)} records from policy "
              f"{policy!r}", file=sys.stderr)
        df = df[pol == policy].reset_index(drop=True)
    if "request_id" in df.columns:
        rids = df["request_id"]
        if "endpoint" in df.columns:  # a shadow record names the request it shadows: no copy
            rids = rids.where(~df["endpoint"].isin(UNSERVED_ENDPOINTS), None)
        again = np.asarray(repeated_requests(rids), dtype=bool)
        if again.any():
            print(f"offpolicy: {repeated_requests_note(int(again.sum()))}", file=sys.stderr)
            df = df[~again].reset_index(drop=True)
    try:  # a rating written as words is no missing rating
        fb = log_ratings(df, p)
    except RouterError as e:
        raise OffPolicyError(str(e)) from None
    # an empty expert name (a merged export's) is a request no expert served, as null is
    keep = given(df["text"]) & fb.notna() & given(df["expert"])
    if "status" in df.columns:  # a rated request that failed: no expert's outcome
        keep &= df["status"].isna() | (df["status"] == "ok")
    # a fallback served another expert than the one chosen with the logged propensity
    fallback = (df["fallback"].fillna(False).astype(bool) if "fallback" in df.columns
                else pd.Series(False, index=df.index))
    # an ensemble's answer combines several experts' (the record names its aggregator): its
    # rating is no outcome of the one expert the propensities describe
    ensemble = (df["mode"] == "ensemble" if "mode" in df.columns
                else pd.Series(False, index=df.index))
    n_ens = int((keep & ensemble & ~fallback).sum())
    print(f"offpolicy: {len(df)} records; {int(keep.sum())} with text, expert and feedback; "
          f"{int((keep & fallback).sum())} of those served by a fallback dropped"
          + (f"; {n_ens} {ENSEMBLE_NOTE} dropped" if n_ens else ""), file=sys.stderr)
    keep &= ~fallback & ~ensemble
    # shadow decisions and canary events are not served requests; a canary's requests were
    # chosen by another router than the propensities of the incumbent describe
    for col_, bad in (("endpoint", UNSERVED_ENDPOINTS), ("arm", ("canary",))):
        if col_ in df.columns:
            keep &= ~df[col_].isin(bad)
    df, fb = df[keep].reset_index(drop=True), fb[keep].to_numpy(dtype=np.float64)
    if df.empty:
        raise OffPolicyError(f"{p}: no record has text, a served expert and feedback")
    pols = [policy_label(v) for v in (df["policy"] if "policy" in df.columns
                                      else [None] * len(df))]
    mix = policy_mix_warning(policy_groups(
        pols, df["router_version"] if "router_version" in df.columns else None))
    if mix:
        print(f"offpolicy: {mix}", file=sys.stderr)
    if ((fb < 0) | (fb > 1)).any():
        raise OffPolicyError(f"{p}: feedback_score must lie in [0, 1]")
    recs = df.to_dict("records")
    probs_list = [record_probs(r) for r in recs]
    names = set(df["expert"].astype(str))
    for _, pr in probs_list:
        names |= set(pr or {})
    ex = list(experts) if experts is not None else sorted(names)
    col = {e: j for j, e in enumerate(ex)}
    missing = sorted(names - set(col))
    if missing:
        raise OffPolicyError(f"the logs name expert(s) outside the expert list: "
                             f"{', '.join(missing)}")
    P = np.zeros((len(recs), len(ex)))
    allowed = np.ones((len(recs), len(ex)), bool)
    actions = np.array([col[str(r["expert"])] for r in recs])
    for i, rec in enumerate(recs):
        cands = json_field(rec.get("candidates"))
        if isinstance(cands, list | tuple | np.ndarray) and len(cands):
            allowed[i] = [name in set(cands) for name in ex]
            allowed[i, actions[i]] = True
    for i, (prop, pr) in enumerate(probs_list):
        if pr:
            for name, v in pr.items():
                P[i, col[name]] = v
        else:
            P[i, actions[i]] = 1.0 if prop is None else prop
    _check_distributions(P, [pr is not None for _, pr in probs_list], df, p)
    unlogged = P[np.arange(len(recs)), actions] <= 0
    if unlogged.any():
        # LoggedData refuses these too, without saying which records: name them
        by_expert = collections.Counter(ex[a] for a in actions[unlogged])
        raise OffPolicyError(
            f"{p}: {int(unlogged.sum())} record(s) name a served expert that their own logged "
            "action_probs give no probability: " + ", ".join(
                f"{e!r} ({k} record{'s' if k > 1 else ''})" for e, k in by_expert.most_common())
            + "; an expert renamed since, or edited logs? The importance weights need the "
            "probability with which the served expert was chosen")
    try:
        costs = log_costs(df, p)
    except RouterError as e:
        raise OffPolicyError(str(e)) from None
    texts = df["text"].astype(str).tolist()
    return LoggedData(ex, np.asarray(embed(texts)), actions, fb, costs, P, texts, allowed,
                      pols)


#: how far a record's logged action_probs may sum from 1 (the gateway writes them unrounded)
PROBS_SUM_TOL = 1e-3


def _check_distributions(P: np.ndarray, has_probs: Sequence[bool], df: Any,
                         path: Path) -> None:
    """Each record's logged probabilities are one: finite, in [0, 1] and, where the record
    has action_probs, summing to 1. Percentages (a log from another tool) or an edited cell
    would otherwise scale every importance weight and print a wrong estimate as a good one."""
    full = np.asarray(has_probs, dtype=bool)
    with np.errstate(invalid="ignore"):
        bad = (~np.isfinite(P) | (P < 0) | (P > 1 + 1e-9)).any(axis=1)
        bad |= full & (np.abs(np.nan_to_num(P, nan=np.inf).sum(axis=1) - 1) > PROBS_SUM_TOL)
    if not bad.any():
        return
    i = int(np.flatnonzero(bad)[0])
    rid = df["request_id"].iloc[i] if "request_id" in df.columns else None
    what = ("action_probs must be probabilities (finite, in [0, 1], summing to 1)"
            if full[i] else "propensity must be a probability in [0, 1]")
    got = df["action_probs"].iloc[i] if full[i] else df["propensity"].iloc[i]
    got = got if isinstance(got, str) else json.dumps(got, default=str)
    raise OffPolicyError(f"{path}: {what}; {int(bad.sum())} record(s) are not, the first "
                         + (f"request_id {rid} " if rid is not None else "")
                         + f"logged {got[:120]}")


def debiased_table(data: LoggedData, method: str, *, seed: int = 0, clip: float = DR_CLIP,
                   q_hat: Mapping[str, np.ndarray] | None = None) -> RoutingTable:
    """A training table from biased logs.

    ``naive``     one row per logged text, the observed score(s), NaN for experts not served
                  (what ``train --format logs`` reads);
    ``ips``       importance resampling: ``n`` records drawn with replacement with probability
                  proportional to ``1 / propensity``, each draw its own row: every expert's
                  rows then follow the request distribution instead of the logging router's
                  habits (what an expert is observed on no longer depends on the router);
    ``dr``        one row per distinct logged text with every expert filled: the observed
                  outcome (mean over repeats) where the text was served by that expert, and
                  elsewhere a reward model fitted with importance weights ``1 / propensity``
                  and cross-fitting (so a row's imputations come from models that never saw
                  it);
    ``dr_target`` one row per distinct text, every cell the doubly robust target
                  ``q̂(x, e) + mean over the text's records of min(1[a = e] / π0(e|x), clip)
                  · (r − q̂(x, e))`` (unweighted cross-fitted reward model, weights capped at
                  ``clip`` as in the clipped DR estimate), clipped to [0, 1]: an observed cell
                  is corrected toward its outcome in proportion to how rarely the logger
                  served it, an unobserved one keeps the reward model's value.

    ``q_hat`` ({"quality", "cost"}: (n, m)) replaces the cross-fitted reward model. With
    ``dr`` and ``dr_target``, an expert observed on too few texts (the routers' thin-model
    rule, :func:`routers.base.without_thin_models`) keeps only its observed cells.
    """
    n, m = len(data), len(data.experts)
    served = sorted({data.experts[a] for a in data.actions})
    if len(served) == 1:
        # a correction would fill every other expert's column from a reward model that never
        # saw one of its outcomes (the naive table of these logs is refused alike)
        raise OffPolicyError(f"every rated record was served by {served[0]!r}: a router "
                             "learns to choose between experts from rated answers of each; "
                             "let the policy explore (explore: {rate: 0.05}) so the logs hold "
                             "others' answers, then export again")
    texts = data.texts or [f"request {i}" for i in range(n)]
    if method == "naive":
        rows = [{"prompt_id": hashlib.sha256(t.encode()).hexdigest()[:16], "prompt": t,
                 "model": data.experts[a], "score": float(r), "cost": float(c)}
                for t, a, r, c in zip(texts, data.actions, data.rewards, data.costs,
                                      strict=True)]
        return RoutingTable.from_long(rows)
    w = 1.0 / data.propensity
    if method == "ips":
        rng = np.random.default_rng(seed)
        draw = rng.choice(n, size=n, replace=True, p=w / w.sum())
        S = np.full((n, m), np.nan)
        Cm = np.zeros((n, m))
        S[np.arange(n), data.actions[draw]] = data.rewards[draw]
        Cm[np.arange(n), data.actions[draw]] = data.costs[draw]
        return RoutingTable([f"d{k}" for k in range(n)], [texts[i] for i in draw],
                            list(data.experts), S, Cm)
    if method not in ("dr", "dr_target"):
        raise OffPolicyError(f"unknown correction {method!r}; use naive, ips, dr or dr_target")
    fit_w = w if method == "dr" else None
    if q_hat is not None:
        Q, Qc = q_hat["quality"], q_hat["cost"]
    else:
        Q = crossfit_reward_model(data.X, data.actions, data.rewards, m, seed=seed,
                                  weights=fit_w)
        Qc = crossfit_reward_model(data.X, data.actions, data.costs, m, seed=seed,
                                   weights=fit_w)
    # one row per distinct text: per-text sums of outcomes, imputations and corrections
    uniq, inv = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
    k = len(uniq)
    rows_ = np.arange(n)
    cnt = np.bincount(inv, minlength=k)[:, None].astype(np.float64)

    def per_text(v: np.ndarray, served_only: bool) -> np.ndarray:
        out = np.zeros((k, m))
        if served_only:
            np.add.at(out, (inv, data.actions), v)
        else:
            np.add.at(out, inv, v)
        return out

    obs = per_text(np.ones(n), True)
    q_mean, qc_mean = per_text(Q, False) / cnt, per_text(Qc, False) / cnt
    if method == "dr":
        seen = obs > 0
        S = np.where(seen, per_text(data.rewards, True) / np.maximum(obs, 1), q_mean)
        Cm = np.where(seen, per_text(data.costs, True) / np.maximum(obs, 1), qc_mean)
    else:
        wc = np.minimum(w, clip)
        S = q_mean + per_text(wc * (data.rewards - Q[rows_, data.actions]), True) / cnt
        Cm = qc_mean + per_text(wc * (data.costs - Qc[rows_, data.actions]), True) / cnt
    # an expert observed on too few texts (explored a few times) keeps only what was
    # observed: a reward model's guesses on every prompt would make it look fully scored,
    # and its few outcomes stand for all of them (the routers' thin-model rule then leaves
    # it out, as it does without a correction)
    seen = obs > 0
    counts = seen.sum(axis=0)
    thin = (counts < MIN_EXPERT_SCORES) & (counts < 0.25 * counts.max())
    if thin.any() and (~thin).sum() >= 2:
        observed = per_text(data.rewards, True) / np.maximum(obs, 1)
        observed_cost = per_text(data.costs, True) / np.maximum(obs, 1)
        S[:, thin] = np.where(seen[:, thin], observed[:, thin], np.nan)
        Cm[:, thin] = np.where(seen[:, thin], observed_cost[:, thin], np.nan)
    return RoutingTable([f"r{i}" for i in range(k)], [str(t) for t in uniq],
                        list(data.experts), np.clip(S, 0, 1), np.maximum(Cm, 0))


def subset_logged(data: LoggedData, idx: np.ndarray) -> LoggedData:
    """The records ``idx`` of ``data`` (texts and candidate sets kept)."""
    idx = np.asarray(idx, dtype=np.int64)
    return LoggedData(list(data.experts), data.X[idx], data.actions[idx], data.rewards[idx],
                      data.costs[idx], data.probs[idx],
                      [data.texts[i] for i in idx] if data.texts is not None else None,
                      data.allowed[idx] if data.allowed is not None else None,
                      [data.policies[i] for i in idx] if data.policies is not None else None)


# --------------------------------------------------------------------------- simulation


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"knn:cost_weight=0.1,k=20"`` -> ("knn", {"cost_weight": 0.1, "k": 20})."""
    name, _, rest = spec.partition(":")
    params: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        k, sep, v = item.partition("=")
        if not sep:
            raise OffPolicyError(f"bad router spec {spec!r}: expected name:key=value,...")
        try:
            params[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            params[k.strip()] = v
    return name.strip(), params


def _fit(spec: str, X: np.ndarray, table: RoutingTable) -> Router:
    name, params = parse_spec(spec)
    try:
        router = make_router(name, **params)
        router.check_params()  # the ranges a policy's params: and train --param are held to
        return router.fit(X, table)
    except RouterError:
        raise
    except (TypeError, ValueError) as e:  # a value of the wrong type (k=abc)
        raise OffPolicyError(f"router spec {spec!r}: {type(e).__name__}: {e}") from None


def _greedy_and_scores(router: Router, X: np.ndarray, texts: Sequence[str],
                       experts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    col = {e: j for j, e in enumerate(experts)}
    n = len(texts)
    greedy = np.zeros(n, dtype=np.int64)
    S = np.full((n, len(experts)), np.nan)
    for i, d in enumerate(router.decide(X, list(texts))):
        ts = [t for t in d.targets if t.expert in col]
        if not ts:
            raise OffPolicyError(f"router {router.name!r} chose no expert of the table")
        greedy[i] = col[ts[0].expert]
        for t in ts:
            S[i, col[t.expert]] = t.score
    return greedy, S


def _accuracy(cells: Sequence[Mapping[str, Any]], truth: float, tol: float) -> dict[str, Any]:
    """Bias, RMSE, mean absolute error, share within ``tol``, interval coverage and width of
    one estimator's per-repeat results (``value`` and, where given, ``ci_low``/``ci_high``)."""
    v = np.array([c["value"] for c in cells], dtype=np.float64)
    lo = np.array([c.get("ci_low", np.nan) for c in cells], dtype=np.float64)
    hi = np.array([c.get("ci_high", np.nan) for c in cells], dtype=np.float64)
    err = v - truth
    d: dict[str, Any] = {
        "mean": _r(np.mean(v)), "bias": _r(np.mean(err)),
        "rmse": _r(np.sqrt(np.mean(err ** 2))), "mae": _r(np.mean(np.abs(err))),
        "within_tol": _r(np.mean(np.abs(err) <= tol))}
    if np.isfinite(lo).all():
        d["coverage"] = _r(np.mean((lo <= truth) & (truth <= hi)))
        d["width"] = _r(np.mean(hi - lo))
    return d


def _aggregate(runs: list[dict[str, Any]], truth: Mapping[str, float], tol: float
               ) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for o in OUTCOMES:
        out[o] = {"truth": round(truth[o], 6)}
        for e in (*ESTIMATORS, "naive"):
            out[o][e] = _accuracy([r[o][e] for r in runs], truth[o], tol)
    return out


def _r(x: Any) -> float | None:
    x = float(x)
    return round(x, 6) if math.isfinite(x) else None


def simulate(table: RoutingTable, X: np.ndarray, *, logging: str, candidate: str,
             explore: Exploration, n_logged: int = 5000, repeats: int = 100,
             cost_weight: float = 0.0, router_share: float = 0.5, folds: int = 2,
             n_boot: int = 1000, alpha: float = 0.05, tol: float = 0.02, seed: int = 0,
             clip: float = DR_CLIP, clip_grid: Sequence[float] = CLIP_GRID,
             reward_weights: str = DR_REWARD_WEIGHTS, progress: bool = False) -> dict[str, Any]:
    """Replay ``logging`` (a router spec, e.g. ``knn:cost_weight=0.2``) with ``explore`` on a
    full-information table and estimate ``candidate`` off-policy, ``repeats`` times.

    The table's prompts are split once (seeded): ``router_share`` of them train both routers,
    the rest are the request population. Each repeat draws ``n_logged`` requests from the
    population (with replacement), samples the logged expert from the exploration
    probabilities, reveals only its score and cost, and estimates the candidate's mean
    quality, cost and trade-off. The truth is the candidate's mean over the population from
    the full table. Reports per estimator the bias, RMSE, mean absolute error, the share of
    repeats within ``tol`` of the truth, the coverage and mean width of the ``1 − alpha``
    intervals; ``naive`` is the plain mean of logged outcomes where the logged expert is
    the candidate's choice (no reweighting), for contrast. ``clip_grid`` reports the
    clipped DR's accuracy for each cap (``clip_grid`` key; the development runs choose
    :data:`DR_CLIP` there).
    """
    S_full = np.asarray(table.scores, dtype=np.float64)
    if not np.isfinite(S_full).all():
        raise OffPolicyError("simulation needs a full-information table (a score for every "
                             "prompt and expert); this one has missing scores")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(table))
    k = round(len(table) * router_share)
    tr, pop = np.sort(perm[:k]), np.sort(perm[k:])
    if len(tr) < 10 or len(pop) < 10:
        raise OffPolicyError("table too small to split into router-training and population")
    t0 = time.perf_counter()
    sub = table.subset(tr)
    log_router = _fit(logging, X[tr], sub)
    cand_router = _fit(candidate, X[tr], sub)
    experts = list(table.models)
    texts = [table.prompts[i] for i in pop]
    g0, sc0 = _greedy_and_scores(log_router, X[pop], texts, experts)
    gc, _ = _greedy_and_scores(cand_router, X[pop], texts, experts)
    # the reward model's features: the population's principal directions, computed once
    # (unsupervised, so sharing them across repeats leaks no outcome)
    Zpop = _reduce(X[pop], 64)
    S, Cc = S_full[pop], np.asarray(table.costs, dtype=np.float64)[pop]
    P0 = exploration_matrix(g0, sc0, np.ones_like(S, dtype=bool), explore)
    rows_p = np.arange(len(pop))
    scale = float(Cc.max()) if Cc.max() > 0 else 1.0
    truth = {"quality": float(S[rows_p, gc].mean()), "cost": float(Cc[rows_p, gc].mean())}
    truth["tradeoff"] = truth["quality"] - cost_weight * truth["cost"] / scale
    runs = []
    for rep in range(int(repeats)):
        r_rng = np.random.default_rng([seed, rep])
        idx = r_rng.integers(0, len(pop), size=int(n_logged))
        a = sample_actions(P0[idx], r_rng)
        data = LoggedData(experts, Zpop[idx], a, S[idx, a], Cc[idx, a], P0[idx])
        T = np.zeros((len(idx), len(experts)))
        T[np.arange(len(idx)), gc[idx]] = 1.0
        # the trade-off uses the population's cost scale so every repeat estimates one target
        data_scale = float(data.costs.max()) if data.costs.max() > 0 else 1.0
        res = estimate(data, T, cost_weight=cost_weight * data_scale / scale, folds=folds,
                       n_boot=n_boot, alpha=alpha, seed=int(r_rng.integers(1 << 31)),
                       max_unsupported=1.0, clip=clip, clip_grid=clip_grid,
                       reward_weights=reward_weights)
        match = a == gc[idx]
        ys = {"quality": data.rewards, "cost": data.costs,
              "tradeoff": data.rewards - cost_weight * data.costs / scale}
        row = {o: dict(res["estimates"][o]) for o in OUTCOMES}
        for o in OUTCOMES:
            row[o]["naive"] = {"value": float(ys[o][match].mean()) if match.any() else math.nan}
        row["ess"] = res["ess"]
        row["clip_grid"] = res.get("clip_grid", {})
        runs.append(row)
        if progress and (rep + 1) % 10 == 0:
            print(f"  repeat {rep + 1}/{repeats}", file=sys.stderr)
    agg = _aggregate(runs, truth, tol)
    agree = float(np.mean(g0 == gc))
    return {
        "experts": experts, "n_population": len(pop), "n_router_train": len(tr),
        "n_logged": int(n_logged), "repeats": int(repeats), "logging": logging,
        "candidate": candidate, "explore": {"rate": explore.rate, "method": explore.method,
                                            "temperature": explore.temperature},
        "cost_weight": cost_weight, "alpha": alpha, "tol": tol, "folds": folds,
        "n_boot": n_boot, "seed": seed,
        "candidate_agrees_with_logging": round(agree, 4),
        "logging_truth_quality": round(float(S[rows_p, g0].mean()), 6),
        "ess_mean": _r(np.mean([r["ess"] for r in runs])),
        "clip": clip, "reward_weights": reward_weights, "results": agg,
        "clip_grid": {c: _accuracy([r["clip_grid"][c] for r in runs], truth["quality"], tol)
                      for c in (runs[0]["clip_grid"] if runs else {})},
        "seconds": round(time.perf_counter() - t0, 2),
    }


CORRECTIONS = ("ips", "dr", "dr_target")


def choose_correction(data: LoggedData, X: Callable[[Sequence[str]], np.ndarray], router: str,
                      *, methods: Sequence[str] = CORRECTIONS, seed: int = 0,
                      val_share: float = 0.2) -> tuple[str, dict[str, float | None]]:
    """The bias correction for training ``router`` on ``data``, chosen on held-out logs.

    The distinct texts split (seeded) into training and validation; each correction's table
    trains ``router`` on the training part, and the validation logs judge each trained router
    off-policy (the clipped DR estimate of its mean quality: the logs are all there is, no
    full table). Returns the best correction and every correction's validation estimate.
    ``X(texts)`` gives the features of texts.
    """
    texts = data.texts or [f"request {i}" for i in range(len(data))]
    uniq, inv = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
    va_text = np.random.default_rng([11, seed]).random(len(uniq)) < val_share
    va, tr = np.flatnonzero(va_text[inv]), np.flatnonzero(~va_text[inv])
    if len(va) < 20 or len(tr) < 20:
        raise OffPolicyError(
            f"--correction auto: too few logs to choose on held-out ones: {len(va)} of "
            f"{len(data)} rated requests held out and {len(tr)} to train on, it needs at least "
            "20 of each; log more rated requests, or name the correction (--correction dr, "
            "ips or dr_target)")
    d_tr, d_va = subset_logged(data, tr), subset_logged(data, va)
    va_texts = [texts[i] for i in va]
    scores: dict[str, float | None] = {}
    for meth in methods:
        tab = debiased_table(d_tr, meth, seed=seed)
        r = _fit(router, X(tab.prompts), tab)
        T = policy_matrix(r, d_va.X, va_texts, data.experts)
        est = estimate(d_va, T, n_boot=200, seed=seed, max_unsupported=1.0)
        scores[meth] = est["estimates"]["quality"]["dr_clip"]["value"]
    def value(mth: str) -> float:
        v = scores[mth]
        return -math.inf if v is None else v

    best = max(methods, key=value)
    return best, scores


def simulate_training(table: RoutingTable, X: np.ndarray, *, logging: str, router: str,
                      explore: Exploration, n_logged: int = 5000, seeds: Sequence[int] = (0,),
                      methods: Sequence[str] = ("naive", *CORRECTIONS), test: float = 0.2,
                      router_share: float = 0.3) -> dict[str, Any]:
    """Train ``router`` on simulated biased logs, naively and with each correction, and
    measure each on the full table's test split (true scores of its choices).

    Per seed the prompts split into logging-router training (``router_share``), traffic
    (requests are drawn from it) and test (``test``); the logging router with ``explore``
    produces ``n_logged`` logs; each method's table trains the same router spec. ``chosen``
    is the correction :func:`choose_correction` picks on held-out logs (no full table), its
    router trained on all the logs: the figure a user gets.
    """
    S_full = np.asarray(table.scores, dtype=np.float64)
    if not np.isfinite(S_full).all():
        raise OffPolicyError("simulation needs a full-information table")
    experts = list(table.models)
    Cfull = np.asarray(table.costs, dtype=np.float64)
    methods = list(methods)
    corrections = [mth for mth in methods if mth != "naive"]
    per: dict[str, list[float]] = {mth: [] for mth in (*methods, "chosen")}
    per_cost: dict[str, list[float]] = {mth: [] for mth in (*methods, "chosen")}
    picks: list[dict[str, Any]] = []
    full_q: list[float] = []
    pos = {t: i for i, t in enumerate(table.prompts)}

    def feats(texts: Sequence[str]) -> np.ndarray:
        return X[[pos[t] for t in texts]]

    for s in seeds:
        rng = np.random.default_rng([7, int(s)])
        perm = rng.permutation(len(table))
        n_te, n_lr = round(len(table) * test), round(len(table) * router_share)
        te, lr, traffic = perm[:n_te], perm[n_te:n_te + n_lr], perm[n_te + n_lr:]
        log_router = _fit(logging, X[lr], table.subset(lr))
        ttexts = [table.prompts[i] for i in traffic]
        g0, sc0 = _greedy_and_scores(log_router, X[traffic], ttexts, experts)
        P0 = exploration_matrix(g0, sc0, np.ones((len(traffic), len(experts)), bool), explore)
        idx = rng.integers(0, len(traffic), size=int(n_logged))
        a = sample_actions(P0[idx], rng)
        ti = traffic[idx]
        data = LoggedData(experts, X[ti], a, S_full[ti, a], Cfull[ti, a], P0[idx],
                          [table.prompts[i] for i in ti])
        te_texts = [table.prompts[i] for i in te]
        for meth in methods:
            tab = debiased_table(data, meth, seed=int(s))
            r = _fit(router, feats(tab.prompts), tab)
            g, _ = _greedy_and_scores(r, X[te], te_texts, experts)
            per[meth].append(float(S_full[te, g].mean()))
            per_cost[meth].append(float(Cfull[te, g].mean()))
        # the ceiling: the same router trained on the traffic's full table (no log has it)
        r = _fit(router, X[traffic], table.subset(traffic))
        g, _ = _greedy_and_scores(r, X[te], te_texts, experts)
        full_q.append(float(S_full[te, g].mean()))
        if corrections:
            best, val = choose_correction(data, feats, router, methods=corrections, seed=int(s))
            per["chosen"].append(per[best][-1])
            per_cost["chosen"].append(per_cost[best][-1])
            picks.append({"seed": int(s), "chosen": best, "validation_dr_clip": val})
    out: dict[str, Any] = {"logging": logging, "router": router, "n_logged": int(n_logged),
                           "explore": {"rate": explore.rate, "method": explore.method,
                                       "temperature": explore.temperature},
                           "seeds": list(seeds), "methods": {}, "choices": picks,
                           "full_information_test_quality": _r(np.mean(full_q)),
                           "n_test": round(len(table) * test)}
    for meth in (*methods, "chosen") if corrections else methods:
        q = np.array(per[meth])
        out["methods"][meth] = {"test_quality": _r(q.mean()),
                                "test_quality_std": _r(q.std(ddof=1)) if len(q) > 1 else None,
                                "test_cost": _r(np.mean(per_cost[meth])),
                                "per_seed": [round(v, 6) for v in per[meth]]}
        if meth != "naive" and "naive" in per:
            d = q - np.array(per["naive"])
            out["methods"][meth]["minus_naive"] = _r(d.mean())
            out["methods"][meth]["wins"] = int((d > 0).sum())
    return out


# --------------------------------------------------------------------------- report


def choose_clip(results: Sequence[Mapping[str, Any]], min_coverage: float = 0.90,
                target: float = 0.90) -> float:
    """The clipped DR's cap from development-seed ``--simulate`` results: among the caps
    whose intervals cover the truth in at least ``min_coverage`` of the repeats in every
    scenario, the one with the most scenarios whose estimates land within the tolerance in
    at least ``target`` of the repeats (issue 18's target), then the best worst-case share
    within the tolerance, then the larger cap (less bias); with none covering, the best
    worst-case coverage."""
    if any(r.get("seed_set") != "dev" for r in results):
        raise OffPolicyError("the cap is chosen on development-seed results only")
    caps = sorted({c for r in results for c in r.get("clip_grid", {})}, key=float)
    if not caps:
        raise OffPolicyError("no clip_grid in these results")

    def shares(c: str, key: str) -> list[float]:
        return [float(r["clip_grid"][c][key]) for r in results]

    ok = [c for c in caps if min(shares(c, "coverage")) >= min_coverage]
    if not ok:
        return float(max(caps, key=lambda c: (min(shares(c, "coverage")), float(c))))
    return float(max(ok, key=lambda c: (sum(v >= target for v in shares(c, "within_tol")),
                                        min(shares(c, "within_tol")), float(c))))


def choose_reward_weights(results: Sequence[Mapping[str, Any]], min_coverage: float = 0.90,
                          target: float = 0.90) -> str:
    """The reward model's weighting (:data:`REWARD_WEIGHTS`) from development-seed
    ``--simulate`` results run with each weighting on the same scenarios (the
    ``reward_weights`` key; missing means ``none``), judged by the clipped DR: the weighting
    with the most scenarios whose estimates land within the tolerance in at least ``target``
    of the repeats while their intervals cover the truth in at least ``min_coverage`` of
    them, then the lower mean RMSE over the scenarios, then ``none`` (the simplest)."""
    if any(r.get("seed_set") != "dev" for r in results):
        raise OffPolicyError("the weighting is chosen on development-seed results only")
    by: dict[str, list[Mapping[str, Any]]] = {}
    for r in results:
        by.setdefault(str(r.get("reward_weights", "none")), []).append(
            r["results"]["quality"]["dr_clip"])
    if not by:
        raise OffPolicyError("no results to choose the reward weighting from")

    def met(k: str) -> int:
        return sum(float(d["within_tol"]) >= target and float(d["coverage"]) >= min_coverage
                   for d in by[k])

    return min(by, key=lambda k: (-met(k), float(np.mean([d["rmse"] for d in by[k]])),
                                  k != "none"))


_LABELS = {"ips": "IPS", "snips": "SNIPS", "dr": "DR", "sndr": "SNDR", "dr_clip": "clipped DR",
           "naive": "naive (no weights)"}
_TRAIN_COLS = (("naive", "naive"), ("ips", "IPS-resampled"), ("dr", "DR-filled"),
               ("dr_target", "DR targets"), ("chosen", "correction chosen on held-out logs"))


def _name(r: Mapping[str, Any]) -> str:
    return str(r.get("format") or Path(str(r["data"])).name)


def summary_markdown(results: Sequence[Mapping[str, Any]],
                     estimators: Sequence[str] = (*ESTIMATORS, "naive"),
                     training: bool = True, clip_grid: bool = True) -> str:
    """Markdown tables of ``--simulate`` result files: off-policy estimation of mean quality
    per scenario and estimator, the clipped DR by cap where the files hold it, then
    bias-corrected training where the files hold it."""
    head = ("| table | logging -> candidate | explore | agree | ESS | truth | estimator | "
            "bias | RMSE | within 0.02 | coverage | width |")
    seeds = sorted({str(r.get("seed_set", "dev")) for r in results})
    # results that differ in the reward model's weighting say which row is which
    weighted = len({r.get("reward_weights", "none") for r in results}) > 1
    lines = ["Off-policy estimates of the candidate's mean quality (repeats per row in the "
             f"JSON; interval level 95 %; seed set {', '.join(seeds)}):", "", head,
             "|" + "---|" * 12]
    for r in results:
        q = r["results"]["quality"]
        ex = r["explore"]
        for i, e in enumerate(estimators):
            d = q[e]
            name = (f"{_name(r)}, reward weights {r.get('reward_weights', 'none')}"
                    if weighted else _name(r))
            lead = (f"| {name} | {r['logging']} -> {r['candidate']} | {ex['method']} "
                    f"{ex['rate']:g} | {r['candidate_agrees_with_logging']:.0%} | "
                    f"{r['ess_mean']:.0f} / {r['n_logged']} | {q['truth']:.4f} |"
                    if i == 0 else "| | | | | | |")
            cov = "-" if "coverage" not in d else f"{d['coverage']:.2f}"
            wid = "-" if "width" not in d else f"{d['width']:.4f}"
            label = _LABELS.get(e, e)
            if e == "dr_clip" and "clip" in r:
                label += f" (cap {r['clip']:g})"
            lines.append(f"{lead} {label} | {d['bias']:+.4f} | {d['rmse']:.4f} | "
                         f"{d['within_tol']:.0%} | {cov} | {wid} |")
    grids = [r for r in results if r.get("clip_grid")] if clip_grid else []
    if grids:
        caps = list(grids[0]["clip_grid"])
        lines += ["", "Clipped DR by weight cap: share of repeats within 0.02 / interval "
                  "coverage (the cap in use is chosen on the development seed):", "",
                  "| table | explore | " + " | ".join(f"cap {c}" for c in caps) + " |",
                  "|---|---|" + "---|" * len(caps)]
        for r in grids:
            g = r["clip_grid"]
            w = f" (reward weights {r.get('reward_weights', 'none')})" if weighted else ""
            lines.append(f"| {_name(r)} {r['candidate']}{w} | {r['explore']['method']} "
                         f"{r['explore']['rate']:g} | " + " | ".join(
                             f"{g[c]['within_tol']:.0%} / {g[c]['coverage']:.2f}"
                             if c in g else "-" for c in caps) + " |")
        if weighted and all(r.get("seed_set") == "dev" for r in results):
            lines += ["", "The rule of `choose_reward_weights` (the most scenarios whose "
                      "clipped DR is within 0.02 in >= 90 % of repeats with coverage >= 0.90; "
                      "then the lower mean RMSE, unweighted on a tie) picks "
                      f"{choose_reward_weights(results)}."]
        elif all(r.get("seed_set") == "dev" for r in grids):
            lines += ["", "The rule of `choose_clip` (every scenario's coverage >= 0.90; "
                      "then the most scenarios within 0.02 in >= 90 % of repeats, the best "
                      f"worst case, the larger cap) picks cap {choose_clip(grids):g}."]
    trained = [r for r in results if r.get("training")] if training else []
    if trained:
        lines += ["", "Router trained on the simulated biased logs, quality on the table's "
                  "test split (mean over seeds; the ceiling: trained on the traffic's full "
                  "table):", "",
                  "| table | logging | router | test prompts | "
                  + " | ".join(h for _, h in _TRAIN_COLS) + " | ceiling |",
                  "|---|---|---|---|" + "---|" * (len(_TRAIN_COLS) + 1)]
        for r in trained:
            tr = r["training"]
            t = tr["methods"]
            k = len(tr["seeds"])

            def cell(m: str, t: Mapping[str, Any] = t, k: int = k) -> str:
                if m not in t:
                    return "-"
                c = f"{t[m]['test_quality']:.4f}"
                if "minus_naive" in t[m]:
                    c += f" ({t[m]['minus_naive']:+.4f}, better on {t[m]['wins']}/{k} seeds)"
                return c
            picks = [c["chosen"] for c in tr.get("choices", [])]
            chosen = cell("chosen") + (f"; picked {', '.join(picks)}" if picks else "")
            ceil = tr.get("full_information_test_quality")
            lines.append(f"| {_name(r)} | {r['logging']} | {tr['router']} | "
                         f"{tr.get('n_test', '-')} | "
                         + " | ".join(chosen if m == "chosen" else cell(m)
                                      for m, _ in _TRAIN_COLS)
                         + f" | {'-' if ceil is None else f'{ceil:.4f}'} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- provenance


def data_sha256(path: str | Path) -> str | None:
    """sha256 over a data file, or over a folder's files (sorted relative paths and bytes)."""
    p = Path(path)
    if not p.exists():
        return None
    h = hashlib.sha256()
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    for f in files:
        if p.is_dir():
            h.update(str(f.relative_to(p)).encode() + b"\0")
        h.update(f.read_bytes())
    return h.hexdigest()


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None
