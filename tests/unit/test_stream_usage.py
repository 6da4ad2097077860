"""The usage event the gateway estimates for a stream whose upstream sends none (llama.cpp
never does) counts every generated piece: tool-call arguments and reasoning as well as
content, in every choice of an event (``n`` > 1), as upstreams count completion tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import orjson

from tests.doubles.sse_script import ScriptedSSE, chunk, event
from tests.unit.gateway_helpers import base_config, gateway_client

DONE = b"data: [DONE]\n\n"
TOOLS = [{"type": "function", "function": {
    "name": "run", "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}}}}]


def _call(d: dict[str, Any]) -> bytes:
    return chunk({"tool_calls": [d]})


async def test_an_estimated_usage_counts_tool_call_arguments(
        scripted: ScriptedSSE, ups: Any, tmp_path: Path) -> None:
    # a routed request whose answer is a tool call, streamed by llama.cpp (no usage event):
    # the estimate said 0 completion tokens, so the log, the cost and the token budget's
    # reconciliation counted nothing for it
    _, chatter = ups
    scripted.script = [
        chunk({"role": "assistant", "content": None}),
        _call({"index": 0, "id": "call_1", "type": "function",
               "function": {"name": "run", "arguments": ""}}),
        _call({"index": 0, "function": {"arguments": '{"x":'}}),
        _call({"index": 0, "function": {"arguments": " 1}"}}),
        chunk({}, finish="tool_calls"), DONE]
    async with gateway_client(base_config(scripted.base, chatter.base), tmp_path) as (c, _):
        client = openai.AsyncOpenAI(base_url="http://gw/v1", api_key="unused", http_client=c)
        chunks = [ch async for ch in await client.chat.completions.create(
            model="auto", stream=True, tools=TOOLS, stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "fix this bug in my code"}])]
    args = "".join(ch.choices[0].delta.tool_calls[0].function.arguments or ""
                   for ch in chunks if ch.choices and ch.choices[0].delta.tool_calls)
    assert args == '{"x": 1}'
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].choices == []
    assert usage.completion_tokens == 3  # one per generated event, as for content
    (rec,) = [orjson.loads(x) for x in (tmp_path / "log.jsonl").read_bytes().splitlines()]
    assert rec["expert"] == "coder" and rec["completion_tokens"] == 3
    assert rec["degraded"] == ["usage-estimated"]


async def test_an_estimated_usage_counts_every_choice_and_reasoning(
        scripted: ScriptedSSE, ups: Any, tmp_path: Path) -> None:
    _, chatter = ups
    two = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "up-coder",
           "choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": None},
                       {"index": 1, "delta": {"content": "b"}, "finish_reason": None}]}
    scripted.script = [chunk({"role": "assistant", "content": ""}),
                       chunk({"reasoning_content": "Let me think"}), event(two),
                       chunk({}, finish="stop"), DONE]
    async with gateway_client(base_config(scripted.base, chatter.base), tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json={
            "model": "coder", "stream": True, "n": 2, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "x"}]})
    usage = [orjson.loads(ln[6:]) for ln in r.text.split("\n")
             if ln.startswith("data: {")][-1]["usage"]
    assert usage["completion_tokens"] == 3 and usage["estimated"] is True
