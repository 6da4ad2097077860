"""POST /v1/chat/completions, /v1/completions and /v1/embeddings: the hot path, raw ASGI.

The body is parsed once with orjson and validated by hand (no per-request pydantic model);
the upstream's bytes are passed through untouched (a streamed reply is checked line by line
as it passes: an SSE event that is not JSON ends the stream with an error event). The FastAPI
app only documents these routes (gateway/api/protocol.py holds their schemas); requests
never reach it.

``stream_options.include_usage``: when the upstream ends a stream without a usage event
(llama.cpp never sends one), the gateway adds one before ``data: [DONE]``, counted by the
gateway and marked ``"estimated": true``: completion tokens = content events passed through
(one token each on llama.cpp and vLLM), prompt tokens = prompt characters / 4.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

import orjson

from gateway.auth import RequestIds
from gateway.dispatch import DispatchResult
from gateway.errors import (
    GatewayError,
    GuardRejected,
    InvalidRequest,
    PayloadTooLarge,
    RequestTimeout,
    ServiceUnavailable,
    UnknownModel,
    UpstreamError,
)
from gateway.pipeline import PolicyRuntime, routing_text
from gateway.ratelimit import Limits, RateDecision, estimate_tokens
from gateway.upstreams import SSECheck, UpstreamProtocolError
from routers.base import Decision

if TYPE_CHECKING:
    from gateway.app import Gateway

__all__ = ["BodyReads", "client_request_id", "handle_generate", "header_value", "read_body",
           "request_id"]

log = logging.getLogger("expertgate.chat")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def request_id(scope: Scope) -> str:
    """A fresh id for a response of the FastAPI part (no routing-log record, so it verifies
    for no tenant and no feedback can name it). A client's ``x-request-id`` is never the id:
    see :func:`client_request_id`."""
    return os.urandom(24).hex()


def client_request_id(scope: Scope) -> str | None:
    """The client's ``x-request-id``, kept for correlation only (logged, echoed as
    ``x-client-request-id``): printable ASCII, at most 128 characters."""
    for k, v in scope.get("headers", ()):
        if k == b"x-request-id":
            return header_value(v.decode("latin-1")[:128]) or None
    return None


_ROLES = frozenset({"system", "user", "assistant", "tool", "developer", "function"})
_JSON = b"application/json"


def header_value(s: str) -> str:
    """``s`` as a valid HTTP header value: one line, printable ASCII, at most 240 chars (a
    reason may quote client input, e.g. an unknown model name)."""
    s = " ".join(s.split())[:240]
    return "".join(c if " " <= c <= "~" else "?" for c in s)


def _hdr_value(s: str) -> bytes:
    return header_value(s).encode()


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


async def read_body(receive: Receive, scope: Scope, limit: int, timeout_s: float,
                    reads: BodyReads | None = None) -> bytes:
    """The whole body, or an error before it is parsed: over ``limit`` bytes (413, from the
    content-length header when there is one), not all there within ``timeout_s`` (408), or
    the server shutting down meanwhile (503)."""
    for k, v in scope.get("headers", ()):
        if k == b"content-length":
            try:
                n = int(v)
            except ValueError:
                raise InvalidRequest("invalid content-length header") from None
            if n > limit:
                raise PayloadTooLarge(f"request body of {n} bytes exceeds the limit of "
                                      f"{limit} bytes", headers={"connection": "close"})
            break
    chunks: list[bytes] = []
    size = 0
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
                        raise asyncio.CancelledError("client disconnected")
                    b = msg.get("body", b"")
                    if b:
                        size += len(b)
                        if size > limit:
                            raise PayloadTooLarge(f"request body exceeds the limit of {limit} "
                                                  "bytes", headers={"connection": "close"})
                        chunks.append(b)
                    if not msg.get("more_body", False):
                        break
            finally:
                if reads is not None:
                    reads.active.discard(deadline)
    except TimeoutError:
        if reads is not None and reads.closing:
            raise ServiceUnavailable("the gateway is shutting down; retry the request",
                                     code="shutting_down",
                                     headers={"connection": "close"}) from None
        raise RequestTimeout(f"the request body did not arrive within {timeout_s:g}s",
                             headers={"connection": "close"}) from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def parse_payload(raw: bytes, endpoint: str, max_messages: int) -> dict[str, Any]:
    if not raw:
        raise InvalidRequest("request body is empty; expected a JSON object")
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise InvalidRequest(f"request body is not valid JSON: {e.msg} at position {e.pos}"
                             ) from None
    if not isinstance(payload, dict):
        raise InvalidRequest("request body must be a JSON object")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a non-empty string",
                             param="model")
    if endpoint == "embeddings":
        inp = payload.get("input")
        if not (isinstance(inp, str) and inp) and not (
                isinstance(inp, list) and inp and all(
                    (isinstance(x, str | int) and not isinstance(x, bool)) or (
                        isinstance(x, list) and all(isinstance(t, int) for t in x))
                    for x in inp)):
            raise InvalidRequest("'input' must be a non-empty string, array of strings, or "
                                 "array of token arrays", param="input")
        if payload.get("stream"):
            raise InvalidRequest("embeddings cannot be streamed", param="stream")
        return payload
    if endpoint == "chat":
        msgs = payload.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise InvalidRequest("'messages' must be a non-empty array", param="messages")
        if len(msgs) > max_messages:
            raise InvalidRequest(f"too many messages ({len(msgs)}; at most {max_messages})",
                                 param="messages")
        for i, m in enumerate(msgs):
            if not isinstance(m, dict):
                raise InvalidRequest(f"messages[{i}] must be an object", param=f"messages.{i}")
            role = m.get("role")
            # a dict or list is unhashable: test the type before the set lookup (found by fuzz)
            if not isinstance(role, str) or role not in _ROLES:
                raise InvalidRequest(f"messages[{i}].role must be one of "
                                     f"{', '.join(sorted(_ROLES))}", param=f"messages.{i}.role")
            c = m.get("content")
            if c is not None and not isinstance(c, str | list):
                raise InvalidRequest(f"messages[{i}].content must be a string or an array",
                                     param=f"messages.{i}.content")
    else:
        p = payload.get("prompt")
        if not (isinstance(p, str) and p) and not (
                isinstance(p, list) and p and all(isinstance(x, str) for x in p)):
            raise InvalidRequest("'prompt' must be a non-empty string or array of strings",
                                 param="prompt")
    s = payload.get("stream", False)
    if not isinstance(s, bool):
        raise InvalidRequest("'stream' must be a boolean", param="stream")
    for k in ("max_tokens", "max_completion_tokens", "n"):
        v = payload.get(k)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise InvalidRequest(f"'{k}' must be a positive integer", param=k)
    return payload


def _completions_text(payload: dict[str, Any]) -> str:
    p = payload["prompt"]
    t = p if isinstance(p, str) else " ".join(p)
    t = " ".join(t.split())
    if not t:
        raise InvalidRequest("'prompt' has no text to route on", param="prompt")
    return t


def _usage(body: bytes, data: Any = None) -> tuple[int, int]:
    try:
        obj = data if data is not None else orjson.loads(body)
        u = obj.get("usage") or {}
        return int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0)
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
        return 0, 0


#: characters of the conversation's start that key replica affinity (~256 tokens)
AFFINITY_CHARS = 1024


def affinity_key(payload: dict[str, Any], endpoint: str) -> bytes:
    """The start of the prompt as the model reads it: the system prompt, then the first user
    turn (for chat). Requests sharing a long prefix (a system prompt over AFFINITY_CHARS)
    share a key, so they meet the replica whose prefix cache holds it; a conversation keeps
    its key turn after turn; distinct short prompts get distinct keys and spread."""
    if endpoint == "chat":
        parts: list[str] = []
        for m in payload["messages"]:
            c = m.get("content")
            t = c if isinstance(c, str) else " ".join(
                p.get("text", "") for p in c if isinstance(p, dict)
                and isinstance(p.get("text"), str)) if isinstance(c, list) else ""
            parts.append(f"{m.get('role')}\x00{t}\x00")
            if m.get("role") == "user":
                break
        text = "".join(parts)
    else:
        v = payload.get("prompt" if endpoint == "completions" else "input")
        first = v[0] if isinstance(v, list) and v else v
        text = first if isinstance(first, str) else orjson.dumps(first).decode()
    return text[:AFFINITY_CHARS].encode("utf-8", "surrogatepass")


def _refusal(payload: dict[str, Any], endpoint: str, message: str, policy: str,
             stream: bool, id_prefix: str = "egrej-") -> tuple[bytes, bytes]:
    rid = id_prefix + uuid.uuid4().hex[:24]
    now = int(time.time())
    if endpoint == "chat":
        if stream:
            ev1 = {"id": rid, "object": "chat.completion.chunk", "created": now, "model": policy,
                   "choices": [{"index": 0, "delta": {"role": "assistant", "content": message},
                                "finish_reason": None}]}
            ev2 = {"id": rid, "object": "chat.completion.chunk", "created": now, "model": policy,
                   "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            return (b"text/event-stream", b"data: " + orjson.dumps(ev1) + b"\n\ndata: " +
                    orjson.dumps(ev2) + b"\n\ndata: [DONE]\n\n")
        body = {"id": rid, "object": "chat.completion", "created": now, "model": policy,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": message}}],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}
        return _JSON, orjson.dumps(body)
    body = {"id": rid, "object": "text_completion", "created": now, "model": policy,
            "choices": [{"index": 0, "text": message, "finish_reason": "stop",
                         "logprobs": None}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}
    if stream:
        return b"text/event-stream", b"data: " + orjson.dumps(body) + b"\n\ndata: [DONE]\n\n"
    return _JSON, orjson.dumps(body)


class _Ctx:
    """Per-request facts gathered for headers and the routing-log record."""

    __slots__ = (
        "_ids",
        "_nonce",
        "_request_id",
        "_tenant",
        "arm",
        "cache",
        "chain",
        "client_request_id",
        "decision",
        "degraded",
        "endpoint",
        "expert",
        "explore",
        "extra_cost_usd",
        "extra_tokens",
        "key_id",
        "members",
        "policy",
        "rate",
        "reason",
        "replica",
        "routed_text",
        "rt",
        "started",
        "stream",
        "t0",
        "text",
        "text_hash",
        "upstream_ms",
    )

    def __init__(self, ids: RequestIds, client_request_id: str | None, endpoint: str,
                 t0: float) -> None:
        self._ids = ids
        self._nonce = ids.nonce()
        self._request_id = ""
        self._tenant = "anonymous"
        #: the client's own x-request-id: logged and echoed, never the record's id
        self.client_request_id = client_request_id
        self.endpoint = endpoint
        self.t0 = t0
        self.policy = ""
        self.rt: PolicyRuntime | None = None
        self.decision: Decision | None = None
        self.expert = ""
        self.replica = ""
        self.cache = "none"
        self.reason = ""
        self.degraded: list[str] = []
        #: the experts the dispatcher was asked to try, in order
        self.chain: list[str] = []
        #: time spent in upstream calls (all attempts) for a non-streamed answer
        self.upstream_ms: float | None = None
        self.stream = False
        self.text: str | None = None
        self.text_hash: str | None = None
        self.rate: RateDecision | None = None
        self.key_id = ""
        self.started = False
        #: exploration fields of the routing log (routers/explore.py LOG_FIELDS)
        self.explore: dict[str, Any] | None = None
        #: "canary" or "incumbent" beside a serving canary, else None
        self.arm: str | None = None
        #: the routing text of an online-learning policy (kept in memory for feedback only)
        self.routed_text: str | None = None
        #: an ensemble's members that answered, and what their calls cost beyond the answer's
        self.members: list[str] = []
        self.extra_cost_usd = 0.0
        self.extra_tokens = 0

    @property
    def tenant(self) -> str:
        return self._tenant

    @tenant.setter
    def tenant(self, name: str) -> None:
        self._tenant = name
        self._request_id = ""  # the id names its tenant: made once the tenant is known

    @property
    def request_id(self) -> str:
        """The gateway's id (see :class:`gateway.auth.RequestIds`): unguessable, and only
        the tenant that made the request can send feedback for it."""
        if not self._request_id:
            self._request_id = self._ids.issue(self._nonce, self._tenant)
        return self._request_id

    def headers(self, extra: list[tuple[bytes, bytes]] | None = None
                ) -> list[tuple[bytes, bytes]]:
        # Every response carries the same set (README): "none" and 0 say "nothing of this
        # kind happened" (a pass-through has no policy and took no decision time).
        ms = 0.0
        if self.decision is not None:
            ms = self.decision.timings_ms.get("total", sum(self.decision.timings_ms.values()))
        h = [(b"x-request-id", self.request_id.encode()),
             (b"x-expertgate-policy", (self.policy or "none").encode()),
             (b"x-expertgate-expert", (self.expert or "none").encode()),
             (b"x-expertgate-cache", self.cache.encode()),
             (b"x-expertgate-decision-ms", f"{ms:.3f}".encode()),
             (b"x-expertgate-reason", _hdr_value(self.reason or "none"))]
        if self.client_request_id is not None:
            h.append((b"x-client-request-id", self.client_request_id.encode()))
        if self.degraded:
            h.append((b"x-expertgate-degraded", ",".join(self.degraded).encode()))
        ex = self.explore
        if ex is not None and ex["propensity"] is not None:
            h.append((b"x-expertgate-propensity", f"{ex['propensity']:.6g}".encode()))
            if ex["explored"]:
                h.append((b"x-expertgate-explored", str(ex["greedy_expert"]).encode()))
        if self.arm is not None:
            h.append((b"x-expertgate-arm", self.arm.encode()))
        if self.members:
            h.append((b"x-expertgate-ensemble", ",".join(self.members).encode()))
        if self.rate is not None and self.rate.allowed:
            h.extend(self.rate.headers())
        if extra:
            h.extend(extra)
        return h


async def _send_error(send: Send, err: GatewayError, ctx: _Ctx) -> None:
    headers = ctx.headers([(b"content-type", _JSON)])
    for k, v in err.headers.items():
        headers.append((k.lower().encode(), v.encode()))
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": err.body()})


async def handle_generate(gw: Gateway, scope: Scope, receive: Receive, send: Send,
                          endpoint: str) -> None:
    t0 = time.perf_counter()
    ctx = _Ctx(gw.request_ids, client_request_id(scope), endpoint, t0)
    gw.metrics.inflight.inc()
    status = 500
    err_type: str | None = None
    usage = (0, 0)

    async def tracked_send(msg: MutableMapping[str, Any]) -> None:
        ctx.started = True
        await send(msg)

    try:
        status, usage = await _generate(gw, scope, receive, tracked_send, ctx)
    except GatewayError as e:
        status, err_type = e.status, e.code
        if isinstance(e, UpstreamError) and ctx.chain and ctx.policy:
            # a routed request whose every expert failed: say so, never silently
            ctx.degraded.append("expert-fallback" if len(ctx.chain) > 1 else "expert-failed")
            ctx.reason = (f"{ctx.reason}; " if ctx.reason else "") + (
                f"every expert failed ({', '.join(ctx.chain)})")
        ctx.reason = ctx.reason or e.message
        await _send_error(send, e, ctx)
    except asyncio.CancelledError:
        status, err_type = 499, "client_disconnected"
        if gw.draining and not ctx.started:
            # the server's graceful-shutdown time ran out: an OpenAI-shaped 503 the client can
            # retry elsewhere, rather than the server's plain-text 500
            status, err_type = 503, "shutting_down"
            with contextlib.suppress(Exception):
                await _send_error(send, ServiceUnavailable(
                    "the gateway is shutting down; retry the request", code="shutting_down",
                    headers={"connection": "close"}), ctx)
        raise
    except Exception:
        # a bug, never an expected path: log the traceback, answer an OpenAI-shaped 500
        # without details (or let the server close a response that already started)
        log.exception("unexpected error in %s request %s", endpoint, ctx.request_id)
        err_type = "internal_error"
        if ctx.started:
            raise
        await _send_error(send, GatewayError("internal error"), ctx)
    finally:
        if ctx.rate is not None and ctx.rate.allowed:
            _reconcile_later(gw, ctx, status, usage)
        gw.metrics.inflight.dec()
        lat = time.perf_counter() - t0
        m = gw.metrics
        for component in ctx.degraded:  # one count per degraded response and component
            m.child(m.degraded, component).inc()
        m.child(m.latency, endpoint).observe(lat)
        m.child(m.requests, endpoint, ctx.policy or "-", ctx.expert or "-", str(status)).inc()
        if ctx.arm is not None:
            gw.observe_arm(ctx, status)
        if ctx.routed_text is not None:
            gw.remember_online(ctx, status)
        gw.log_request(ctx, status, err_type, lat * 1000, usage)


async def _generate(gw: Gateway, scope: Scope, receive: Receive, send: Send, ctx: _Ctx
                    ) -> tuple[int, tuple[int, int]]:
    settings = gw.settings
    raw = await read_body(receive, scope, settings.max_body_bytes, settings.body_timeout_s,
                          gw.body_reads)
    payload = parse_payload(raw, ctx.endpoint, settings.max_messages)
    model: str = payload["model"]
    principal = await gw.auth.resolve(scope.get("headers", ()), model)
    ctx.tenant = principal.tenant
    stream = bool(payload.get("stream", False))
    ctx.stream = stream
    pset = gw.policy_set
    rt = pset.policies.get(model)
    cfg = pset.config
    api_key = principal.key
    if api_key is not None and (api_key.requests_per_minute or api_key.tokens_per_minute):
        limits = Limits(api_key.requests_per_minute, api_key.tokens_per_minute)
        est = estimate_tokens(payload, rt.config.max_tokens_cap if rt is not None else None)
        ctx.key_id = api_key.sha256[:16]
        ctx.rate = await gw.ratelimiter.acquire(ctx.key_id, limits, est)
        if ctx.rate.backend == "local" and gw.ratelimiter.redis is not None:
            ctx.degraded.append("ratelimit-local")  # shared limits unavailable: per replica
        if not ctx.rate.allowed:
            raise ctx.rate.error()
    deadline = time.monotonic() + settings.request_deadline_s
    if ctx.endpoint == "embeddings":
        expert = cfg.expert(model)
        if expert is None and rt is None:
            raise UnknownModel(f"The model '{model}' does not exist: it is neither an expert "
                               "nor a policy of this gateway (see GET /v1/models)",
                               param="model")
        if expert is None or not expert.embeddings:
            raise InvalidRequest(f"'{model}' does not serve embeddings: name an expert "
                                 "configured with 'embeddings: true'", param="model",
                                 code="model_not_supported")
        chain = [model]
        ctx.reason = "explicit expert (no routing)"
    elif rt is None:
        expert = cfg.expert(model)
        if expert is None:
            raise UnknownModel(f"The model '{model}' does not exist: it is neither an expert "
                               "nor a policy of this gateway (see GET /v1/models)",
                               param="model")
        chain = [model]
        ctx.reason = "explicit expert (no routing)"
    else:
        ctx.policy = model
        ctx.rt = rt
        pol = rt.config
        text = (routing_text(payload["messages"], pol.routing_text) if ctx.endpoint == "chat"
                else _completions_text(payload))
        ctx.text_hash = hashlib.blake2b(text.encode("utf-8", "surrogatepass"),
                                        digest_size=16).hexdigest()
        if pol.log_prompts:
            ctx.text = text
        if pol.online:
            ctx.routed_text = text
        d, ctx.arm = await gw.pipeline.route(rt, text, ctx.degraded)
        d, ctx.explore = gw.pipeline.explore(
            rt.candidate.runtime if ctx.arm == "canary" and rt.candidate is not None else rt, d)
        ctx.decision = d
        ctx.cache = "hit" if d.cached else ("bypass" if "cache" in ctx.degraded else "miss")
        ctx.reason = d.reason
        gw.metrics.child(gw.metrics.decisions, model, d.expert or "-", d.mode).inc()
        cap = pol.max_tokens_cap
        if cap is not None:
            # both names bound the completion (max_completion_tokens is the newer one, and
            # what LangChain sends): cap each one given, or set max_tokens when neither is
            given = [k for k in ("max_tokens", "max_completion_tokens")
                     if payload.get(k) is not None]
            for k in given:
                payload[k] = min(payload[k], cap)
            if not given:
                payload["max_tokens"] = cap
        if d.mode == "reject":
            rej = pol.on_reject
            reason = d.guard.reject_reason if d.guard and d.guard.reject_reason else "router"
            gw.metrics.rejections.labels(model, reason).inc()
            if rej.action == "error":
                raise GuardRejected(f"{rej.message} ({d.reason})", status=rej.status,
                                    param="messages" if ctx.endpoint == "chat" else "prompt")
            if rej.action == "refusal":
                ctype, body = _refusal(payload, ctx.endpoint, rej.message, model, stream)
                ctx.expert = ""
                await send({"type": "http.response.start", "status": 200,
                            "headers": ctx.headers([(b"content-type", ctype)])})
                await send({"type": "http.response.body", "body": body})
                return 200, (0, 0)
            assert rej.expert is not None
            chain = [rej.expert]
            ctx.degraded.append("rejected-to-fallback")
            gw.metrics.fallbacks.labels(model, "rejected").inc()
        else:
            if d.mode == "ensemble" and d.aggregator and len(d.targets) > 1:
                return await _ensemble(gw, payload, d, ctx, send, deadline)
            chain = [t.expert for t in d.targets[:pol.max_attempts]]
            for f in pol.fallback:
                if f not in chain:
                    chain.append(f)
            if not chain:
                raise GuardRejected("the router chose no expert", status=400)
    path = _PATHS[ctx.endpoint]
    ctx.chain = chain
    res = await gw.dispatcher.call(chain, path, payload, _body_for(payload, raw, model),
                                   stream=stream, affinity=affinity_key(payload, ctx.endpoint),
                                   deadline=deadline)
    return await _respond(gw, res, ctx, send, chain, payload)


_PATHS = {"chat": "/chat/completions", "completions": "/completions",
          "embeddings": "/embeddings"}


def _reconcile_later(gw: Gateway, ctx: _Ctx, status: int, usage: tuple[int, int]) -> None:
    """Correct the up-front token charge with the upstream's usage, off the response path."""
    rate = ctx.rate
    assert rate is not None
    if usage != (0, 0):
        actual = usage[0] + usage[1] + ctx.extra_tokens
    elif status >= 400 and "stream-cut" not in ctx.degraded and not (
            ctx.stream and ctx.started):
        actual = 0  # nothing was generated: give the estimate back
    else:
        return  # a stream without usage, cut, or left by its client: the estimate stands
    gw.ratelimiter.reconcile_soon(ctx.key_id, rate, actual)


