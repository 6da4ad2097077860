"""The dashboard's numbers: recent decisions and running totals, kept in memory per process.

Every answered request's routing-log record (``gateway/request/record.py``) also goes to the
:class:`DecisionFeed`, which keeps the last ``size`` decisions (with their explanation) and
totals since start-up: traffic share, tokens and cost per expert, what the same tokens would
have cost on the strongest (most expensive) expert, guard rejections, decision-cache hits,
degraded paths by component, and over the last ``latency_window`` routed requests the
p50/p99 of the latency the gateway added (whole request minus the time in upstream calls, for
non-streamed answers) and of the routing decision alone (cache lookup + embedding + guard +
router). With several worker processes each keeps its own
feed; ``/metrics`` is the cross-process view.

The page itself is static (``gateway/static/dashboard/``: HTML, JS and CSS, no build step);
``gateway.api.dashboard`` serves it at ``/ui`` and this summary at ``/ui/api/summary``.
"""

from __future__ import annotations

import collections
import math
import os
import secrets
import time
from typing import Any

from gateway.config import ExpertConfig, GatewayConfig
from routers.logrecord import RequestRecord

__all__ = ["DecisionFeed", "strongest_expert"]

_RECENT_KEYS = ("request_id", "ts", "policy", "expert", "mode", "reason", "cache", "degraded",
                "targets", "scores", "guard", "decision_ms", "latency_ms", "upstream_ms",
                "cost_usd", "http_status", "error_type", "prompt_tokens", "completion_tokens",
                "tenant", "endpoint", "stream")


def _price(e: ExpertConfig) -> float:
    return e.price.input_per_1m + e.price.output_per_1m


def strongest_expert(cfg: GatewayConfig) -> ExpertConfig | None:
    """The expert a router is weighed against: the most expensive one (prices from the
    config), or None when no expert has a price."""
    priced = [e for e in cfg.experts if _price(e) > 0]
    return max(priced, key=_price) if priced else None


def _recent_item(seq: int, rec: RequestRecord) -> dict[str, Any]:
    item: dict[str, Any] = {k: rec.get(k) for k in _RECENT_KEYS}
    item["seq"] = seq
    text = rec.get("text")
    item["text"] = text[:300] if isinstance(text, str) else None
    return item


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))
    return round(s[k], 3)


