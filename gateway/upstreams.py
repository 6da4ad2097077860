"""Calling one upstream replica: OpenAI-compatible pass-through or LiteLLM.

OpenAI-compatible servers (vLLM, llama.cpp, TGI, ...) are called through the process's one
:class:`~gateway.upstream_http.UpstreamHTTP` (pooled keep-alive HTTP/1.1 connections, a
protocol and an httptools parser each); response bytes are passed through untouched. Other
providers go through LiteLLM, imported lazily on first use (its import costs ~2.5 s and
~165 MB).

Both produce an :class:`UpstreamReply`: the status, the content type, the first chunk of the
body (already received: failures before the first byte can still fall back) and an async
iterator over the rest.

A 200 whose body is not what the protocol promises (a non-streamed body that is not a JSON
object, an SSE ``data:`` line that is not JSON) is an upstream protocol failure, never a
success: before the first byte it falls back like any other failure; after it,
:class:`SSECheck` lets the caller end the stream with an error event.

Messages meant for clients never carry an upstream's address (:attr:`UpstreamFailure.public`,
:func:`scrub`); the full text, with the address, goes to the log only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.config import ExpertConfig
from gateway.upstream_http import (
    ConnectFailed,
    HTTPClientError,
    InvalidResponse,
    Response,
    UpstreamHTTP,
)

__all__ = [
    "SSECheck",
    "UpstreamFailure",
    "UpstreamProtocolError",
    "UpstreamReply",
    "call_litellm",
    "call_openai",
    "error_body",
    "scrub",
]

_URL = re.compile(r"(?:https?|wss?|redis|rediss)://[^\s'\"<>]+", re.IGNORECASE)
#: an IPv4 address (with a port, if any) outside a URL: an upstream's own message may name
#: the host it runs on
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?::\d{1,5})?(?![\w.])")


def scrub(text: str) -> str:
    """``text`` without any URL or IPv4 address in it (upstream addresses stay in the log,
    not in replies)."""
    return _IPV4.sub("<upstream>", _URL.sub("<upstream>", text))


def error_body(raw: bytes, status: int | None, expert: str, base: str) -> bytes:
    """An upstream's error reply (``raw``, any shape: OpenAI's ``{"error": {...}}``, vLLM's
    ``{"object": "error", "message": ...}``, ``{"error": "text"}``, plain text or HTML) as
    the OpenAI-shaped body the client gets, without the upstream's address in it."""
    try:
        obj = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        obj = None
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        out = {"message": err["message"], "type": err.get("type") or "upstream_error",
               "param": err.get("param"), "code": err.get("code")}
    elif isinstance(err, str):  # {"error": "text"} (TGI and others)
        out = {"message": err, "type": "upstream_error", "param": None, "code": None}
    elif isinstance(obj, dict) and isinstance(obj.get("message"), str):
        # vLLM's ErrorResponse: {"object": "error", "message", "type", "param", "code"}
        out = {"message": obj["message"], "type": obj.get("type") or "upstream_error",
               "param": obj.get("param"), "code": obj.get("code")}
    else:
        text = raw.decode("utf-8", "replace").strip()[:500] or f"status {status}"
        out = {"message": f"{expert} could not process this request: {text}",
               "type": "upstream_error", "param": None, "code": None}
    host = base.split("://", 1)[-1].split("/", 1)[0]
    for k in ("message", "type", "param", "code"):
        v = out[k]
        if isinstance(v, str):
            out[k] = scrub(v.replace(base, "<upstream>").replace(host, "<upstream>"))
        elif k != "code" and v is not None:  # a type or param that is not text
            out[k] = str(v)
    return orjson.dumps({"error": out})


