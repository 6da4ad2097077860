"""A stream whose upstream body ends without ``data: [DONE]`` (request path)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from tests.doubles.sse_script import ScriptedSSE, chunk
from tests.unit.gateway_helpers import base_config, gateway_client

ROLE = chunk({"role": "assistant", "content": ""})
TOKEN = chunk({"content": "Hel"})


@pytest.mark.parametrize("usage", [False, True], ids=["plain", "include-usage"])
async def test_a_stream_that_ends_without_done_is_a_cut_not_an_answer(
        scripted: ScriptedSSE, ups: Any, tmp_path: Path, usage: bool) -> None:
    # The upstream's body ends cleanly after a token, with no finish_reason and no [DONE]
    # (a close-delimited server that died, a proxy that ended the body on its own timeout):
    # the client got a 200 stream that just stopped, the log an 'ok' answer of 0 tokens.
    # It is a cut: the client's stream ends with the gateway's error event.
    _, chatter = ups
    scripted.script = [ROLE, TOKEN]
    extra: dict[str, Any] = {"stream_options": {"include_usage": True}} if usage else {}
    async with gateway_client(base_config(scripted.base, chatter.base), tmp_path) as (c, _):
        client = openai.AsyncOpenAI(base_url="http://gw/v1", api_key="unused",
                                    http_client=c, max_retries=0)
        got: list[str] = []
        with pytest.raises(openai.APIError) as e:
            async for ch in await client.chat.completions.create(
                    model="coder", stream=True, messages=[{"role": "user", "content": "x"}],
                    **extra):
                if ch.choices:
                    got.append(ch.choices[0].delta.content or "")
        assert got == ["", "Hel"]
        assert isinstance(e.value.body, dict)
        assert e.value.body["code"] == "stream_interrupted"
        assert "[DONE]" in e.value.body["message"]
        metrics = (await c.get("/metrics")).text
    assert 'expertgate_upstream_errors_total{expert="coder",kind="stream_cut"} 1.0' in metrics
    assert 'expertgate_degraded_total{component="stream-cut"} 1.0' in metrics
    (rec,) = [orjson.loads(x) for x in (tmp_path / "log.jsonl").read_bytes().splitlines()]
    assert (rec["http_status"], rec["status"], rec["error_type"]) == (
        502, "error", "stream_interrupted")
    assert rec["degraded"] == ["stream-cut"]
    assert chatter.received == []


async def test_a_stream_that_ends_with_done_is_the_answer(
        scripted: ScriptedSSE, ups: Any, tmp_path: Path) -> None:
    _, chatter = ups
    scripted.script = [ROLE, TOKEN, chunk({}, finish="stop"), b"data: [DONE]\n\n"]
    async with gateway_client(base_config(scripted.base, chatter.base), tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json={
            "model": "coder", "stream": True, "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")
        assert "error" not in r.text
    (rec,) = [orjson.loads(x) for x in (tmp_path / "log.jsonl").read_bytes().splitlines()]
    assert (rec["http_status"], rec["status"]) == (200, "ok")
