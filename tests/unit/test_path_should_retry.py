"""Which of the gateway's 5xx answers tell the OpenAI SDK not to retry (request path)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest

from tests.unit.gateway_helpers import base_config, gateway_client


@pytest.mark.parametrize("status", [401, 403])
async def test_an_upstream_refusing_the_gateways_credentials_is_not_retried_by_the_sdk(
        ups: Any, tmp_path: Path, status: int) -> None:
    # 502 upstream_auth_failed is the gateway's configuration (its key for the expert), which
    # no retry mends: the OpenAI SDK (max_retries=2 by default) sent the request twice more,
    # each refused again, the client waiting through its backoff for the same 502
    coder, chatter = ups
    coder.mode, coder.status = "status", status
    async with gateway_client(base_config(coder.base, chatter.base), tmp_path) as (c, _):
        client = openai.AsyncOpenAI(base_url="http://gw/v1", api_key="unused", http_client=c,
                                    max_retries=2)
        with pytest.raises(openai.APIStatusError) as e:
            await client.chat.completions.create(
                model="coder", messages=[{"role": "user", "content": "x"}])
        assert e.value.status_code == 502 and e.value.code == "upstream_auth_failed"
        assert e.value.response.headers["x-should-retry"] == "false"
    assert len(coder.received) == 1


async def test_an_upstream_that_failed_otherwise_is_still_retried_by_the_sdk(
        ups: Any, tmp_path: Path) -> None:
    coder, chatter = ups
    coder.mode, coder.status = "status", 502
    async with gateway_client(base_config(coder.base, chatter.base), tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions",
                         json={"model": "coder", "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 502 and "x-should-retry" not in r.headers
