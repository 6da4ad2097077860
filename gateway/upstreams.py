"""Calling one upstream replica: OpenAI-compatible pass-through or LiteLLM.

OpenAI-compatible servers (vLLM, llama.cpp, TGI, ...) are called through the process's one
:class:`~gateway.upstream_http.UpstreamHTTP` (pooled keep-alive HTTP/1.1 connections, a
protocol and an httptools parser each); response bytes are passed through untouched. Other
providers go through LiteLLM, imported lazily on first use (its import costs ~2.5 s and
~165 MB).

Both produce an :class:`UpstreamReply`: the status, the content type, the first chunk of the
body (already received: failures before it can still fall back; for an OpenAI-compatible
stream, everything up to its first token, see :func:`_hold`) and an async iterator over the
rest.

A 200 whose body is not what the protocol promises (a non-streamed body that is not a JSON
object, an SSE ``data:`` line that is not JSON) is an upstream protocol failure, never a
success: before the first byte it falls back like any other failure; after it,
:class:`SSECheck` lets the caller end the stream with an error event.

Messages meant for clients never carry an upstream's address (:attr:`UpstreamFailure.public`,
:func:`scrub`); the full text, with the address, goes to the log only. Nor do they carry the
gateway's own credentials for an upstream: an error body that echoes them (``Incorrect API
key provided: Bearer sk-...``) has them masked (:func:`error_body`), and an upstream's 401
or 403, which is about those credentials and not the client's key, never reaches the client
as such: it is the expert's failure (``kind`` ``auth``), failed over like a 5xx, and
answered ``502 upstream_auth_failed`` when nothing else answers.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import logging
import os
import re
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway import exactjson
from gateway.config import ExpertConfig, env_key
from gateway.redact import redact
from gateway.upstream_http import (
    ConnectFailed,
    HTTPClientError,
    InvalidResponse,
    Response,
    ResponseIncomplete,
    ResponseTooLarge,
    UpstreamHTTP,
)

__all__ = [
    "SSECheck",
    "UpstreamFailure",
    "UpstreamProtocolError",
    "UpstreamReply",
    "call_litellm",
    "call_openai",
    "credentials",
    "error_body",
    "litellm_kwargs",
    "scrub",
]

log = logging.getLogger("expertgate.upstreams")

_URL = re.compile(r"(?:https?|wss?|redis|rediss)://[^\s'\"<>]+", re.IGNORECASE)
#: an IPv4 address (with a port, if any) outside a URL: an upstream's own message may name
#: the host it runs on
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?::\d{1,5})?(?![\w.])")


def scrub(text: str) -> str:
    """``text`` without any URL or IPv4 address in it (upstream addresses stay in the log,
    not in replies)."""
    return _IPV4.sub("<upstream>", _URL.sub("<upstream>", text))


def credentials(headers: Mapping[str, str]) -> tuple[str, ...]:
    """The secrets in the headers of a call to an upstream (``headers``: the expert's
    :meth:`~gateway.config.ExpertConfig.upstream_headers`), as an upstream might echo them
    back: the whole ``Authorization`` value, its token, and for ``Basic`` the decoded
    ``user:password`` and the password. Longest first (masked in that order)."""
    auth = headers.get("authorization")
    if not auth:
        return ()
    out = {auth}
    scheme, _, token = auth.strip().partition(" ")
    token = token.strip()
    if token:
        out.add(token)
    if scheme.lower() == "basic" and token:
        try:
            plain = base64.b64decode(token, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            plain = ""
        if plain:
            out.add(plain)
            pw = plain.partition(":")[2]
            if len(pw) >= 4:  # shorter: masking it would garble the text for nothing
                out.add(pw)
    return tuple(sorted(out, key=len, reverse=True))


def _mask(text: str, secrets: Iterable[str]) -> str:
    """``text`` with each of ``secrets`` (longest first, as :func:`credentials` gives them)
    replaced by ``***``."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


#: a stack frame's line (``  File "/path/app.py", line 376, in create``) or a traceback's
#: heading; the frame's source and ``^^^`` lines are indented deeper than it
_FRAME = re.compile(r'\s*File "[^"\n]*", line \d+')
_TRACE_HEADINGS = ("Traceback (most recent call last):",
                   "During handling of the above exception, another exception occurred:",
                   "The above exception was the direct cause of the following exception:")


def _untraced(text: str) -> str:
    """``text`` without the stack traces in it: llama-cpp-python writes its frames into a
    500's message (``File ".../llama_cpp/server/app.py", line 376, in ...``), and a Python
    server's plain-text 500 may be a whole traceback. The frames, their source lines and the
    traceback headings go; the rest stays: the exception's own lines (``ValueError: ...``,
    a validation error's list)."""
    if 'File "' not in text and "Traceback (" not in text:
        return text
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if _FRAME.match(line):
            indent = len(line) - len(line.lstrip())
            while i < len(lines) and lines[i].strip() and \
                    len(lines[i]) - len(lines[i].lstrip()) > indent:
                i += 1
            continue
        for heading in _TRACE_HEADINGS:
            if heading in line:
                line = line.replace(heading, "")
        if line.strip() or (out and out[-1].strip()):
            out.append(line.rstrip())
    return "\n".join(out).strip()


def error_body(raw: bytes, status: int | None, expert: str, base: str,
               secrets: Iterable[str] = ()) -> bytes:
    """An upstream's error reply (``raw``, any shape: OpenAI's ``{"error": {...}}``, vLLM's
    ``{"object": "error", "message": ...}``, ``{"error": "text"}``, plain text or HTML) as
    the OpenAI-shaped body the client gets, without the upstream's address in it, and
    without the gateway's credentials: ``secrets`` (:func:`credentials` of the call's
    headers) and anything :func:`gateway.redact.redact` recognises (bearer tokens, Basic
    credentials, URL userinfo) are masked."""
    secrets = tuple(secrets)
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
        text = _untraced(raw.decode("utf-8", "replace")).strip()[:500] or f"status {status}"
        out = {"message": f"{expert} could not process this request: {text}",
               "type": "upstream_error", "param": None, "code": None}
    # no stack trace of the upstream's reaches a client (the message keeps the error itself)
    out["message"] = _untraced(out["message"])
    host = base.split("://", 1)[-1].split("/", 1)[0]
    for k in ("message", "type", "param", "code"):
        v = out[k]
        if isinstance(v, str):
            v = _mask(v, secrets)
            # redact before scrub: scrub would eat a URL's userinfo with the URL, but not a
            # "Basic <token>" after it
            out[k] = scrub(redact(v.replace(base, "<upstream>").replace(host, "<upstream>")))
        elif k != "code" and v is not None:  # a type or param that is not text
            out[k] = str(v)
    return orjson.dumps({"error": out})


