"""Request/response schemas for the OpenAPI document.

The hot endpoints are served by raw ASGI (gateway/api/chat.py) and never reach these routes;
they are declared here so that the OpenAPI schema documents them (clients, schemathesis).
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ChatMessage", "ChatRequest", "CompletionRequest", "EmbeddingRequest",
           "ErrorResponse", "FeedbackRequest", "RouteRequest", "router"]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ChatMessage(_Open):
    role: Literal["system", "user", "assistant", "tool", "developer", "function"]
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(_Open):
    model: str = Field(min_length=1, description="a policy name (routed) or an expert name")
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)


class CompletionRequest(_Open):
    model: str = Field(min_length=1)
    prompt: str | list[str]
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)


class EmbeddingRequest(_Open):
    model: str = Field(min_length=1, description="an expert configured with embeddings: true")
    input: str | list[str] | list[int] | list[list[int]]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class RouteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, description="the policy to route with")
    messages: list[ChatMessage] | None = None
    text: str | None = Field(None, description="route this text instead of messages")


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    request_id: str = Field(min_length=1, max_length=128)
    score: float = Field(ge=0.0, le=1.0, description="1 = best")
    comment: str | None = Field(None, max_length=2000)


router = APIRouter()
_ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorResponse} for s in (400, 401, 403, 404, 413, 429, 502, 503, 504)}


@router.post("/v1/chat/completions", tags=["openai"], responses=_ERRORS)
async def chat_completions(body: ChatRequest) -> dict[str, Any]:  # pragma: no cover
    """OpenAI chat completions (served by the raw-ASGI hot path)."""
    raise RuntimeError("served by gateway.api.chat")


@router.post("/v1/completions", tags=["openai"], responses=_ERRORS)
async def completions(body: CompletionRequest) -> dict[str, Any]:  # pragma: no cover
    """OpenAI completions pass-through (served by the raw-ASGI hot path)."""
    raise RuntimeError("served by gateway.api.chat")


@router.post("/v1/embeddings", tags=["openai"], responses=_ERRORS)
async def embeddings(body: EmbeddingRequest) -> dict[str, Any]:  # pragma: no cover
    """OpenAI embeddings pass-through to an expert that serves them (raw-ASGI hot path)."""
    raise RuntimeError("served by gateway.api.chat")
