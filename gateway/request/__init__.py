"""The request path: every POST endpoint of the API as stages that read top to bottom.

:func:`handle` is the whole path; each stage is its own module, in request order:

1. :mod:`~gateway.request.admit`    who calls, the request budget (headers, before the body)
2. :mod:`~gateway.request.read`     the body: one size limit, one schema (:mod:`.schema`);
                                    then ``admit_body``: the model the key may use,
                                    media URLs (:mod:`.media`), tokens
3. :mod:`~gateway.request.plan`     decision, chain, reject action, body rewrite (also the
                                    dry run ``/v1/route``)
4. :mod:`~gateway.request.dispatch` the experts of the plan, in order (or an ensemble)
5. :mod:`~gateway.request.respond`  headers, the answer (passed through), the error map
6. :mod:`~gateway.request.record`   cost, metrics, the routing-log record

It is raw ASGI: per-request pydantic models and Starlette request objects cost more than the
whole pass-through budget (docs/performance.md). The FastAPI app serves the other endpoints
and documents these (their bodies are the types of :mod:`.schema`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from gateway.dialect import adapt
from gateway.errors import (
    GatewayError,
    GuardRejected,
    ModelNotPermitted,
    NotFound,
    RequestError,
    ServiceUnavailable,
    UnsupportedByExpert,
    UpstreamError,
)
from gateway.request.admit import GENERATE, admit, admit_body
from gateway.request.context import RequestContext
from gateway.request.dispatch import dispatch
from gateway.request.plan import Plan, plan
from gateway.request.read import ClientDisconnected, read
from gateway.request.record import record
from gateway.request.respond import error_of, forward, refuse, send_error, send_json

if TYPE_CHECKING:
    from gateway.app import Gateway

__all__ = ["ENDPOINTS", "azure_route", "explain", "handle"]

log = logging.getLogger("expertgate.request")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

#: POST path -> endpoint
ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/completions": "completions",
             "/v1/embeddings": "embeddings", "/chat/completions": "chat",
             "/completions": "completions", "/embeddings": "embeddings",
             "/v1/route": "route", "/v1/feedback": "feedback"}

#: Azure OpenAI's paths of the generation endpoints: ``{prefix}/deployments/{deployment}`` +
#: one of these, the deployment being the model (:func:`azure_route`); the longest first,
#: so that ``.../chat/completions`` is chat, not the completions of a deployment ``.../chat``
_AZURE_ENDPOINTS = (("/chat/completions", "chat"), ("/completions", "completions"),
                    ("/embeddings", "embeddings"))
#: where the SDK puts ``/deployments/``: ``azure_endpoint`` + ``/openai``, or the client's
#: ``base_url`` (the gateway's root, or the ``/v1`` an OpenAI client is given)
_AZURE_PREFIXES = ("/openai/deployments/", "/deployments/", "/v1/deployments/")


def azure_route(path: str) -> tuple[str, str] | None:
    """The endpoint and the model of an Azure OpenAI deployment path
    (``/openai/deployments/{deployment}/chat/completions``), or None. A deployment may hold
    a slash (``org/model``): the SDK writes the model into the path as it is."""
    for prefix in _AZURE_PREFIXES:
        if path.startswith(prefix):
            rest = path[len(prefix):].rstrip("/")
            for suffix, endpoint in _AZURE_ENDPOINTS:
                if rest.endswith(suffix):
                    deployment = rest[:-len(suffix)]
                    if deployment and "//" not in f"/{deployment}/":  # no empty segment
                        return endpoint, deployment
            return None
    return None


async def handle(gw: Gateway, scope: Scope, receive: Receive, send: Send, endpoint: str,
                 model: str | None = None) -> None:
    """One request of ``endpoint``; ``model``: the model its path names (an Azure deployment
    path, :func:`azure_route`), in place of the body's."""
    s = gw.settings
    generate = endpoint in GENERATE
    ctx = RequestContext(gw.request_ids, endpoint, s.request_deadline_s, logged=generate)
    if generate:
        gw.metrics.inflight_now += 1

    async def finishing(msg: MutableMapping[str, Any]) -> None:
        if not msg.get("more_body", False) and msg["type"] == "http.response.body":
            ctx.finished = True  # the watch below must not take the end for a disconnect
        await send(msg)

    async def tracked(msg: MutableMapping[str, Any]) -> None:
        ctx.started = True
        if msg["type"] == "http.response.body" and not msg.get("more_body", False):
            ctx.finished = True
        await send(msg)

    watch: asyncio.Task[None] | None = None
    try:
        await admit(gw, scope.get("headers", ()), ctx)
        await read(receive, ctx, s.max_body_bytes, s.body_timeout_s, gw.body_reads,
                   s.max_messages, model)
        if generate:
            # from here on the request waits for experts (seconds, minutes of a stream):
            # a client that goes away cancels it, and the upstream call with it
            watch = _watch_disconnect(receive, ctx)
        await admit_body(gw, ctx)
        if endpoint == "feedback":
            await send_json(tracked, ctx, await _feedback(gw, ctx))
            return
        # read with the policy set that plan() reads before its first await: a reload that
        # lands while the request is planned (embedding) must not leave its decision with a
        # pool that lacks the experts it names (a removed or renamed expert: a 500)
        ctx.dispatcher = gw.dispatcher
        p = ctx.plan = await plan(gw, endpoint, ctx.body, ctx.degraded,
                                  deadline=ctx.deadline, serve=generate,
                                  texts=ctx.message_texts, tenant=ctx.tenant)
        ctx.reason = p.reason
        if endpoint == "route":
            await send_json(tracked, ctx, _explain(gw, ctx))
            return
        if p.action == "reject":
            assert p.rejection is not None
            raise p.rejection
        if p.action == "refuse":
            assert p.rt is not None
            await refuse(tracked, ctx, p.rt.config.on_reject.message)
            return
        await forward(gw, tracked, ctx, await dispatch(gw, ctx))
    except ClientDisconnected:  # gone while its body was being read
        ctx.status, ctx.err_type = 499, "client_disconnected"
    except asyncio.CancelledError:
        ctx.status, ctx.err_type = 499, "client_disconnected"
        if not ctx.expert and ctx.trying is not None:
            # gone while an expert was working on it: the log names that expert
            ctx.expert, ctx.replica = ctx.trying
        task = asyncio.current_task()
        if ctx.client_gone and task is not None and task.uncancel() == 0:
            return  # the watch's own cancellation: handled, nothing to answer
        if gw.draining and not ctx.started:
            # the server's graceful-shutdown time ran out: an OpenAI-shaped 503 the client can
            # retry elsewhere, rather than the server's plain-text 500
            ctx.status, ctx.err_type = 503, "shutting_down"
            with contextlib.suppress(Exception):
                await send_error(send, ctx, ServiceUnavailable(
                    "the gateway is shutting down; retry the request", code="shutting_down",
                    headers={"connection": "close"}))
        raise
    except Exception as e:
        err = error_of(e)
        ctx.status, ctx.err_type = err.status, err.log_code or err.code
        if ctx.plan is None and endpoint != "feedback" and \
                not isinstance(e, ModelNotPermitted):
            # a policy's request that failed while it was planned (no text to route on):
            # the headers, the log and the metrics still name the policy it asked for (not
            # one the key may not use: its headers would tell that it exists)
            m = ctx.body.get("model")
            if isinstance(m, str) and (rt := gw.policy_set.policies.get(m)) is not None:
                ctx.plan = Plan(m, rt)
        if not isinstance(e, GatewayError):
            # a bug, never an expected path: log the traceback, answer an OpenAI-shaped 500
            # without details (or let the server close a response that already started)
            log.exception("unexpected error in %s request %s", endpoint, ctx.request_id)
            if ctx.started:
                raise
        elif isinstance(e, UpstreamError) and ctx.chain and ctx.policy:
            # a routed request whose every expert failed: say so, never silently
            ctx.degraded.append("expert-fallback" if len(ctx.chain) > 1 else "expert-failed")
            ctx.reason = (f"{ctx.reason}; " if ctx.reason else "") + (
                f"every expert failed ({', '.join(ctx.chain)})")
        if ctx.reason and isinstance(e, RequestError) and not isinstance(e, GuardRejected):
            # refused after the routing decision (too deep to forward): the reason says both
            ctx.reason = f"{ctx.reason}; refused: {err.message}"
        ctx.reason = ctx.reason or err.message
        try:
            await send_error(finishing, ctx, err)
        except ClientDisconnected:  # gone before its error could be written
            ctx.status, ctx.err_type = 499, "client_disconnected"
    finally:
        if watch is not None:
            watch.cancel()
        if generate:
            gw.metrics.inflight_now -= 1
            record(gw, ctx)
        elif ctx.degraded:
            m = gw.metrics
            for component in ctx.degraded:
                m.child(m.degraded, component).inc()