class UpstreamFailure(Exception):
    """A failure before the first byte; ``kind`` in connect|timeout|status|protocol.

    ``retryable`` says whether another replica or the fallback chain should be tried (connect
    errors, timeouts, 5xx, 429); a 4xx other than 429 is the client's error and is passed on.
    """

    def __init__(self, kind: str, message: str, *, status: int | None = None,
                 body: bytes | None = None, retryable: bool = True,
                 public: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.body = body
        self.retryable = retryable
        #: what a client may read: what went wrong, without the upstream's address
        self.public = public or (f"answered {status}" if status else scrub(message))


class UpstreamProtocolError(Exception):
    """An upstream broke the protocol after the first byte (an SSE line that is not JSON)."""


class SSECheck:
    """Checks an SSE stream line by line as it is passed through, and reads its usage.

    Every line must be an SSE line (a ``data``, ``event``, ``id`` or ``retry`` field, a
    ``:`` comment or empty), so a body that is no event stream at all (an error page, a whole
    JSON completion sent to a streamed request) fails on its first chunk; every ``data:``
    line must be ``[DONE]`` or a JSON object; lines may span chunks. Costs one orjson parse
    per event (microseconds), the price of never passing garbage on as a success.
    """

    __slots__ = ("done", "events", "ident", "started", "tail", "usage")

    def __init__(self) -> None:
        self.tail = b""
        self.started = False
        self.done = False
        #: data events with generated content (a token count when no usage is reported)
        self.events = 0
        self.usage: tuple[int, int] | None = None
        #: (id, model, object) of the first event, for an event the gateway adds
        self.ident: tuple[str, str, str] | None = None

    def feed(self, chunk: bytes) -> None:
        buf = self.tail + chunk if self.tail else chunk
        if not self.started and buf:
            self.started = True
            if buf.startswith(_BOM):  # the one place the SSE format allows one
                buf = buf[len(_BOM):]
        lines = buf.split(b"\n")
        self.tail = lines.pop()
        for line in lines:
            self._line(line.rstrip(b"\r"))
        t = self.tail
        if t and not (_sse_line(t) or any(f.startswith(t) for f in _FIELDS)):
            raise UpstreamProtocolError(f"not an event stream: {t[:80]!r}")

    def finish(self) -> None:
        """The stream ended: its last line, if unterminated, must be an SSE line too."""
        if self.tail:
            self._line(self.tail.rstrip(b"\r"))
            self.tail = b""

    def _line(self, line: bytes) -> None:
        if not line.startswith(b"data:"):
            if line and not _sse_line(line):
                raise UpstreamProtocolError(f"not an event stream: {line[:80]!r}")
            return
        data = line[5:].strip()
        if data == b"[DONE]":
            self.done = True
            return
        try:
            ev = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamProtocolError(f"an SSE data line is not JSON: {data[:80]!r}"
                                        ) from None
        if not isinstance(ev, dict):
            raise UpstreamProtocolError("an SSE data line is not a JSON object")
        if self.ident is None:
            self.ident = (str(ev.get("id") or "eg-usage"), str(ev.get("model") or ""),
                          str(ev.get("object") or "chat.completion.chunk"))
        u = ev.get("usage")
        if isinstance(u, dict) and (u.get("prompt_tokens") or u.get("completion_tokens")):
            with contextlib.suppress(TypeError, ValueError):
                self.usage = (int(u.get("prompt_tokens") or 0),
                              int(u.get("completion_tokens") or 0))
        ch = ev.get("choices")
        if isinstance(ch, list) and ch and isinstance(ch[0], dict):
            delta = ch[0].get("delta")
            if (isinstance(delta, dict) and delta.get("content")) or ch[0].get("text"):
                self.events += 1


_BOM = b"\xef\xbb\xbf"
#: an SSE line's field names (a line may also be a ``:`` comment or empty)
_FIELDS = (b"data", b"event", b"id", b"retry")


def _sse_line(line: bytes) -> bool:
    """Whether ``line`` (non-empty) is an SSE comment or one of the SSE fields."""
    if line[:1] == b":":
        return True
    name = line.split(b":", 1)[0]
    return name in _FIELDS


async def _empty() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an async generator


@dataclass
class UpstreamReply:
    status: int
    content_type: str
    first: bytes
    rest: AsyncIterator[bytes] = field(default_factory=_empty)
    stream: bool = False
    _release: Any = None
    #: the parsed body of a non-streamed 200 (parsed once, to check it)
    data: Any = None
    #: the stream's checker, already fed the first chunk
    sse: SSECheck | None = None

    def release(self) -> None:
        if self._release is not None:
            self._release()
            self._release = None


async def _iter_rest(resp: Response, read_timeout: float,
                     loop: asyncio.AbstractEventLoop) -> AsyncIterator[bytes]:
    try:
        while True:
            async with _Deadline(loop, read_timeout):
                chunk = await resp.read_any()
            if not chunk:
                return
            yield chunk
    finally:
        resp.release()


class _Deadline:
    """``asyncio.timeout(delay)`` for the call path, given the loop: on Python 3.11 each
    ``get_running_loop()`` is a ``getpid()`` system call, and ``asyncio.timeout`` makes three
    (a third of the system calls of a pass-through). Same semantics: at the deadline the task
    is cancelled, and that cancellation leaves the block as ``TimeoutError``."""

    __slots__ = ("_cancelling", "_expired", "_handle", "_loop", "_task", "_when")

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        self._loop = loop
        self._when = loop.time() + delay
        self._expired = False

    async def __aenter__(self) -> None:
        task = asyncio.current_task(self._loop)
        assert task is not None
        self._task = task
        self._cancelling = task.cancelling()
        self._handle = self._loop.call_at(self._when, self._expire)

    def _expire(self) -> None:
        self._expired = True
        self._task.cancel()

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: Any) -> None:
        self._handle.cancel()
        if self._expired and self._task.uncancel() <= self._cancelling and \
                et is asyncio.CancelledError:
            raise TimeoutError from e


