"""The request bodies, declared once: the validator of every POST endpoint and its OpenAPI.

Each body is a ``TypedDict`` with pydantic constraints. :func:`validate` parses a raw body
with orjson (strict JSON: no lone surrogates, no key twice in one object; nesting up to
orjson's limit here, though only 254 levels are forwarded, :mod:`gateway.request.read`;
integers beyond 64 bits kept exact, :mod:`gateway.exactjson`) and checks it once with
pydantic-core (about two microseconds together) into a plain ``dict`` with every field the
client sent, unknown ones included and untouched, so an OpenAI parameter this gateway does
not know still reaches the expert. The FastAPI app declares the same types as the
endpoints' bodies, so ``/openapi.json`` is derived from them; it never validates a request
itself.

Strict mode: ``"stream": "yes"`` or ``"max_tokens": true`` is an error, never coerced. A
body that fails becomes an :class:`~gateway.errors.InvalidRequest` whose ``param`` is the
path to the first bad field (``messages.0.role``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NotRequired

import orjson
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict

from gateway import exactjson
from gateway.errors import InvalidRequest

__all__ = ["BODIES", "ChatRequest", "CompletionRequest", "EmbeddingsRequest", "FeedbackRequest",
           "RouteRequest", "not_json", "refuse_duplicates", "validate"]

_OPEN = ConfigDict(extra="allow", strict=True)
_CLOSED = ConfigDict(extra="forbid", strict=True)

Role = Literal["system", "user", "assistant", "tool", "developer", "function"]
#: the integers the gateway reads itself (budgets, choices, token ids) fit in 64 bits, as
#: upstreams take them; a wider one is a 400 naming the field, never a float or a 500
#: (integers of fields the gateway does not read pass through exact, whatever their size)
_INT64_MAX = 2**63 - 1
PositiveInt = Annotated[int, Field(ge=1, le=_INT64_MAX)]
TokenId = Annotated[int, Field(ge=0, le=_INT64_MAX)]
#: OpenAI's caps on the choices asked (``n``) and on a completion's candidates
#: (``best_of``, at least ``n``): a refusal writes ``n`` choices itself, so an unbounded ``n``
#: would be the gateway's memory, and no upstream serves more
MAX_N, MAX_BEST_OF = 128, 20
#: OpenAI's cap on a batch (a completion's list of prompts, an embeddings input list): a
#: refusal writes ``n`` choices per prompt itself, so a megabyte of one-letter prompts was
#: 250,000 x ``n`` choices in the gateway's memory. A single prompt given as token ids is
#: one prompt, not a batch: its length is the expert's context, not bounded here
MAX_BATCH = 2048
Choices = Annotated[int, Field(ge=1, le=MAX_N)]
BestOf = Annotated[int, Field(ge=1, le=MAX_BEST_OF)]
Model = Annotated[str, Field(min_length=1, description="a policy name (routed) or an expert "
                                                         "name")]
#: every list of a body stops at its first bad item: pydantic otherwise writes an error per
#: item before the first is reported (a megabyte of ``"messages": [1, 1, ...]`` took 3 s of
#: the event loop's time, every other request waiting)
_FAST = Field(fail_fast=True)


@with_config(_OPEN)
class ChatMessage(TypedDict):
    role: Role
    content: NotRequired[str | Annotated[list[dict[str, Any]], _FAST] | None]


@with_config(_OPEN)
class ChatOptions(TypedDict):
    """The OpenAI chat fields the gateway types (a chat body's, and a dry run's that sends
    the same body); other OpenAI fields pass through to the expert untouched."""

    #: OpenAI's "boolean or null": null is not streamed, as vLLM reads it
    stream: NotRequired[bool | None]
    max_tokens: NotRequired[PositiveInt | None]
    max_completion_tokens: NotRequired[PositiveInt | None]
    n: NotRequired[Choices | None]
    # OpenAI's types for the fields every expert reads: a string temperature is a 400 naming
    # the field here, not an expert's 500 (llama.cpp's, with its traceback); values are the
    # expert's to bound (vLLM takes what OpenAI does not)
    temperature: NotRequired[float | None]
    top_p: NotRequired[float | None]
    presence_penalty: NotRequired[float | None]
    frequency_penalty: NotRequired[float | None]
    seed: NotRequired[int | None]
    stop: NotRequired[str | Annotated[list[str], _FAST] | None]
    user: NotRequired[str | None]
    logprobs: NotRequired[bool | None]
    top_logprobs: NotRequired[int | None]
    stream_options: NotRequired[dict[str, Any] | None]
    tools: NotRequired[Annotated[list[dict[str, Any]], _FAST] | None]
    tool_choice: NotRequired[str | dict[str, Any] | None]
    parallel_tool_calls: NotRequired[bool | None]
    response_format: NotRequired[dict[str, Any] | None]


@with_config(_OPEN)
class ChatRequest(ChatOptions):
    """OpenAI chat completions; other OpenAI fields pass through to the expert untouched."""

    model: Model
    messages: Annotated[list[ChatMessage], Field(min_length=1), _FAST]


@with_config(_OPEN)
class CompletionRequest(TypedDict):
    """OpenAI (legacy) completions."""

    model: Model
    #: text, texts, token ids or lists of token ids, as OpenAI and vLLM take it (token ids
    #: only for an expert: a policy routes on text)
    prompt: Annotated[str, Field(min_length=1)] | Annotated[
        list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=MAX_BATCH),
        _FAST] | Annotated[list[TokenId], Field(min_length=1), _FAST] | Annotated[
        list[Annotated[list[TokenId], Field(min_length=1), _FAST]],
        Field(min_length=1, max_length=MAX_BATCH), _FAST]
    stream: NotRequired[bool | None]
    max_tokens: NotRequired[PositiveInt | None]
    n: NotRequired[Choices | None]
    best_of: NotRequired[BestOf | None]
    temperature: NotRequired[float | None]
    top_p: NotRequired[float | None]
    presence_penalty: NotRequired[float | None]
    frequency_penalty: NotRequired[float | None]
    seed: NotRequired[int | None]
    stop: NotRequired[str | Annotated[list[str], _FAST] | None]
    user: NotRequired[str | None]
    #: a completion's logprobs is how many (a chat's is a boolean)
    logprobs: NotRequired[int | None]
    echo: NotRequired[bool | None]
    suffix: NotRequired[str | None]
    stream_options: NotRequired[dict[str, Any] | None]


@with_config(_OPEN)
class EmbeddingsRequest(TypedDict):
    """OpenAI embeddings, passed through to an expert configured with ``embeddings: true``."""

    model: Annotated[str, Field(min_length=1, description="an expert configured with "
                                                          "embeddings: true")]
    #: a text, one input as token ids (unbounded: the expert's context bounds it), or a batch
    #: of at most MAX_BATCH texts or token-id lists, none empty, as OpenAI and vLLM take it;
    #: a token id indexes the expert's vocabulary: never negative, as a completion's
    input: Annotated[str, Field(min_length=1)] | Annotated[
        list[TokenId], Field(min_length=1), _FAST] | Annotated[
        list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=MAX_BATCH),
        _FAST] | Annotated[list[Annotated[list[TokenId], Field(min_length=1), _FAST]],
                           Field(min_length=1, max_length=MAX_BATCH), _FAST]
    stream: NotRequired[Annotated[Literal[False], Field(description="embeddings cannot be "
                                                                    "streamed")]]


@with_config(_OPEN)
class RouteRequest(ChatOptions):
    """The dry run: the decision a policy would take for ``messages`` or ``text``. It takes
    the chat body a live request would send (its OpenAI fields checked as the chat
    endpoint checks them, then ignored but for ``n``, which decides whether an ensemble
    answers), so that the same body explains the same decision."""

    model: Annotated[str, Field(min_length=1, description="the policy to route with")]
    messages: NotRequired[Annotated[list[ChatMessage], _FAST] | None]
    text: NotRequired[Annotated[str | None, Field(description="route this text instead of "
                                                              "messages")]]


@with_config(_CLOSED)
class FeedbackRequest(TypedDict):
    """A rating of an answered request (only from the tenant that made it)."""

    request_id: Annotated[str, Field(min_length=1, max_length=128)]
    score: Annotated[float, Field(ge=0.0, le=1.0, description="1 = best")]
    comment: NotRequired[Annotated[str, Field(max_length=2000)] | None]


#: endpoint -> its body's type
BODIES: dict[str, Any] = {"chat": ChatRequest, "completions": CompletionRequest,
                          "embeddings": EmbeddingsRequest, "route": RouteRequest,
                          "feedback": FeedbackRequest}
_ADAPTERS: dict[str, TypeAdapter[Any]] = {k: TypeAdapter(v) for k, v in BODIES.items()}

# pydantic names the member of a union it tried in the error's location; the client's
# field path stops before it
_TAGS = frozenset({"str", "int", "float", "bool", "none", "list", "dict", "typed-dict"})


def _param(loc: tuple[Any, ...]) -> str | None:
    parts: list[str] = []
    for p in loc:
        if isinstance(p, str) and (p in _TAGS or "[" in p or p.startswith(
                ("constrained-", "function-"))):
            continue  # a union member's name: not a field of the client's body
        parts.append(str(p))
    return ".".join(parts) or None


def _rank(err: Any) -> tuple[bool, int]:
    """Which of a union field's errors to report: one about the value the client sent
    (an empty list, an empty item) before one saying it is not some other type, and the
    deepest among equals (``content.0`` is not an object, rather than: not a string)."""
    t = str(err["type"])
    return t.endswith("_type") or t == "none_required", -len(err["loc"])


_BATCHES = {"completions": ("prompt", "prompts"), "embeddings": ("input", "inputs")}
#: the fields of the closed bodies, whose other keys are checked before pydantic, which
#: writes an error per unknown key first (80,000 keys: 0.7 s of the event loop)
_FIELDS = {endpoint: frozenset(t.__required_keys__ | t.__optional_keys__)
           for endpoint, t in (("feedback", FeedbackRequest),)}


def _bound_batch(endpoint: str, obj: Any) -> None:
    """The schema's MAX_BATCH, checked before pydantic: a long batch fails every member of
    the field's union, and pydantic would first write an error per item and per member
    (a megabyte of one-letter prompts: half a million), then say so in its own words."""
    field, what = _BATCHES.get(endpoint, ("", ""))
    items = obj.get(field) if field and isinstance(obj, dict) else None
    if isinstance(items, list) and len(items) > MAX_BATCH and not all(
            isinstance(x, int) and not isinstance(x, bool) for x in items):
        raise InvalidRequest(f"{field}: at most {MAX_BATCH} {what} in one request, got "
                             f"{len(items)}; send them in several requests", param=field)


def validate(endpoint: str, raw: bytes, max_messages: int | None = None,
             model: str | None = None) -> dict[str, Any]:
    """The body of ``endpoint`` as a dict, or an InvalidRequest naming the bad field (or
    saying that ``messages`` holds more than ``max_messages``, counted before pydantic).
    ``model``: the one the path names (an Azure deployment), which takes the place of the
    body's, as Azure ignores a ``model`` in the body."""
    if not raw.strip():
        raise InvalidRequest("request body is empty; expected a JSON object")
    try:
        obj = exactjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise not_json(raw, e) from None
    except (ValueError, RecursionError) as e:  # the exact re-parse of a very wide integer
        raise InvalidRequest(f"request body cannot be read exactly: {e}") from None
    refuse_duplicates(raw, obj)
    if model is not None and isinstance(obj, dict):
        obj["model"] = model
    _bound_batch(endpoint, obj)
    fields = _FIELDS.get(endpoint)
    if fields is not None and isinstance(obj, dict) and not fields.issuperset(obj):
        extra = next(k for k in obj if k not in fields)
        raise InvalidRequest(f"{extra}: Extra inputs are not permitted", param=extra)
    if max_messages is not None and isinstance(obj, dict):
        msgs = obj.get("messages")
        if isinstance(msgs, list) and len(msgs) > max_messages:
            raise InvalidRequest(f"too many messages ({len(msgs)}; at most {max_messages})",
                                 param="messages")
    try:
        body: dict[str, Any] = _ADAPTERS[endpoint].validate_python(obj)
    except ValidationError as e:
        first = min(e.errors(include_url=False, include_input=False), key=_rank)
        param = _param(tuple(first["loc"]))
        if param is None:
            raise InvalidRequest("request body must be a JSON object") from None
        raise InvalidRequest(f"{param}: {first['msg']}", param=param) from None
    if endpoint in ("chat", "route"):
        _text_parts(body)
    if endpoint in ("chat", "completions", "route"):
        _coherent("chat" if endpoint == "route" else endpoint, body)
    if endpoint == "completions":
        n, best_of = body.get("n"), body.get("best_of")
        if n is not None and best_of is not None and best_of < n:
            raise InvalidRequest(f"best_of: must be at least n ({best_of} < {n}): n of the "
                                 "best_of candidates are returned", param="best_of")
        if best_of is not None and best_of > 1 and body.get("stream") is True:
            # OpenAI: best_of candidates are generated server-side and "cannot be streamed"
            raise InvalidRequest("best_of: cannot be used with stream (the best of the "
                                 "candidates is known only when all are done)",
                                 param="best_of")
    return body


