"""Stage 5, respond: the one place that builds response headers and maps errors to answers.

:func:`headers` builds the ``x-request-id`` / ``x-expertgate-*`` / ``x-ratelimit-*`` set
every answer of the request path carries (README): ``none`` and ``0`` say "nothing of this
kind happened" (a pass-through has no policy and took no decision time).
:func:`error_of` maps any exception to an OpenAI-shaped :class:`GatewayError` (the gateway's
own errors as they are, a schema failure as a 400, anything else as a 500 that hides its
details and logs its traceback); the FastAPI part's handlers use it too.

The answers: :func:`forward` passes an upstream's reply through (the bytes untouched unless
the policy rewrites ``model``; every SSE line is checked as it passes, and a stream cut or
broken after the first byte ends with an SSE error event; a missing usage event is estimated
when the client asked for one), :func:`refuse` answers a policy's refusal,
:func:`send_json` the dry run and feedback, :func:`send_error` an error.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

import orjson

from gateway import exactjson
from gateway.dialect import ToolDeltas, fix_answer, stream_fix
from gateway.dispatch import DispatchResult
from gateway.errors import GatewayError, InvalidRequest
from gateway.messages import answers_asked
from gateway.ratelimit import estimate_tokens
from gateway.request.context import RequestContext, header_value
from gateway.request.dispatch import usage_of, wants_usage
from gateway.request.read import ClientDisconnected
from gateway.upstreams import SSECheck, UpstreamProtocolError

if TYPE_CHECKING:
    from gateway.app import Gateway

__all__ = ["error_of", "forward", "headers", "refuse", "send_error", "send_json"]

log = logging.getLogger("expertgate.respond")

Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
_JSON = b"application/json"
#: the statuses below 500 that the OpenAI SDKs retry (they retry every 5xx too)
_SDK_RETRIES = frozenset({408, 409, 429})


def headers(ctx: RequestContext, content_type: bytes = _JSON) -> list[tuple[bytes, bytes]]:
    h = [(b"content-type", content_type), (b"x-request-id", ctx.request_id.encode())]
    if ctx.client_request_id is not None:
        h.append((b"x-client-request-id", ctx.client_request_id.encode()))
    if ctx.endpoint == "feedback":
        return h
    p = ctx.plan
    expert = ctx.expert or (p.first_choice if p is not None and ctx.endpoint == "route"
                            else "")
    h += [(b"x-expertgate-policy", _name(p.policy if p is not None else "")),
          (b"x-expertgate-expert", _name(expert)),
          (b"x-expertgate-cache", _name(p.cache if p is not None else "")),
          (b"x-expertgate-decision-ms", b"%.3f" % (p.decision_ms if p is not None else 0.0)),
          (b"x-expertgate-reason", _reason(ctx.reason))]
    if ctx.degraded:
        h.append((b"x-expertgate-degraded", ",".join(ctx.degraded).encode()))
    ex = p.explore if p is not None else None
    if ex is not None and ex["propensity"] is not None:
        h.append((b"x-expertgate-propensity", f"{ex['propensity']:.6g}".encode()))
        if ex["explored"]:
            h.append((b"x-expertgate-explored", str(ex["greedy_expert"]).encode()))
    if p is not None and p.arm is not None:
        h.append((b"x-expertgate-arm", p.arm.encode()))
    g = p.decision.guard if p is not None and p.decision is not None else None
    if g is not None and g.stage is not None:  # a two-stage guard: which stage decided
        h.append((b"x-expertgate-guard-stage", g.stage.encode()))
    if ctx.members:
        h.append((b"x-expertgate-ensemble", ",".join(ctx.members).encode()))
    if ctx.rates:
        seen = set()
        for rate in reversed(ctx.rates):  # the last decision says which backend counts now
            for k, v in rate.headers():
                if k not in seen:
                    seen.add(k)
                    h.append((k, v))
    return h


_NAMES: dict[str, bytes] = {}


def _name(s: str) -> bytes:
    """A policy, expert or cache-state name as a header value (``none`` for none); the names
    come from the config, so the memo stays small."""
    b = _NAMES.get(s)
    if b is None:
        b = _NAMES[s] = (s or "none").encode()
    return b


_REASONS: dict[str, bytes] = {}


def _reason(s: str) -> bytes:
    """The reason header; the common reasons repeat (pass-through, cache hits), so the last
    few hundred distinct ones are kept encoded."""
    b = _REASONS.get(s)
    if b is None:
        b = header_value(s or "none").encode()
        if len(_REASONS) >= 512:
            _REASONS.clear()
        _REASONS[s] = b
    return b


def error_of(exc: BaseException) -> GatewayError:
    """Any exception as the OpenAI-shaped error the client gets (the one error map)."""
    if isinstance(exc, GatewayError):
        return exc
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    if isinstance(exc, RequestValidationError):
        errs = exc.errors()
        first = errs[0] if errs else {"loc": (), "msg": "invalid request"}
        loc = [str(x) for x in first.get("loc", ()) if x not in ("body", "query", "path")]
        return InvalidRequest(f"{'.'.join(loc) + ': ' if loc else ''}"
                              f"{first.get('msg', 'invalid request')}",
                              param=".".join(loc) or None)
    if isinstance(exc, HTTPException):
        err = GatewayError(str(exc.detail),
                           code={404: "not_found", 405: "method_not_allowed"}.get(
                               exc.status_code, "http_error"),
                           headers=dict(exc.headers or {}))  # a 405's Allow
        err.status = exc.status_code
        err.type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return err
    return GatewayError("internal error")


async def send_error(send: Send, ctx: RequestContext, err: GatewayError) -> None:
    h = headers(ctx)
    if err.headers:  # the error's own (a refused rate decision's) replace the request's
        own = {k.lower().encode(): v.encode() for k, v in err.headers.items()}
        h = [(k, v) for k, v in h if k not in own] + list(own.items())
    await _write(send, {"type": "http.response.start", "status": err.status, "headers": h})
    await _write(send, {"type": "http.response.body", "body": err.body()})


async def send_json(send: Send, ctx: RequestContext, obj: Any, status: int = 200) -> None:
    await _write(send, {"type": "http.response.start", "status": status,
                        "headers": headers(ctx)})
    await _write(send, {"type": "http.response.body", "body": orjson.dumps(obj)})


async def refuse(send: Send, ctx: RequestContext, message: str) -> None:
    """The policy's refusal as a normal completion (or stream) from the policy itself."""
    ctype, body = _refusal(ctx.body, ctx.endpoint, message, ctx.policy, ctx.stream)
    await _write(send, {"type": "http.response.start", "status": 200,
                        "headers": headers(ctx, ctype)})
    await _write(send, {"type": "http.response.body", "body": body})
    ctx.status = 200
    ctx.refused = True