class UpstreamFailure(Exception):
    """A failure before the first byte; ``kind`` in
    connect|timeout|status|protocol|too_large|auth|not_found (too_large: a body or SSE line
    over MAX_UPSTREAM_BODY_BYTES / MAX_SSE_LINE_BYTES, handled as ``protocol``).

    ``retryable`` says whether another replica or the fallback chain should be tried (connect
    errors, timeouts, 5xx, 429, 401/403: ``auth``, the upstream refused the gateway's own
    credentials, and 404: ``not_found``, the expert's model or LoRA adapter is not on that
    replica; its ``body`` is the upstream's error, OpenAI-shaped and scrubbed); any other 4xx
    is the client's error and is passed on.
    """

    def __init__(self, kind: str, message: str, *, status: int | None = None,
                 body: bytes | None = None, retryable: bool = True,
                 public: str | None = None, retry_after: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.body = body
        #: the upstream's ``retry-after`` (a 429's): passed on when it is the last word
        self.retry_after = retry_after
        self.retryable = retryable
        #: what a client may read: what went wrong, without the upstream's address
        self.public = public or (f"answered {status}" if status else scrub(message))


#: the largest whole (non-streamed) answer read from an upstream, and the longest line of an
#: event stream: an upstream that sends an endless body or line fails (the next replica or
#: expert answers, else a 502 ``upstream_protocol_error``) instead of filling memory. Far
#: above any chat answer (a 128k-token completion is ~1 MiB of JSON)
MAX_UPSTREAM_BODY_BYTES = 64 * 1024 * 1024
MAX_SSE_LINE_BYTES = 8 * 1024 * 1024


def size_text(n: int) -> str:
    """``n`` bytes as a message says it (``64 MiB``)."""
    return f"{n // (1024 * 1024)} MiB" if n % (1024 * 1024) == 0 else f"{n} bytes"


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

    __slots__ = ("done", "error", "events", "ident", "started", "tail", "token", "too_long",
                 "usage")

    def __init__(self) -> None:
        self.tail = b""
        #: a line grew past MAX_SSE_LINE_BYTES (an endless line: never buffered whole)
        self.too_long = False
        self.started = False
        self.done = False
        #: generated pieces (content, tool-call arguments, reasoning, a completion's text),
        #: one per choice and event: a token count when no usage is reported
        self.events = 0
        self.usage: tuple[int, int] | None = None
        #: (id, model, object) of the first event, for an event the gateway adds
        self.ident: tuple[str, str, str] | None = None
        #: the code (or type) of the first error event the upstream sent within the stream
        #: (vLLM's, when generation fails after the first token), passed on as it came
        self.error: str | None = None
        #: whether a token has come: a choice with content, a tool call, text or a finish
        #: (not a role-only delta: vLLM sends one before generation can still fail)
        self.token = False

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
        if len(t) > MAX_SSE_LINE_BYTES:
            self.tail = b""
            self.too_long = True
            raise UpstreamProtocolError(f"an SSE line over {size_text(MAX_SSE_LINE_BYTES)}")
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
        if self.error is None and _error_event(ev):
            self.error = _error_code(ev)
            return
        if self.ident is None:
            self.ident = (str(ev.get("id") or "eg-usage"), str(ev.get("model") or ""),
                          str(ev.get("object") or "chat.completion.chunk"))
        u = ev.get("usage")
        if isinstance(u, dict) and (u.get("prompt_tokens") or u.get("completion_tokens")):
            with contextlib.suppress(TypeError, ValueError):
                self.usage = (int(u.get("prompt_tokens") or 0),
                              int(u.get("completion_tokens") or 0))
        ch = ev.get("choices")
        if isinstance(ch, list):
            for c in ch:
                if not isinstance(c, dict):
                    continue
                delta = c.get("delta")
                if (isinstance(delta, dict) and (delta.get("content") or _generated(delta))
                        ) or c.get("text"):
                    self.events += 1
                    self.token = True
                elif c.get("finish_reason"):
                    self.token = True


def _generated(delta: dict[str, Any]) -> bool:
    """Whether a chat delta without content carries something generated (a tool call's
    arguments, reasoning, a refusal); a delta with only the role (vLLM's first chunk, with
    ``content: ""``) does not."""
    return any(v for k, v in delta.items() if k != "role" and k != "content")


def _error_event(ev: dict[str, Any]) -> bool:
    """Whether a stream's event is an error (OpenAI's ``{"error": {...}}``, which the OpenAI
    SDK raises on, or vLLM's ``{"object": "error", ...}``), not a chunk."""
    return bool(ev.get("error")) or ev.get("object") == "error"


def _error_code(ev: dict[str, Any]) -> str:
    err = ev.get("error")
    src = err if isinstance(err, dict) else ev
    for k in ("code", "type"):
        v = src.get(k)
        if isinstance(v, str) and v:
            return v[:64]
    return "upstream_stream_error"


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
    _lease: Any = None
    #: the parsed body of a non-streamed 200 (parsed once, to check it)
    data: Any = None
    #: the stream's checker, already fed the first chunk
    sse: SSECheck | None = None

    def hold(self, lease: Any) -> None:
        """Keep the call's :class:`gateway.dispatch.Lease` (its replica's in-flight count, its
        expert's concurrency slot) until the stream ends: :meth:`ended` or :meth:`release`."""
        self._lease = lease

    def ended(self) -> None:
        """The upstream's answer is complete (``[DONE]``): its replica and slot are free,
        though the rest of its body may still be read (its connection kept). Idempotent."""
        lease = self._lease
        if lease is not None:
            self._lease = None
            lease.release()

    def release(self) -> None:
        """Done with the reply, however it ended: its connection (closed unless its body was
        read to the end) and its lease. Idempotent."""
        try:
            if self._release is not None:
                self._release()
                self._release = None
        finally:
            self.ended()


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


#: what a stream may send before its first token, held back from the client so that a failure
#: there can still fall back (vLLM's role chunk, keep-alive comments): past either bound the
#: stream is committed and passed on as it comes
HOLD_READS = 16
HOLD_BYTES = 16 * 1024


async def _hold(resp: Response, sse: SSECheck, first: bytes, base: str, read_timeout: float,
                loop: asyncio.AbstractEventLoop) -> bytes:
    """Read on until ``sse`` has seen a token, the end (``[DONE]``) or an error event, within
    the bounds above; returns everything read, ``first`` included, as the stream's first
    chunk. Each read gets ``read_timeout``, as every read of the stream's rest does. A stream
    that ends, stalls or breaks here has sent the client nothing: the replica's failure."""
    held = [first]
    size = len(first)
    while len(held) < HOLD_READS and size < HOLD_BYTES:
        try:
            async with _Deadline(loop, read_timeout):
                more = await resp.read_any()
        except TimeoutError:
            resp.release()
            raise UpstreamFailure("timeout", f"{base} sent no token within {read_timeout:g}s",
                                  public=f"sent no token within {read_timeout:g}s") from None
        if not more:
            sse.finish()
            if sse.done or sse.token or sse.error is not None:
                break
            resp.release()
            raise UpstreamFailure("protocol", f"{base} ended the stream before any token",
                                  public="ended the stream before any token")
        sse.feed(more)
        held.append(more)
        size += len(more)
        if sse.token or sse.done or sse.error is not None:
            break
    return b"".join(held)


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


#: the list a 200 answer of each path carries (OpenAI's response objects)
_ANSWER_LIST = {"/chat/completions": "choices", "/completions": "choices",
                "/embeddings": "data"}


def _check_answer(path: str, obj: dict[str, Any], where: str, data: bytes) -> None:
    """Raise a protocol failure unless ``obj`` (a 200's JSON object) is an answer of
    ``path``: a JSON object that is none (a proxy's error sent with 200) left the client's
    SDK without choices, and the next replica or expert may answer. An empty ``choices``
    answers nothing either (``choices[0]`` fails)."""
    need = _ANSWER_LIST.get(path)
    if need is None:
        return
    got = obj.get(need)
    if not (isinstance(got, list) and (got or need == "data")):
        raise UpstreamFailure("protocol", f"{where} answered 200 without a {need!r} list: "
                              f"{data[:80]!r}", public=f"answered 200 without '{need}'")


async def _why_empty(client: UpstreamHTTP, expert: ExpertConfig, base: str, path: str,
                     body: bytes, timeout_s: float, headers: dict[str, str],
                     loop: asyncio.AbstractEventLoop) -> UpstreamReply:
    """A llama-cpp-python server answers a streamed request it refuses (a prompt over its
    context, a ``tool_choice`` naming no tool) with 200 and an empty event stream, its error
    in its own log only. Asked once more without streaming, it says which: its 4xx is the
    request's own error, passed on; its 500 is judged as any 500 (the dispatcher asks
    whether the replica is healthy). A replica that answers now, or fails otherwise, closed
    the stream for its own reasons: a protocol failure, as before."""
    again = exactjson.loads(body)
    again["stream"] = False
    again.pop("stream_options", None)
    try:
        reply = await call_openai(client, expert, base, path, exactjson.dumps(again),
                                  stream=False, timeout_s=timeout_s, headers=headers,
                                  loop=loop)
    except UpstreamFailure as f:
        if f.kind == "status" and f.status == 500:
            raise
        reply = None
    if reply is not None and reply.status >= 400:
        return reply
    raise UpstreamFailure("protocol", f"{base} closed the stream before any data",
                          public="closed the stream before any data")


async def call_openai(client: UpstreamHTTP, expert: ExpertConfig, base: str, path: str,
                      body: bytes, *, stream: bool, timeout_s: float,
                      headers: dict[str, str] | None = None,
                      loop: asyncio.AbstractEventLoop | None = None) -> UpstreamReply:
    """POST ``body`` to ``base + path``; returns once the first byte arrived (a stream: its
    first token, its end or the hold's bounds, :func:`_hold`). ``headers`` and ``loop``: the
    expert's and the running loop, when the caller keeps them."""
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
                data = await resp.read(MAX_UPSTREAM_BODY_BYTES)
                if status >= 500 or status == 429:
                    raise UpstreamFailure("status", f"{base} answered {status}", status=status,
                                          body=data, retry_after=resp.retry_after)
                if status in (401, 403):
                    raise auth_failure(expert, status, data, headers)
                if status == 404:
                    # the expert's model (a LoRA adapter not loaded there, a wrong base path)
                    # is not on this replica: its failure, not the client's request's
                    raise UpstreamFailure("not_found", f"{base} answered 404", status=404,
                                          body=error_body(data, status, expert.name, base,
                                                          credentials(headers)),
                                          public="answered 404 (model not found)")
                if status != 200:
                    if status >= 400:  # the request's own error: OpenAI-shaped, scrubbed
                        return UpstreamReply(status, "application/json",
                                             error_body(data, status, expert.name, base,
                                                        credentials(headers)))
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
                _check_answer(path, obj, base, data)
                return UpstreamReply(status, ctype, data, data=obj)
            first = await resp.read_any()
        if not first:
            if expert.dialect == "llama-cpp-python":
                return await _why_empty(client, expert, base, path, body, timeout_s,
                                        headers, loop)
            raise UpstreamFailure("protocol", f"{base} closed the stream before any data",
                                  public="closed the stream before any data")
        sse = SSECheck()
        try:
            sse.feed(first)
            if not (sse.token or sse.done or sse.error is not None):
                first = await _hold(resp, sse, first, base, timeout_s, loop)
        except UpstreamProtocolError as e:
            resp.release()
            if sse.too_long:
                raise UpstreamFailure("too_large", f"{base}: {e}", public=f"sent {e}"
                                      ) from None
            raise UpstreamFailure("protocol", f"{base}: {e}",
                                  public="sent a stream that is not a valid event stream"
                                  ) from None
        if sse.error is not None and not sse.token:
            # an error event before any token (vLLM's when generation fails at once, after
            # its role chunk or in the same read): nothing has reached the client yet, so
            # it is the replica's failure and the request goes to the next replica or
            # expert like any other
            resp.release()
            raise UpstreamFailure("protocol", f"{base} sent an error event before any "
                                  f"token ({sse.error})",
                                  public=f"sent an error event before any token "
                                         f"({scrub(sse.error)})")
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
    except ResponseTooLarge:
        if resp is not None:
            resp.release()
        over = size_text(MAX_UPSTREAM_BODY_BYTES)
        raise UpstreamFailure("too_large", f"{base} answered with a body over {over}",
                              public=f"answered with a body over {over}") from None
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


def auth_failure(expert: ExpertConfig, status: int, raw: bytes,
                 headers: Mapping[str, str] | None = None) -> UpstreamFailure:
    """An upstream's 401/403: it refused the gateway's own credentials for ``expert`` (its
    ``api_key_env`` key, or those in its URL), which is the expert's failure, not the
    client's. The upstream's text (which may quote those credentials) goes to the log only,
    masked; the client reads which expert and the status."""
    text = _mask(raw.decode("utf-8", "replace").strip()[:300], credentials(headers or {}))
    how = (f"the key in ${expert.api_key_env}" if expert.api_key_env
           else "the credentials in its api_base" if headers and "authorization" in headers
           else "its credentials (none are configured)")
    return UpstreamFailure(
        "auth", f"{expert.name} answered {status}: the upstream refused the gateway's "
        f"credentials (check {how}): {redact(text)}", status=status,
        public=f"refused the gateway's credentials ({status})")


_litellm: Any = None


def _get_litellm() -> Any:
    global _litellm
    if _litellm is None:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        import litellm

        litellm.telemetry = False
        litellm.drop_params = True
        # LiteLLM prints a banner to stdout (ANSI colours, "Give Feedback / Get Help", its
        # issue tracker) on every provider error it maps: the server's log gets the
        # gateway's own line of each failure instead
        litellm.suppress_debug_info = True
        _litellm = litellm
    return _litellm


# What a client's request fields become in a LiteLLM call (``call_litellm``).
#
# LiteLLM takes one flat list of keyword arguments that mixes the OpenAI request fields it
# maps onto each provider's own (dropping those a provider lacks: ``drop_params``) with its
# own configuration (``api_base``, ``api_key``, ``timeout``, ``extra_headers``, ``metadata``
# for its logging callbacks, ``mock_response``, ``aws_*`` credentials, ...). A client's
# fields must never set the latter, and an OpenAI field that shares a name with one of them
# (``metadata``) must still reach the provider. So:
#
# - the OpenAI fields LiteLLM names for the endpoint (below) are passed as its arguments,
#   and mapped per provider;
# - ``user``: LiteLLM drops it on chat requests to an OpenAI-compatible server whose model
#   is not in OpenAI's own catalogue (every vLLM / llama.cpp model), whatever
#   ``drop_params`` says; it is passed as an argument where LiteLLM forwards or maps it
#   (Anthropic: ``metadata.user_id``; text completions and embeddings), else as below;
# - every other field (``metadata``, ``user`` above, fields LiteLLM does not know), on a
#   provider that speaks OpenAI's protocol (``_EXTRA_BODY_PROVIDERS``), goes in
#   ``extra_body``: LiteLLM neither reads nor drops it, and the provider receives it as
#   the client sent it, as an ``openai`` expert would;
# - on other providers ``extra_body`` is no pass-through (Anthropic's body would get an
#   ``extra_body`` key), so there a field LiteLLM does not know is passed as an argument,
#   which LiteLLM forwards into the provider's request, unless LiteLLM would read it as its
#   own configuration (``_litellm_own``): those are dropped (the client's ``metadata``
#   among them; a provider's own field of that shape, say Anthropic's ``metadata``, cannot
#   be set by a client through LiteLLM).
_CHAT_PARAMS = frozenset({
    "messages", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs", "max_tokens",
    "max_completion_tokens", "n", "presence_penalty", "response_format", "seed", "stop",
    "stream_options", "temperature", "top_p", "tools", "tool_choice", "parallel_tool_calls",
    "functions", "function_call", "modalities", "prediction", "audio", "reasoning_effort",
    "verbosity", "web_search_options", "service_tier", "store", "safety_identifier",
    "prompt_cache_key", "prompt_cache_retention"})
#: ``litellm.text_completion``'s named parameters
_COMPLETION_PARAMS = frozenset({
    "prompt", "best_of", "echo", "frequency_penalty", "logit_bias", "logprobs", "max_tokens",
    "n", "presence_penalty", "stop", "stream_options", "suffix", "temperature", "top_p",
    "user"})
#: ``litellm.embedding``'s
_EMBEDDING_PARAMS = frozenset({"input", "dimensions", "encoding_format", "user"})
_PARAMS = {"/chat/completions": _CHAT_PARAMS, "/completions": _COMPLETION_PARAMS,
           "/embeddings": _EMBEDDING_PARAMS}
#: providers LiteLLM calls with OpenAI's protocol, merging ``extra_body`` into the request
#: (checked for chat, text completions and embeddings on LiteLLM 1.106.2)
_EXTRA_BODY_PROVIDERS = frozenset({"openai", "hosted_vllm", "text-completion-openai"})
#: LiteLLM configuration its own ``is_litellm_owned_kwarg`` does not list (transport,
#: clients, credentials read from keyword arguments)
_LITELLM_CONFIG = frozenset({
    "base_url", "timeout", "request_timeout", "extra_headers", "extra_body", "extra_query",
    "organization", "default_headers", "deployment_id", "drop_params", "additional_drop_params",
    "max_retries", "api_type", "azure", "azure_ad_token", "azure_ad_token_provider",
    "shared_session", "client", "http_client"})
_LITELLM_CONFIG_PREFIXES = ("aws_", "vertex_", "azure_", "watsonx_", "litellm_")


def _litellm_own(name: str) -> bool:
    """Whether LiteLLM would read a keyword argument ``name`` as its own configuration."""
    from litellm.types.utils import is_litellm_owned_kwarg

    return (name in _LITELLM_CONFIG or name.startswith(_LITELLM_CONFIG_PREFIXES)
            or is_litellm_owned_kwarg(name))


@functools.lru_cache(maxsize=256)
def _provider(model: str, base: str | None) -> tuple[str, bool]:
    """(LiteLLM's provider for ``model``, whether LiteLLM forwards ``user`` on chat)."""
    litellm = _get_litellm()
    try:
        bare, provider, _, _ = litellm.get_llm_provider(model=model, api_base=base)
        params = litellm.get_supported_openai_params(model=bare,
                                                     custom_llm_provider=provider) or []
    except Exception:  # an unknown provider: LiteLLM's own call says so, with its message
        return "", True
    return str(provider), "user" in params


def litellm_kwargs(expert: ExpertConfig, base: str | None, path: str,
                   payload: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of the LiteLLM call for a client's request to ``path`` (see the
    comment above ``_CHAT_PARAMS``), without the expert's address, key and timeout."""
    named = _PARAMS.get(path, _CHAT_PARAMS)
    provider, user_named = _provider(expert.upstream_model, base)
    if path == "/chat/completions" and user_named:
        named = named | {"user"}
    wire = provider in _EXTRA_BODY_PROVIDERS
    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for k, v in payload.items():
        if k in ("model", "stream"):
            continue
        if k in named:
            kwargs[k] = v
        elif wire:
            extra[k] = v
        elif not _litellm_own(k):
            kwargs[k] = v
    if extra:
        kwargs["extra_body"] = extra
    kwargs["model"] = expert.upstream_model
    return kwargs


def _chain(e: BaseException) -> list[BaseException]:
    """``e`` and what it was raised from or while handling (LiteLLM keeps the provider's
    exception in ``original_exception`` or as the context of its own), outermost first."""
    out: list[BaseException] = []
    todo: list[BaseException | None] = [e]
    while todo and len(out) < 16:
        x = todo.pop(0)
        if x is None or any(x is y for y in out):
            continue
        out.append(x)
        todo += [getattr(x, "original_exception", None), x.__cause__, x.__context__]
    return out


def _transport_error(chain: list[BaseException]) -> BaseException | None:
    """The connection's own failure in a LiteLLM exception's chain (refused, reset, closed
    within the body: httpx's transport errors, which LiteLLM's clients raise, or an OS
    error), if any: no status or body of the provider's is behind it."""
    import httpx

    for x in chain:
        if isinstance(x, httpx.TransportError | OSError) and \
                not isinstance(x, httpx.TimeoutException | TimeoutError):
            return x
    return None


def _provider_status(chain: list[BaseException]) -> int | None:
    """The status the provider answered with, as the OpenAI SDK or httpx raised on it (the
    innermost), in a LiteLLM exception's chain: LiteLLM's own class and ``status_code`` may
    say otherwise (a 503 whose message reads like a rate limit becomes its 429)."""
    import httpx
    import openai

    for x in reversed(chain):
        got: Any = None
        if isinstance(x, httpx.HTTPStatusError):
            got = x.response.status_code
        elif isinstance(x, openai.APIStatusError) and type(x).__module__.startswith("openai"):
            got = x.status_code
        if isinstance(got, int):
            return got
    return None


def _provider_answered(e: BaseException, chain: list[BaseException]) -> bool:
    """Whether a LiteLLM exception carries a status the provider answered with (LiteLLM read
    the provider's response headers, or the OpenAI SDK or httpx raised on its status), rather
    than LiteLLM's own 500 for a 200 it could not read (not JSON, no ``choices``)."""
    return getattr(e, "litellm_response_headers", None) is not None or \
        _provider_status(chain) is not None


#: what LiteLLM 1.106.2 says when it cannot read a provider's 200 as an answer (its OpenAI
#: provider): a body that is not JSON (an HTML page the OpenAI SDK hands over as text), JSON
#: cut short, JSON without ``choices``
_UNREADABLE = ("empty or invalid response", "object has no attribute 'model_dump'")
_NO_ANSWER = ("provider returned 'choices'",)


def _unreadable(chain: list[BaseException]) -> str | None:
    """What a 200 LiteLLM could not read was, as :func:`call_openai` says it (``invalid``
    JSON, or JSON ``without`` the answer's list), or None when LiteLLM's 500 says nothing of
    the kind (a provider's own 500: its status)."""
    import json

    for x in chain:
        text = str(x).lower()
        if isinstance(x, json.JSONDecodeError) or any(m in text for m in _UNREADABLE):
            return "invalid"
        if any(m in text for m in _NO_ANSWER):
            return "without"
    return None


def _litellm_failure(expert: ExpertConfig, e: Exception, timeout_s: float,
                     base: str | None = None, path: str = "/chat/completions"
                     ) -> UpstreamFailure:
    """A LiteLLM call's exception as the failure the dispatcher classifies, as
    :func:`call_openai` classifies the same reply of an OpenAI-compatible server: a
    timeout, a connection that failed (``connect``), a 200 LiteLLM could not read as an
    answer (``protocol``: LiteLLM says 500), the provider's status (with its
    ``retry-after``)."""
    import httpx

    chain = _chain(e)
    if isinstance(e, TimeoutError | _get_litellm().Timeout) or any(
            isinstance(x, httpx.TimeoutException) for x in chain):
        # the gateway's deadline, or LiteLLM's own (its 408 is no fault of the request)
        return UpstreamFailure("timeout", f"{expert.name}: no answer within {timeout_s:g}s",
                               public=f"sent no data within {timeout_s:g}s")
    # LiteLLM maps provider errors to its own classes, with the provider's status
    status = getattr(e, "status_code", None)
    if not isinstance(status, int):
        status = None
    status = _provider_status(chain) or status
    headers = expert.upstream_headers(base) if base else {}
    if expert.api_key_env and env_key(expert.api_key_env):
        headers = {"authorization": f"Bearer {env_key(expert.api_key_env)}"}
    where = base or expert.name
    if status in (401, 403):  # the provider refused the gateway's key, not the client's
        return auth_failure(expert, status, str(e).encode(), headers)
    cause = _transport_error(chain)
    if cause is not None:  # LiteLLM says 500 for a connection refused
        return UpstreamFailure("connect", f"cannot connect to {where}: "
                               f"{type(cause).__name__}: {cause}", public="connection failed")
    unread = _unreadable(chain) if status == 500 and not _provider_answered(e, chain) \
        else None
    if unread is not None:
        # a 200 LiteLLM could not read as an answer: what call_openai calls a protocol
        # failure (the replica answered, may have billed, and answers alike: not retried)
        public = "answered 200 with invalid JSON" if unread == "invalid" else \
            f"answered 200 without '{_ANSWER_LIST.get(path, 'choices')}'"
        return UpstreamFailure("protocol", f"{where} {public}: {type(e).__name__}: "
                               f"{str(e)[:200]}", public=public)
    retryable = status is None or status >= 500 or status in (404, 429)
    # LiteLLM's messages may quote the provider's URL or the key: clients get neither
    text = _untraced(str(e))[:500]  # a provider's stack frames reach no client either
    for secret in credentials(headers):
        text = text.replace(secret, "***")
    body = orjson.dumps({"error": {"message": scrub(redact(text)), "type": "upstream_error",
                                   "param": None, "code": type(e).__name__}})
    given = _provider_error(chain)
    if given is not None and status is not None:
        # the provider's own error (its type, param and code: context_length_exceeded,
        # invalid_request_error), as an openai expert's reaches the client (error_body)
        body = error_body(orjson.dumps({"error": given}), status, expert.name, base or "",
                          credentials(headers))
    retry_after = None
    if status in (429, 503):
        got = getattr(e, "litellm_response_headers", None)
        with contextlib.suppress(AttributeError, TypeError):
            retry_after = got.get("retry-after") if got is not None else None
    return UpstreamFailure("not_found" if status == 404 else "status" if status else "connect",
                           f"{expert.name}: {type(e).__name__}: {str(e)[:200]}",
                           status=status, body=body, retryable=retryable,
                           retry_after=retry_after if isinstance(retry_after, str) else None,
                           public=("answered 404 (model not found)" if status == 404 else
                                   f"answered {status}" if status else
                                   f"failed ({type(e).__name__})"))


def _provider_error(chain: Iterable[BaseException]) -> dict[str, Any] | None:
    """The provider's OpenAI-shaped error object, as the OpenAI SDK inside LiteLLM read it
    (an ``openai.APIStatusError``'s ``body``: the reply's ``error`` object), when it has a
    string ``message``; None otherwise (LiteLLM's own errors, a provider of another shape)."""
    for x in chain:
        body = getattr(x, "body", None)
        if isinstance(body, dict) and isinstance(body.get("message"), str):
            return body
    return None


def _invented_choices(obj: dict[str, Any]) -> bool:
    """Whether a text completion LiteLLM gave is one it made up for a 200 without
    ``choices`` (a proxy's error sent with 200): LiteLLM 1.106.2 then answers one choice
    with no text and no finish reason, which an upstream's answer never has."""
    ch = obj.get("choices")
    return isinstance(ch, list) and bool(ch) and all(
        isinstance(c, dict) and c.get("text") is None and c.get("finish_reason") is None
        for c in ch)


def _text_chunk(obj: dict[str, Any]) -> dict[str, Any]:
    """A LiteLLM text-completion stream chunk as OpenAI streams it: no zero ``usage`` on
    every event (LiteLLM's placeholder when the client did not ask for usage), ``text`` a
    string, and the usage event with no choices."""
    u = obj.get("usage")
    if u is None or (isinstance(u, dict) and not any(
            u.get(k) for k in ("prompt_tokens", "completion_tokens", "total_tokens"))):
        obj.pop("usage", None)
    elif all(isinstance(c, dict) and not c.get("text") and c.get("finish_reason") is None
             for c in obj.get("choices") or []):
        obj["choices"] = []
    for c in obj.get("choices") or []:
        if isinstance(c, dict):
            c.pop("reasoning_content", None)
            if c.get("text") is None:
                c["text"] = ""
    return obj


#: how much longer than the gateway's own deadlines LiteLLM's ``timeout`` is: a backstop, so
#: that a stall is cut by the gateway's deadline (and failed over, or its stream ended, as an
#: ``openai`` expert's is) rather than by a LiteLLM error that races it
LITELLM_TIMEOUT_SLACK_S = 1.0


async def call_litellm(expert: ExpertConfig, base: str | None, payload: dict[str, Any], *,
                       stream: bool, timeout_s: float, path: str = "/chat/completions",
                       loop: asyncio.AbstractEventLoop | None = None) -> UpstreamReply:
    """Call a provider through LiteLLM and re-encode its answer as OpenAI JSON / SSE: a chat
    completion (``litellm.acompletion``), a text completion (``/completions``:
    ``litellm.atext_completion``, streamed as OpenAI streams it) or a list of embeddings
    (``/embeddings``: ``litellm.aembedding``, never streamed), usage included.

    The gateway's deadlines are those of :func:`call_openai`: ``timeout_s`` up to the
    answer (a stream's response), then ``timeout_s`` for each read of a stream, before its
    first token (a stall there fails over) and after it (a stall ends the stream)."""
    litellm = _get_litellm()
    loop = loop or asyncio.get_running_loop()
    kwargs = litellm_kwargs(expert, base, path, payload)
    if base:
        kwargs["api_base"] = base
    if expert.api_key_env and env_key(expert.api_key_env):
        # as the OpenAI-compatible path sends it: without a key file's line break
        kwargs["api_key"] = env_key(expert.api_key_env)
    elif base:
        auth = expert.upstream_headers(base).get("authorization")
        if auth is not None:  # credentials written in the api_base URL
            kwargs["extra_headers"] = {"authorization": auth}
    kwargs["timeout"] = timeout_s + LITELLM_TIMEOUT_SLACK_S
    # the gateway retries (RetryPolicy: other replicas, the fallback chain, a 429's wait
    # within its cap), never LiteLLM's client behind it: the OpenAI SDK's own two retries of
    # a 429 or a 5xx hid the status, slept for its retry-after past the expert's timeout and
    # tripled the calls the provider got
    kwargs["max_retries"] = 0
    opts = payload.get("stream_options")
    #: the client asked for no usage event: the provider is asked for one all the same, as
    #: an openai expert is (gateway/request/dispatch.py), so that its own figures count in
    #: the log, the cost and the token budget; the event is kept from the client's stream
    unasked = stream and path in ("/chat/completions", "/completions") and not (
        isinstance(opts, dict) and opts.get("include_usage") is True)
    if unasked:
        kwargs["stream_options"] = {**(opts if isinstance(opts, dict) else {}),
                                    "include_usage": True}
    if path == "/embeddings":
        stream = False
        call = litellm.aembedding(**kwargs)
    elif path == "/completions":
        call = litellm.atext_completion(stream=stream, **kwargs)
    else:
        call = litellm.acompletion(stream=stream, **kwargs)
    try:
        resp = await asyncio.wait_for(call, timeout_s)
    except Exception as e:
        f = _litellm_failure(expert, e, timeout_s, base, path)
        if not f.retryable and f.status is not None and f.body is not None:
            # the request's own error (a 4xx): its answer, as call_openai passes it on, not
            # the expert's failure (no upstream error counted, no breaker verdict)
            return UpstreamReply(f.status, "application/json", f.body)
        raise f from None
    if not stream:
        obj = resp.model_dump()  # its integers exact (LiteLLM reads JSON with json)
        raw = exactjson.dumps(obj)
        _check_answer(path, obj, base or expert.name, raw)  # as an openai expert's
        if path == "/completions" and _invented_choices(obj):
            raise UpstreamFailure("protocol", f"{base or expert.name} answered 200 without a "
                                  f"'choices' list (LiteLLM made one up)",
                                  public="answered 200 without 'choices'")
        return UpstreamReply(200, "application/json", raw, data=obj)

    it = resp.__aiter__()
    wrapper: Any = None
    where = base or expert.name
    # what comes before the first token (a role-only chunk) is held, as for OpenAI-compatible
    # experts (_hold): the provider failing there may still fall back. The check goes with
    # the reply: the reader feeds it the rest, and reads its usage
    held: list[bytes] = []
    check = SSECheck()

    def event(chunk: Any) -> bytes:
        """A LiteLLM chunk as the SSE event the client gets (b"" for none)."""
        obj = chunk.model_dump()
        if path == "/completions":
            obj = _text_chunk(obj)  # its usage event has no choices
            usage = bool(obj.get("usage")) and not obj.get("choices")
        else:
            usage = _usage_only(obj)
        if usage:
            if not _usage_reported(wrapper):
                # LiteLLM's own count of a provider that sent none: not the provider's
                # figures; the gateway's estimate counts, said as such, as for an openai
                # expert that sent none
                return b""
            obj["choices"] = []  # OpenAI's usage event: no choices (LiteLLM's has an empty one)
            if unasked:  # the provider's figures count; the client asked for no event
                u = obj["usage"]
                with contextlib.suppress(TypeError, ValueError):
                    check.usage = (int(u.get("prompt_tokens") or 0),
                                   int(u.get("completion_tokens") or 0))
                return b""
        return b"data: " + exactjson.dumps(obj) + b"\n\n"

    try:
        while not check.token and len(held) < HOLD_READS:
            async with _Deadline(loop, timeout_s):
                ch = await it.__anext__()
            wrapper = wrapper or _stream_wrapper(resp)
            if _invented_end(wrapper):
                raise StopAsyncIteration  # the provider's stream ended with no finish
            ev = event(ch)
            if ev:
                check.feed(ev)
                held.append(ev)
    except StopAsyncIteration:
        # ended before any token (LiteLLM's own finish is no token): as _hold's, a protocol
        # failure that may fall back, never a 200 stream with nothing in it
        _close_soon(resp)
        what = "ended the stream before any token" if held else \
            "closed the stream before any data"
        raise UpstreamFailure("protocol", f"{where} {what}", public=what) from None
    except TimeoutError:  # a stall before the first token: as _hold's, it may fall back
        _close_soon(resp)
        what = "token" if held else "data"
        raise UpstreamFailure("timeout", f"{base or expert.name} sent no {what} within "
                              f"{timeout_s:g}s", public=f"sent no {what} within "
                                                        f"{timeout_s:g}s") from None
    except Exception as e:  # the provider failed before its first token: may fall back
        _close_soon(resp)
        if _dropped(e):  # its connection broke within the body: as call_openai says it
            raise UpstreamFailure("protocol", f"{where}: ResponseIncomplete: {e}",
                                  public="broke the connection (ResponseIncomplete)"
                                  ) from None
        if _not_json(e):  # an event that is not JSON: as call_openai says it
            raise UpstreamFailure("protocol", f"{where}: an SSE data line is not JSON: {e}",
                                  public="sent a stream that is not a valid event stream"
                                  ) from None
        if (err := _event_error(e)) is not None:  # as call_openai's: the replica's failure
            code = _error_code({"error": err})
            raise UpstreamFailure("protocol", f"{where} sent an error event before any "
                                  f"token ({code})",
                                  public=f"sent an error event before any token "
                                         f"({scrub(code)})") from None
        raise _litellm_failure(expert, e, timeout_s, base, path) from None

    ended = False

    async def rest() -> AsyncIterator[bytes]:
        nonlocal ended, wrapper
        while True:
            try:  # each read within timeout_s, as _iter_rest's: a stall ends the stream
                async with _Deadline(loop, timeout_s):
                    ch = await it.__anext__()
            except StopAsyncIteration:
                break
            except Exception as e:
                if _dropped(e):  # the reader ends the stream as after an openai expert's cut
                    raise ResponseIncomplete(f"{where}: the provider's connection broke "
                                             f"within the stream: {e}") from None
                if _not_json(e):  # ... and as after its event that is not JSON
                    raise UpstreamProtocolError(f"an SSE data line is not JSON ({where}: "
                                                f"{type(e).__name__})") from None
                if (err := _event_error(e)) is not None:
                    # the provider's error event, passed on as an openai expert's is (the
                    # reader logs it as the stream's error); LiteLLM read no further
                    ended = True
                    yield b"data: " + exactjson.dumps({"error": err}) + b"\n\n"
                    yield b"data: [DONE]\n\n"
                    return
                raise
            wrapper = wrapper or _stream_wrapper(resp)
            if _invented_end(wrapper):
                # the provider's stream ended with no finish reason (cut): LiteLLM's made-up
                # finish is not passed on, nor a [DONE]: the reader reports the cut as it does
                # an openai expert's stream that ends without [DONE]
                return
            ev = event(ch)
            if ev:
                yield ev
        ended = True
        yield b"data: [DONE]\n\n"

    def release() -> None:
        # a stream given up before its end is closed, so that the provider's connection is
        # (an openai expert's reply closes its own): a cancellation within LiteLLM's read
        # closes it already (httpx does), a writer that failed or a client that left while
        # its write waited did not, and the provider generated on for nobody
        if not ended:
            _close_soon(resp)

    return UpstreamReply(200, "text/event-stream", b"".join(held), rest(), stream=True,
                         _release=release, sse=check)


def _usage_only(obj: dict[str, Any]) -> bool:
    """Whether a LiteLLM chat chunk is its usage event: usage, and no choice with anything
    in it (LiteLLM gives it one choice with an empty delta)."""
    if not obj.get("usage"):
        return False
    for c in obj.get("choices") or []:
        if not isinstance(c, dict) or c.get("finish_reason") is not None:
            return False
        delta = c.get("delta")
        if isinstance(delta, dict) and any(v for v in delta.values()):
            return False
    return True


def _usage_reported(wrapper: Any) -> bool:
    """Whether the provider sent the usage LiteLLM's stream (``wrapper``) ends with: LiteLLM
    keeps each chunk it read, the provider's usage event among them, and counts the tokens
    itself when there is none (unknown stream: taken as the provider's)."""
    if wrapper is None:
        return True
    return any(getattr(c, "usage", None) is not None for c in getattr(wrapper, "chunks", ()))


def _stream_wrapper(stream: Any) -> Any:
    """LiteLLM's ``CustomStreamWrapper`` behind a stream ``call_litellm`` got, which knows
    whether the provider finished: the stream itself (chat), or for a text completion the
    one its ``TextCompletionStreamWrapper`` reads through async generators (found in their
    frames once the first chunk was read; None before, or for a stream of another kind:
    nothing is then known of its end)."""
    todo = [stream]
    for _ in range(8):  # LiteLLM 1.106.2: 3 steps for a text completion
        if not todo:
            break
        o = todo.pop(0)
        if hasattr(o, "sent_last_chunk"):
            return o
        inner = getattr(o, "completion_stream", None)
        if inner is not None:
            todo.append(inner)
        frame = getattr(o, "ag_frame", None)  # None once the generator has ended
        if frame is not None:
            todo += [v for v in frame.f_locals.values()
                     if hasattr(v, "sent_last_chunk") or hasattr(v, "ag_frame")]
    return None


def _invented_end(wrapper: Any) -> bool:
    """Whether the chunk LiteLLM's stream (``wrapper``, :func:`_stream_wrapper`) just gave is
    LiteLLM's own end of a provider stream that ended without a finish reason: LiteLLM then
    adds a last chunk with ``finish_reason: stop`` (``finish_reason_handler``), so a stream
    that was cut (its body ended early, no finish on any chunk) would read as a whole answer.
    LiteLLM marks that chunk ``sent_last_chunk`` without a ``received_finish_reason`` (or an
    ``intermittent_finish_reason``: a provider's finish given mid-stream), checked on
    LiteLLM 1.106.2 (``tests/integration/test_s20_litellm_stream_cut.py``)."""
    return wrapper is not None and getattr(wrapper, "sent_last_chunk", False) is True and \
        getattr(wrapper, "received_finish_reason", None) is None and \
        getattr(wrapper, "intermittent_finish_reason", None) is None


def _dropped(e: BaseException) -> bool:
    """Whether a LiteLLM stream's error is its provider's connection breaking within the
    body (a transport error behind LiteLLM's ``APIConnectionError``, itself in its
    ``MidStreamFallbackError`` when read from a chat stream), not an error the provider
    reported (an error event, which LiteLLM also calls an ``APIConnectionError``)."""
    return _transport_error(_chain(e)) is not None


def _event_error(e: BaseException) -> dict[str, Any] | None:
    """The provider's error event (``data: {"error": {...}}``) behind a LiteLLM stream's
    error: the OpenAI SDK inside LiteLLM raises it as a plain ``openai.APIError`` whose
    ``body`` is the event's error object (LiteLLM then calls it an ``APIConnectionError``);
    None for any other error."""
    import openai

    for x in _chain(e):
        body = getattr(x, "body", None)
        if type(x) is openai.APIError and isinstance(body, dict):
            return body
    return None


def _not_json(e: BaseException) -> bool:
    """Whether a LiteLLM stream's error is an event of the provider's that is not JSON (the
    OpenAI SDK's ``JSONDecodeError``, which LiteLLM calls an ``APIConnectionError``)."""
    import json

    return any(isinstance(x, json.JSONDecodeError) for x in _chain(e))


#: closes of LiteLLM streams in progress (the loop keeps a task only weakly)
_CLOSING: set[asyncio.Task[None]] = set()


def _close_soon(stream: Any) -> None:
    """Close LiteLLM's ``stream`` (``CustomStreamWrapper.aclose``: the provider's response,
    and so its connection) in a task of its own: :meth:`UpstreamReply.release` is
    synchronous, and is called where the reader gave the stream up, in a cancelled task
    among others."""
    aclose = getattr(stream, "aclose", None)
    if aclose is None:
        return
    try:
        task = asyncio.get_running_loop().create_task(_aclose(aclose))
    except RuntimeError:  # no loop running (a reply collected after it stopped)
        return
    _CLOSING.add(task)
    task.add_done_callback(_CLOSING.discard)


async def _aclose(aclose: Any) -> None:
    try:
        await aclose()
    except Exception as e:  # closing is all that is left to do: it cannot fail the request
        log.debug("a LiteLLM stream did not close cleanly: %s: %s", type(e).__name__, e)