def not_json(raw: bytes, e: orjson.JSONDecodeError) -> InvalidRequest:
    """The 400 for a body orjson refused. orjson says "str is not valid UTF-8: surrogates not
    allowed at position 0" of any text that is not UTF-8 (Latin-1, UTF-16): the first byte
    that is not UTF-8 is named instead."""
    if "UTF-8" in e.msg and "BOM" not in e.msg:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as u:
            return InvalidRequest(f"request body is not valid UTF-8 (byte 0x{raw[u.start]:02x} "
                                  f"at position {u.start}): send the JSON encoded as UTF-8")
    return InvalidRequest(f"request body is not valid JSON: {e.msg} at position {e.pos}")


def refuse_duplicates(raw: bytes, obj: Any) -> None:
    """A 400 naming a key ``raw`` writes twice in one object (``obj``: its reading). orjson
    keeps the last value, other parsers the first: the gateway would check one ``messages``
    (or ``model``) while the client's bytes, forwarded as they came, could make the expert
    answer the other."""
    try:
        path = exactjson.duplicate_key(raw, obj)
    except RecursionError:  # deeper than the dispatch stage forwards anyway: its words
        raise InvalidRequest("the request's JSON is nested too deeply to forward (at most "
                             "254 levels)") from None
    if path is not None:
        param = ".".join(path)
        raise InvalidRequest(
            f"{param[:200]}: duplicate key {path[-1][:64]!r} in the request body's JSON; write "
            "each key once per object (JSON parsers disagree on which of two values counts)",
            param=param)