async def forward(gw: Gateway, send: Send, ctx: RequestContext, res: DispatchResult) -> None:
    """Pass ``res`` on to the client. However this ends (the whole answer sent, the client
    gone, the writer failing, a cancellation before the first byte), the reply is released:
    its connection (a LiteLLM stream: closed), and for a stream its replica's in-flight count
    and its expert's slot.

    A write to the client that fails (an ASGI server's ``send`` raises once the connection
    is closed) is the client's disconnect: logged 499 ``client_disconnected``, never an
    upstream failure, and nothing more is written; once the client has the whole answer
    (``ctx.finished``: ``[DONE]`` went out) the answer stands."""
    try:
        await _forward(gw, send, ctx, res)
    except ClientDisconnected:
        if not ctx.finished:
            log.debug("request %s: the client's connection failed under a write",
                      ctx.request_id)
            ctx.status, ctx.err_type = 499, "client_disconnected"
    finally:
        res.reply.release()


async def _write(send: Send, msg: MutableMapping[str, Any]) -> None:
    """``send(msg)``, a failure of which is the client's (:class:`ClientDisconnected`)."""
    try:
        await send(msg)
    except Exception as e:
        raise ClientDisconnected(f"{type(e).__name__}: {e}") from e


async def _forward(gw: Gateway, send: Send, ctx: RequestContext, res: DispatchResult) -> None:
    reply = res.reply
    p = ctx.plan
    if ctx.unaggregated is not None and ctx.stream:
        # an ensemble answered by its best member, as the stream the client asked for
        model = p.model if p is not None and p.rt is not None and \
            p.rt.config.rewrite_model else ctx.expert
        calls = _tool_calls(reply.data) if ctx.endpoint == "chat" else None
        ctype, body = _refusal(ctx.body, ctx.endpoint, ctx.unaggregated, model, True,
                               "egens-", usage=usage_of(reply.data), tool_calls=calls)
        ctx.status, ctx.usage = 200, usage_of(reply.data)
        await _write(send, {"type": "http.response.start", "status": 200,
                            "headers": headers(ctx, ctype)})
        await _write(send, {"type": "http.response.body", "body": body})
        return
    body = reply.first
    if not reply.stream and reply.status == 200 and isinstance(reply.data, dict):
        rewrite = p is not None and p.rt is not None and p.rt.config.rewrite_model
        # what the expert's dialect says wrong (a llama-cpp-python tool call cut short)
        fixed = ctx.endpoint == "chat" and fix_answer(reply.data, res.expert.dialect)
        if rewrite or fixed:
            # the upstream's numbers go back as it wrote them (orjson alone would turn an
            # integer beyond 64 bits into a float, or refuse to write it)
            data = exactjson.exact(body, reply.data)
            if fixed and data is not reply.data:  # re-read from its bytes: fixed again
                fix_answer(data, res.expert.dialect)
            reply.data = data
            if rewrite:
                assert p is not None
                data["model"] = p.model
            body = exactjson.dumps(data)
    if not reply.stream and reply.status == 200 and ctx.endpoint in ("chat", "completions") \
            and not _reports_usage(reply.data):
        # a whole answer without usage (a proxy, an older server): counted as a stream
        # without one is (the log, the cost, the token reconciliation), and said
        ctx.usage = _answer_estimate(ctx, reply.data)
    h = headers(ctx, reply.content_type.encode("latin-1"))
    ctx.status = reply.status
    if reply.status >= 400:
        ctx.err_type = upstream_error_code(body, reply.status)
        if reply.status in _SDK_RETRIES or reply.status >= 500:
            # an expert's error answer reaches the client only when it is the request's
            # own (dispatch retried and failed over everything else): the OpenAI SDKs
            # retry a 5xx (408, 409, 429) unless told not to, the same request again
            h.append((b"x-should-retry", b"false"))
    if not reply.stream:
        if "usage-estimated" not in ctx.degraded:
            ctx.usage = usage_of(reply.data) if reply.status == 200 else (0, 0)
        try:  # inline, not _write: this is every non-streamed answer's path
            await send({"type": "http.response.start", "status": reply.status, "headers": h})
            await send({"type": "http.response.body", "body": body})
        except Exception as e:
            raise ClientDisconnected(f"{type(e).__name__}: {e}") from e
        return
    h.append((b"cache-control", b"no-cache"))
    await _write(send, {"type": "http.response.start", "status": reply.status, "headers": h})
    await _stream(gw, send, ctx, res)


