"""A non-streamed answer whose upstream reports no usage (request path, record)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.unit.gateway_helpers import base_config, chat, gateway_client

_ANSWER = {"id": "c", "object": "chat.completion", "created": 1, "model": "up-coder",
           "choices": [{"index": 0, "finish_reason": "stop", "message": {
               "role": "assistant", "content": "x" * 400}}]}


@pytest.mark.parametrize("usage", [None, {"prompt_tokens": 0, "completion_tokens": 0}],
                         ids=["absent", "zeros"])
async def test_an_answer_without_usage_is_counted_by_the_estimate(
        ups: Any, tmp_path: Path, usage: dict[str, int] | None) -> None:
    # An upstream that reports no usage in a whole answer (a proxy, an older server) was
    # logged as 0 tokens and $0 (the dashboard's cost, a cost-aware router trained on the
    # log), nothing said. A stream without usage is counted by the gateway's estimate
    # (usage-estimated); a whole answer now is too: prompt characters / 4, generated
    # characters / 4.
    coder, chatter = ups
    body = dict(_ANSWER) if usage is None else {**_ANSWER, "usage": usage}
    coder.raw = (200, "application/json", orjson.dumps(body))
    async with gateway_client(base_config(coder.base, chatter.base), tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json=chat("coder", "y" * 80))
        assert r.status_code == 200 and r.json() == body  # the answer as the upstream sent it
        assert r.headers["x-expertgate-degraded"] == "usage-estimated"
        metrics = (await c.get("/metrics")).text
    assert 'expertgate_degraded_total{component="usage-estimated"} 1.0' in metrics
    (rec,) = [orjson.loads(x) for x in (tmp_path / "log.jsonl").read_bytes().splitlines()]
    assert rec["prompt_tokens"] == 20 and rec["completion_tokens"] == 100
    assert rec["cost_usd"] == pytest.approx((20 * 1.0 + 100 * 2.0) / 1e6)
    assert rec["degraded"] == ["usage-estimated"]


async def test_an_answer_with_usage_is_counted_as_reported(ups: Any, tmp_path: Path) -> None:
    coder, chatter = ups
    async with gateway_client(base_config(coder.base, chatter.base), tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json=chat("coder", "x"))
        assert r.status_code == 200 and "x-expertgate-degraded" not in r.headers
    (rec,) = [orjson.loads(x) for x in (tmp_path / "log.jsonl").read_bytes().splitlines()]
    assert (rec["prompt_tokens"], rec["completion_tokens"]) == (7, 5)
