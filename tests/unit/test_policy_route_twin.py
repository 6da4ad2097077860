"""The dry run ``POST /v1/route`` is the chat endpoint's twin: the body an app sends to
``/v1/chat/completions`` (with its usual OpenAI fields) explains the decision that request
then takes. It answered 400 'n: Extra inputs are not permitted' to ``n``, ``temperature``,
``stream``, ``max_tokens``, ``tools``... so the body had to be cut down to be explained."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.unit.gateway_helpers import base_config, chat, gateway_client
from tests.unit.test_upstream_faults import _ensemble

#: what the OpenAI SDK (and vLLM's extra_body) put beside model and messages
OPENAI_FIELDS: dict[str, Any] = {
    "n": 1, "temperature": 0.2, "top_p": 0.9, "stream": True,
    "stream_options": {"include_usage": True}, "max_tokens": 64, "user": "u-1",
    "seed": 7, "stop": ["\n\n"], "metadata": {"app": "x"}, "top_k": 20,
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
    "tool_choice": "auto", "response_format": {"type": "text"},
}


@pytest.mark.parametrize("text", ["fix this bug in my code", "tell me a joke"])
async def test_the_chat_body_explains_the_decision_the_chat_endpoint_takes(
        ups, tmp_path: Path, text: str) -> None:
    async with gateway_client(base_config(ups[0].base, ups[1].base), tmp_path) as (c, _):
        body = chat("auto", text, **OPENAI_FIELDS)
        dry = await c.post("/v1/route", json=body)
        assert dry.status_code == 200, dry.text
        live = await c.post("/v1/chat/completions", json=body)
        assert live.status_code == 200
        assert dry.json()["fallback_chain"][0] == live.headers["x-expertgate-expert"]
        assert dry.headers["x-expertgate-expert"] == live.headers["x-expertgate-expert"]
        assert dry.json()["reason"] == live.headers["x-expertgate-reason"]


@pytest.mark.parametrize(("extra", "param"), [
    ({"temperature": "hot"}, "temperature"), ({"n": 0}, "n"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"tool_choice": "auto"}, "tool_choice"),
])
async def test_a_field_the_chat_endpoint_refuses_is_refused_alike(
        ups, tmp_path: Path, extra: dict[str, Any], param: str) -> None:
    async with gateway_client(base_config(ups[0].base, ups[1].base), tmp_path) as (c, _):
        body = chat("auto", "tell me a joke", **extra)
        dry = await c.post("/v1/route", json=body)
        live = await c.post("/v1/chat/completions", json=body)
        assert dry.status_code == live.status_code == 400
        assert dry.json()["error"]["param"] == live.json()["error"]["param"] == param
    assert ups[0].received == ups[1].received == []


async def test_n_choices_explain_that_an_ensemble_is_not_asked(ups, tmp_path: Path) -> None:
    # a live request asking for two choices is answered by the first member, not aggregated
    async with _ensemble(ups, tmp_path) as (c, _):
        one = await c.post("/v1/route", json=chat("panel", "explain topic 3"))
        assert one.status_code == 200 and one.json()["action"] == "ensemble"
        two = await c.post("/v1/route", json=chat("panel", "explain topic 3", n=2))
        assert two.status_code == 200 and two.json()["action"] == "forward"
        assert two.json()["fallback_chain"][0] == "coder"
        assert "not ensembled: 2 answers asked" in two.json()["reason"]
