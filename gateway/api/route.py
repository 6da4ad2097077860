"""POST /v1/route: the dry run. The Decision with its explanation; no upstream call.

It answers with the same ``x-expertgate-*`` headers as a routed request (the expert being
the router's first choice), so a client can read a dry run the way it reads a real one.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from gateway.api.chat import header_value
from gateway.api.protocol import RouteRequest
from gateway.errors import GatewayError, InvalidRequest, UnknownModel
from gateway.pipeline import routing_text

router = APIRouter(tags=["expertgate"])


def _error_headers(policy: str, message: str) -> dict[str, str]:
    return {"x-expertgate-policy": policy, "x-expertgate-expert": "none",
            "x-expertgate-cache": "none", "x-expertgate-decision-ms": "0.000",
            "x-expertgate-reason": header_value(message)}


@router.post("/v1/route")
async def route(body: RouteRequest, request: Request, response: Response) -> dict[str, Any]:
    gw = request.app.state.gw
    policy = "none"
    try:
        await gw.auth.resolve(request.scope.get("headers", ()), body.model)
        rt = gw.policy_set.policies.get(body.model)
        if rt is None:
            if gw.config.expert(body.model) is not None:
                raise InvalidRequest(f"'{body.model}' is an expert, not a policy: requests "
                                     "for it are not routed", param="model")
            raise UnknownModel(f"The policy '{body.model}' does not exist", param="model")
        policy = body.model
        if body.text is not None:
            text = " ".join(body.text.split())
            if not text:
                raise InvalidRequest("'text' is empty", param="text")
        elif body.messages:
            text = routing_text([m.model_dump() for m in body.messages],
                                rt.config.routing_text)
        else:
            raise InvalidRequest("give 'messages' or 'text'", param="messages")
    except GatewayError as e:
        e.headers.update(_error_headers(policy, e.message))
        raise
    degraded: list[str] = []
    d = await gw.pipeline.decide(rt, text, degraded)
    m = gw.metrics
    for component in degraded:
        m.child(m.degraded, component).inc()
    out = d.to_dict()
    out["degraded"] = degraded
    chain = [t["expert"] for t in out["targets"][: rt.config.max_attempts]]
    out["fallback_chain"] = chain + [f for f in rt.config.fallback if f not in chain]
    total = d.timings_ms.get("total", sum(d.timings_ms.values()))
    response.headers.update({
        "x-expertgate-policy": policy, "x-expertgate-expert": d.expert or "none",
        "x-expertgate-cache": "hit" if d.cached else ("bypass" if "cache" in degraded
                                                      else "miss"),
        "x-expertgate-decision-ms": f"{total:.3f}", "x-expertgate-reason": header_value(d.reason)})
    if degraded:
        response.headers["x-expertgate-degraded"] = ",".join(degraded)
    return out
