"""The OpenAPI declarations of the request path's endpoints, derived from its schema.

``POST /v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``, ``/v1/route`` and
``/v1/feedback`` are
served by the raw-ASGI request path (:mod:`gateway.request`) and never reach these routes;
they are declared here, with the very types the request path validates against
(:mod:`gateway.request.schema`), so that ``/openapi.json`` documents them (clients,
schemathesis). Their aliases (unversioned, Azure OpenAI's deployment paths: docs/api.md) are
not declared: an Azure body need not name a model, which these bodies require.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body
from pydantic import BaseModel

from gateway.request.schema import (
    ChatRequest,
    CompletionRequest,
    EmbeddingsRequest,
    FeedbackRequest,
    RouteRequest,
)

__all__ = ["ErrorResponse", "router"]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


router = APIRouter()
_ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorResponse} for s in (400, 401, 403, 404, 408, 413, 415, 429, 502, 503, 504)}
_SERVED = "served by gateway.request"


@router.post("/v1/chat/completions", tags=["openai"], responses=_ERRORS)
async def chat_completions(body: Annotated[ChatRequest, Body()]
                           ) -> dict[str, Any]:  # pragma: no cover
    """OpenAI chat completions: routed when ``model`` is a policy, passed through when it
    is an expert."""
    raise RuntimeError(_SERVED)


@router.post("/v1/completions", tags=["openai"], responses=_ERRORS)
async def completions(body: Annotated[CompletionRequest, Body()]
                      ) -> dict[str, Any]:  # pragma: no cover
    """OpenAI completions (legacy), routed or passed through as chat completions are."""
    raise RuntimeError(_SERVED)


@router.post("/v1/embeddings", tags=["openai"], responses=_ERRORS)
async def embeddings(body: Annotated[EmbeddingsRequest, Body()]
                     ) -> dict[str, Any]:  # pragma: no cover
    """OpenAI embeddings, passed through to an expert configured with ``embeddings: true``."""
    raise RuntimeError(_SERVED)


@router.post("/v1/route", tags=["expertgate"], responses=_ERRORS)
async def route(body: Annotated[RouteRequest, Body()]) -> dict[str, Any]:  # pragma: no cover
    """The dry run: the decision a policy takes for ``messages`` or ``text``, the action and
    the chain a live request would use (``fallback_chain``); no upstream call. The response
    carries the same ``x-expertgate-*`` headers as a live request."""
    raise RuntimeError(_SERVED)


@router.post("/v1/feedback", tags=["expertgate"], responses=_ERRORS)
async def feedback(body: Annotated[FeedbackRequest, Body()]
                   ) -> dict[str, Any]:  # pragma: no cover
    """Rate an answered request (1 = best); only the tenant that made it may."""
    raise RuntimeError(_SERVED)
