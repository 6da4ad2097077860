"""Per-expert request dialects: the body an OpenAI-compatible expert's server can read.

Clients send what OpenAI's API takes; not every "OpenAI-compatible" server takes all of it.
An expert's ``dialect`` (:class:`gateway.config.ExpertConfig`) names its server's, and
:func:`adapt` rewrites a request body for it, as LiteLLM does per provider
(``map_developer_role_to_system_role``, content lists to strings, ``max_completion_tokens``
to ``max_tokens``). It runs once per request and expert, where the dispatch stage builds the
bytes for that expert (``_body_for`` in :mod:`gateway.request.dispatch`); ``openai``, the
default, sends the body as the client wrote it.

``llama-cpp-python`` (its OpenAI server, ``python -m llama_cpp.server``, 0.3) answered a 500
to requests every OpenAI client sends, and ignored some fields silently; the rewrite:

- ``developer`` messages become ``system`` ones (it knows four roles);
- a content-part array of text parts (and an assistant turn's ``refusal`` parts, its text
  as OpenAI and vLLM read it) becomes one string, the parts joined by newlines, as vLLM
  gives a chat template a text-only message; any other part (an image, audio, a file) is a
  400 naming it: such an expert reads text only;
- ``content: null`` (an assistant turn with ``tool_calls``, the second turn of every tool
  loop), or an assistant turn without ``content``, becomes ``""``: it takes a string or no
  content, never null, and its chat template failed on a turn without one;
- a field set to ``null`` (the default, in OpenAI's API) is left out: it answered a 500 for
  ``temperature: null``;
- a function tool without ``parameters`` takes none (``{"type": "object", "properties":
  {}}``: it required them); a tool that is not a function (OpenAI's ``custom``) is a 400
  naming it;
- ``response_format: {"type": "json_schema", "json_schema": {"schema": S}}`` becomes its own
  ``{"type": "json_object", "schema": S}`` (a grammar built from ``S``);
- ``max_completion_tokens`` becomes ``max_tokens``, which it reads (the newer name was
  ignored, so a policy's ``max_tokens_cap`` on it did not bind); given both, the newer one
  counts, as vLLM reads them;
- ``tool_choice: "required"`` becomes the choice naming the request's one tool (it forces
  a call only for a named tool, and read ``required`` as ``auto``: text where the client
  asked for a call); with several tools it is a 400;
- ``n`` above 1 is a 400: it answered one choice silently. Serving ``n`` would be ``n``
  calls, each a slot of a server that generates one answer at a time per model: the client
  asking for them itself is as fast and says what it costs;
- a completion's list ``prompt`` of one text becomes that text; a batch of texts or token ids
  is a 400 (it answered a 500 with an empty message);
- the client's mistakes it answered with a 500 (a ``response_format`` type it does not know,
  a ``tool`` message without ``tool_call_id``, a ``logit_bias`` key that is no token id, a
  user message without ``content``, tool-call ``arguments`` that are not a string) are
  the 400 OpenAI and vLLM answer, naming the field (an ``InvalidRequest``: no expert serves
  them, so no other is tried);
- a chat's ``logprobs: true`` without ``top_logprobs`` gets ``top_logprobs: 0``: it computes
  them only when ``top_logprobs`` is given, and answered ``"logprobs": null`` otherwise (each
  token's ``top_logprobs`` then lists the token itself, where OpenAI's list is empty).

What a dialect cannot carry is an :class:`~gateway.errors.UnsupportedByExpert`: the
dispatcher then tries the chain's next expert (an ensemble, its other members), and the 400
reaches the client only when no expert of the chain can serve the request.

A completion's ``best_of`` is left as sent: it is ignored there (one sample, not the best of
several), but the answer has the shape the client asked for.

The answers need one fix too (:func:`stream_fix`): a streamed tool call repeats its ``id``,
``type`` and ``function.name`` (and a ``function_call`` twin with the name) in every delta,
where OpenAI sends them in the call's first delta only; every client that accumulates a
stream (the OpenAI SDK's ``chat.completions.stream``, LangChain) concatenates what comes
again, and the call came out named ``get_weatherget_weather...``. The deltas after a call's
first carry its ``index`` and ``arguments`` only, as OpenAI's do. And a tool call cut by
``max_tokens`` finished ``tool_calls`` as a whole one does, streamed or not (its arguments
half a JSON object): it finishes ``length``, as OpenAI says it (:func:`fix_answer`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import orjson

from gateway.errors import InvalidRequest, UnsupportedByExpert

__all__ = ["DIALECTS", "Dialect", "ToolDeltas", "adapt", "fix_answer", "stream_fix"]

#: the request dialects an OpenAI-compatible expert's server may speak
Dialect = Literal["openai", "llama-cpp-python"]

Adapter = Callable[[dict[str, Any], str], dict[str, Any]]


def adapt(payload: dict[str, Any], dialect: str, expert: str) -> dict[str, Any]:
    """``payload`` (a validated request body) as the server of ``expert``, speaking
    ``dialect``, reads it: ``payload`` itself for ``openai``, else a copy (``payload`` is
    never changed: the chain's other experts get it as it is). Raises
    :class:`~gateway.errors.InvalidRequest` (400, naming the field) for what the dialect
    cannot carry."""
    if dialect == "openai":
        return payload
    return DIALECTS[dialect](payload, expert)


def _unsupported(expert: str, what: str, param: str) -> UnsupportedByExpert:
    return UnsupportedByExpert(f"{what}: the expert '{expert}' (a llama-cpp-python server) "
                               "cannot serve it", param=param)


def _llama_cpp_python(payload: dict[str, Any], expert: str) -> dict[str, Any]:
    # null is the default in OpenAI's API; its server took some nulls for numbers (500)
    out = {k: v for k, v in payload.items() if v is not None}
    n = payload.get("n")
    if isinstance(n, int) and n > 1:
        raise _unsupported(expert, f"'n' is {n}; it answers one choice per request (send "
                           f"{n} requests for {n} answers)", "n")
    messages = payload.get("messages")
    if isinstance(messages, list):
        out["messages"] = _messages(messages, expert)
    if "prompt" in payload:
        out["prompt"] = _prompt(payload["prompt"], expert)
    newer = out.pop("max_completion_tokens", None)
    if newer is not None:
        out["max_tokens"] = newer
    tools = payload.get("tools")
    if isinstance(tools, list):
        out["tools"] = _tools(tools, expert)
    rf = payload.get("response_format")
    if isinstance(rf, dict):
        kind = rf.get("type")
        if kind == "json_schema":
            out["response_format"] = _json_schema(rf)
        elif kind not in ("text", "json_object"):
            raise InvalidRequest(f"response_format.type: {kind!r} is none of 'text', "
                                 "'json_object', 'json_schema'", param="response_format.type")
    if payload.get("logit_bias") is not None:
        _check_bias(payload["logit_bias"])
    if payload.get("tool_choice") == "required":
        out["tool_choice"] = _required_tool(payload.get("tools"), expert)
    if payload.get("logprobs") is True and payload.get("top_logprobs") is None:
        out["top_logprobs"] = 0  # a chat's logprobs are computed only when it is given
    return out


#: a function's parameters when it has none (OpenAI's default; the server requires them)
_NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


def _tools(tools: list[Any], expert: str) -> list[Any]:
    """Function tools only (it reads no other kind); a function without ``parameters``
    takes none, as OpenAI reads it."""
    out = tools
    for j, t in enumerate(tools):
        if not isinstance(t, dict):
            continue
        kind = t.get("type")
        if kind != "function":
            raise _unsupported(expert, f"tools.{j} is a {kind!r} tool; it calls functions "
                               "only", f"tools.{j}.type")
        fn = t.get("function")
        if isinstance(fn, dict) and fn.get("parameters") is None:
            if out is tools:
                out = list(tools)
            out[j] = {**t, "function": {**fn, "parameters": _NO_PARAMETERS}}
    return out


def _check_bias(bias: Any) -> None:
    """``logit_bias``: token ids (as strings, JSON's keys) to numbers, as OpenAI takes it."""
    ok = isinstance(bias, dict) and all(
        k.lstrip("-").isdigit() and isinstance(v, (int, float)) and not isinstance(v, bool)
        for k, v in bias.items())
    if not ok:
        raise InvalidRequest("logit_bias: an object of token ids (as strings) to biases "
                             "(numbers), e.g. {\"1234\": -100}", param="logit_bias")


def _required_tool(tools: Any, expert: str) -> dict[str, Any]:
    """``tool_choice: "required"`` as the server forces a call: only a choice naming the
    tool does (a grammar from its parameters); ``required`` it reads as ``auto``."""
    names = [t["function"].get("name") for t in tools or []
             if isinstance(t, dict) and isinstance(t.get("function"), dict)]
    if len(names) == 1 and len(tools) == 1 and isinstance(names[0], str):
        return {"type": "function", "function": {"name": names[0]}}
    raise _unsupported(expert, f"'tool_choice' is 'required' with {len(tools or [])} tools; "
                       "it forces a call only to a tool named in 'tool_choice'", "tool_choice")


def _messages(messages: list[Any], expert: str) -> list[Any]:
    out = messages
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            continue  # the schema admits only objects: nothing to adapt in anything else
        role, content = m.get("role"), m.get("content")
        if role == "tool" and not isinstance(m.get("tool_call_id"), str):
            raise InvalidRequest(f"messages.{i}.tool_call_id: a tool message names the call "
                                 "it answers (a string)", param=f"messages.{i}.tool_call_id")
        if "content" not in m and role != "assistant":
            # an assistant turn may be its tool calls alone; any other turn is its content
            raise InvalidRequest(f"messages.{i}.content: a {role} message needs content",
                                 param=f"messages.{i}.content")
        if role == "assistant":
            _check_calls(m.get("tool_calls"), f"messages.{i}.tool_calls")
        new_role = "system" if role == "developer" else role
        if isinstance(content, list):
            new_content: Any = _joined(content, f"messages.{i}.content", expert)
        elif content is None:
            new_content = ""  # its template reads a string: null or none failed it
        else:
            new_content = content
        if new_role is role and new_content is content:
            continue
        if out is messages:
            out = list(messages)  # copied at the first message that changes
        out[i] = {**m, "role": new_role, "content": new_content}
    return out


def _check_calls(calls: Any, param: str) -> None:
    """An assistant turn's tool calls: each call's ``arguments`` a string (OpenAI's 400)."""
    for j, c in enumerate(calls if isinstance(calls, list) else ()):
        fn = c.get("function") if isinstance(c, dict) else None
        if isinstance(fn, dict) and not isinstance(fn.get("arguments"), str):
            raise InvalidRequest(f"{param}.{j}.function.arguments: a tool call's arguments "
                                 "are a string (JSON text)",
                                 param=f"{param}.{j}.function.arguments")


#: the content parts that are text, and the field that holds it (an assistant turn's
#: ``refusal`` part is its text, as OpenAI and vLLM read it)
_TEXT_PARTS = {"text": "text", "refusal": "refusal"}


def _joined(parts: list[Any], param: str, expert: str) -> str:
    texts: list[str] = []
    for j, p in enumerate(parts):
        kind = p.get("type") if isinstance(p, dict) else None
        key = _TEXT_PARTS.get(kind) if isinstance(kind, str) else None
        if key is None:
            what = f"a '{kind}' part" if isinstance(kind, str) else "a part that is not text"
            raise _unsupported(expert, f"{param}.{j} is {what}; it reads text parts only",
                               f"{param}.{j}")
        text = p.get(key)
        if not isinstance(text, str):
            # the client's mistake, which every expert refuses: no reason to try another
            raise InvalidRequest(f"{param}.{j}.{key}: a {kind} part's '{key}' must be a "
                                 "string", param=f"{param}.{j}.{key}")
        texts.append(text)
    return "\n".join(texts)


def _prompt(prompt: Any, expert: str) -> Any:
    if not isinstance(prompt, list):
        return prompt
    if len(prompt) == 1 and isinstance(prompt[0], str):
        return prompt[0]
    what = ("'prompt' is token ids" if prompt and not isinstance(prompt[0], str)
            else f"'prompt' is a batch of {len(prompt)} texts")
    raise _unsupported(expert, f"{what}; it takes one text prompt per request", "prompt")


def _json_schema(rf: dict[str, Any]) -> dict[str, Any]:
    spec = rf.get("json_schema")
    if not isinstance(spec, dict):
        raise InvalidRequest("'response_format.json_schema' must be an object with the "
                             "schema in 'schema'", param="response_format.json_schema")
    schema = spec.get("schema")
    return {"type": "json_object"} if schema is None else {"type": "json_object",
                                                           "schema": schema}


#: dialect name -> its adapter (``openai`` sends the body as it is)
DIALECTS: dict[str, Adapter] = {"llama-cpp-python": _llama_cpp_python}


class ToolDeltas:
    """One stream's tool-call deltas as OpenAI streams them (see the module doc): the
    ``id``, ``type`` and ``name`` of a call (per choice and call index) and the ``name`` of a
    choice's ``function_call`` are kept in their first delta and taken out of later ones;
    a choice that finishes ``tool_calls`` with arguments that are no whole JSON value was
    cut (:func:`fix_answer`): it finishes ``length``."""

    __slots__ = ("_args", "_seen")

    def __init__(self) -> None:
        self._seen: set[tuple[Any, Any]] = set()
        #: (choice index, call index) -> the call's arguments so far
        self._args: dict[tuple[Any, Any], list[str]] = {}

    @staticmethod
    def concerns(line: bytes) -> bool:
        """Whether an SSE ``data:`` line may hold a named call or a tool-call finish (the
        rest pass unparsed: a ``"name"`` within generated text is escaped,
        ``\\"name\\"``)."""
        return b'"name"' in line or b'"tool_calls"' in line

    def fix(self, ev: dict[str, Any]) -> bool:
        """Fix the event ``ev`` in place; whether it changed."""
        changed = False
        choices = ev.get("choices")
        for ch in choices if isinstance(choices, list) else ():
            delta = ch.get("delta") if isinstance(ch, dict) else None
            if not isinstance(delta, dict):
                continue
            i = ch.get("index")
            calls = delta.get("tool_calls")
            for call in calls if isinstance(calls, list) else ():
                if isinstance(call, dict):
                    key = (i, call.get("index"))
                    changed |= self._once(call, key, ("id", "type"))
                    fn = call.get("function")
                    args = fn.get("arguments") if isinstance(fn, dict) else None
                    if isinstance(args, str):
                        self._args.setdefault(key, []).append(args)
            fc = delta.get("function_call")
            if isinstance(fc, dict):
                changed |= self._once(fc, (i, "function_call"), ())
            if ch.get("finish_reason") == "tool_calls" and any(
                    _cut("".join(a)) for k, a in self._args.items() if k[0] == i):
                ch["finish_reason"] = "length"
                changed = True
        return changed

    def _once(self, call: dict[str, Any], key: tuple[Any, Any], fields: tuple[str, ...]
              ) -> bool:
        fn = call.get("function") if fields else call
        if key not in self._seen:
            self._seen.add(key)
            return False
        changed = False
        for k in fields:
            if k in call:
                del call[k]
                changed = True
        if isinstance(fn, dict) and "name" in fn:
            del fn["name"]
            changed = True
        return changed


def _cut(arguments: str) -> bool:
    """Whether a call's arguments, generated under the grammar of its parameters (a whole
    JSON value unless the generation stopped early), were cut short."""
    try:
        orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return True
    return False


def fix_answer(data: Any, dialect: str) -> bool:
    """Fix a whole chat answer (parsed) of a server speaking ``dialect`` in place; whether
    it changed: a llama-cpp-python choice that finishes ``tool_calls`` with a call whose
    arguments are no whole JSON value was cut by ``max_tokens``: it finishes ``length``."""
    if dialect != "llama-cpp-python" or not isinstance(data, dict):
        return False
    changed = False
    choices = data.get("choices")
    for ch in choices if isinstance(choices, list) else ():
        if not isinstance(ch, dict) or ch.get("finish_reason") != "tool_calls":
            continue
        msg = ch.get("message")
        calls = msg.get("tool_calls") if isinstance(msg, dict) else None
        if any(isinstance(c, dict) and isinstance(c.get("function"), dict) and
               isinstance(c["function"].get("arguments"), str) and
               _cut(c["function"]["arguments"]) for c in calls or ()):
            ch["finish_reason"] = "length"
            changed = True
    return changed


def stream_fix(dialect: str) -> ToolDeltas | None:
    """What a stream from a server speaking ``dialect`` needs fixed on its way to the
    client (a fresh one per stream), or None: ``openai``'s bytes pass untouched."""
    return ToolDeltas() if dialect == "llama-cpp-python" else None
