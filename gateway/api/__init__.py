"""The non-hot endpoints as a FastAPI app: one module per endpoint group."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.api.chat import Receive, Scope, Send, client_request_id, request_id
from gateway.errors import GatewayError, error_body

if TYPE_CHECKING:
    from gateway.app import Gateway

__all__ = ["build_api"]


class RequestIdMiddleware:
    """Give every response of the FastAPI part an ``x-request-id`` (the hot endpoints set
    their own) and echo a client's own as ``x-client-request-id``. The id is on
    ``request.state.request_id`` for handlers that log it. A ``/v1/route`` response that
    failed before its handler ran (a body that is not valid) still carries the
    ``x-expertgate-*`` set README promises."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id(scope)
        client_rid = client_request_id(scope)
        scope.setdefault("state", {})["request_id"] = rid
        is_route = scope.get("path") == "/v1/route"

        async def send_with_id(msg: MutableMapping[str, Any]) -> None:
            if msg["type"] == "http.response.start":
                headers = list(msg.get("headers", ()))
                have = {k.lower() for k, _ in headers}
                extra = [(b"x-request-id", rid.encode())]
                if client_rid is not None:
                    extra.append((b"x-client-request-id", client_rid.encode()))
                if is_route and b"x-expertgate-policy" not in have:
                    extra += [(b"x-expertgate-policy", b"none"),
                              (b"x-expertgate-expert", b"none"),
                              (b"x-expertgate-cache", b"none"),
                              (b"x-expertgate-decision-ms", b"0.000"),
                              (b"x-expertgate-reason", b"the request was not valid")]
                msg = {**msg, "headers": headers + [h for h in extra if h[0] not in have]}
            await send(msg)

        await self.app(scope, receive, send_with_id)


def build_api(gw: Gateway) -> FastAPI:
    from gateway.api import admin, dashboard, feedback, health, models, protocol, route

    api = FastAPI(title="expertgate", version="0.1.0",
                  description="OpenAI-compatible LLM router and gateway")
    api.state.gw = gw
    api.add_middleware(RequestIdMiddleware)

    @api.exception_handler(GatewayError)
    async def _gateway_error(request: Request, exc: GatewayError) -> Response:
        return Response(exc.body(), status_code=exc.status, media_type="application/json",
                        headers=exc.headers)

    @api.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        errs = exc.errors()
        first = errs[0] if errs else {"loc": (), "msg": "invalid request"}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        msg = f"{'.'.join(loc) + ': ' if loc else ''}{first.get('msg', 'invalid request')}"
        ctype = request.headers.get("content-type", "")
        if "json" not in ctype:
            msg = (f"the request body must be JSON sent with 'Content-Type: application/json' "
                   f"(got {ctype or 'no content type'}): {msg}")
        return Response(error_body(400, msg, "invalid_request_error", "invalid_request",
                                   ".".join(loc) or None),
                        status_code=400, media_type="application/json")

    @api.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return Response(error_body(exc.status_code, str(exc.detail), "invalid_request_error",
                                   code), status_code=exc.status_code,
                        media_type="application/json")

    for mod in (protocol, models, route, feedback, admin, health, dashboard):
        api.include_router(mod.router)
    return api
