"""POST /v1/feedback {request_id, score}: a rating that training joins with the routing log.

Only the tenant that made a request may rate it: the request id says who made it
(:meth:`gateway.auth.RequestIds.owned`), and an id of another tenant is answered exactly like
an unknown one (404), so ids cannot be probed. The stored record names its tenant.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from gateway.api.protocol import FeedbackRequest
from gateway.auth import Principal, require_key
from gateway.errors import NotFound, ServiceUnavailable

router = APIRouter(tags=["expertgate"])


@router.post("/v1/feedback")
async def feedback(body: FeedbackRequest, request: Request,
                   who: Principal = Depends(require_key)) -> dict[str, Any]:
    gw = request.app.state.gw
    if not gw.request_ids.owned(body.request_id, who.tenant):
        raise NotFound(f"no request with id '{body.request_id[:64]}' was made with this API "
                       "key's tenant", param="request_id", code="request_not_found")
    try:
        await gw.routing_log.add_feedback(body.request_id, body.score, body.comment,
                                          tenant=who.tenant)
    except Exception as e:  # the store is down: say so, the client may retry
        raise ServiceUnavailable(f"feedback store unavailable ({type(e).__name__})",
                                 code="feedback_unavailable") from None
    await gw.on_feedback(body.request_id, body.score)
    return {"object": "feedback", "request_id": body.request_id, "score": body.score,
            "stored": True}
