"""``tool_choice: "required"`` to a llama-cpp-python expert (request path, dialect)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.dialect import adapt
from gateway.errors import UnsupportedByExpert
from tests.unit.gateway_helpers import base_config, chat, gateway_client


def _tool(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}


def test_required_with_one_tool_is_that_tool_named() -> None:
    # llama-cpp-python forces a tool call only for a tool_choice that names one; 'required'
    # was ignored as 'auto' is: the client, asking for a call, got text (an agent loop then
    # has no call to run)
    body = {**chat("e", "weather?"), "tools": [_tool("get_weather")], "tool_choice": "required"}
    out = adapt(body, "llama-cpp-python", "e")
    assert out["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["tool_choice"] == "required"  # the chain's other experts get it as sent
    for choice in ("auto", "none", {"type": "function", "function": {"name": "get_weather"}}):
        assert adapt({**body, "tool_choice": choice}, "llama-cpp-python", "e")[
            "tool_choice"] == choice


def test_required_with_several_tools_is_passed_to_an_expert_that_can() -> None:
    body = {**chat("e", "weather?"), "tools": [_tool("a"), _tool("b")],
            "tool_choice": "required"}
    with pytest.raises(UnsupportedByExpert, match="'tool_choice' is 'required'") as e:
        adapt(body, "llama-cpp-python", "e")
    assert e.value.param == "tool_choice"


async def test_the_llama_expert_gets_the_named_tool_and_another_the_choice_as_sent(
        ups: Any, tmp_path: Path) -> None:
    coder, chatter = ups
    cfg = base_config(coder.base, chatter.base)
    cfg["experts"][0]["dialect"] = "llama-cpp-python"
    async with gateway_client(cfg, tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json={
            **chat("auto", "fix this bug in my code"), "tools": [_tool("run")],
            "tool_choice": "required"})
        assert r.status_code == 200 and r.headers["x-expertgate-expert"] == "coder"
        r = await c.post("/v1/chat/completions", json={
            **chat("auto", "fix this bug in my code"), "tools": [_tool("a"), _tool("b")],
            "tool_choice": "required"})
        assert r.status_code == 200 and r.headers["x-expertgate-expert"] == "chatter"
        assert "coder:unsupported" in r.headers["x-expertgate-reason"]
    assert coder.received[0]["tool_choice"] == {"type": "function",
                                                "function": {"name": "run"}}
    assert len(coder.received) == 1 and chatter.received[0]["tool_choice"] == "required"