class DecisionFeed:
    def __init__(self, config: GatewayConfig, size: int = 200, latency_window: int = 2000
                 ) -> None:
        self.config = config
        self.started = time.time()
        #: names this feed (this process, this start): a page's ``since`` counts another
        #: feed's decisions after a restart or from another worker of ``--workers N``
        self.feed_id = f"{os.getpid()}-{secrets.token_hex(6)}"
        #: (sequence number, record) of the last ``size`` requests; a record is never changed
        #: after it is written, so it is kept as it is and projected when the page asks
        self._recent: collections.deque[tuple[int, RequestRecord]] = collections.deque(
            maxlen=size)
        self._decision_ms: collections.deque[float] = collections.deque(maxlen=latency_window)
        self._added_ms: collections.deque[float] = collections.deque(maxlen=latency_window)
        self._seq = 0
        self.requests = 0
        self.routed = 0
        self.errors = 0
        self.per_expert: dict[str, dict[str, float]] = {}
        self.cost_usd = 0.0
        self.routed_cost_usd = 0.0
        self.strongest_cost_usd = 0.0
        self.cache: collections.Counter[str] = collections.Counter()
        self.degraded: collections.Counter[str] = collections.Counter()
        self.rejections: collections.Counter[str] = collections.Counter()

        self._strong = strongest_expert(config)

    def reconfigure(self, config: GatewayConfig) -> None:
        """After a reload: prices and the strongest expert come from the new config."""
        self.config = config
        self._strong = strongest_expert(config)

    def record(self, rec: RequestRecord) -> None:
        """Count one answered request (its routing-log record)."""
        self._seq += 1
        self.requests += 1
        routed = bool(rec.get("policy"))
        status = int(rec.get("http_status") or 0)
        if status >= 400:
            self.errors += 1
        expert = rec.get("expert")
        cost = float(rec.get("cost_usd") or 0.0)
        self.cost_usd += cost
        if expert:
            row = self.per_expert.get(expert)
            if row is None:  # not setdefault: its default dict would be built every time
                row = self.per_expert[expert] = {"requests": 0, "cost_usd": 0.0,
                                                 "prompt_tokens": 0, "completion_tokens": 0}
            row["requests"] += 1
            row["cost_usd"] += cost
            row["prompt_tokens"] += int(rec.get("prompt_tokens") or 0)
            row["completion_tokens"] += int(rec.get("completion_tokens") or 0)
        if routed:
            self.routed += 1
            self.cache[str(rec.get("cache") or "none")] += 1
            decision_ms, upstream_ms = rec.get("decision_ms"), rec.get("upstream_ms")
            if decision_ms is not None:
                self._decision_ms.append(float(decision_ms))
            if upstream_ms is not None and rec.get("latency_ms") is not None:
                self._added_ms.append(max(0.0, float(rec["latency_ms"]) - float(upstream_ms)))
            if expert and status < 400:
                self.routed_cost_usd += cost
                strong = self._strong
                if strong is not None:
                    self.strongest_cost_usd += (
                        int(rec.get("prompt_tokens") or 0) * strong.price.input_per_1m +
                        int(rec.get("completion_tokens") or 0) * strong.price.output_per_1m
                    ) / 1e6
        for c in rec.get("degraded") or ():
            self.degraded[c] += 1
        if rec.get("mode") == "reject":
            g = rec.get("guard") or {}
            self.rejections[str(g.get("reject_reason") or "router")] += 1
        self._recent.append((self._seq, rec))

    def summary(self, since: int = 0, limit: int = 50, feed: str | None = None
                ) -> dict[str, Any]:
        """The dashboard's view: totals, and the recent decisions after sequence ``since``
        of feed ``feed`` (this one when None); a ``since`` of another feed (a gateway
        restarted since, another worker) means nothing here: the last ``limit`` are sent."""
        if feed is not None and feed != self.feed_id:
            since = 0
        strong = strongest_expert(self.config)
        experts = []
        for e in self.config.experts:
            row = self.per_expert.get(e.name, {"requests": 0, "cost_usd": 0.0,
                                               "prompt_tokens": 0, "completion_tokens": 0})
            experts.append({"name": e.name, "parent": e.parent, **row,
                            "share": row["requests"] / self.requests if self.requests else 0.0,
                            "price": e.price.model_dump()})
        hits, misses = self.cache.get("hit", 0), self.cache.get("miss", 0)
        ms = list(self._decision_ms)
        saved = (self.strongest_cost_usd - self.routed_cost_usd) if strong else None
        recent = [_recent_item(seq, r) for seq, r in
                  [x for x in self._recent if x[0] > since][-limit:]]
        return {
            # each worker of `serve --workers N` keeps its own feed: the pid tells them apart
            "process": {"pid": os.getpid()},
            "feed": self.feed_id,
            "uptime_s": round(time.time() - self.started, 1),
            "requests": self.requests, "routed": self.routed, "errors": self.errors,
            "experts": experts,
            # answered by no expert: refusals, errors before or after routing
            "unserved": self.requests - sum(int(r["requests"]) for r in
                                            self.per_expert.values()),
            "cost": {"total_usd": self.cost_usd, "routed_usd": self.routed_cost_usd,
                     "strongest_expert": strong.name if strong else None,
                     "if_strongest_usd": self.strongest_cost_usd if strong else None,
                     "saved_usd": saved,
                     "saved_share": (saved / self.strongest_cost_usd
                                     if saved is not None and self.strongest_cost_usd > 0
                                     else None)},
            "cache": {"hit": hits, "miss": misses, "bypass": self.cache.get("bypass", 0),
                      "hit_rate": hits / (hits + misses) if hits + misses else None},
            "rejections": dict(self.rejections),
            "degraded": dict(self.degraded),
            "decision_ms": {"p50": _quantile(ms, 0.5), "p99": _quantile(ms, 0.99),
                            "n": len(ms)},
            "added_ms": {"p50": _quantile(list(self._added_ms), 0.5),
                         "p99": _quantile(list(self._added_ms), 0.99),
                         "n": len(self._added_ms)},
            "policies": [p.name for p in self.config.policies],
            "seq": self._seq,
            "recent": recent[::-1],
        }
