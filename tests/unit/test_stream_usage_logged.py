"""A stream whose upstream sends no usage event (llama.cpp never does) and whose client asked
for none: the routing log, the cost and the token budget's reconciliation count the gateway's
estimate, as they do when the client asked for a usage event (they counted 0 tokens)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import openai
import orjson

from gateway.auth import hash_key
from gateway.ratelimit import Limits
from tests.doubles.sse_script import ScriptedSSE, chunk
from tests.unit.gateway_helpers import base_config, gateway_client

DONE = b"data: [DONE]\n\n"
KEY = "sk-usage-logged-1234"


async def test_a_stream_without_usage_is_logged_with_the_estimate(
        scripted: ScriptedSSE, ups: Any, tmp_path: Path) -> None:
    _, chatter = ups
    scripted.script = [chunk({"role": "assistant", "content": ""}), chunk({"content": "Hel"}),
                       chunk({"content": "lo"}), chunk({"content": "!"}),
                       chunk({}, finish="stop"), DONE]
    cfg = base_config(scripted.base, chatter.base)
    cfg["experts"][0]["price"] = {"input_per_1m": 1000.0, "output_per_1m": 2000.0}
    cfg["api_keys"] = [{"name": "t", "sha256": hash_key(KEY), "tokens_per_minute": 100_000}]
    async with gateway_client(cfg, tmp_path) as (c, gw):
        client = openai.AsyncOpenAI(base_url="http://gw/v1", api_key=KEY, http_client=c,
                                    max_retries=0)
        raw = await client.chat.completions.with_raw_response.create(
            model="coder", stream=True, max_tokens=1000,
            messages=[{"role": "user", "content": "x" * 40}])
        chunks = [ch async for ch in raw.parse()]
        assert all(ch.usage is None for ch in chunks)  # none asked: none sent
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) \
            == "Hello!"
        used = None
        for _ in range(200):  # the reconciliation runs off the response path
            used = (await gw.ratelimiter.acquire(hash_key(KEY)[:16],
                                                 Limits(None, 100_000), 0)).tokens_used
            if used < 1000:
                break
            await asyncio.sleep(0.02)
    (rec,) = [orjson.loads(x) for x in (tmp_path / "log.jsonl").read_bytes().splitlines()]
    assert rec["http_status"] == 200 and rec["stream"] is True
    assert rec["completion_tokens"] == 3 and rec["prompt_tokens"] == 10
    assert rec["cost_usd"] > 0
    assert rec["degraded"] == ["usage-estimated"]
    # the up-front charge (prompt + max_tokens) came back down to the estimate
    assert used == 13