def upstream_error_code(body: bytes, status: int) -> str:
    """What the log calls an expert's own error answer (a 4xx passed through): its OpenAI
    error ``code`` or ``type``, else ``upstream_<status>``."""
    try:
        err = orjson.loads(body).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        err = None
    if isinstance(err, dict):
        for k in ("code", "type"):
            v = err.get(k)
            if isinstance(v, str) and v:
                return v[:64]
    return f"upstream_{status}"


async def _stream(gw: Gateway, send: Send, ctx: RequestContext, res: DispatchResult) -> None:
    """The rest of a stream, each chunk checked (fed to the SSE check) before it is sent.
    ``stream_options.include_usage``: when the upstream ends without a usage event
    (llama.cpp never sends one), one is added before ``data: [DONE]``, marked
    ``"estimated": true``: completion tokens = generated pieces passed through (content,
    tool-call arguments, reasoning; per choice and event: one token each on llama.cpp and
    vLLM), prompt tokens = prompt characters / 4.

    Whose failure: what reading the upstream raises (a cut, a stall, an event that is not
    JSON) is the upstream's, and the stream ends with an error event; what writing to the
    client raises is the client's (:class:`ClientDisconnected`, see :func:`forward`)."""
    reply = res.reply
    sse = reply.sse
    if sse is None:
        sse = SSECheck()
        sse.feed(reply.first)
    want_usage = wants_usage(ctx.body)
    # an OpenAI-dialect expert was asked for its usage event though the client was not
    # (gateway/request/dispatch.py): it counts, and is taken out of the client's stream
    unasked = not want_usage and res.expert.kind == "openai" and \
        res.expert.dialect == "openai"
    p = ctx.plan
    model = p.model if p is not None and p.rt is not None and p.rt.config.rewrite_model \
        else None
    fix = stream_fix(res.expert.dialect) if ctx.endpoint == "chat" else None
    rw = _EventRewrite(model, fix) if model is not None or fix is not None else None
    held = b""  # (no rewrite) an unterminated last line, sent with its rest
    last = b""  # the end of what was sent
    try:
        chunk: bytes | None = reply.first
        it = reply.rest.__aiter__()
        while chunk is not None:
            if rw is not None:
                chunk = rw.feed(chunk)
            else:
                # whole lines only: a [DONE] split across reads still gets the usage event
                # before it, and an error event never lands inside a line the upstream cut.
                # No copy when the chunk ends a line (nearly always): both slices are free
                buf = held + chunk if held else chunk
                cut = buf.rfind(b"\n") + 1
                chunk, held = buf[:cut], buf[cut:]
            if unasked and sse.usage is not None:
                chunk, found = _without_usage_event(chunk)
                unasked = not found
            if want_usage and sse.done and sse.usage is None and sse.error is None and \
                    b"data: [DONE]" in chunk:
                i = chunk.index(b"data: [DONE]")
                await _write(send, {"type": "http.response.body", "body": chunk[:i],
                                    "more_body": True})
                await _write(send, {"type": "http.response.body",
                                    "body": _usage_event(ctx, sse), "more_body": True})
                chunk = chunk[i:]
            if chunk:
                try:  # inline, not _write: once per chunk
                    await send({"type": "http.response.body", "body": chunk,
                                "more_body": True})
                except Exception as e:
                    raise ClientDisconnected(f"{type(e).__name__}: {e}") from e
                last = chunk[-16:] if len(chunk) >= 16 else (last + chunk)[-16:]
            if sse.done:
                # the upstream's work is over: its replica and slot are free now, though
                # the rest of its body is still read below (to keep its connection)
                reply.ended()
                # the client has the whole answer: the OpenAI SDK closes the connection on
                # [DONE], so the gateway's end of the body must not wait for the upstream's
                # (and a client gone from here on is no disconnect: ctx.finished)
                if _open_event(last):  # [DONE]'s blank line has not come yet: end it
                    await _write(send, {"type": "http.response.body", "body": b"\n",
                                        "more_body": True})
                ctx.finished = True
                break
            try:
                chunk = await it.__anext__()
            except StopAsyncIteration:
                if sse.tail:  # the body ended within a line: that line ends here
                    chunk = b"\n"
                    sse.feed(chunk)
                else:
                    chunk = None
                    sse.finish()
            else:
                sse.feed(chunk)
        if sse.error is not None:
            _failed_midway(gw, ctx, res, sse.error)
        elif not sse.done:
            # the body ended without [DONE] (a close-delimited server that died, a proxy
            # ending the body on its own timeout): the answer was cut, whatever HTTP says
            raise StreamEndedEarly("ended without data: [DONE]")
        if sse.done:
            # a whole answer without a usage event (llama.cpp's, none asked): the routing
            # log, the cost and the token budget's reconciliation count the estimate, as
            # they do when the client asked for one; none was logged, 0 tokens
            ctx.usage = sse.usage or (_estimate(ctx, sse) if sse.error is None else (0, 0))
            await _write(send, {"type": "http.response.body", "body": b""})
            await _drain(it)
            return
    except ClientDisconnected:
        raise
    except Exception as e:  # never a cancellation: CancelledError is a BaseException
        # After the first byte nothing is retried (the upstream may have billed): end the
        # stream with a well-formed error event the OpenAI SDK raises on.
        reply.release()  # before the writes, which a slow client may hold up
        log.warning("stream from %s at %s broke after the first byte: %s: %s",
                    res.expert.name, res.replica, type(e).__name__, e)
        invalid = isinstance(e, UpstreamProtocolError)
        gw.metrics.upstream_errors.labels(
            res.expert.name, "too_large" if sse.too_long else
            "stream_invalid" if invalid else "stream_cut").inc()
        what = f"sent {e}" if sse.too_long else "sent an event that is not JSON" if invalid \
            else str(e) if isinstance(e, StreamEndedEarly) else \
            f"ended unexpectedly ({type(e).__name__})"
        code = "stream_invalid" if invalid else "stream_interrupted"
        ctx.status, ctx.err_type = 502, code
        ctx.degraded.append("stream-invalid" if invalid else "stream-cut")
        ctx.usage = sse.usage or (0, 0)
        err = {"error": {"message": f"upstream stream from {res.expert.name} {what}",
                         "type": "upstream_error", "param": None, "code": code}}
        try:
            await send({"type": "http.response.body", "more_body": True,
                        "body": _end_event(last) + b"data: " + orjson.dumps(err) + b"\n\n"})
            await send({"type": "http.response.body", "body": b""})
        except Exception as write_error:
            # the client is gone as well: the upstream's failure, first, stays the answer's
            log.debug("request %s: the client's connection failed under the error event: "
                      "%s", ctx.request_id, type(write_error).__name__)
        return
    finally:
        reply.release()
    ctx.usage = sse.usage or (0, 0)
    await _write(send, {"type": "http.response.body", "body": b""})


