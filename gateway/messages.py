"""The text of a chat request's messages, extracted in one walk per request.

Four stages read the messages' text: the token estimate of a rate-limited key
(:func:`gateway.ratelimit.estimate_tokens`), the routing text
(:func:`gateway.pipeline.routing_text`), the replica-affinity key
(:func:`gateway.request.dispatch.affinity_key`) and the usage a stream's answer lacked.
Each reads :func:`message_texts`, which the request's context computes once
(:meth:`gateway.request.context.RequestContext.message_texts`), so a long conversation is
walked once, and every stage sees the same text of a multi-part message.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["MessageTexts", "answers_asked", "content_text", "message_texts"]

#: (role, text) of each message, in order
MessageTexts = list[tuple[Any, str]]


def content_text(content: Any) -> str:
    """A message's text: its string content, or the text of its ``text`` parts joined by
    spaces. Only a part whose ``type`` is ``text`` counts: an ``image_url`` (or any other)
    part with a ``text`` key beside its own fields carries text the expert never reads, and
    a guard reading it could be swayed by padding the expert ignores."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p["text"] for p in content
                        if isinstance(p, dict) and p.get("type") == "text"
                        and isinstance(p.get("text"), str))
    return ""


def message_texts(messages: Sequence[Any]) -> MessageTexts:
    """(role, text) of each message of ``messages``."""
    return [(m.get("role"), content_text(m.get("content"))) if isinstance(m, dict)
            else (None, "") for m in messages]


def answers_asked(payload: dict[str, Any], endpoint: str) -> int:
    """How many choices an answer to ``payload`` has: ``n`` per prompt (completions take a
    batch of prompts: texts, or lists of token ids)."""
    n = payload.get("n")
    k = n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1
    if endpoint == "completions":
        p = payload.get("prompt")
        if isinstance(p, list) and p and not isinstance(p[0], int):
            k *= len(p)
    return k