def _text_parts(body: dict[str, Any]) -> None:
    """A text part's ``text`` is a string, as OpenAI requires (a 400 naming the part): the
    router and a guard read a message's text from its parts' strings only
    (:func:`gateway.messages.content_text`), so a part of another ``text`` (a list, null,
    none) was skipped by them while the expert got it and read it its own way, or failed
    (a 500 counted against it)."""
    for i, m in enumerate(body.get("messages") or ()):
        content = m.get("content")
        if type(content) is list:
            for j, part in enumerate(content):
                if part.get("type") == "text" and type(part.get("text")) is not str:
                    param = f"messages.{i}.content.{j}.text"
                    raise InvalidRequest(f"{param}: a text part's text must be a string",
                                         param=param)


def _coherent(endpoint: str, body: dict[str, Any]) -> None:
    """The rules between fields that OpenAI and vLLM both enforce with a 400 (an expert
    that does not, llama.cpp, ignored the field: a client saw no error and got something
    else than it asked)."""
    if body.get("stream_options") and body.get("stream") is not True:
        raise InvalidRequest("stream_options: only allowed when stream is true",
                             param="stream_options")
    if endpoint != "chat":
        return
    choice = body.get("tool_choice")
    if choice is not None and choice != "none" and body.get("tools") is None:
        raise InvalidRequest("tool_choice: only allowed when tools are given", param="tool_choice")
    top = body.get("top_logprobs")
    if top is not None and top > 0 and not body.get("logprobs"):
        raise InvalidRequest("top_logprobs: logprobs must be true when top_logprobs is given",
                             param="top_logprobs")
