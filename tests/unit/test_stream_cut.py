"""A stream that breaks after its first token ends with the gateway's error event, and the
client can read it: an event the upstream had only half sent is not passed on, so the error
event never lands inside it (the OpenAI SDK raised a JSONDecodeError instead of the
gateway's APIError)."""

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


@pytest.mark.parametrize("half,end,code", [
    (b'data: {"id":"chatcmpl-s","cho', "abort", "stream_interrupted"),  # cut mid-line
    (b'data: {"id":"chatcmpl-s","cho', "hang", "stream_interrupted"),  # stalled mid-line
    # a whole data line whose event's blank line never came: that event is whole, and its
    # own (the error event's data must not join it)
    (TOKEN[:-1], "abort", "stream_interrupted"),
    (b'data: {"id":"chatcmpl-s","cho', None, "stream_invalid"),  # ended mid-line
], ids=["cut-mid-line", "stall-mid-line", "cut-mid-event", "end-mid-line"])
@pytest.mark.parametrize("usage", [False, True], ids=["plain", "include-usage"])
async def test_a_stream_broken_mid_event_ends_with_an_error_event_the_sdk_reads(
        scripted: ScriptedSSE, ups: Any, tmp_path: Path, half: bytes, end: str | None,
        code: str, usage: bool) -> None:
    _, chatter = ups
    scripted.script = [ROLE, TOKEN, 0.1, half, *([end] if end else [])]
    cfg = base_config(scripted.base, chatter.base)
    cfg["experts"][0]["timeout_s"] = 0.5
    extra: dict[str, Any] = {"stream_options": {"include_usage": True}} if usage else {}
    async with gateway_client(cfg, tmp_path) as (c, _):
        client = openai.AsyncOpenAI(base_url="http://gw/v1", api_key="unused",
                                    http_client=c, max_retries=0)
        got: list[str] = []
        with pytest.raises(openai.APIError) as e:
            async for ch in await client.chat.completions.create(
                    model="coder", stream=True, messages=[{"role": "user", "content": "x"}],
                    **extra):
                got.append(ch.choices[0].delta.content or "")
        assert got == (["", "Hel", "Hel"] if half == TOKEN[:-1] else ["", "Hel"])
        assert isinstance(e.value.body, dict) and e.value.body["code"] == code
    (rec,) = [orjson.loads(x) for x in (tmp_path / "log.jsonl").read_bytes().splitlines()]
    assert (rec["http_status"], rec["error_type"]) == (502, code)
    assert chatter.received == []
