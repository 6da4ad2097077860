"""Stage 3, plan: what the gateway will do with a request, computed once by one function.

:func:`plan` takes the model a client named and the text it routes on, and returns a
:class:`Plan`: the decision (cache, embed, guard, router), the experts to try in order (the
decision's targets, then the policy's fallbacks), what a rejection does (an error, a refusal
answer or a fallback expert), the changes to the request body (the policy's ``max_tokens``
cap) and the facts the response headers report. Live requests
(``gateway.request.handle``), the dry run ``POST /v1/route`` and ``expertgate route`` call
the same function, so
the dry run explains exactly the chain a live request would use; only a live request draws a
canary arm, explores and runs a shadow candidate (``serve=True``).

The request deadline covers the decision: an embedding still running when it passes is a 504
(``deadline_exceeded``); the dispatcher's attempts get what is left of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from gateway.cache import text_hash
from gateway.config import GatewayConfig
from gateway.errors import GuardRejected, InvalidRequest, UnknownModel
from gateway.messages import MessageTexts, answers_asked, message_texts
from gateway.metrics import Metrics
from gateway.pipeline import (
    Pipeline,
    PolicyRuntime,
    PolicySet,
    ShadowOf,
    bounded_text,
    routing_text,
)
from routers.base import Decision

__all__ = ["Action", "Plan", "Planner", "plan", "request_text"]

#: forward: try ``chain`` in order; ensemble: members answer, then the aggregator;
#: refuse: answer the policy's refusal; reject: answer the policy's error
Action = Literal["forward", "ensemble", "refuse", "reject"]


class Planner(Protocol):
    """What planning needs: the gateway, or a bare set of these (``expertgate route``)."""

    policy_set: PolicySet
    config: GatewayConfig
    pipeline: Pipeline
    metrics: Metrics


@dataclass(slots=True)
class Plan:
    model: str
    #: the policy's runtime, None for a request that named an expert (pass-through)
    rt: PolicyRuntime | None
    action: Action = "forward"
    chain: list[str] = field(default_factory=list)
    decision: Decision | None = None
    reason: str = ""
    #: hit, miss, bypass (Redis down) or none (no decision)
    cache: str = "none"
    #: canary or incumbent beside a serving canary, else None
    arm: Literal["canary", "incumbent"] | None = None
    #: the exploration fields of the routing log (routers.explore), for a served decision
    explore: dict[str, Any] | None = None
    text: str | None = None
    text_hash: str | None = None
    #: body fields to set before forwarding (the policy's max_tokens cap)
    rewrite: dict[str, Any] = field(default_factory=dict)
    #: the error a "reject" action answers
    rejection: GuardRejected | None = None
    #: the dry run beside a serving canary: the candidate's decision, which a live request
    #: takes for the canary's share of the traffic
    canary: Decision | None = None
    #: work that must not delay the answer (a shadow candidate's decision): started by the
    #: record stage once the response is sent
    after_response: list[Callable[[ShadowOf], None]] = field(default_factory=list)

    @property
    def policy(self) -> str:
        return self.model if self.rt is not None else ""

    @property
    def first_choice(self) -> str:
        """The expert meant to give the answer: the chain's first, or an ensemble's
        aggregator (its members answer it, it answers the client)."""
        if self.action == "ensemble" and self.decision is not None and \
                self.decision.aggregator:
            return self.decision.aggregator
        return self.chain[0] if self.chain else ""

    @property
    def decision_ms(self) -> float:
        d = self.decision
        if d is None:
            return 0.0
        # a cache hit has no "total": its decision time is the cache lookup
        return d.timings_ms.get("total", sum(d.timings_ms.values()))


def request_text(endpoint: str, body: dict[str, Any], rt: PolicyRuntime,
                 texts: MessageTexts | None = None) -> str:
    """The text a policy routes on (:func:`~gateway.pipeline.bounded_text`: a long one's
    head and tail): from ``messages`` (chat, route; ``texts``: their
    :func:`~gateway.messages.message_texts` when the caller holds them), ``prompt``
    (completions) or the dry run's ``text``. Only the dry run reads ``text``: in a chat or
    completions body it is an unknown field, passed to the expert like any other, and it
    must never be what the guard and the router judge instead of what the expert reads."""
    if endpoint == "route" and body.get("text") is not None:
        text = bounded_text(str(body["text"]))
        if not text:
            raise InvalidRequest("'text' is empty", param="text")
        return text
    if endpoint == "completions":
        p = body["prompt"]
        if not isinstance(p, str) and not isinstance(p[0], str):
            raise InvalidRequest("'prompt' is token ids: a policy routes on text; send text, "
                                 "or name an expert to send token ids", param="prompt")
        text = bounded_text(p if isinstance(p, str) else " ".join(p))
        if not text:
            raise InvalidRequest("'prompt' has no text to route on", param="prompt")
        return text
    if not body.get("messages"):
        raise InvalidRequest("give 'messages' or 'text'", param="messages")
    return routing_text(texts if texts is not None else message_texts(body["messages"]),
                        rt.config.routing_text)


async def plan(gw: Planner, endpoint: str, body: dict[str, Any], degraded: list[str], *,
               deadline: float, serve: bool,
               texts: Callable[[], MessageTexts] | None = None,
               tenant: str | None = None) -> Plan:
    """The plan for ``body`` (validated) on ``endpoint``; see the module doc. ``degraded``
    collects what the decision had to do without (cache, embedder); ``texts``: the
    messages' text as the caller extracts it once per request (called only to route);
    ``tenant``: the caller's, whose own decisions alone its requests may find cached."""
    model: str = body["model"]
    rt = gw.policy_set.policies.get(model)
    if endpoint == "embeddings":
        expert = gw.config.expert(model)
        if expert is None and rt is None:
            raise UnknownModel.named(model)
        if expert is None or not expert.embeddings:
            raise InvalidRequest(f"'{model}' does not serve embeddings: name an expert "
                                 "configured with 'embeddings: true'", param="model",
                                 code="model_not_supported")
        return Plan(model, None, chain=[model], reason="explicit expert (no routing)")
    if rt is None:
        if gw.config.expert(model) is None:
            raise UnknownModel.named(model)
        if endpoint == "route":
            raise InvalidRequest(f"'{model}' is an expert, not a policy: requests for it are "
                                 "not routed", param="model")
        return Plan(model, None, chain=[model], reason="explicit expert (no routing)")
    pol = rt.config
    text = request_text(endpoint, body, rt, texts() if texts is not None else None)
    p = Plan(model, rt, text=text)
    # hashed once: the routing log's text_hash and the decision-cache key share it
    p.text_hash = text_hash(text)
    # a tenant's decisions are cached for it alone: a hit (its header, its decision time)
    # would tell one tenant the exact prompt another sent within the cache's TTL
    cache_hash = p.text_hash if tenant is None else text_hash(f"{tenant}\0{p.text_hash}")
    if serve:
        d, p.arm = await gw.pipeline.route(rt, text, degraded, text_hash=cache_hash,
                                           deadline=deadline, shadow_out=p.after_response)
        d, p.explore = gw.pipeline.explore(
            rt.candidate.runtime if p.arm == "canary" and rt.candidate is not None else rt, d)
    else:
        d = await gw.pipeline.decide(rt, text, degraded, text_hash=cache_hash,
                                     deadline=deadline)
        if rt.candidate is not None and rt.candidate.serving:
            p.canary = await gw.pipeline.decide(rt.candidate.runtime, text, [],
                                                text_hash=cache_hash, deadline=deadline)
    p.decision = d
    p.cache = "hit" if d.cached else ("bypass" if "cache" in degraded else "miss")
    p.reason = d.reason
    if serve:
        gw.metrics.child(gw.metrics.decisions, model, d.expert or "-", d.mode).inc()
    cap = pol.max_tokens_cap
    if cap is not None and endpoint != "route":
        # both names bound the completion (max_completion_tokens is the newer one, and what
        # LangChain sends): cap each one given, or set max_tokens when neither is
        given = [k for k in ("max_tokens", "max_completion_tokens") if body.get(k) is not None]
        for k in given:
            if body[k] > cap:
                p.rewrite[k] = cap
        if not given:
            p.rewrite["max_tokens"] = cap
    if d.mode == "reject":
        _reject(gw, p, d, endpoint, degraded, serve)
    elif d.mode == "ensemble" and d.aggregator and len(d.targets) > 1 and \
            answers_asked(body, endpoint) == 1:
        p.action = "ensemble"
        p.chain = [t.expert for t in d.targets]
    else:
        if d.mode == "ensemble" and d.aggregator and len(d.targets) > 1:
            # one aggregated answer cannot stand for a batch of prompts or n choices: the
            # first member answers them all, as a routed request would
            p.reason = f"{p.reason}; not ensembled: {answers_asked(body, endpoint)} answers asked"
        p.chain = [t.expert for t in d.targets[:pol.max_attempts]]
        p.chain += [f for f in pol.fallback if f not in p.chain]
        if not p.chain:
            raise GuardRejected("the router chose no expert", status=400)
    return p


def _reject(gw: Planner, p: Plan, d: Decision, endpoint: str, degraded: list[str],
            serve: bool) -> None:
    assert p.rt is not None
    rej = p.rt.config.on_reject
    if serve:
        why = d.guard.reject_reason if d.guard and d.guard.reject_reason else "router"
        gw.metrics.rejections.labels(p.model, why).inc()
    if rej.action == "error":
        p.action = "reject"
        p.rejection = GuardRejected(f"{rej.message} ({d.reason})", status=rej.status,
                                    param="prompt" if endpoint == "completions"
                                    else "messages")
    elif rej.action == "refusal":
        p.action = "refuse"
    else:
        assert rej.expert is not None
        p.chain = [rej.expert]
        degraded.append("rejected-to-fallback")
        if serve:
            gw.metrics.fallbacks.labels(p.model, "rejected").inc()
