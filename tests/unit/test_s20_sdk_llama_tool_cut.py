"""A tool call a llama-cpp-python expert cut at ``max_tokens``.

llama-cpp-python (0.3) ends a forced tool call with ``finish_reason: "tool_calls"`` however
its generation ended: a call cut by ``max_tokens`` (its arguments half a JSON object, as
``{"city":``) said it was complete. OpenAI says ``length``; the OpenAI SDK's helpers raise
``LengthFinishReasonError`` on it, an app checks it to ask again with more tokens: here they
parsed the arguments and failed with a JSONDecodeError. The call's arguments are generated
under a grammar from its parameters, so they end as a whole JSON value unless cut: arguments
that do not parse are a cut, said ``length``, streamed or not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest

from expertgate.bench.upstream_double import OpenAIUpstreamDouble
from tests.doubles.sse_script import ScriptedSSE
from tests.unit.gateway_helpers import coder_cfg, gateway_client
from tests.unit.test_s20_sdk_llama_tool_stream import CALL_ID, TOOLS, _llama, _piece

FORCED = {"type": "function", "function": {"name": "get_weather"}}
MSGS = [{"role": "user", "content": "Weather in Paris?"}]


def _stream(*args: str) -> list[bytes | float | str]:
    return [_llama({"role": "assistant", "content": None, "function_call": None,
                    "tool_calls": None}),
            *(_piece(a) for a in args),
            _llama({"role": None, "content": None, "function_call": None, "tool_calls": None},
                   finish="tool_calls"),
            b"data: [DONE]\r\n\r\n"]


def _finishes(text: str) -> list[Any]:
    return [ev["choices"][0]["finish_reason"] for ev in
            (json.loads(ln[6:]) for ln in text.splitlines() if ln.startswith("data: {"))
            if ev["choices"] and ev["choices"][0]["finish_reason"]]


@pytest.mark.parametrize(("args", "finish"), [
    (("{", ' "city"', ": "), "length"),
    (("{", ' "city"', ': "Paris"', " }"), "tool_calls"),
])
async def test_a_streamed_call_cut_short_finishes_with_length(
        scripted: ScriptedSSE, ups: Any, tmp_path: Path, args: tuple[str, ...], finish: str
        ) -> None:
    scripted.script = _stream(*args)
    cfg = coder_cfg(scripted.base, ups[1].base, dialect="llama-cpp-python")
    async with gateway_client(cfg, tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json={
            "model": "coder", "stream": True, "tools": TOOLS, "tool_choice": FORCED,
            "max_tokens": 3, "messages": MSGS})
    assert _finishes(r.text) == [finish]


async def test_the_sdks_stream_helper_says_the_call_was_cut(
        scripted: ScriptedSSE, ups: Any, tmp_path: Path) -> None:
    scripted.script = _stream("{", ' "city"', ": ")
    cfg = coder_cfg(scripted.base, ups[1].base, dialect="llama-cpp-python")
    async with gateway_client(cfg, tmp_path) as (c, _):
        client = openai.AsyncOpenAI(base_url="http://gw/v1", api_key="unused", http_client=c,
                                    max_retries=0)
        with pytest.raises(openai.LengthFinishReasonError):
            async with client.chat.completions.stream(
                    model="coder", tools=TOOLS, tool_choice=FORCED, max_tokens=3,
                    messages=MSGS) as s:
                async for _ in s:
                    pass


def _answer(arguments: str) -> bytes:
    call = {"id": CALL_ID, "type": "function",
            "function": {"name": "get_weather", "arguments": arguments}}
    return json.dumps({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "x",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": None,
                     "message": {"role": "assistant", "content": None,
                                 "function_call": call["function"], "tool_calls": [call]}}],
        "usage": {"prompt_tokens": 37, "completion_tokens": 5,
                  "total_tokens": 42}}).encode()


@pytest.mark.parametrize(("arguments", "finish"), [
    ('{"city":', "length"), ('{"city": "Paris"}', "tool_calls")])
@pytest.mark.parametrize("dialect", ["llama-cpp-python", "openai"])
async def test_a_whole_answer_cut_short_finishes_with_length(
        ups: Any, tmp_path: Path, arguments: str, finish: str, dialect: str) -> None:
    llama = await OpenAIUpstreamDouble(
        "llama", raw=(200, "application/json", _answer(arguments))).start()
    try:
        cfg = coder_cfg(llama.base, ups[1].base, dialect=dialect)
        async with gateway_client(cfg, tmp_path) as (c, _):
            r = await c.post("/v1/chat/completions", json={
                "model": "coder", "tools": TOOLS, "tool_choice": FORCED, "max_tokens": 5,
                "messages": MSGS})
    finally:
        await llama.stop()
    choice = r.json()["choices"][0]
    # an OpenAI server's answer is its own, passed as it came
    assert choice["finish_reason"] == (finish if dialect != "openai" else "tool_calls")
    assert choice["message"]["tool_calls"][0]["function"]["arguments"] == arguments
    assert r.json()["usage"]["completion_tokens"] == 5