def _body_for(payload: dict[str, Any], raw: bytes, requested: str
              ) -> Callable[[Any], bytes]:
    cache: dict[str, bytes] = {}
    modified = [False]

    def body_for(expert: Any) -> bytes:
        name = expert.upstream_model
        b = cache.get(name)
        if b is None:
            if name == requested and not modified[0] and payload.get("model") == requested:
                b = raw  # nothing to rewrite: pass the client's bytes through untouched
            else:
                payload["model"] = name
                try:
                    b = orjson.dumps(payload)
                except TypeError:  # orjson writes at most 254 levels of nesting
                    raise InvalidRequest("the request's JSON is nested too deeply to forward "
                                         "(at most 254 levels)") from None
                modified[0] = True
            cache[name] = b
        return b

    return body_for


async def _respond(gw: Gateway, res: DispatchResult, ctx: _Ctx, send: Send, chain: list[str],
                   payload: dict[str, Any]) -> tuple[int, tuple[int, int]]:
    reply = res.reply
    ctx.expert = res.expert.name
    if not reply.stream:  # the whole answer was read within the attempts' time
        ctx.upstream_ms = sum(a.ms for a in res.attempts)
    ctx.replica = res.replica
    if res.fallback or res.expert.name != chain[0]:
        ctx.degraded.append("expert-fallback")
        failed = [a for a in res.attempts if a.outcome != "ok"]
        ctx.reason = (f"{ctx.reason}; fallback to {res.expert.name} after "
                      f"{', '.join(f'{a.expert}:{a.outcome}' for a in failed)}")
        gw.metrics.fallbacks.labels(ctx.policy or "-", "upstream").inc()
    rt = ctx.rt
    rewrite = rt is not None and rt.config.rewrite_model and not reply.stream
    body = reply.first
    if rewrite and reply.status == 200 and isinstance(reply.data, dict):
        reply.data["model"] = ctx.policy
        body = orjson.dumps(reply.data)
    headers = ctx.headers([(b"content-type", reply.content_type.encode("latin-1"))])
    if not reply.stream:
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return reply.status, (_usage(body, reply.data) if reply.status == 200 else (0, 0))
    headers.append((b"cache-control", b"no-cache"))
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    sse = reply.sse
    if sse is None:
        sse = SSECheck()
        sse.feed(body)
    opts = payload.get("stream_options")
    want_usage = isinstance(opts, dict) and opts.get("include_usage") is True
    status = reply.status
    try:
        chunk: bytes | None = body  # each chunk is checked (fed) before it is sent
        it = reply.rest.__aiter__()
        while chunk is not None:
            if want_usage and sse.done and sse.usage is None and b"data: [DONE]" in chunk:
                i = chunk.index(b"data: [DONE]")
                await send({"type": "http.response.body", "body": chunk[:i], "more_body": True})
                sse.usage = _estimated_usage(payload, sse)
                await send({"type": "http.response.body", "body": _usage_event(sse, payload),
                            "more_body": True})
                ctx.degraded.append("usage-estimated")
                chunk = chunk[i:]
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            try:
                chunk = await it.__anext__()
            except StopAsyncIteration:
                chunk = None
            else:
                sse.feed(chunk)
        if want_usage and sse.usage is None:  # the upstream ended without [DONE]
            sse.usage = _estimated_usage(payload, sse)
            await send({"type": "http.response.body", "body": _usage_event(sse, payload),
                        "more_body": True})
            ctx.degraded.append("usage-estimated")
    except (TimeoutError, OSError, UpstreamProtocolError, Exception) as e:
        if isinstance(e, asyncio.CancelledError):
            raise
        # After the first byte nothing is retried (the upstream may have billed): end the
        # stream with a well-formed error event the OpenAI SDK raises on.
        log.warning("stream from %s at %s broke after the first byte: %s: %s",
                    res.expert.name, res.replica, type(e).__name__, e)
        invalid = isinstance(e, UpstreamProtocolError)
        gw.metrics.upstream_errors.labels(res.expert.name,
                                          "stream_invalid" if invalid else "stream_cut").inc()
        what = "sent an event that is not JSON" if invalid else \
            f"ended unexpectedly ({type(e).__name__})"
        err = {"error": {"message": f"upstream stream from {res.expert.name} {what}",
                         "type": "upstream_error", "param": None,
                         "code": "stream_invalid" if invalid else "stream_interrupted"}}
        await send({"type": "http.response.body",
                    "body": b"data: " + orjson.dumps(err) + b"\n\n", "more_body": True})
        status = 502
        ctx.degraded.append("stream-invalid" if invalid else "stream-cut")
    finally:
        reply.release()
    await send({"type": "http.response.body", "body": b""})
    return status, sse.usage or (0, 0)


