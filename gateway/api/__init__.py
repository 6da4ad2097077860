"""The non-hot endpoints as a FastAPI app: one module per endpoint group."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.errors import GatewayError, error_body

if TYPE_CHECKING:
    from gateway.app import Gateway

__all__ = ["build_api"]


def build_api(gw: Gateway) -> FastAPI:
    from gateway.api import admin, feedback, health, models, protocol, route

    api = FastAPI(title="expertgate", version="0.1.0",
                  description="OpenAI-compatible LLM router and gateway")
    api.state.gw = gw

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

    for mod in (protocol, models, route, feedback, admin, health):
        api.include_router(mod.router)
    return api
