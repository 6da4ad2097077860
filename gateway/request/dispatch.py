"""Stage 4, dispatch: send the request to the plan's experts and get the first answer.

The dispatcher (:mod:`gateway.dispatch`: replicas, circuit breakers, retries before the
first byte) tries the plan's chain in order. The body goes out as the client sent it when
nothing changes; otherwise it is re-serialised once per upstream model name with the plan's
rewrites. An ensemble plan asks its members concurrently (non-streaming) and then the
aggregator, which may stream. What was tried and what answered is written on the context:
the answering expert and replica, upstream time and the wait for concurrency slots (the
gateway's queueing, not upstream time), and ``expert-fallback`` with the failed
attempts in the reason when the first choice did not answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from gateway import exactjson
from gateway.dialect import adapt
from gateway.dispatch import Dispatcher, DispatchResult
from gateway.errors import InvalidRequest, UnsupportedByExpert, UpstreamError
from gateway.messages import MessageTexts, message_texts
from gateway.request.context import RequestContext

if TYPE_CHECKING:
    from gateway.app import Gateway

__all__ = ["AFFINITY_CHARS", "affinity_key", "dispatch", "member_answer", "usage_of"]

log = logging.getLogger("expertgate.dispatch")

_PATHS = {"chat": "/chat/completions", "completions": "/completions",
          "embeddings": "/embeddings"}
#: characters of the conversation's start that key replica affinity (~256 tokens)
AFFINITY_CHARS = 1024


async def dispatch(gw: Gateway, ctx: RequestContext) -> DispatchResult:
    p = ctx.plan
    assert p is not None
    body = ctx.body
    if p.rewrite:
        body.update(p.rewrite)
    if p.action == "ensemble":
        return await _ensemble(gw, ctx)
    ctx.chain = p.chain
    disp = _dispatcher(gw, ctx)
    res = await disp.call(
        p.chain, _PATHS[ctx.endpoint], body,
        _body_for(body, b"" if p.rewrite else ctx.raw, p.model,
                  ask_usage=ctx.stream and not wants_usage(body)),
        stream=ctx.stream,
        # the key only orders replicas: not built when every expert of the chain has one
        affinity=affinity_key(body, ctx.endpoint, ctx.message_texts())
        if disp.balances(p.chain) else b"",
        deadline=ctx.deadline, on_try=ctx.attempting, parents=p.rt is not None)
    _answered(gw, ctx, res, p.chain)
    return res


def _answered(gw: Gateway, ctx: RequestContext, res: DispatchResult, chain: list[str]
              ) -> None:
    """Write what answered on the context; a failure here (a bug) releases the reply, which
    no writer will read (a stream's slot with it)."""
    try:
        _note_answer(gw, ctx, res, chain)
    except BaseException:
        res.reply.release()
        raise


def _dispatcher(gw: Gateway, ctx: RequestContext) -> Dispatcher:
    """The pool of the configuration the request was planned with (see ``handle``)."""
    return ctx.dispatcher if ctx.dispatcher is not None else gw.dispatcher


def affinity_key(payload: dict[str, Any], endpoint: str,
                 texts: MessageTexts | None = None) -> bytes:
    """The start of the prompt as the model reads it: the system prompt, then the first user
    turn (for chat; ``texts``: the messages' :func:`~gateway.messages.message_texts` when
    the caller holds them). Requests sharing a long prefix (a system prompt over
    AFFINITY_CHARS) share a key, so they meet the replica whose prefix cache holds it; a
    conversation keeps its key turn after turn; distinct short prompts get distinct keys and
    spread."""
    if endpoint == "chat":
        parts: list[str] = []
        for role, t in texts if texts is not None else message_texts(payload["messages"]):
            parts.append(f"{role}\x00{t}\x00")
            if role == "user":
                break
        text = "".join(parts)
    else:
        v = payload.get("prompt" if endpoint == "completions" else "input")
        first = v[0] if isinstance(v, list) and v else v
        text = first if isinstance(first, str) else orjson.dumps(first).decode()
    return text[:AFFINITY_CHARS].encode("utf-8", "surrogatepass")


def _note_answer(gw: Gateway, ctx: RequestContext, res: DispatchResult, chain: list[str]
                 ) -> None:
    ctx.expert = res.expert.name
    ctx.replica = res.replica
    attempts = res.attempts
    if len(attempts) == 1:
        a = attempts[0]
        upstream_ms, ctx.queue_ms = a.ms, a.queue_ms
    else:
        upstream_ms = sum(a.ms for a in attempts)
        ctx.queue_ms = sum(a.queue_ms for a in attempts)
    if not res.reply.stream:  # the whole answer was read within the attempts' time
        ctx.upstream_ms = upstream_ms
    if res.expert.name != chain[0] or (len(attempts) > 1 and res.fallback):
        ctx.degraded.append("expert-fallback")
        failed = [a for a in res.attempts if a.outcome != "ok"]
        ctx.reason = (f"{ctx.reason}; fallback to {res.expert.name} after "
                      f"{', '.join(f'{a.expert}:{a.outcome}' for a in failed)}")
        # an expert passed over for what its dialect cannot carry is no upstream's failure
        why = "unsupported" if failed and all(a.outcome == "unsupported" for a in failed) \
            else "upstream"
        gw.metrics.fallbacks.labels(ctx.policy or "-", why).inc()


def wants_usage(body: dict[str, Any]) -> bool:
    """The client asked for a stream's usage event (``stream_options.include_usage``)."""
    opts = body.get("stream_options")
    return isinstance(opts, dict) and opts.get("include_usage") is True


#: what a stream's request gains when its client asked for no usage event: the upstream's
#: own usage counts in the log, the cost and the token budget (the event is taken out of the
#: client's stream again, gateway/request/respond.py)
_ASK_USAGE = b'{"stream_options":{"include_usage":true},'


def _body_for(payload: dict[str, Any], raw: bytes, requested: str, *, ask_usage: bool = False
              ) -> Callable[[Any], bytes]:
    """The request bytes for an expert: the client's own bytes when its model name is the
    one the client sent and nothing was rewritten, else ``payload`` with the expert's model
    name, serialised once per name; an expert whose server speaks another dialect than
    OpenAI's gets ``payload`` adapted to it (:func:`gateway.dialect.adapt`: a 400 for what
    it cannot serve), once per name and dialect. ``ask_usage`` (a stream whose client asked
    for no usage event): an OpenAI-dialect expert is asked for its usage event, the client's
    bytes behind ``stream_options`` (no re-serialisation) unless the client's body has
    ``stream_options`` of its own; a llama-cpp-python server sends none, so is not asked."""
    cache: dict[str, bytes] = {}
    adapted: dict[tuple[str, str], bytes] = {}
    client = payload  # as the client sent it: what another dialect is adapted from
    if ask_usage:
        opts = payload.get("stream_options")
        payload = {**payload, "stream_options": {**(opts if isinstance(opts, dict) else {}),
                                                 "include_usage": True}}
        if "stream_options" in client:  # the client's own (include_usage false, null)
            raw = b""
        elif raw:
            raw = _ASK_USAGE + raw.lstrip()[1:]  # a validated body: an object with a model

    def body_for(expert: Any) -> bytes:
        name = expert.upstream_model
        if expert.dialect != "openai":
            key = (name, expert.dialect)
            b = adapted.get(key)
            if b is None:
                b = adapted[key] = _dumps(adapt(client, expert.dialect, expert.name), name)
            return b
        b = cache.get(name)
        if b is None:
            # nothing to rewrite: the client's bytes pass through untouched
            b = cache[name] = raw if raw and name == requested else _dumps(payload, name)
        return b

    return body_for


def _dumps(payload: dict[str, Any], name: str) -> bytes:
    try:  # integers beyond 64 bits go out exactly as the client wrote them
        return exactjson.dumps({**payload, "model": name})
    except (TypeError, ValueError, RecursionError):
        raise InvalidRequest("the request's JSON is nested too deeply to "
                             "forward (at most 254 levels)") from None


def completions_text(payload: dict[str, Any]) -> str:
    p = payload["prompt"]
    return " ".join((p if isinstance(p, str) else " ".join(p)).split())


async def _ensemble(gw: Gateway, ctx: RequestContext) -> DispatchResult:
    """Symbolic-MoE style: k experts answer concurrently, the aggregator synthesises.

    Every call is paid for: the members' cost goes into the request's ``cost_usd``. When the
    aggregator (and the policy's fallback chain after it) fails, the best member's answer is
    the response (``x-expertgate-degraded: ensemble-unaggregated``), not an error.
    """
    p = ctx.plan
    assert p is not None and p.decision is not None
    d = p.decision
    aggregator = d.aggregator
    assert aggregator is not None
    path = _PATHS[ctx.endpoint]
    payload = ctx.body
    disp = _dispatcher(gw, ctx)
    sub = {k: v for k, v in payload.items() if k not in ("stream", "stream_options")}

    outcome: dict[str, str] = {}
    rejected: list[DispatchResult] = []
    #: members whose dialect cannot carry the request (nothing sent): the others answer
    unsupported: list[UnsupportedByExpert] = []

    async def one(name: str) -> tuple[str, str | None, DispatchResult | None]:
        try:
            res = await disp.call([name], path, sub, _body_for(sub, b"", ""),
                                           stream=False, affinity=name.encode(),
                                           deadline=ctx.deadline)
        except UpstreamError as e:
            log.warning("ensemble member %s failed: %s", name, e)
            outcome[name] = e.code
            return name, None, None
        except UnsupportedByExpert as e:
            outcome[name] = "unsupported"
            unsupported.append(e)
            return name, None, None
        if res.reply.status != 200:
            log.warning("ensemble member %s answered %d", name, res.reply.status)
            outcome[name] = str(res.reply.status)
            rejected.append(res)  # the request's own error (a 4xx): said if all reject it
            return name, None, None
        text = member_answer(res.reply.data)
        if text is None:
            log.warning("ensemble member %s answered no readable choice", name)
            outcome[name] = "unreadable"
            return name, None, None
        return name, text, res

    answers = await asyncio.gather(*(one(e) for e in p.chain))
    for _, _, res in answers:
        if res is not None:
            u = usage_of(res.reply.data)
            ctx.extra_cost_usd += res.expert.price.cost(u)
            ctx.extra_tokens += u[0] + u[1]
            if u != (0, 0):
                m = gw.metrics
                m.child(m.tokens, res.expert.name, "prompt").inc(u[0])
                m.child(m.tokens, res.expert.name, "completion").inc(u[1])
    got = [(n, a, r) for n, a, r in answers if a and r is not None]
    if not got:
        said = ", ".join(f"{n}:{outcome.get(n, 'empty')}" for n in p.chain)
        ctx.reason = f"{d.reason}; every ensemble member failed ({said})"
        if rejected and len(rejected) + len(unsupported) == len(p.chain):
            # every member refused the request itself (4xx): its own error, as a single
            # expert's would be, not a 502 the client's SDK retries
            first = rejected[0]
            ctx.expert, ctx.replica = first.expert.name, first.replica
            return first
        if len(unsupported) == len(p.chain):
            raise unsupported[0]
        ctx.degraded.append("ensemble-failed")
        raise UpstreamError(f"every ensemble member failed ({said})", code="ensemble_failed")
    ctx.members = [n for n, _, _ in got]
    if len(got) < len(p.chain):
        ctx.degraded.append("ensemble-partial")
    listing = "\n\n".join(f"[Answer {i + 1}]\n{a}" for i, (_, a, _) in enumerate(got))
    agg = dict(payload)
    if ctx.endpoint == "chat":
        agg["messages"] = [*payload["messages"], {
            "role": "user",
            "content": "Several experts answered the request above. Combine their answers "
                       "into one best answer; correct mistakes.\n\n" + listing}]
    else:
        agg["prompt"] = f"{completions_text(payload)}\n\n{listing}\n\nBest combined answer:"
    ctx.reason = f"{d.reason}; ensemble of {', '.join(ctx.members)} -> {aggregator}"
    assert p.rt is not None
    ctx.chain = [aggregator, *(f for f in p.rt.config.fallback if f != aggregator)]
    try:
        res = await disp.call(ctx.chain, path, agg, _body_for(agg, b"", ""),
                                       stream=ctx.stream, affinity=aggregator.encode(),
                                       deadline=ctx.deadline, on_try=ctx.attempting)
        if res.reply.status >= 400:
            # the aggregator refused the request the gateway built (the members' answers
            # past its context, say): not the client's error; as a failed aggregation
            res.reply.release()
            raise UpstreamError(f"the aggregator {res.expert.name} answered "
                                f"{res.reply.status}")
    except (UpstreamError, UnsupportedByExpert) as e:
        # the members answered: their best answer beats an error (or an aggregator that
        # cannot read the request, an image part to a llama.cpp server)
        name, answer, best = got[0]
        assert best is not None and answer is not None
        log.warning("ensemble aggregation failed (%s); answering with %s", e, name)
        ctx.degraded.append("ensemble-unaggregated")
        ctx.reason = f"{ctx.reason} failed; answered with {name}"
        u = usage_of(best.reply.data)
        ctx.extra_cost_usd -= best.expert.price.cost(u)  # logged as the answer's own cost
        ctx.extra_tokens -= u[0] + u[1]
        ctx.unaggregated = answer
        ctx.expert, ctx.replica = name, best.replica
        return best
    _answered(gw, ctx, res, ctx.chain)
    return res


def member_answer(data: Any) -> str | None:
    """An ensemble member's answer as text for the aggregator: the message's content (or a
    completion's text), or its tool calls written out (the aggregator has the request's
    tools and makes the call itself); None when the answer has no readable choice."""
    try:
        ch = data["choices"][0]
        msg = ch.get("message") or {}
        text = msg.get("content") or ch.get("text") or ""
        calls = msg.get("tool_calls")
        if not text and isinstance(calls, list) and calls:
            text = "Tool call(s): " + orjson.dumps(
                [c.get("function", c) for c in calls if isinstance(c, dict)]).decode()
        return str(text)
    except (KeyError, IndexError, TypeError, AttributeError):
        return None


def usage_of(data: Any) -> tuple[int, int]:
    """(prompt, completion) tokens of a parsed non-streamed answer; (0, 0) without usage."""
    try:
        u = data.get("usage") or {}
        return int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0)
    except (AttributeError, TypeError, ValueError):
        return 0, 0
