"""An upstream's 429/503 with a ``retry-after`` longer than a retry here would wait
(request path, dispatch)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.dispatch import RetryPolicy
from tests.unit.gateway_helpers import base_config, chat, gateway_client
from tests.unit.test_dispatch import FlakyDouble, ups  # noqa: F401  (the fixture)


@pytest.mark.parametrize("status", [429, 503])
async def test_a_replica_that_asks_for_more_time_is_not_asked_again_at_once(
        ups: tuple[FlakyDouble, FlakyDouble], tmp_path: Path, status: int) -> None:  # noqa: F811
    # 'retry-after: 30' was read as an invitation to retry at once: the same replica got the
    # request again within 50 ms (refused again, one more call against its rate limit)
    # before the fallback answered, and a named expert's client waited for a second refusal
    coder, chatter = ups
    coder.fail_first, coder.status, coder.retry_after = 10, status, "30"
    async with gateway_client(base_config(coder.base, chatter.base), tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json=chat("auto", "fix this bug in my code"))
        assert r.status_code == 200 and r.headers["x-expertgate-expert"] == "chatter"
        assert len(coder.received) == 1
        r = await c.post("/v1/chat/completions", json=chat("coder", "x"))
        assert r.status_code == (429 if status == 429 else 502)
        if status == 429:
            assert r.headers["retry-after"] == "30"
        assert len(coder.received) == 2


async def test_a_short_retry_after_is_still_retried_in_place(
        ups: tuple[FlakyDouble, FlakyDouble], tmp_path: Path) -> None:  # noqa: F811
    coder, chatter = ups
    wait = RetryPolicy().max_backoff_s
    coder.fail_first, coder.status, coder.retry_after = 1, 429, f"{wait:g}"
    async with gateway_client(base_config(coder.base, chatter.base), tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json=chat("auto", "fix this bug in my code"))
        assert r.status_code == 200 and r.headers["x-expertgate-expert"] == "coder"
        assert len(coder.received) == 2 and chatter.received == []


async def test_a_503s_retry_after_reaches_the_client(
        ups: tuple[FlakyDouble, FlakyDouble], tmp_path: Path) -> None:  # noqa: F811
    # an expert answering 503 'retry-after: 7' (a server loading its model, overloaded) came
    # back as a 502 without it: the OpenAI SDK retried after its own 0.5 s, refused again
    coder, chatter = ups
    coder.fail_first, coder.status, coder.retry_after = 10, 503, "7"
    async with gateway_client(base_config(coder.base, chatter.base), tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json=chat("coder", "x"))
        assert r.status_code == 502 and r.headers["retry-after"] == "7"
        coder.retry_after = None
        r = await c.post("/v1/chat/completions", json=chat("coder", "x"))
        assert r.status_code == 502 and "retry-after" not in r.headers
