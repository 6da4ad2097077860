"""A tool call streamed by a llama-cpp-python expert, as the OpenAI SDK accumulates it.

llama-cpp-python (0.3) repeats the call's ``id``, ``type`` and ``function.name`` (and a
``function_call`` with the name) in every delta of a streamed tool call; OpenAI sends them
in the call's first delta only, and every client that accumulates a stream (the SDK's
``chat.completions.stream``, LangChain) concatenates what comes again: the call came out
named ``get_weatherget_weatherget_weather...`` with an id as long. The script below is
llama-cpp-python's stream byte for byte (``json.dumps`` of its events: spaces after the
separators, null fields), captured from its server.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai

from tests.doubles.sse_script import ScriptedSSE
from tests.unit.gateway_helpers import base_config, coder_cfg, gateway_client

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "strict": True,  # the SDK's stream helper takes strict tools only
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"], "additionalProperties": False}}}]
CALL_ID = "call__0_get_weather_cmpl-8783"


def _llama(delta: dict[str, Any], finish: str | None = None) -> bytes:
    ev = {"id": "chatcmpl-8783", "object": "chat.completion.chunk", "created": 1,
          "model": "x", "choices": [{"index": 0, "finish_reason": finish, "logprobs": None,
                                     "delta": delta}]}
    return b"data: " + json.dumps(ev).encode() + b"\r\n\r\n"


def _piece(args: str) -> bytes:
    return _llama({"role": None, "content": None,
                   "function_call": {"name": "get_weather", "arguments": args},
                   "tool_calls": [{"index": 0, "id": CALL_ID, "type": "function",
                                   "function": {"name": "get_weather", "arguments": args}}]})


LLAMA_TOOL_STREAM = [
    _llama({"role": "assistant", "content": None, "function_call": None, "tool_calls": None}),
    _piece("{"), _piece(' "city"'), _piece(': "Paris"'), _piece(" }"), _piece(""),
    _llama({"role": None, "content": None, "function_call": None, "tool_calls": None},
           finish="tool_calls"),
    b"data: [DONE]\r\n\r\n",
]


def _events(text: str) -> list[Any]:
    return [json.loads(ln[6:]) for ln in text.splitlines() if ln.startswith("data: {")]


def _cfg(scripted: ScriptedSSE, chatter: str, **policy: Any) -> dict[str, Any]:
    cfg = coder_cfg(scripted.base, chatter, dialect="llama-cpp-python")
    cfg["policies"][0].update(policy)
    return cfg


async def test_the_sdk_accumulates_a_llama_tool_call_stream_to_one_call(
        scripted: ScriptedSSE, ups: Any, tmp_path: Path) -> None:
    scripted.script = list(LLAMA_TOOL_STREAM)
    async with gateway_client(_cfg(scripted, ups[1].base), tmp_path) as (c, _):
        client = openai.AsyncOpenAI(base_url="http://gw/v1", api_key="unused", http_client=c,
                                    max_retries=0)
        async with client.chat.completions.stream(
                model="coder", tools=TOOLS, messages=[{"role": "user", "content": "Paris?"}],
                tool_choice={"type": "function", "function": {"name": "get_weather"}},
                stream_options={"include_usage": True}) as s:
            async for _ in s:
                pass
            final = await s.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.id == CALL_ID and call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    fc = choice.message.function_call  # the deprecated twin, accumulated alike
    assert fc is not None and fc.name == "get_weather" and fc.arguments == call.function.arguments
    assert final.usage is not None and final.usage.completion_tokens == 5


async def test_each_tool_call_delta_after_the_first_carries_only_its_arguments(
        scripted: ScriptedSSE, ups: Any, tmp_path: Path) -> None:
    # on the wire, as OpenAI streams a call: index, id, type and name first, then index and
    # arguments; a routed request (the chain's first expert is the llama one) alike
    scripted.script = list(LLAMA_TOOL_STREAM)
    async with gateway_client(_cfg(scripted, ups[1].base), tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json={
            "model": "auto", "stream": True, "tools": TOOLS, "tool_choice": "required",
            "messages": [{"role": "user", "content": "fix this bug in my code"}]})
    assert r.status_code == 200 and r.headers["x-expertgate-expert"] == "coder"
    assert r.text.endswith("data: [DONE]\r\n\r\n")
    calls = [ev["choices"][0]["delta"]["tool_calls"][0] for ev in _events(r.text)
             if ev["choices"] and ev["choices"][0]["delta"].get("tool_calls")]
    assert calls[0] == {"index": 0, "id": CALL_ID, "type": "function",
                        "function": {"name": "get_weather", "arguments": "{"}}
    assert all(set(c) == {"index", "function"} and set(c["function"]) == {"arguments"}
               for c in calls[1:])
    assert "".join(c["function"]["arguments"] for c in calls) == '{ "city": "Paris" }'


async def test_an_openai_dialect_experts_stream_passes_untouched(
        scripted: ScriptedSSE, ups: Any, tmp_path: Path) -> None:
    # the fix is the llama-cpp-python dialect's: an OpenAI server's bytes are its own
    scripted.script = list(LLAMA_TOOL_STREAM)
    async with gateway_client(base_config(scripted.base, ups[1].base), tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json={
            "model": "coder", "stream": True, "tools": TOOLS, "tool_choice": "required",
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "x"}]})
    sent = b"".join(LLAMA_TOOL_STREAM)
    body = r.content
    assert body[:len(sent) - len(b"data: [DONE]\r\n\r\n")] == sent[:-len(b"data: [DONE]\r\n\r\n")]


async def test_a_policy_that_rewrites_model_fixes_the_deltas_too(
        scripted: ScriptedSSE, ups: Any, tmp_path: Path) -> None:
    scripted.script = list(LLAMA_TOOL_STREAM)
    async with gateway_client(_cfg(scripted, ups[1].base, rewrite_model=True), tmp_path
                              ) as (c, _):
        r = await c.post("/v1/chat/completions", json={
            "model": "auto", "stream": True, "tools": TOOLS, "tool_choice": "required",
            "messages": [{"role": "user", "content": "fix this bug in my code"}]})
    events = _events(r.text)
    assert {ev["model"] for ev in events} == {"auto"}
    names = [c["function"].get("name") for ev in events if ev["choices"]
             for c in ev["choices"][0]["delta"].get("tool_calls") or []]
    assert names == ["get_weather", None, None, None, None]