async def call_openai(client: UpstreamHTTP, expert: ExpertConfig, base: str, path: str,
                      body: bytes, *, stream: bool, timeout_s: float,
                      headers: dict[str, str] | None = None,
                      loop: asyncio.AbstractEventLoop | None = None) -> UpstreamReply:
    """POST ``body`` to ``base + path``; returns once the first byte arrived. ``headers``
    and ``loop``: the expert's and the running loop, when the caller keeps them."""
    if headers is None:
        headers = expert.upstream_headers(base)
    # one deadline up to the first byte (or the whole body when not streaming); a timeout
    # context is cheaper than wait_for, which creates a task per await on Python 3.11
    loop = loop or asyncio.get_running_loop()
    resp: Response | None = None
    try:
        async with _Deadline(loop, timeout_s):
            resp = await client.request(b"POST", base, path, body, headers,
                                        connect_timeout_s=expert.connect_timeout_s)
            status = resp.status
            ctype = resp.content_type
            if status != 200 or not stream:
                data = await resp.read()
                if status >= 500 or status == 429:
                    raise UpstreamFailure("status", f"{base} answered {status}", status=status,
                                          body=data)
                if status != 200:
                    if status >= 400:  # the request's own error: OpenAI-shaped, scrubbed
                        return UpstreamReply(status, "application/json",
                                             error_body(data, status, expert.name, base))
                    # a 1xx/2xx/3xx where the protocol promises 200 (a redirect of a
                    # misconfigured base, a 204): never passed on as an answer
                    raise UpstreamFailure("protocol", f"{base} answered {status}",
                                          status=status, public=f"answered {status}")
                try:
                    obj = orjson.loads(data)
                except orjson.JSONDecodeError:
                    obj = None
                if not isinstance(obj, dict):
                    raise UpstreamFailure("protocol", f"{base} answered 200 with a body that is "
                                          f"not a JSON object: {data[:80]!r}",
                                          public="answered 200 with invalid JSON")
                return UpstreamReply(status, ctype, data, data=obj)
            first = await resp.read_any()
            if not first:
                raise UpstreamFailure("protocol", f"{base} closed the stream before any data",
                                      public="closed the stream before any data")
            sse = SSECheck()
            try:
                sse.feed(first)
            except UpstreamProtocolError as e:
                resp.release()
                raise UpstreamFailure("protocol", f"{base}: {e}",
                                      public="sent a stream that is not a valid event stream"
                                      ) from None
    except TimeoutError:
        public = f"sent no data within {timeout_s:g}s"
        if resp is not None:
            resp.release()
            raise UpstreamFailure("timeout", f"{base} sent no data within {timeout_s:g}s",
                                  public=public) from None
        raise UpstreamFailure("timeout", f"no response from {base} within {timeout_s:g}s",
                              public=public) from None
    except ConnectFailed as e:
        if e.timed_out:
            raise UpstreamFailure("timeout", f"cannot connect to {base}: {e}",
                                  public=f"connection timed out "
                                         f"({expert.connect_timeout_s:g}s)") from None
        raise UpstreamFailure("connect", f"cannot connect to {base}: {e}",
                              public="connection failed") from None
    except HTTPClientError as e:
        name = type(e).__name__
        if resp is not None:
            resp.release()
            raise UpstreamFailure("protocol", f"{base}: {name}: {e}",
                                  public=f"broke the connection ({name})") from None
        if isinstance(e, InvalidResponse):
            raise UpstreamFailure("protocol", f"{base}: {e}",
                                  public="answered with invalid HTTP") from None
        raise UpstreamFailure("connect", f"{base}: {name}: {e}",
                              public=f"connection failed ({name})") from None
    except ValueError as e:  # an api base that is not an http(s) URL, a bad header value
        raise UpstreamFailure("connect", f"{base}: {e}", public="is misconfigured") from None
    except asyncio.CancelledError:  # the client went away: the connection is not reusable
        if resp is not None:
            resp.release()
        raise
    return UpstreamReply(status, ctype, first, _iter_rest(resp, timeout_s, loop), stream=True,
                         _release=resp.release, sse=sse)