class StreamEndedEarly(Exception):
    """An upstream's stream body ended before ``data: [DONE]`` (and without an error
    event): a cut, though the HTTP body itself ended cleanly."""


def _failed_midway(gw: Gateway, ctx: RequestContext, res: DispatchResult, code: str) -> None:
    """The upstream reported an error within its stream (passed on to the client as it came,
    which the OpenAI SDK raises on): the request failed, though its status line said 200."""
    log.warning("stream from %s at %s reported an error after the first byte: %s",
                res.expert.name, res.replica, code)
    gw.metrics.upstream_errors.labels(res.expert.name, "stream_error").inc()
    ctx.status, ctx.err_type = 502, code
    ctx.degraded.append("stream-error")


def _end_event(sent: bytes) -> bytes:
    """What ends the event ``sent`` (the end of what was sent, whole lines) is within, so that
    an event the gateway adds is an event of its own: the blank line an SSE client dispatches
    on, or nothing when the last event has ended."""
    return b"\n" if sent and not sent.endswith((b"\n\n", b"\n\r\n")) else b""


def _open_event(sent: bytes) -> bool:
    """Whether ``sent`` (the end of what was sent) ends with the ``data: [DONE]`` line but
    not the blank line that ends its event (an SSE client dispatches an event on that blank
    line)."""
    body = sent.rstrip(b"\r\n")
    return body.endswith(b"[DONE]") and sent[len(body):] in (b"\n", b"\r\n", b"\r")


