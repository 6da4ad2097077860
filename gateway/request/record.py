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
    if ctx.rates:
        _reconcile(gw, ctx)
    m = gw.metrics
    for component in ctx.degraded:  # one count per degraded response and component
        m.child(m.degraded, component).inc()
    p = ctx.plan
    policy = p.policy if p is not None else ""
    m.child(m.latency, ctx.endpoint).observe(lat_s)
    if ctx.queue_ms is not None:  # the wait for an upstream concurrency slot
        m.child(m.stage, "queue").observe(ctx.queue_ms / 1000)
    m.child(m.requests, ctx.endpoint, policy or "-", ctx.expert or "-",
            _STATUS.get(ctx.status) or str(ctx.status)).inc()
    if p is not None and p.arm is not None:
        gw.observe_arm(ctx.request_id, p, ctx.status)
    if p is not None and p.rt is not None and p.rt.config.online and p.text is not None:
        gw.remember_online(ctx.request_id, p, ctx.expert, ctx.status)
    rec = log_record(gw, ctx, lat_s * 1000)
    gw.feed.record(rec)
    if gw.routing_log is not None:
        gw.routing_log.record(rec)
    if p is not None:
        for start in p.after_response:  # the shadow's record names the request it shadows
            start({"request_id": ctx.request_id, "tenant": ctx.tenant,
                   "text_hash": p.text_hash})


#: status -> its label (str() of an int on every request otherwise)
_STATUS = {s: str(s) for s in range(100, 600)}


def log_record(gw: Gateway, ctx: RequestContext, latency_ms: float) -> RequestRecord:
    usage = ctx.usage
    # the prices of the configuration that served it (a reload may have renamed it since)
    cfg = ctx.dispatcher.config if ctx.dispatcher is not None else gw.config
    expert = cfg.expert(ctx.expert) if ctx.expert else None
    cost = ctx.extra_cost_usd  # an ensemble's members were paid for too
    if expert is not None:
        cost += expert.price.cost(usage)
        if usage != (0, 0):
            m = gw.metrics
            m.child(m.tokens, expert.name, "prompt").inc(usage[0])
            m.child(m.tokens, expert.name, "completion").inc(usage[1])
    p = ctx.plan
    degraded = ctx.degraded
    status = ctx.status
    upstream_ms = ctx.upstream_ms
    rec: RequestRecord = {
        "request_id": ctx.request_id, "client_request_id": ctx.client_request_id,
        "ts": time.time(), "tenant": ctx.tenant, "endpoint": ctx.endpoint,
        "policy": None, "policy_version": None, "text_hash": None, "text": None,
        "mode": "explicit", "expert": ctx.expert or None, "replica": ctx.replica or None,
        "targets": None, "scores": None, "reason": ctx.reason, "guard": None, "cache": "none",
        "status": "ok" if status < 400 else "error", "http_status": status,
        "error_type": ctx.err_type,
        "fallback": "expert-fallback" in degraded or "rejected-to-fallback" in degraded,
        "degraded": degraded or None, "decision_ms": None,
        "latency_ms": round(latency_ms, 3),
        "upstream_ms": round(upstream_ms, 3) if upstream_ms is not None else None,
        "queue_ms": round(ctx.queue_ms, 3) if ctx.queue_ms is not None else None,
        "prompt_tokens": usage[0], "completion_tokens": usage[1], "cost_usd": cost,
        "stream": ctx.stream, "arm": None, "propensity": None, "action_probs": None,
        "explored": None, "greedy_expert": None, "candidates": None, "router_version": None,
    }
    if p is None:
        return rec
    rec["policy"] = p.policy or None
    rec["text_hash"] = p.text_hash
    rec["cache"] = p.cache
    rec["arm"] = p.arm
    if p.rt is not None and p.rt.config.log_prompts:
        rec["text"] = p.text
    d = p.decision
    if d is not None:
        targets = d.targets
        rec["policy_version"] = d.policy_version
        rec["mode"] = d.mode
        rec["targets"] = [t.expert for t in targets]
        rec["scores"] = [t.to_dict()["score"] for t in targets]
        rec["guard"] = d.guard.to_dict() if d.guard else None
        rec["decision_ms"] = p.decision_ms
    ex = p.explore
    if ex:
        for k in ("propensity", "action_probs", "explored", "greedy_expert", "candidates",
                  "router_version"):
            rec[k] = ex.get(k)
    return rec


def _reconcile(gw: Gateway, ctx: RequestContext) -> None:
    """Correct the up-front token charge with the upstream's usage, off the response path."""
    rate = next((r for r in ctx.rates if r.limits.tokens_per_minute), None)
    if rate is None:
        return
    if ctx.usage != (0, 0):
        actual = ctx.usage[0] + ctx.usage[1] + ctx.extra_tokens
    elif ctx.refused or (ctx.status >= 400 and "stream-cut" not in ctx.degraded and not (
            ctx.stream and ctx.started)):
        # nothing was generated for the answer (a refusal the gateway wrote, or an error):
        # the estimate goes back, less what an ensemble's members did generate
        actual = ctx.extra_tokens
    else:
        return  # a stream without usage, cut, or left by its client: the estimate stands
    gw.ratelimiter.reconcile_soon(ctx.key_id, rate, actual)
