"""An app developer's requests, the OpenAI SDK as the client, through a real
``expertgate serve`` of the demo config to its real llama.cpp experts: what the answer must
be to be right, complete and OpenAI-shaped where llama-cpp-python's own was not (a streamed
tool call the SDK accumulated into a name repeated per delta; ``logprobs: true`` answered
null; a tool call cut by ``max_tokens`` said ``tool_calls``, not ``length``), and twenty
concurrent streams, none lost, none duplicated, each ending with ``[DONE]``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from expertgate.procs import GatewayServer, local_config
from tests.integration.conftest import LocalExperts

pytestmark = pytest.mark.integration

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "examples" / "demo-local.yaml"
TOOLS: list[Any] = [{"type": "function", "function": {
    "name": "get_weather", "description": "the weather in a city", "strict": True,
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"], "additionalProperties": False}}}]
WEATHER = [{"role": "user", "content": "What's the weather in Paris?"}]


@pytest.fixture(scope="module")
def gateway(llama_experts: LocalExperts, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[GatewayServer]:
    llama_experts.ensure_running()
    work = tmp_path_factory.mktemp("sdk")
    cfg = local_config(DEMO_CONFIG, work / "demo.yaml", llama_experts.ports)
    with GatewayServer(cfg, log_path=work / "gateway.log", routing_log=work / "log.jsonl") as gw:
        yield gw


@pytest.mark.parametrize("model", ["smollm2", "auto"])
def test_a_streamed_tool_call_accumulates_to_the_call_made(client: openai.OpenAI,
                                                           model: str) -> None:
    with client.chat.completions.stream(
            model=model, messages=WEATHER, tools=TOOLS, max_tokens=24, temperature=0.0,
            tool_choice={"type": "function", "function": {"name": "get_weather"}}) as s:
        for _ in s:
            pass
        final = s.get_final_completion()
    (call,) = final.choices[0].message.tool_calls or []
    assert final.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and call.type == "function"
    assert call.id.startswith("call_") and call.id.count("call_") == 1
    assert call.function.arguments.lstrip().startswith("{")


@pytest.mark.parametrize("stream", [False, True])
def test_logprobs_true_is_answered_with_each_tokens_logprob(client: openai.OpenAI,
                                                            stream: bool) -> None:
    kw: dict[str, Any] = {"model": "smollm2", "messages": WEATHER, "logprobs": True,
                          "max_tokens": 4, "temperature": 0.0}
    if stream:
        chunks = list(client.chat.completions.create(stream=True, **kw))
        tokens = [t for ch in chunks if ch.choices and ch.choices[0].logprobs
                  for t in ch.choices[0].logprobs.content or []]
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    else:
        choice = client.chat.completions.create(**kw).choices[0]
        assert choice.logprobs is not None
        tokens = choice.logprobs.content or []
        text = choice.message.content or ""
    assert tokens and "".join(t.token for t in tokens) == text
    assert all(t.logprob <= 0.0 for t in tokens)


async def test_twenty_parallel_streams_each_complete_once(gateway: GatewayServer) -> None:
    async def one(http: httpx.AsyncClient, i: int) -> tuple[int, str, list[Any], int]:
        body = {"model": "auto", "max_tokens": 6, "stream": True,
                "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": f"Say hello to guest number {i}"}]}
        async with http.stream("POST", "/v1/chat/completions", json=body) as r:
            lines = [ln async for ln in r.aiter_lines()]
            rid = r.headers["x-request-id"]
            status = r.status_code
        events = [json.loads(ln[6:]) for ln in lines if ln.startswith("data: {")]
        return status, rid, events, lines.count("data: [DONE]")

    async with httpx.AsyncClient(base_url=gateway.url, timeout=240.0,
                                 limits=httpx.Limits(max_connections=32)) as http:
        got = await asyncio.wait_for(asyncio.gather(*(one(http, i) for i in range(20))), 300)
    assert [s for s, _, _, _ in got] == [200] * 20
    assert len({rid for _, rid, _, _ in got}) == 20
    for _, _, events, done in got:
        assert done == 1 and not any("error" in e for e in events)
        assert len({e["id"] for e in events}) == 1  # one answer's events, no other's
        assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] >= 1
        assert sum(1 for e in events if e["choices"] and e["choices"][0].get("finish_reason")
                   ) == 1
    assert len({events[0]["id"] for _, _, events, _ in got}) == 20


@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_call_cut_by_max_tokens_finishes_with_length(client: openai.OpenAI,
                                                            stream: bool) -> None:
    kw: dict[str, Any] = {"model": "smollm2", "messages": WEATHER, "tools": TOOLS,
                          "max_tokens": 3, "temperature": 0.0,
                          "tool_choice": {"type": "function",
                                          "function": {"name": "get_weather"}}}
    if stream:
        finishes = [ch.choices[0].finish_reason
                    for ch in client.chat.completions.create(stream=True, **kw)
                    if ch.choices and ch.choices[0].finish_reason]
    else:
        finishes = [client.chat.completions.create(**kw).choices[0].finish_reason]
    assert finishes == ["length"]


@pytest.mark.parametrize(("fields", "param"), [
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"messages": [*WEATHER, {"role": "tool", "content": "18C"}]}, "messages.1.tool_call_id"),
    ({"logit_bias": {"abc": 5}}, "logit_bias"),
])
def test_the_clients_own_mistake_is_a_400_not_the_experts_500(
        client: openai.OpenAI, fields: dict[str, Any], param: str) -> None:
    kw: dict[str, Any] = {"model": "auto", "messages": WEATHER, "max_tokens": 2, **fields}
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(**kw)
    assert ei.value.status_code == 400
    assert isinstance(ei.value.body, dict) and ei.value.body["param"] == param


CALLED = [*WEATHER, {"role": "assistant", "tool_calls": [{
    "id": "call_1", "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "18C and sunny"}]


@pytest.mark.parametrize("fields", [
    {"temperature": None, "top_p": None, "seed": None, "stop": None},
    {"tools": [{"type": "function", "function": {"name": "now"}}],
     "tool_choice": {"type": "function", "function": {"name": "now"}}},
    {"messages": CALLED, "tools": TOOLS},
], ids=["nulls", "function-without-parameters", "assistant-turn-without-content"])
def test_a_valid_request_its_server_failed_on_is_answered(client: openai.OpenAI,
                                                          fields: dict[str, Any]) -> None:
    kw: dict[str, Any] = {"model": "smollm2", "messages": WEATHER, "max_tokens": 3, **fields}
    choice = client.chat.completions.create(**kw).choices[0]
    assert choice.finish_reason in ("stop", "length", "tool_calls")
    assert choice.message.content or choice.message.tool_calls
