"""The shared (Redis) limits: a request refused on tokens costs no request there either."""

from __future__ import annotations

from pathlib import Path

import pytest

from expertgate.procs import RedisServer
from tests.unit.gateway_helpers import gateway_client
from tests.unit.test_ratelimit_refund import (
    check_refused_on_tokens_costs_no_request,
    limited_config,
)

pytestmark = pytest.mark.integration


async def test_a_request_refused_on_tokens_costs_no_shared_request(
        ups, tmp_path: Path, redis_clean: RedisServer) -> None:
    cfg = limited_config(ups[0].base, ups[1].base)
    async with gateway_client(cfg, tmp_path, redis_url=redis_clean.url) as (c, gw):
        await check_refused_on_tokens_costs_no_request(c, {"authorization": "Bearer sk-a"})
        assert gw.ratelimiter.backend == "redis"
    assert len(ups[1].received) == 3