def _watch_disconnect(receive: Receive, ctx: RequestContext) -> asyncio.Task[None] | None:
    """Cancel the request's task when the client disconnects before the answer is complete
    (``ctx.client_gone``; the request is logged 499 and its upstream call is abandoned, which
    closes that connection). ``expertgate serve``'s server calls back when the connection is
    lost (:class:`gateway.httpserver._Cycle`: no cost per request); under another ASGI
    server a task waits for the ``http.disconnect`` from ``receive`` (which the server also
    gives once the answer is complete: ``ctx.finished``) and is returned, to be cancelled."""
    task = asyncio.current_task()
    assert task is not None

    def gone() -> None:
        if not ctx.finished:
            ctx.client_gone = True
            task.cancel()

    cycle = getattr(receive, "__self__", None)
    if cycle is not None and hasattr(type(cycle), "on_lost"):
        cycle.on_lost = gone
        return None

    async def watch() -> None:
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                gone()
                return

    return asyncio.get_running_loop().create_task(watch())


def _explain(gw: Gateway, ctx: RequestContext) -> dict[str, Any]:
    assert ctx.plan is not None
    out = explain(ctx.plan, ctx.degraded)
    passed = passed_over(gw, ctx.plan, ctx.body)
    if passed:
        out["unsupported"] = passed
    return out


