"""The gateway's exception hierarchy and the one shape of its error JSON.

Inside the gateway code raises one of these; :func:`gateway.request.respond.error_of` (the
one error map, used by the request path and by the FastAPI part's handlers) turns any
exception into one of them, answered as ``{"error": {"message", "type", "param", "code"}}``
(:func:`error_body`) with the status below. Anything unexpected is logged with its traceback
and answered as a 500 without details (a bug, never an expected path). The HTTP protocol
(``gateway/httpserver.py``) writes the same shape for what it refuses before there is a
request.

    GatewayError
    ├── RequestError (4xx: the client's fault)
    │   ├── InvalidRequest            400 invalid_request_error
    │   ├── AuthenticationFailed      401 authentication_error
    │   ├── PermissionDenied          403 permission_error
    │   ├── UnknownModel              404 model_not_found
    │   │   └── ModelNotPermitted     404 model_not_found (a model the key may not use)
    │   ├── NotFound                  404 not_found
    │   ├── RequestTimeout            408 request_timeout (the body did not arrive in time)
    │   ├── PayloadTooLarge           413 request_too_large
    │   ├── UnsupportedMediaType      415 unsupported_content_encoding / unsupported_media_type
    │   ├── RateLimited               429 rate_limit_requests / rate_limit_tokens (see the class)
    │   └── GuardRejected             400 / configured: request_rejected
    ├── DeadlineExceeded              504 deadline_exceeded (request_deadline_s passed routing)
    └── UpstreamError (5xx: an expert failed and no fallback answered)
        ├── UpstreamUnavailable       502 upstream_unavailable (refused, 5xx, circuit open)
        ├── UpstreamTimeout           504 upstream_timeout
        └── ServiceUnavailable        503 service_unavailable (shutting down, not ready)
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.redact import redact

__all__ = [
    "AuthenticationFailed",
    "DeadlineExceeded",
    "GatewayError",
    "GuardRejected",
    "InvalidRequest",
    "ModelNotPermitted",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "RateLimited",
    "RequestError",
    "RequestTimeout",
    "ServiceUnavailable",
    "UnknownModel",
    "UnsupportedByExpert",
    "UnsupportedMediaType",
    "UpstreamError",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "error_body",
]


class GatewayError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = "internal_error"
    #: what the routing log's ``error_type`` records when it differs from ``code``
    log_code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = dict(headers or {})

    def body(self) -> bytes:
        # a client-facing message never carries a credential, whatever built it
        return error_body(self.status, redact(self.message), self.type, self.code, self.param)


class RequestError(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class InvalidRequest(RequestError):
    pass


class UnsupportedByExpert(InvalidRequest):
    """A request one expert's server cannot carry (its dialect, :mod:`gateway.dialect`): a
    400 when no other expert of the chain can serve it; the dispatcher tries the next one."""

    code = "unsupported_parameter"


class AuthenticationFailed(RequestError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(RequestError):
    status = 403
    type = "permission_error"
    code = "forbidden"


class UnknownModel(RequestError):
    status = 404
    code = "model_not_found"

    #: how much of a model name the answer quotes: the client's text, in the answer and in
    #: every routing-log record of the request (a half-megabyte name was a log line that size)
    QUOTED = 200

    @classmethod
    def named(cls, model: str) -> UnknownModel:
        """The one answer for a model the caller cannot use, in OpenAI's words: whether it
        does not exist or the caller's key may not use it reads the same."""
        if len(model) > cls.QUOTED:
            model = f"{model[:cls.QUOTED]}... ({len(model)} characters)"
        return cls(f"The model `{model}` does not exist or you do not have access to it "
                   "(GET /v1/models lists the models you may use)", param="model")


class ModelNotPermitted(UnknownModel):
    """A policy or expert that exists but is outside the key's allow-lists: answered exactly
    as a model that does not exist (:meth:`UnknownModel.named`: status, body, headers), so
    that a restricted key cannot tell another tenant's experts from missing names, as
    OpenAI answers both. Only the routing log (``error_type``) tells them apart."""

    log_code = "model_not_permitted"


class NotFound(RequestError):
    status = 404
    code = "not_found"


class RequestTimeout(RequestError):
    status = 408
    code = "request_timeout"


class PayloadTooLarge(RequestError):
    status = 413
    code = "request_too_large"


class UnsupportedMediaType(RequestError):
    status = 415
    code = "unsupported_content_encoding"


class RateLimited(RequestError):
    """A key's rate limit refused the request (:mod:`gateway.ratelimit`). A request that a
    wait would admit carries ``retry-after``; one no wait admits (larger than the key's
    per-minute token limit) carries none, and ``x-should-retry: false`` instead."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class GuardRejected(RequestError):
    """The guard (OOD or unsafe) or the router refused the query."""

    code = "request_rejected"

    def __init__(self, message: str, *, status: int = 400, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.status = status


class DeadlineExceeded(GatewayError):
    """The request's deadline (``request_deadline_s``) passed before it was answered."""

    status = 504
    code = "deadline_exceeded"


class UpstreamError(GatewayError):
    status = 502
    type = "upstream_error"
    code = "upstream_error"


class UpstreamUnavailable(UpstreamError):
    code = "upstream_unavailable"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class ServiceUnavailable(UpstreamError):
    status = 503
    type = "service_unavailable"
    code = "service_unavailable"


def error_body(status: int, message: str, type_: str, code: str | None,
               param: str | None = None) -> bytes:
    """The OpenAI-shaped error JSON (``status`` is the response's, not part of the body)."""
    return orjson.dumps({"error": {"message": message, "type": type_, "param": param,
                                   "code": code}})
