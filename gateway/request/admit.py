"""Stage 1, admit: who is calling and what they may spend, decided from the headers before
the body is read, then from the body's model and size once it is.

:func:`admit` scans the request headers once (the key, the client's ``x-request-id``, the
declared ``content-length``), authenticates the key (401 before a byte of the body is read,
so an unauthenticated client costs no body read), refuses a body declared as anything but
JSON (415) and charges the key's request budget (429). :func:`admit_body` runs after the
read stage: the model the key named exists and is one it may use (404 ``model_not_found``
either way, alike), every media URL of the messages is one the gateway's ``media_urls``
setting lets an expert fetch (400 ``media_url_not_allowed``, :mod:`.media`; before any
token is charged), and the token budget covers the request's estimate (429; the estimate
needs the body's text and ``max_tokens``, and is reconciled with the upstream's usage
afterwards).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from gateway.auth import KEY_HEADERS, request_token
from gateway.errors import InvalidRequest, UnsupportedMediaType
from gateway.ratelimit import Limits, RateDecision, estimate_prompt_tokens, estimate_tokens
from gateway.request.context import RequestContext, header_value
from gateway.request.media import MediaRefused, check_messages
from gateway.request.read import check_length

if TYPE_CHECKING:
    from gateway.app import Gateway

__all__ = ["GENERATE", "MEDIA", "admit", "admit_body"]

#: endpoints that call an expert: these spend the key's rate limits and are logged
GENERATE = frozenset({"chat", "completions", "embeddings"})
#: the endpoints whose ``messages`` may name media URLs (:mod:`.media`): chat, vLLM's
#: chat-style embeddings, and the dry run, which refuses what the live request would
MEDIA = frozenset({"chat", "embeddings", "route"})
#: the endpoints a key's requests_per_minute counts: also the dry run, which embeds the
#: query on the embedding thread every tenant's decisions share, as a live request does
REQUESTS = GENERATE | {"route"}


async def admit(gw: Gateway, headers: Iterable[tuple[bytes, bytes]], ctx: RequestContext
                ) -> None:
    auth: bytes | None = None
    api_key: str | None = None
    ctype = b""
    length = 0
    for k, v in headers:
        if k == b"authorization":
            if auth is None:
                auth = v
        elif k in KEY_HEADERS and api_key is None:
            api_key = v.decode("latin-1").strip() or None
        elif k == b"x-request-id":
            ctx.client_request_id = header_value(v.decode("latin-1")[:128]) or None
        elif k == b"content-length":
            try:
                length = int(v)
            except ValueError:
                raise InvalidRequest("invalid content-length header") from None
        elif k == b"content-type":
            ctype = v
        elif k == b"content-encoding" and v.strip().lower() not in (b"", b"identity"):
            # a compressed body read as JSON fails with a baffling parse error: say why
            raise UnsupportedMediaType(
                f"unsupported content-encoding {v.decode('latin-1')[:32]!r}: send the "
                "request body uncompressed")
    token = request_token(auth, api_key)  # as every other endpoint picks it
    key = await gw.auth.identify_token(token)
    check_length(length, gw.settings.max_body_bytes)
    if ctype and not _json_media(ctype):
        media = ctype.split(b";", 1)[0].strip().decode("latin-1")[:64]
        raise UnsupportedMediaType(
            f"unsupported content-type {media!r}: the request body is JSON, send it with "
            "content-type: application/json", code="unsupported_media_type")
    if key is None:
        return
    ctx.key = key
    ctx.tenant = key.name
    ctx.key_id = key.sha256[:16]
    if key.requests_per_minute and ctx.endpoint in REQUESTS:
        await _charge(gw, ctx, Limits(key.requests_per_minute, None), 0)


def _json_media(ctype: bytes) -> bool:
    """Whether a content-type names JSON (``application/json``, ``application/*+json``, any
    parameters). Any other is refused, as vLLM's server refuses it, rather than read as JSON:
    text/plain and forms are what another site's page may send a local gateway without a
    CORS preflight."""
    media = ctype.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (media.startswith(b"application/")
                                           and media.endswith(b"+json"))


async def admit_body(gw: Gateway, ctx: RequestContext) -> None:
    key = ctx.key
    if key is not None:
        model = ctx.body.get("model")
        gw.auth.authorize(key, model if isinstance(model, str) else None)
    s = gw.settings
    if s.media_urls != "any" and ctx.endpoint in MEDIA:
        try:
            check_messages(ctx.body.get("messages"), s.media_urls, s.media_allowed_domains)
        except MediaRefused as e:
            gw.metrics.child(gw.metrics.media_refused, e.reason).inc()
            raise
    if key is None:
        return
    if key.tokens_per_minute and ctx.endpoint in GENERATE:
        rt = gw.policy_set.policies.get(str(model))
        texts = ctx.message_texts()
        est = estimate_tokens(ctx.body, rt.config.max_tokens_cap if rt is not None else None,
                              texts)
        await _charge(gw, ctx, Limits(None, key.tokens_per_minute), est,
                      lambda: estimate_prompt_tokens(ctx.body, texts))


async def _charge(gw: Gateway, ctx: RequestContext, limits: Limits, tokens: int,
                  prompt_tokens: Callable[[], int] | None = None) -> None:
    """Charge the key; ``prompt_tokens``: the prompt's part of ``tokens``, counted only for a
    refusal's message."""
    rate: RateDecision = await gw.ratelimiter.acquire(ctx.key_id, limits, tokens)
    if rate.backend == "local" and gw.ratelimiter.redis is not None and \
            "ratelimit-local" not in ctx.degraded:
        ctx.degraded.append("ratelimit-local")  # shared limits unavailable: per replica
    if not rate.allowed:
        if limits.tokens_per_minute is not None:
            # refused on tokens once the body was read: the request charged before it was
            # never served, so it costs none of the key's requests_per_minute
            for charged in ctx.rates:
                await gw.ratelimiter.refund(ctx.key_id, charged)
        raise rate.error(prompt_tokens() if prompt_tokens is not None else None)
    ctx.rates.append(rate)