def _estimated_usage(payload: dict[str, Any], sse: SSECheck) -> tuple[int, int]:
    prompt = estimate_tokens({k: payload.get(k) for k in ("messages", "prompt")}, 0) - 1
    return max(prompt, 1), sse.events


def _usage_event(sse: SSECheck, payload: dict[str, Any]) -> bytes:
    assert sse.usage is not None
    p, c = sse.usage
    rid, model, obj = sse.ident or ("eg-usage", str(payload.get("model")),
                                    "chat.completion.chunk")
    ev = {"id": rid, "object": obj, "created": int(time.time()), "model": model,
          "choices": [], "usage": {"prompt_tokens": p, "completion_tokens": c,
                                   "total_tokens": p + c, "estimated": True}}
    return b"data: " + orjson.dumps(ev) + b"\n\n"


async def _ensemble(gw: Gateway, payload: dict[str, Any], d: Decision, ctx: _Ctx, send: Send,
                    deadline: float) -> tuple[int, tuple[int, int]]:
    """Symbolic-MoE style: k experts answer concurrently, the aggregator synthesises.

    Every call is paid for: the members' cost goes into the request's ``cost_usd``. When the
    aggregator (and the policy's fallback chain after it) fails, the best member's answer is
    the response (``x-expertgate-degraded: ensemble-unaggregated``), not an error.
    """
    experts = [t.expert for t in d.targets]
    path = _PATHS[ctx.endpoint]
    sub = {k: v for k, v in payload.items() if k not in ("stream", "stream_options")}

    async def one(name: str) -> tuple[str, str | None, DispatchResult | None]:
        p = dict(sub)
        try:
            res = await gw.dispatcher.call([name], path, p, _body_for(p, b"", ""),
                                           stream=False, affinity=name.encode(),
                                           deadline=deadline)
        except UpstreamError as e:
            log.warning("ensemble member %s failed: %s", name, e)
            return name, None, None
        if res.reply.status != 200:
            return name, None, None
        try:
            ch = res.reply.data["choices"][0]
            return name, (ch.get("message") or {}).get("content") or ch.get("text") or "", res
        except (KeyError, IndexError, TypeError, AttributeError):
            return name, None, None

    answers = await asyncio.gather(*(one(e) for e in experts))
    for _, _, res in answers:
        if res is not None:
            u = _usage(res.reply.first, res.reply.data)
            ctx.extra_cost_usd += _cost(res.expert, u)
            ctx.extra_tokens += u[0] + u[1]
            if u != (0, 0):
                m = gw.metrics
                m.child(m.tokens, res.expert.name, "prompt").inc(u[0])
                m.child(m.tokens, res.expert.name, "completion").inc(u[1])
    got = [(n, a, r) for n, a, r in answers if a and r is not None]
    if not got:
        raise UpstreamError("every ensemble member failed", code="ensemble_failed")
    ctx.members = [n for n, _, _ in got]
    if len(got) < len(experts):
        ctx.degraded.append("ensemble-partial")
    assert d.aggregator is not None
    listing = "\n\n".join(f"[Answer {i + 1}]\n{a}" for i, (_, a, _) in enumerate(got))
    agg = dict(payload)
    if ctx.endpoint == "chat":
        agg["messages"] = [*payload["messages"], {
            "role": "user",
            "content": "Several experts answered the request above. Combine their answers "
                       "into one best answer; correct mistakes.\n\n" + listing}]
    else:
        agg["prompt"] = f"{_completions_text(payload)}\n\n{listing}\n\nBest combined answer:"
    ctx.reason = f"{d.reason}; ensemble of {', '.join(ctx.members)} -> {d.aggregator}"
    chain = [d.aggregator]
    if ctx.rt is not None:
        chain += [f for f in ctx.rt.config.fallback if f not in chain]
    try:
        res = await gw.dispatcher.call(chain, path, agg, _body_for(agg, b"", ""),
                                       stream=bool(payload.get("stream")),
                                       affinity=d.aggregator.encode(), deadline=deadline)
    except UpstreamError as e:
        # the members answered: their best answer beats an error
        name, answer, best = got[0]
        assert best is not None and answer is not None
        log.warning("ensemble aggregation failed (%s); answering with %s", e, name)
        gw.metrics.degraded.labels("ensemble-aggregator").inc()
        ctx.degraded.append("ensemble-unaggregated")
        ctx.reason = f"{ctx.reason} failed; answered with {name}"
        ctx.expert, ctx.replica = name, best.replica
        u = _usage(best.reply.first, best.reply.data)
        ctx.extra_cost_usd -= _cost(best.expert, u)  # logged as the answer's own cost
        ctx.extra_tokens -= u[0] + u[1]
        if payload.get("stream"):
            ctype, body = _refusal(payload, ctx.endpoint, answer, name, True, "egens-")
        else:
            ctype, body = best.reply.content_type.encode("latin-1"), best.reply.first
        await send({"type": "http.response.start", "status": 200,
                    "headers": ctx.headers([(b"content-type", ctype)])})
        await send({"type": "http.response.body", "body": body})
        return 200, u
    return await _respond(gw, res, ctx, send, chain, agg)


def _cost(expert: Any, usage: tuple[int, int]) -> float:
    return (usage[0] * expert.price.input_per_1m + usage[1] * expert.price.output_per_1m) / 1e6