#: how long an upstream that sent ``[DONE]`` gets to end its body (so its connection is
#: kept for the next call) before the connection is closed instead
_AFTER_DONE_S = 1.0


async def _drain(it: AsyncIterator[bytes]) -> None:
    """Read what an upstream sends after ``[DONE]`` (its body's end), to nobody: the answer
    is complete, so nothing read or failing here changes it."""
    try:
        async with asyncio.timeout(_AFTER_DONE_S):
            async for _ in it:
                pass
    except Exception as e:  # a timeout, a cut: the connection is closed on release
        log.debug("upstream body after [DONE] not read to its end: %s", type(e).__name__)


class _EventRewrite:
    """A stream's events rewritten on their way: ``model`` set to the policy's name
    (``rewrite_model``, as a non-streamed answer gets it), and what the expert's dialect
    needs fixed (:func:`gateway.dialect.stream_fix`). Whole lines only (the rest of a line
    waits for its next chunk); an event that changes is re-serialised, the others pass as
    they came."""

    __slots__ = ("fix", "model", "tail")

    def __init__(self, model: str | None, fix: ToolDeltas | None = None) -> None:
        self.model = model
        self.fix = fix
        self.tail = b""

    def feed(self, chunk: bytes) -> bytes:
        buf = self.tail + chunk if self.tail else chunk
        cut = buf.rfind(b"\n") + 1
        self.tail = buf[cut:]
        if not cut:
            return b""
        return b"\n".join(self._line(ln) for ln in buf[:cut - 1].split(b"\n")) + b"\n"

    def _line(self, line: bytes) -> bytes:
        if not line.startswith(b"data:"):
            return line
        fix = self.fix
        if self.model is None and (fix is None or not fix.concerns(line)):
            return line
        try:
            ev = exactjson.loads(line[5:])
        except ValueError:  # orjson's JSONDecodeError among them
            return line  # [DONE], or an invalid line the SSE check ends the stream on
        if not isinstance(ev, dict):
            return line
        changed = fix is not None and fix.fix(ev)
        if self.model is not None and "model" in ev:
            ev["model"] = self.model
            changed = True
        if not changed:
            return line
        return b"data: " + exactjson.dumps(ev) + (b"\r" if line.endswith(b"\r") else b"")


