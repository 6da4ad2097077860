"""Canary monitoring: revert a candidate router by itself when it is worse than the incumbent.

A policy's canary serves a stated share of traffic. For each arm (incumbent, canary) the
monitor counts requests, errors (upstream failures: HTTP status >= 500) and feedback scores
(``/v1/feedback``, in [0, 1]). It reverts the canary when

* its error rate exceeds the incumbent's by more than ``margin``, or
* its mean feedback falls below the incumbent's by more than ``margin``,

under a *sequential* test that may be checked after every observation without inflating the
false-revert rate: anytime-valid confidence sequences for each arm's mean from Robbins'
normal-mixture supermartingale (see Howard et al. 2021, "Time-uniform, nonparametric,
nonasymptotic confidence sequences"). Observations lie in [0, 1], so they are
1/2-sub-Gaussian; with ``S_n`` the centred sum of ``n`` of them, ``V = n / 4`` and a
N(0, 1/ρ) mixture, ``sqrt(ρ / (V + ρ)) · exp(S_n² / (2 (V + ρ)))`` is a nonnegative
supermartingale, so by Ville's inequality

    P(∃ n: |S_n| ≥ sqrt((V + ρ) · log((V + ρ) / (ρ · a²)))) ≤ a.

Each arm's bound is taken at ``a = alpha / 2`` (upper for one arm, lower for the other), so
under "the canary is at most ``margin`` worse" the probability of ever reverting is at most
``alpha`` per signal, however long the canary runs and however often it is checked.
``ρ`` is set so the bound is tightest near ``min_samples`` observations.

Several processes (``serve --workers N``, replicas on one Redis) test one canary together:
:class:`gateway.canary_sync.CanarySync` adds each process's counts up in Redis and shares
the revert. A monitor then decides on the shared totals it last read plus what it observed
since (``pending``), so the test runs after every observation with no Redis round trip.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["CanaryMonitor", "mixture_radius"]

Arm = Literal["incumbent", "canary"]


def mixture_radius(n: int, a: float, n_opt: int = 100) -> float:
    """Half-width of the one-sided anytime-valid bound on a [0, 1] mean after ``n``
    observations at level ``a`` (normal mixture tuned for ``n_opt``); inf for n = 0."""
    if n <= 0:
        return math.inf
    v = n / 4.0
    # the mixture is tightest near V = rho (log factor aside): tune it for n_opt samples
    rho = max(n_opt, 1) / 4.0
    return math.sqrt((v + rho) * math.log((v + rho) / (rho * a * a))) / n


@dataclass
class _Stats:
    n: int = 0
    errors: int = 0
    fb_n: int = 0
    fb_sum: float = 0.0

    @property
    def error_rate(self) -> float:
        return self.errors / self.n if self.n else math.nan

    @property
    def feedback(self) -> float:
        return self.fb_sum / self.fb_n if self.fb_n else math.nan

    def add(self, other: _Stats) -> None:
        self.n += other.n
        self.errors += other.errors
        self.fb_n += other.fb_n
        self.fb_sum += other.fb_sum


def _fresh() -> dict[str, _Stats]:
    return {"incumbent": _Stats(), "canary": _Stats()}


@dataclass
class CanaryMonitor:
    """Per-policy canary state; thread-safe (feedback may arrive from another worker thread).

    ``arms`` are the counts the test reads: this process's alone, or, when ``shared``, the
    totals last read from Redis plus ``pending`` (observed here since, not yet added there).
    """

    margin: float = 0.05
    alpha: float = 0.05
    min_samples: int = 100
    arms: dict[str, _Stats] = field(default_factory=_fresh)
    reverted: str | None = None
    #: the shared state's name for this canary (policy and candidate identity); set by
    #: build_policy_set, so a changed candidate starts fresh counts
    key: str = ""
    #: counts and revert shared through Redis (else this process's own)
    shared: bool = False
    #: shared, but Redis is unavailable: the test runs on what this process saw
    degraded: bool = False
    #: observations not yet added to the shared counts (shared only)
    pending: dict[str, _Stats] = field(default_factory=_fresh)
    #: the shared totals last read (shared only): what puts them back in a Redis that lost
    #: them (gateway/canary_sync.py)
    read: dict[str, _Stats] = field(default_factory=_fresh)
    #: the revert as recorded for every process: policy, signal, reason, ts, by
    record: dict[str, Any] | None = None
    #: where the revert was decided: "this process", "another process", "recorded earlier"
    origin: str | None = None
    #: the routing log has this revert's event (written once, by the process that decided)
    logged: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def observe_request(self, arm: Arm, error: bool) -> str | None:
        with self._lock:
            for s in (self.arms[arm], self.pending[arm]) if self.shared else (self.arms[arm],):
                s.n += 1
                s.errors += int(error)
            return self._check()

    def observe_feedback(self, arm: Arm, score: float, previous: float | None = None
                         ) -> str | None:
        """One request's rating; ``previous``: the same request's earlier rating, which this
        one replaces (a request counts once, however often it is rated)."""
        with self._lock:
            for s in (self.arms[arm], self.pending[arm]) if self.shared else (self.arms[arm],):
                if previous is None:
                    s.fb_n += 1
                    s.fb_sum += float(score)
                else:
                    s.fb_sum += float(score) - float(previous)
            return self._check()

    def take_pending(self) -> dict[str, _Stats]:
        """The observations not yet shared; from now on they count as being sent."""
        with self._lock:
            out, self.pending = self.pending, _fresh()
            return out

    def restore_pending(self, taken: dict[str, _Stats]) -> None:
        """Sending ``taken`` failed: they wait for the next attempt."""
        with self._lock:
            for arm, s in taken.items():
                self.pending[arm].add(s)

    def absorb(self, totals: dict[str, _Stats]) -> str | None:
        """The shared totals just read (they include what was taken to send them): the test
        reads them plus what was observed since; returns the signal when that reverts."""
        with self._lock:
            self.arms, self.read = _fresh(), _fresh()
            for arm in self.arms:
                self.read[arm].add(totals.get(arm, _Stats()))
                self.arms[arm].add(totals.get(arm, _Stats()))
                self.arms[arm].add(self.pending[arm])
            return self._check()

    def last_read(self) -> dict[str, _Stats]:
        """A copy of the shared totals last read."""
        with self._lock:
            out = _fresh()
            for arm, s in self.read.items():
                out[arm].add(s)
            return out

    def adopt(self, record: dict[str, Any], origin: str) -> bool:
        """A revert decided elsewhere (another process, or an earlier run); False when this
        monitor had reverted already (its own verdict is replaced by the recorded one, so
        every process says the same)."""
        with self._lock:
            fresh = self.reverted is None
            self.reverted = str(record.get("reason", ""))
            if fresh or origin == "another process":
                self.origin = origin
            self.record = record
            return fresh

    def _worse(self, inc_n: int, inc_mean: float, can_n: int, can_mean: float,
               higher_is_worse: bool) -> bool:
        if min(inc_n, can_n) < self.min_samples:
            return False
        a = self.alpha / 2
        r_inc = mixture_radius(inc_n, a, self.min_samples)
        r_can = mixture_radius(can_n, a, self.min_samples)
        if higher_is_worse:  # error rate: canary's lower bound above incumbent's upper + margin
            return (can_mean - r_can) - (inc_mean + r_inc) > self.margin
        return (inc_mean - r_inc) - (can_mean + r_can) > self.margin

    def _check(self) -> str | None:
        if self.reverted is not None:
            return None
        i, c = self.arms["incumbent"], self.arms["canary"]
        if self._worse(i.n, i.error_rate, c.n, c.error_rate, True):
            signal = "error_rate"
            self.reverted = (f"error rate {c.error_rate:.3f} vs incumbent {i.error_rate:.3f} "
                             f"(n {c.n} / {i.n}): worse by more than {self.margin:g} under the "
                             f"anytime-valid test at alpha {self.alpha:g}")
        elif self._worse(i.fb_n, i.feedback, c.fb_n, c.feedback, False):
            signal = "feedback"
            self.reverted = (f"feedback {c.feedback:.3f} vs incumbent {i.feedback:.3f} "
                             f"(n {c.fb_n} / {i.fb_n}): worse by more than {self.margin:g} "
                             f"under the anytime-valid test at alpha {self.alpha:g}")
        else:
            return None
        if self.shared:
            self.reverted += " (counts of all processes" + (
                ", Redis unavailable: this process's since" if self.degraded else "") + ")"
        self.origin = "this process"
        self.record = {"signal": signal, "reason": self.reverted, "ts": time.time()}
        return signal

    @property
    def counts(self) -> str:
        """Whose counts the test reads: ``shared`` (Redis), ``local`` (Redis unavailable:
        the shared totals last read plus this process's since) or ``process`` (no Redis)."""
        return ("local" if self.degraded else "shared") if self.shared else "process"

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            rec = self.record or {}
            return {"reverted": self.reverted, "margin": self.margin, "alpha": self.alpha,
                    "counts": self.counts,
                    "reverted_at": rec.get("ts") if self.reverted is not None else None,
                    "revert_origin": self.origin if self.reverted is not None else None,
                    "arms": {k: {"requests": s.n, "errors": s.errors,
                                 "error_rate": None if s.n == 0 else round(s.error_rate, 4),
                                 "feedback_n": s.fb_n,
                                 "feedback": None if s.fb_n == 0 else round(s.feedback, 4)}
                             for k, s in self.arms.items()}}
