"""The non-hot endpoints as a FastAPI app: one module per endpoint group."""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.errors import GatewayError
from gateway.request import Receive, Scope, Send
from gateway.request.context import header_value
from gateway.request.respond import error_of

if TYPE_CHECKING:
    from gateway.app import Gateway

__all__ = ["build_api", "no_route"]

log = logging.getLogger("expertgate.api")


def _client_request_id(scope: Scope) -> str | None:
    for k, v in scope.get("headers", ()):
        if k == b"x-request-id":
            return header_value(v.decode("latin-1")[:128]) or None
    return None


class RequestIdMiddleware:
    """Give every response of the FastAPI part an ``x-request-id`` (the request path sets
    its own) and echo a client's own as ``x-client-request-id``. The id comes from the
    request path's own function (:meth:`RequestIds.request_id`) for a request without a
    routing-log record: it verifies for no tenant, so no feedback can name it.
    It is on ``request.state.request_id`` for handlers that log it."""

    def __init__(self, app: Any, gw: Gateway) -> None:
        self.app = app
        self.gw = gw

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ids = self.gw.request_ids
        rid = ids.request_id(ids.nonce(), None)
        client_rid = _client_request_id(scope)
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(msg: MutableMapping[str, Any]) -> None:
            if msg["type"] == "http.response.start":
                headers = list(msg.get("headers", ()))
                have = {k.lower() for k, _ in headers}
                extra = [(b"x-request-id", rid.encode())]
                if client_rid is not None:
                    extra.append((b"x-client-request-id", client_rid.encode()))
                msg = {**msg, "headers": headers + [h for h in extra if h[0] not in have]}
            await send(msg)

        await self.app(scope, receive, send_with_id)


#: what a path the gateway does not serve is told: OpenAI's words (``Invalid URL (POST
#: /v1/responses)``), then what it does serve
_SERVED = ("this gateway serves POST /v1/chat/completions, /v1/completions, /v1/embeddings, "
           "/v1/route, /v1/feedback and GET /v1/models (and Azure OpenAI's "
           "/openai/deployments/{deployment}/... paths)")


def _no_route(request: Request, status: int, allow: str | None) -> str:
    """The message of a 404 for a path no endpoint serves, or of a 405 for a method the
    path does not take (Starlette's own: ``Not Found``, ``Method Not Allowed``)."""
    return no_route(request.method, request.url.path, status, allow)


def no_route(method: str, path: str, status: int, allow: str | None) -> str:
    """:func:`_no_route`'s message for ``method`` and ``path``."""
    if len(path) > 200:
        path = f"{path[:200]}..."
    where = f"{method} {path}"
    if status == 405 and allow:
        return f"Invalid method ({where}): {path} takes {allow}"
    return f"Invalid URL ({where}): {_SERVED}"


_METHOD_ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed(request: Request) -> str | None:
    """Every method some endpoint serves at this request's path (a path served as GET and
    HEAD is two routes: a 405 named only the first one's, ``/v1/models takes HEAD``)."""
    path = request.scope.get("path", "")
    methods: set[str] = set()
    for pattern, route_methods in request.app.state.route_methods:
        if pattern.match(path):
            methods |= route_methods
    if not methods:
        return None
    rank = {m: i for i, m in enumerate(_METHOD_ORDER)}
    return ", ".join(sorted(methods, key=lambda m: (rank.get(m, len(rank)), m)))


def build_api(gw: Gateway) -> FastAPI:
    from gateway.api import admin, dashboard, health, models, protocol

    # no redirects: a client that adds a slash (POST /v1/chat/completions/) reaches the
    # endpoint itself (gateway.app), any other path an OpenAI-shaped 404, never a bare 307
    api = FastAPI(title="expertgate", version="0.1.0", redirect_slashes=False,
                  description="OpenAI-compatible LLM router and gateway")
    api.state.gw = gw
    api.add_middleware(RequestIdMiddleware, gw=gw)

    async def _error(request: Request, exc: Exception) -> Response:
        err = error_of(exc)  # the one error map, shared with the request path
        if isinstance(exc, StarletteHTTPException) and exc.status_code in (404, 405):
            allow = next((v for k, v in err.headers.items() if k.lower() == "allow"), None)
            if exc.status_code == 405:  # Starlette names one route's methods: the path's all
                err.headers = {k: v for k, v in err.headers.items() if k.lower() != "allow"}
                allow = err.headers["allow"] = _allowed(request) or allow or ""
            err.message = _no_route(request, exc.status_code, allow)
        return Response(err.body(), status_code=err.status, media_type="application/json",
                        headers=err.headers)

    for exc_type in (GatewayError, RequestValidationError, StarletteHTTPException):
        api.add_exception_handler(exc_type, _error)

    async def _unexpected(request: Request, exc: Exception) -> Response:
        # a bug: logged with its traceback, answered as the request path answers one (an
        # OpenAI-shaped 500 without details), never Starlette's plain-text page
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return await _error(request, exc)

    api.add_exception_handler(Exception, _unexpected)

    for mod in (protocol, models, admin, health, dashboard):
        api.include_router(mod.router)
    api.state.route_methods = [(r.path_regex, set(r.methods or ()))
                               for mod in (protocol, models, admin, health, dashboard)
                               for r in mod.router.routes if isinstance(r, APIRoute)]
    return api