def _without_usage_event(chunk: bytes) -> tuple[bytes, bool]:
    """``chunk`` without the usage event (``"choices":[]`` and ``"usage":{``, with its
    blank line), and whether it held one: what a client that asked for none must not get."""
    i = chunk.find(b'"choices":[]')
    if i < 0:
        i = chunk.find(b'"choices": []')
        if i < 0:
            return chunk, False
    start = chunk.rfind(b"\n", 0, i) + 1
    end = chunk.find(b"\n", i) + 1  # the event's line (the chunk holds whole lines)
    if end == 0 or b'"usage":' not in chunk[start:end] or \
            not chunk.startswith(b"data:", start):
        return chunk, False
    for blank in (b"\n", b"\r\n"):  # and the blank line that ends the event
        if chunk.startswith(blank, end):
            end += len(blank)
            break
    return chunk[:start] + chunk[end:], True


def _prompt_estimate(ctx: RequestContext) -> int:
    return max(estimate_tokens({"prompt": ctx.body.get("prompt")}, 0,
                               ctx.message_texts()) - 1, 1)


def _estimate(ctx: RequestContext, sse: SSECheck) -> tuple[int, int]:
    """The stream's usage counted by the gateway (see :func:`_stream`), noted as such in
    the routing log (``usage-estimated``)."""
    usage = sse.usage = (_prompt_estimate(ctx), sse.events)
    ctx.degraded.append("usage-estimated")
    return usage


def _reports_usage(data: Any) -> bool:
    """Whether a whole answer reports its usage (as a stream's usage event counts: some
    tokens said)."""
    u = data.get("usage") if isinstance(data, dict) else None
    return isinstance(u, dict) and bool(u.get("prompt_tokens") or u.get("completion_tokens"))


