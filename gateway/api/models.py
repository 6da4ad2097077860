"""GET /v1/models: experts, LoRA adapters (with ``parent``, as vLLM lists them) and policies.
``GET /openai/models`` is the same list, where the Azure OpenAI SDK asks for it.

A key sees only the models it may use (:meth:`gateway.auth.Authenticator.may_use`: its
policies, and the experts of its allow-list); another one's id is a 404 to it, the very
answer of an unknown one (:meth:`gateway.errors.UnknownModel.named`). Without keys
configured every model is listed."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from gateway.config import APIKeyConfig
from gateway.errors import UnknownModel

router = APIRouter(tags=["openai"])


def _entries(gw: Any, key: APIKeyConfig | None) -> list[dict[str, Any]]:
    created = int(gw.started_at)
    may_use = gw.auth.may_use
    out: list[dict[str, Any]] = []
    for e in gw.config.experts:
        if not may_use(key, e.name):
            continue
        out.append({"id": e.name, "object": "model", "created": created,
                    "owned_by": "expertgate", "parent": e.parent,
                    "expertgate": {"kind": "adapter" if e.parent else "expert",
                                   "backend": e.kind, "description": e.description,
                                   "skills": e.skills,
                                   "price": e.price.model_dump()}})
    for name, rt in gw.policy_set.policies.items():
        if not may_use(key, name):
            continue
        out.append({"id": name, "object": "model", "created": created,
                    "owned_by": "expertgate", "parent": None,
                    "expertgate": {"kind": "policy", "router": rt.config.router,
                                   "version": rt.version,
                                   "experts": [rt.config.models.get(m, m) for m in
                                               getattr(rt.router, "experts_", [])],
                                   "description": rt.config.description}})
    return out


@router.get("/v1/models")
@router.head("/v1/models", include_in_schema=False)
# the Azure OpenAI SDK given ``azure_endpoint`` lists models at /openai/models?api-version=
@router.get("/openai/models", include_in_schema=False)
@router.head("/openai/models", include_in_schema=False)
# a client whose base URL has no /v1 (as POST /chat/completions serves it)
@router.get("/models", include_in_schema=False)
@router.head("/models", include_in_schema=False)
async def list_models(request: Request) -> dict[str, Any]:
    gw = request.app.state.gw
    caller = await gw.auth.resolve(request.scope.get("headers", ()), None)
    return {"object": "list", "data": _entries(gw, caller.key)}


@router.get("/v1/models/{model_id:path}")
@router.head("/v1/models/{model_id:path}", include_in_schema=False)
@router.get("/openai/models/{model_id:path}", include_in_schema=False)
@router.head("/openai/models/{model_id:path}", include_in_schema=False)
async def get_model(model_id: str, request: Request) -> dict[str, Any]:
    if not model_id.strip("/"):  # /v1/models/ (a base URL's trailing slash): the list
        return await list_models(request)
    gw = request.app.state.gw
    caller = await gw.auth.resolve(request.scope.get("headers", ()), None)
    for m in _entries(gw, caller.key):
        if m["id"] == model_id:
            return m
    raise UnknownModel.named(model_id)
