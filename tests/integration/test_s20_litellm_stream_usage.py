"""A ``kind: litellm`` expert's stream counts its usage as an ``openai`` expert's does.

An ``openai`` expert is asked for its usage event when the client did not ask (its figures
count in the log, the cost and the token budget; the event is not the client's), and when
the upstream sends none the gateway's estimate counts, said as such (``usage-estimated``,
``"estimated": true`` on the event the client asked for). Through LiteLLM the provider was
never asked (every unasked stream was an estimate though the provider counts exactly), and
a provider that sent no usage got LiteLLM's own count, passed as the provider's (nothing
degraded), in a usage event whose one choice has an empty delta (OpenAI's has none). Real
LiteLLM calls to the usual double on 127.0.0.1, in process, bounded.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from expertgate.bench.upstream_double import OpenAIUpstreamDouble
from tests.doubles.sse_script import ScriptedSSE, completion_chunk, event
from tests.unit.gateway_helpers import base_config, chat, gateway_client

pytestmark = [pytest.mark.integration,
              pytest.mark.filterwarnings("ignore:Item.*`ReadOnly` qualifier:UserWarning")]

KEY_ENV = "EG_TEST_LITE_KEY"


@pytest.fixture(params=[True, False], ids=["sends-usage", "no-usage"])
async def coder(request: pytest.FixtureRequest) -> AsyncIterator[OpenAIUpstreamDouble]:
    d = await OpenAIUpstreamDouble("coder-double", stream_usage=request.param).start()
    yield d
    await d.stop()


async def _play(kind: str, coder: OpenAIUpstreamDouble, chatter: Any, tmp: Path,
                ask: bool) -> dict[str, Any]:
    tmp.mkdir()
    cfg = base_config(coder.base, chatter.base)
    cfg["experts"][0]["timeout_s"] = 5
    if kind == "litellm":
        cfg["experts"][0].update(kind="litellm", model="openai/up-coder", api_key_env=KEY_ENV)
    body = chat("coder", "hi", stream=True,
                **({"stream_options": {"include_usage": True}} if ask else {}))
    async with gateway_client(cfg, tmp) as (c, _):
        r = await asyncio.wait_for(c.post("/v1/chat/completions", json=body), 10)
    (rec,) = [orjson.loads(x) for x in (tmp / "log.jsonl").read_bytes().splitlines()]
    events = [orjson.loads(ln[6:]) for ln in r.text.split("\n") if ln.startswith("data: {")]
    usage = [(e["choices"], e["usage"]) for e in events if e.get("usage")]
    return {"record": {k: rec.get(k) for k in ("prompt_tokens", "completion_tokens",
                                                "cost_usd", "degraded", "http_status")},
            "usage_events": [(ch, {k: u.get(k) for k in (
                "prompt_tokens", "completion_tokens", "total_tokens", "estimated")})
                for ch, u in usage],
            "text": "".join(c["delta"].get("content") or "" for e in events
                            for c in e["choices"])}


@pytest.mark.parametrize("ask", [True, False], ids=["asked", "unasked"])
async def test_a_litellm_streams_usage_counts_as_an_openai_experts(
        coder: OpenAIUpstreamDouble, ups: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, ask: bool) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-lite-test")
    http = await _play("openai", coder, ups[1], tmp_path / "http", ask)
    lite = await _play("litellm", coder, ups[1], tmp_path / "lite", ask)
    assert http["text"] == "answer from coder-double (up-coder)"
    if coder.stream_usage:  # the provider's own figures, also when the client did not ask
        assert (http["record"]["prompt_tokens"], http["record"]["completion_tokens"]) == (7, 5)
        assert http["record"]["degraded"] is None
    else:
        assert http["record"]["degraded"] == ["usage-estimated"]
    assert len(http["usage_events"]) == (1 if ask else 0)
    if ask:
        assert http["usage_events"][0][0] == []  # OpenAI's usage event has no choices
    for k in http:
        assert lite[k] == http[k], k


USAGE = event({"id": "cmpl-s", "object": "text_completion", "created": 1, "model": "up-coder",
               "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 5,
                                        "total_tokens": 12}})


async def _play_completion(kind: str, scripted: ScriptedSSE, chatter: Any, tmp: Path,
                           ask: bool) -> dict[str, Any]:
    tmp.mkdir()
    cfg = base_config(scripted.base, chatter.base)
    cfg["experts"][0]["timeout_s"] = 5
    if kind == "litellm":
        cfg["experts"][0].update(kind="litellm", model="openai/up-coder", api_key_env=KEY_ENV)
    body = {"model": "coder", "prompt": "hi", "stream": True,
            **({"stream_options": {"include_usage": True}} if ask else {})}
    async with gateway_client(cfg, tmp) as (c, _):
        r = await asyncio.wait_for(c.post("/v1/completions", json=body), 10)
    (rec,) = [orjson.loads(x) for x in (tmp / "log.jsonl").read_bytes().splitlines()]
    events = [orjson.loads(ln[6:]) for ln in r.text.split("\n") if ln.startswith("data: {")]
    return {"record": {k: rec.get(k) for k in ("prompt_tokens", "completion_tokens",
                                                "cost_usd", "degraded", "http_status")},
            "usage_events": [(e["choices"], {k: e["usage"].get(k) for k in (
                "prompt_tokens", "completion_tokens", "total_tokens", "estimated")})
                for e in events if e.get("usage")],
            "text": "".join(c.get("text") or "" for e in events for c in e["choices"])}


@pytest.mark.parametrize("sends", [True, False], ids=["sends-usage", "no-usage"])
@pytest.mark.parametrize("ask", [True, False], ids=["asked", "unasked"])
async def test_a_litellm_completion_streams_usage_counts_as_an_openai_experts(
        scripted: ScriptedSSE, ups: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        sends: bool, ask: bool) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-lite-test")
    scripted.script = [completion_chunk("Hel"), 0.1, completion_chunk("lo", finish="stop"),
                       *([USAGE] if sends else []), b"data: [DONE]\n\n"]
    http = await _play_completion("openai", scripted, ups[1], tmp_path / "http", ask)
    lite = await _play_completion("litellm", scripted, ups[1], tmp_path / "lite", ask)
    assert http["text"] == "Hello"
    assert http["record"]["degraded"] == (None if sends else ["usage-estimated"])
    for k in http:
        assert lite[k] == http[k], k
