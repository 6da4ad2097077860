"""POST /v1/route: the dry run. The Decision with its explanation; no upstream call."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from gateway.api.protocol import RouteRequest
from gateway.errors import InvalidRequest, UnknownModel
from gateway.pipeline import routing_text

router = APIRouter(tags=["expertgate"])


@router.post("/v1/route")
async def route(body: RouteRequest, request: Request) -> dict[str, Any]:
    gw = request.app.state.gw
    gw.auth.check(request.scope.get("headers", ()), body.model)
    rt = gw.policy_set.policies.get(body.model)
    if rt is None:
        if gw.config.expert(body.model) is not None:
            raise InvalidRequest(f"'{body.model}' is an expert, not a policy: requests for it "
                                 "are not routed", param="model")
        raise UnknownModel(f"The policy '{body.model}' does not exist", param="model")
    if body.text is not None:
        text = " ".join(body.text.split())
        if not text:
            raise InvalidRequest("'text' is empty", param="text")
    elif body.messages:
        text = routing_text([m.model_dump() for m in body.messages], rt.config.routing_text)
    else:
        raise InvalidRequest("give 'messages' or 'text'", param="messages")
    degraded: list[str] = []
    d = await gw.pipeline.decide(rt, text, degraded)
    out = d.to_dict()
    out["degraded"] = degraded
    chain = [t["expert"] for t in out["targets"][: rt.config.max_attempts]]
    out["fallback_chain"] = chain + [f for f in rt.config.fallback if f not in chain]
    return out
