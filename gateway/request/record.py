"""Stage 6, record: what the request cost and how it went, once it is over.

Runs for every request of the generation endpoints, answered or failed: the token charge
reconciled with the upstream's usage (off the response path), the metrics (latency, requests,
degraded components, tokens), the canary and online-learning observers, and the routing-log
record (:class:`routers.logrecord.RequestRecord`, with its cost from the expert's prices),
which also feeds the dashboard.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from gateway.request.context import RequestContext
from routers.logrecord import RequestRecord

if TYPE_CHECKING:
    from gateway.app import Gateway

__all__ = ["record"]


def record(gw: Gateway, ctx: RequestContext) -> None:
    lat_s = time.perf_counter() - ctx.t0
    _reconcile(gw, ctx)
    m = gw.metrics
    for component in ctx.degraded:  # one count per degraded response and component
        m.child(m.degraded, component).inc()
    m.child(m.latency, ctx.endpoint).observe(lat_s)
    m.child(m.requests, ctx.endpoint, ctx.policy or "-", ctx.expert or "-",
            str(ctx.status)).inc()
    p = ctx.plan
    if p is not None and p.arm is not None:
        gw.observe_arm(ctx.request_id, p, ctx.status)
    if p is not None and p.rt is not None and p.rt.config.online and p.text is not None:
        gw.remember_online(ctx.request_id, p, ctx.expert, ctx.status)
    rec = log_record(gw, ctx, lat_s * 1000)
    gw.feed.record(rec)
    if gw.routing_log is not None:
        gw.routing_log.record(rec)


def log_record(gw: Gateway, ctx: RequestContext, latency_ms: float) -> RequestRecord:
    usage = ctx.usage
    expert = gw.config.expert(ctx.expert) if ctx.expert else None
    cost = ctx.extra_cost_usd  # an ensemble's members were paid for too
    if expert is not None:
        cost += expert.price.cost(usage)
        if usage != (0, 0):
            m = gw.metrics
            m.child(m.tokens, expert.name, "prompt").inc(usage[0])
            m.child(m.tokens, expert.name, "completion").inc(usage[1])
    p = ctx.plan
    d = p.decision if p is not None else None
    ex = (p.explore if p is not None else None) or {}
    status = ctx.status
    return {
        "request_id": ctx.request_id, "client_request_id": ctx.client_request_id,
        "ts": time.time(), "tenant": ctx.tenant,
        "endpoint": ctx.endpoint, "policy": ctx.policy or None,
        "policy_version": d.policy_version if d is not None else None,
        "text_hash": p.text_hash if p is not None else None,
        "text": p.text if p is not None and p.rt is not None and p.rt.config.log_prompts
        else None,
        "mode": d.mode if d is not None else "explicit",
        "expert": ctx.expert or None, "replica": ctx.replica or None,
        "targets": [t.expert for t in d.targets] if d is not None else None,
        "scores": [t.to_dict()["score"] for t in d.targets] if d is not None else None,
        "reason": ctx.reason, "guard": d.guard.to_dict() if d is not None and d.guard else None,
        "cache": p.cache if p is not None else "none",
        "status": "ok" if status < 400 else "error",
        "http_status": status, "error_type": ctx.err_type,
        "fallback": "expert-fallback" in ctx.degraded or "rejected-to-fallback" in ctx.degraded,
        "degraded": ctx.degraded or None,
        "decision_ms": p.decision_ms if p is not None and d is not None else None,
        "latency_ms": round(latency_ms, 3),
        "upstream_ms": round(ctx.upstream_ms, 3) if ctx.upstream_ms is not None else None,
        "prompt_tokens": usage[0], "completion_tokens": usage[1], "cost_usd": cost,
        "stream": ctx.stream,
        "arm": p.arm if p is not None else None,
        "propensity": ex.get("propensity"), "action_probs": ex.get("action_probs"),
        "explored": ex.get("explored"), "greedy_expert": ex.get("greedy_expert"),
        "candidates": ex.get("candidates"), "router_version": ex.get("router_version"),
    }


def _reconcile(gw: Gateway, ctx: RequestContext) -> None:
    """Correct the up-front token charge with the upstream's usage, off the response path."""
    rate = next((r for r in ctx.rates if r.limits.tokens_per_minute), None)
    if rate is None:
        return
    if ctx.usage != (0, 0):
        actual = ctx.usage[0] + ctx.usage[1] + ctx.extra_tokens
    elif ctx.status >= 400 and "stream-cut" not in ctx.degraded and not (
            ctx.stream and ctx.started):
        actual = 0  # nothing was generated: give the estimate back
    else:
        return  # a stream without usage, cut, or left by its client: the estimate stands
    gw.ratelimiter.reconcile_soon(ctx.key_id, rate, actual)
