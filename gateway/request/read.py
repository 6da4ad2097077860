"""Stage 2, read: the body, within one size limit and one time limit, validated once.

Every POST endpoint reads through here (the FastAPI part's bodies through
:func:`read_body` too): the limit (``max_body_bytes``) holds whatever ``content-length``
said (admit refused a declared size over it already); the whole body must arrive within
``body_timeout_s`` of the headers (408), and a server shutting down ends the reads still
waiting at once (503, :class:`BodyReads`). The body is parsed and checked in one pass against
the endpoint's type in :mod:`gateway.request.schema`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

import orjson

from gateway import exactjson
from gateway.errors import InvalidRequest, PayloadTooLarge, RequestTimeout, ServiceUnavailable
from gateway.request.context import RequestContext
from gateway.request.schema import not_json, refuse_duplicates, validate

__all__ = ["BodyReads", "ClientDisconnected", "check_length", "read", "read_body", "read_other"]

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]

_CLOSE = {"connection": "close"}


class ClientDisconnected(Exception):
    """The client closed the connection before its request was answered: nobody is left to
    answer (logged as 499 ``client_disconnected``)."""


class BodyReads:
    """Request bodies being read: a shutdown ends them at once (503) instead of waiting."""

    def __init__(self) -> None:
        self.active: set[asyncio.Timeout] = set()
        self.closing = False

    def close(self) -> None:
        if self.closing:
            return
        self.closing = True
        now = asyncio.get_running_loop().time()
        for t in list(self.active):
            t.reschedule(now)


def check_length(length: int, limit: int) -> None:
    """413 for a declared ``content-length`` over the limit, before a byte is read."""
    if length > limit:
        raise PayloadTooLarge(f"request body of {length} bytes exceeds the limit of {limit} "
                              "bytes", headers=_CLOSE)


def _buffered(receive: Receive) -> bool:
    """Whether ``receive`` is uvicorn's and the whole body is already buffered: then it
    returns at once, without waiting for the client."""
    cycle = getattr(receive, "__self__", None)
    event = getattr(cycle, "message_event", None)
    return event is not None and event.is_set() and getattr(cycle, "more_body", True) is False


async def read_body(receive: Receive, limit: int, timeout_s: float,
                    reads: BodyReads | None = None) -> bytes:
    """The whole body, or an error: over ``limit`` bytes (413), not all there within
    ``timeout_s`` (408), or the server shutting down meanwhile (503)."""
    chunks: list[bytes] = []
    size = 0
    if _buffered(receive):
        # no timer needed for what is already here (arming and cancelling one is a
        # measurable share of a pass-through's cost)
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise ClientDisconnected
        b = msg.get("body", b"")
        if len(b) > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes",
                                  headers=_CLOSE)
        if not msg.get("more_body", False):
            return b
        chunks.append(b)
        size = len(b)
    try:
        async with asyncio.timeout(timeout_s) as deadline:
            if reads is not None:
                if reads.closing:
                    deadline.reschedule(asyncio.get_running_loop().time())
                reads.active.add(deadline)
            try:
                while True:
                    msg = await receive()
                    if msg["type"] == "http.disconnect":
                        raise ClientDisconnected
                    b = msg.get("body", b"")
                    if b:
                        size += len(b)
                        if size > limit:
                            raise PayloadTooLarge(f"request body exceeds the limit of {limit} "
                                                  "bytes", headers=_CLOSE)
                        chunks.append(b)
                    if not msg.get("more_body", False):
                        break
            finally:
                if reads is not None:
                    reads.active.discard(deadline)
    except TimeoutError:
        if reads is not None and reads.closing:
            raise ServiceUnavailable("the gateway is shutting down; retry the request",
                                     code="shutting_down", headers=_CLOSE) from None
        raise RequestTimeout(f"the request body did not arrive within {timeout_s:g}s",
                             headers=_CLOSE) from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


#: every byte but those that open an array or an object
_NOT_OPENING = bytes(b for b in range(256) if b not in b"[{")


def _forwardable(raw: bytes, body: Any) -> bool:
    """Whether ``body`` can be written again (:func:`gateway.exactjson.dumps`: at most 254
    levels deep), as a routed body is. orjson reads deeper (1024 levels), but a deeper body
    could reach an expert only as the client's bytes, which a Python expert reads only to its
    recursion limit (a 500 there, counted against the expert); when it cannot, the body is
    not passed through, and the dispatch stage refuses it as it refuses a routed one (400).
    Fewer than 255 brackets in the whole text (most bodies) need no more look."""
    if len(raw.translate(None, _NOT_OPENING)) < 255:
        return True
    try:
        exactjson.dumps(body)
    except (TypeError, ValueError, RecursionError):
        return False
    return True


async def read(receive: Receive, ctx: RequestContext, limit: int, timeout_s: float,
               reads: BodyReads, max_messages: int, model: str | None = None) -> None:
    """``model``: the model the path names (an Azure deployment path), which replaces the
    body's; the body then goes to the expert re-serialised, never as the client's bytes,
    which may name another model or none. A body too deep to write again is never passed
    through either (:func:`_forwardable`)."""
    ctx.raw = await read_body(receive, limit, timeout_s, reads)
    body = validate(ctx.endpoint, ctx.raw, max_messages, model)
    if model is not None or not _forwardable(ctx.raw, body):
        ctx.raw = b""
    ctx.body = body
    ctx.stream = bool(body.get("stream", False))


async def read_other(receive: Receive, headers: Iterable[tuple[bytes, bytes]], limit: int,
                     timeout_s: float, reads: BodyReads) -> bytes:
    """The body of a request for the FastAPI part, under the same limits; a JSON body must
    be strict JSON (UTF-8, no lone surrogates, no key twice in an object), as on the
    request path."""
    ctype = b""
    for k, v in headers:
        if k == b"content-length":
            try:
                check_length(int(v), limit)
            except ValueError:
                raise InvalidRequest("invalid content-length header") from None
        elif k == b"content-type":
            ctype = v.lower()
    raw = await read_body(receive, limit, timeout_s, reads)
    if raw and b"json" in ctype:
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise not_json(raw, e) from None
        refuse_duplicates(raw, obj)
    return raw