def passed_over(gw: Gateway, p: Plan, body: dict[str, Any]) -> dict[str, str]:
    """The experts of the dry run's chains whose dialect cannot carry its ``messages`` (an
    image part to a llama.cpp expert), each with the 400 it would give: a live request with
    those messages passes them over for the chain's next expert (gateway.dispatch)."""
    messages = body.get("messages")
    if not messages:
        return {}
    names = list(p.chain)
    ensemble = p.action == "ensemble" and p.rt is not None and p.decision is not None
    if ensemble and p.decision is not None and p.decision.aggregator and p.rt is not None:
        names += [p.decision.aggregator, *p.rt.config.fallback]
    out: dict[str, str] = {}
    for name in dict.fromkeys(names):
        expert = gw.config.expert(name)
        if expert is None or expert.dialect == "openai":
            continue
        try:
            # the body a live request would send (its n, tools, ... too), as that expert
            adapt({**body, "model": name}, expert.dialect, name)
        except UnsupportedByExpert as e:
            out[name] = e.message
    return out


def explain(p: Plan, degraded: list[str]) -> dict[str, Any]:
    """The dry run's answer (``POST /v1/route``, ``expertgate route``): the decision, and
    what a live request would do with it."""
    assert p.decision is not None
    out = p.decision.to_dict()
    out["reason"] = p.reason  # the live request's (and this answer's) x-expertgate-reason
    out["degraded"] = degraded
    out["action"] = p.action
    out["fallback_chain"] = p.chain
    if p.canary is not None and p.rt is not None and p.rt.candidate is not None:
        # a live request takes the canary's decision instead, for its share of the traffic
        # (x-expertgate-arm: canary): the dry run says which it would be
        out["canary"] = {"share": p.rt.candidate.share, "decision": p.canary.to_dict()}
    if p.action == "ensemble" and p.rt is not None and p.decision.aggregator:
        # what a live request does: the members answer, then the aggregator and, should it
        # fail, the policy's fallback experts (the same chain as gateway.request.dispatch)
        agg = p.decision.aggregator
        out["ensemble"] = {"members": p.chain, "aggregator": agg, "aggregation_chain": [
            agg, *(f for f in p.rt.config.fallback if f != agg)]}
    return out


async def _feedback(gw: Gateway, ctx: RequestContext) -> dict[str, Any]:
    """Store a rating; only the tenant that made the request may rate it, and an id of
    another tenant is answered exactly like an unknown one (404), so ids cannot be probed."""
    b = ctx.body
    rid, score = b["request_id"], b["score"]
    if not gw.request_ids.owned(rid, ctx.tenant):
        raise NotFound(f"no request with id '{rid[:64]}' was made with this API key's "
                       "tenant", param="request_id", code="request_not_found")
    assert gw.routing_log is not None
    try:
        await gw.routing_log.add_feedback(rid, score, b.get("comment"), tenant=ctx.tenant)
    except Exception as e:  # the store is down: say so, the client may retry
        raise ServiceUnavailable(f"feedback store unavailable ({type(e).__name__})",
                                 code="feedback_unavailable") from None
    await gw.on_feedback(rid, score)
    return {"object": "feedback", "request_id": rid, "score": score, "stored": True}
