"""Shared rate limits after Redis restarts (issue 19, item 6), with a real redis-server.

Every pooled connection to the old server is dead once Redis restarts. Each used to fail
once and flip the limiter to local (per-replica) limits, so bursts were over-admitted long
after Redis was back. A connection error is now retried once on a fresh connection: the
first burst after the restart is held to the shared budget exactly.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.auth import hash_key
from tests.integration.conftest import RedisServer
from tests.unit.gateway_helpers import base_config, chat, gateway_client

pytestmark = pytest.mark.integration

BUDGET = 20


async def test_burst_after_a_redis_restart_is_held_to_the_shared_budget(
        ups, redis_clean: RedisServer, tmp_path: Path) -> None:
    cfg = base_config(ups[0].base, ups[1].base)
    cfg["api_keys"] = [
        {"name": "warm", "sha256": hash_key("sk-warm"), "requests_per_minute": 10_000},
        {"name": "tenant", "sha256": hash_key("sk-limited"), "requests_per_minute": BUDGET}]
    async with gateway_client(cfg, tmp_path, redis_url=redis_clean.url) as (c, gw):
        async def post(key: str, i: int) -> tuple[int, str]:
            r = await c.post("/v1/chat/completions", json=chat("chatter", f"hi {i}"),
                             headers={"authorization": f"Bearer {key}"})
            return r.status_code, r.headers.get("x-expertgate-ratelimit", "")

        # many requests at once: the client's pool holds many connections to this server
        warm = await asyncio.gather(*(post("sk-warm", i) for i in range(40)))
        assert {s for s, _ in warm} == {200} and {b for _, b in warm} == {"redis"}
        await asyncio.to_thread(redis_clean.stop)
        await asyncio.to_thread(redis_clean.start)  # same port, empty
        await asyncio.sleep(0.3)
        burst = await asyncio.gather(*(post("sk-limited", i) for i in range(2 * BUDGET)))
        assert sum(s == 200 for s, _ in burst) == BUDGET, burst
        assert {b for s, b in burst if s == 200} == {"redis"}
        assert gw.ratelimiter.backend == "redis"