_litellm: Any = None


def _get_litellm() -> Any:
    global _litellm
    if _litellm is None:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        import litellm

        litellm.telemetry = False
        litellm.drop_params = True
        _litellm = litellm
    return _litellm


async def call_litellm(expert: ExpertConfig, base: str | None, payload: dict[str, Any], *,
                       stream: bool, timeout_s: float) -> UpstreamReply:
    """Call a provider through LiteLLM and re-encode its answer as OpenAI JSON / SSE."""
    litellm = _get_litellm()
    kwargs = {k: v for k, v in payload.items() if k not in ("model", "stream")}
    kwargs["model"] = expert.upstream_model
    if base:
        kwargs["api_base"] = base
    if expert.api_key_env and os.environ.get(expert.api_key_env):
        kwargs["api_key"] = os.environ[expert.api_key_env]
    elif base:
        auth = expert.upstream_headers(base).get("authorization")
        if auth is not None:  # credentials written in the api_base URL
            kwargs["extra_headers"] = {"authorization": auth}
    kwargs["timeout"] = timeout_s
    try:
        resp = await asyncio.wait_for(litellm.acompletion(stream=stream, **kwargs), timeout_s)
    except TimeoutError:
        raise UpstreamFailure("timeout", f"{expert.name}: no answer within {timeout_s:g}s"
                              ) from None
    except Exception as e:  # LiteLLM maps provider errors to its own classes
        status = getattr(e, "status_code", None)
        retryable = status is None or status >= 500 or status == 429
        # LiteLLM's messages may quote the provider's URL: clients get them without it
        body = orjson.dumps({"error": {"message": scrub(str(e)[:500]), "type": "upstream_error",
                                       "param": None, "code": type(e).__name__}})
        raise UpstreamFailure("status" if status else "connect",
                              f"{expert.name}: {type(e).__name__}: {str(e)[:200]}",
                              status=status, body=body, retryable=retryable,
                              public=(f"answered {status}" if status else
                                      f"failed ({type(e).__name__})")) from None
    if not stream:
        obj = resp.model_dump()
        return UpstreamReply(200, "application/json", orjson.dumps(obj), data=obj)

    it = resp.__aiter__()
    try:
        first_chunk = await asyncio.wait_for(it.__anext__(), timeout_s)
    except StopAsyncIteration:
        return UpstreamReply(200, "text/event-stream", b"data: [DONE]\n\n", stream=True)

    async def rest() -> AsyncIterator[bytes]:
        async for ch in it:
            yield b"data: " + orjson.dumps(ch.model_dump()) + b"\n\n"
        yield b"data: [DONE]\n\n"

    return UpstreamReply(200, "text/event-stream",
                         b"data: " + orjson.dumps(first_chunk.model_dump()) + b"\n\n",
                         rest(), stream=True)