def _answer_estimate(ctx: RequestContext, data: Any) -> tuple[int, int]:
    """A whole answer's usage counted by the gateway when the upstream reports none:
    prompt characters / 4 (as for a stream), generated characters / 4 (content, reasoning,
    tool-call arguments, a completion's text; at least 1 per choice); ``usage-estimated``."""
    generated = 0
    choices = data.get("choices") if isinstance(data, dict) else None
    for ch in choices if isinstance(choices, list) else []:
        if not isinstance(ch, dict):
            continue
        m = ch.get("message")
        msg: dict[str, Any] = m if isinstance(m, dict) else {}
        parts = [ch.get("text"), msg.get("content"), msg.get("reasoning_content")]
        for call in msg.get("tool_calls") or []:
            if isinstance(call, dict) and isinstance(call.get("function"), dict):
                parts.append(call["function"].get("arguments"))
        chars = sum(len(x) for x in parts if isinstance(x, str))
        generated += max(-(-chars // 4), 1)
    ctx.degraded.append("usage-estimated")
    return _prompt_estimate(ctx), generated


def _usage_event(ctx: RequestContext, sse: SSECheck) -> bytes:
    """The usage event the gateway adds, counted by the gateway (see :func:`_stream`)."""
    payload = ctx.body
    p, c = _estimate(ctx, sse)
    rid, model, obj = sse.ident or ("eg-usage", str(payload.get("model")),
                                    "chat.completion.chunk")
    plan = ctx.plan
    if plan is not None and plan.rt is not None and plan.rt.config.rewrite_model:
        model = plan.model
    ev = {"id": rid, "object": obj, "created": int(time.time()), "model": model,
          "choices": [], "usage": {"prompt_tokens": p, "completion_tokens": c,
                                   "total_tokens": p + c, "estimated": True}}
    return b"data: " + orjson.dumps(ev) + b"\n\n"


def _tool_calls(data: Any) -> list[dict[str, Any]] | None:
    """The tool calls of a non-streamed chat answer, if it made any."""
    try:
        calls = data["choices"][0]["message"].get("tool_calls")
    except (KeyError, IndexError, TypeError, AttributeError):
        return None
    if not isinstance(calls, list):
        return None
    return [c for c in calls if isinstance(c, dict)] or None


def _refusal(payload: dict[str, Any], endpoint: str, message: str, policy: str,
             stream: bool, id_prefix: str = "egrej-", usage: tuple[int, int] = (0, 0),
             tool_calls: list[dict[str, Any]] | None = None) -> tuple[bytes, bytes]:
    """An answer the gateway writes (a refusal; an ensemble's member answer when its
    aggregation failed): a completion, or the stream of one, which ends with a usage event
    (``usage``: the tokens behind it) when the client asked for one, as upstream streams do."""
    rid = id_prefix + uuid.uuid4().hex[:24]
    now = int(time.time())
    k = answers_asked(payload, endpoint)  # one choice per prompt and per n, as upstreams do
    tail = b""
    if stream and wants_usage(payload):
        obj = "chat.completion.chunk" if endpoint == "chat" else "text_completion"
        ev = {"id": rid, "object": obj, "created": now, "model": policy, "choices": [],
              "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1],
                        "total_tokens": usage[0] + usage[1]}}
        tail = b"data: " + orjson.dumps(ev) + b"\n\n"
    if endpoint == "chat":
        if stream:
            # an answer that is tool calls streams as tool calls (each with its index), as an
            # upstream's stream does, not as their text
            delta: dict[str, Any] = {"role": "assistant", "content": message} \
                if not tool_calls else {"role": "assistant", "content": None, "tool_calls": [
                    {"index": i, **c} for i, c in enumerate(tool_calls)]}
            ev1 = {"id": rid, "object": "chat.completion.chunk", "created": now, "model": policy,
                   "choices": [{"index": i, "delta": delta, "finish_reason": None}
                               for i in range(k)]}
            ev2 = {"id": rid, "object": "chat.completion.chunk", "created": now, "model": policy,
                   "choices": [{"index": i, "delta": {},
                                "finish_reason": "tool_calls" if tool_calls else "stop"}
                               for i in range(k)]}
            return (b"text/event-stream", b"data: " + orjson.dumps(ev1) + b"\n\ndata: " +
                    orjson.dumps(ev2) + b"\n\n" + tail + b"data: [DONE]\n\n")
        body = {"id": rid, "object": "chat.completion", "created": now, "model": policy,
                "choices": [{"index": i, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": message}}
                            for i in range(k)],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}
        return _JSON, orjson.dumps(body)
    body = {"id": rid, "object": "text_completion", "created": now, "model": policy,
            "choices": [{"index": i, "text": message, "finish_reason": "stop",
                         "logprobs": None} for i in range(k)],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}
    if stream:
        del body["usage"]  # in its own event, as a streamed completion's usage comes
        return (b"text/event-stream", b"data: " + orjson.dumps(body) + b"\n\n" + tail +
                b"data: [DONE]\n\n")
    return _JSON, orjson.dumps(body)

