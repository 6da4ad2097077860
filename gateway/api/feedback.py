"""POST /v1/feedback {request_id, score}: a rating that training joins with the routing log."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from gateway.api.protocol import FeedbackRequest
from gateway.errors import ServiceUnavailable

router = APIRouter(tags=["expertgate"])


@router.post("/v1/feedback")
async def feedback(body: FeedbackRequest, request: Request) -> dict[str, Any]:
    gw = request.app.state.gw
    gw.auth.check(request.scope.get("headers", ()), None)
    try:
        await gw.routing_log.add_feedback(body.request_id, body.score, body.comment)
    except Exception as e:  # the store is down: say so, the client may retry
        raise ServiceUnavailable(f"feedback store unavailable ({type(e).__name__})",
                                 code="feedback_unavailable") from None
    return {"object": "feedback", "request_id": body.request_id, "score": body.score,
            "stored": True}
