"""Exploration with propensities: the one definition the gateway and the evaluations share.

A deployed router is greedy: it picks one expert per request. Logs of a greedy router hold an
outcome only for the expert it chose, so no other router can be judged or trained on them
without bias. Exploration spends a small budget ``rate`` on other experts, and every logged
decision records the probability with which its expert was chosen (the *propensity*) and the
probabilities of the alternatives, so off-policy estimators (:mod:`evals.offpolicy`) can
reweight the logs.

Methods (``rate`` r, the allowed candidate set A of size K, the greedy choice g):

``epsilon``
    ``p(g) = 1 - r + r / K``; every other allowed expert ``r / K``.
``softmax``
    ``p(a) = (1 - r) · 1[a = g] + r · softmax(score(a) / temperature)`` over A, where
    ``score`` is the router's own score for each expert (predicted quality, similarity);
    experts without a finite score count as the lowest finite score. The budget ``r`` is the
    same as for epsilon, but explored traffic leans toward experts the router rates nearly
    as well as its choice.

Experts outside A (excluded by the guard, the policy, the caller's key) get probability 0:
exploration never sends a request where the greedy path could not. A deterministic policy
(``rate`` 0) logs propensity 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from routers.base import RouterError
from routers.logrecord import json_field

__all__ = [
    "LOG_FIELDS",
    "Exploration",
    "exploration_matrix",
    "exploration_probs",
    "record_probs",
    "sample_actions",
]

#: the routing-log fields that carry exploration (typed in routers.logrecord.RequestRecord)
LOG_FIELDS = ("propensity", "action_probs", "explored", "greedy_expert", "candidates",
              "router_version")

Method = Literal["epsilon", "softmax"]


@dataclass(frozen=True, slots=True)
class Exploration:
    """An exploration budget: ``rate`` in [0, 1), ``method`` and the softmax ``temperature``."""

    rate: float = 0.0
    method: Method = "epsilon"
    temperature: float = 0.1

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rate) and 0.0 <= self.rate < 1.0):
            raise RouterError(f"explore.rate must lie in [0, 1), got {self.rate!r}")
        if self.method not in ("epsilon", "softmax"):
            raise RouterError(f"explore.method must be epsilon or softmax, got {self.method!r}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise RouterError(f"explore.temperature must be > 0, got {self.temperature!r}")

    @property
    def active(self) -> bool:
        return self.rate > 0


def exploration_matrix(greedy: np.ndarray, scores: np.ndarray, allowed: np.ndarray,
                       explore: Exploration) -> np.ndarray:
    """Action probabilities (n, m) for greedy choices (n,), router scores (n, m) and the
    allowed mask (n, m); rows sum to 1 and are 0 outside the allowed set.

    A greedy choice outside its allowed set is a caller bug (the router must choose among
    the allowed experts) and raises.
    """
    greedy = np.asarray(greedy, dtype=np.int64)
    allowed = np.asarray(allowed, dtype=bool)
    n, m = allowed.shape
    if greedy.shape != (n,):
        raise RouterError(f"greedy must have shape ({n},), got {greedy.shape}")
    rows = np.arange(n)
    if not allowed[rows, greedy].all():
        raise RouterError("a greedy choice lies outside its allowed set")
    P = np.zeros((n, m), dtype=np.float64)
    P[rows, greedy] = 1.0 - explore.rate
    if explore.rate == 0:
        P[rows, greedy] = 1.0
        return P
    if explore.method == "epsilon":
        spread = allowed / allowed.sum(axis=1, keepdims=True)
    else:
        S = np.asarray(scores, dtype=np.float64)
        if S.shape != (n, m):
            raise RouterError(f"scores must have shape ({n}, {m}), got {S.shape}")
        fin = np.isfinite(S) & allowed
        low = np.where(fin, S, np.inf).min(axis=1, keepdims=True)
        low = np.where(np.isfinite(low), low, 0.0)
        S = np.where(fin, S, low)
        z = np.where(allowed, S / explore.temperature, -np.inf)
        z = z - z.max(axis=1, keepdims=True)
        e = np.where(allowed, np.exp(z), 0.0)
        spread = e / e.sum(axis=1, keepdims=True)
    return P + explore.rate * spread


def exploration_probs(greedy: str, scores: Mapping[str, float], allowed: Sequence[str],
                      explore: Exploration) -> dict[str, float]:
    """One request: expert -> probability over ``allowed`` (``greedy`` must be in it).

    The same probabilities as :func:`exploration_matrix` (tests hold them equal), in plain
    Python: the gateway calls this on every served request, and for a handful of experts
    numpy's per-call overhead would cost more than the arithmetic."""
    names = list(allowed)
    if greedy not in names:
        raise RouterError(f"greedy expert {greedy!r} is not among the allowed experts")
    r = explore.rate
    if r == 0:
        return {a: 1.0 if a == greedy else 0.0 for a in names}
    if explore.method == "epsilon":
        spread = [1.0 / len(names)] * len(names)
    else:
        raw = [float(scores.get(a, math.nan)) for a in names]
        fin = [v for v in raw if math.isfinite(v)]
        low = min(fin) if fin else 0.0
        z = [(v if math.isfinite(v) else low) / explore.temperature for v in raw]
        top = max(z)
        e = [math.exp(v - top) for v in z]
        tot = sum(e)
        spread = [v / tot for v in e]
    return {a: (1.0 - r if a == greedy else 0.0) + r * sp
            for a, sp in zip(names, spread, strict=True)}


def sample_actions(P: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One expert index per row of the probability matrix ``P`` (n, m)."""
    P = np.asarray(P, dtype=np.float64)
    c = np.cumsum(P, axis=1)
    u = rng.random(len(P))[:, None] * c[:, -1:]
    return np.minimum((u >= c).sum(axis=1), P.shape[1] - 1).astype(np.int64)


def record_probs(rec: Mapping[str, Any]) -> tuple[float | None, dict[str, float] | None]:
    """(propensity, action_probs) of a log record; None where the record predates them
    (missing, null or NaN as data frames read it). An action_probs value that is no number
    (null: a NaN written to JSON and read back) is NaN, for the reader to refuse."""
    p = rec.get("propensity")
    probs = json_field(rec.get("action_probs"))
    prop = None if p is None or not math.isfinite(float(p)) else float(p)
    if not isinstance(probs, Mapping) or not probs:
        return prop, None
    return prop, {str(k): _number(v) for k, v in probs.items()}


def _number(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan
