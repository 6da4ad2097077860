"""What the Redis decision cache says in the process log through an outage of a real
redis-server: one warning when it starts, at most one reminder per ``remind_s`` (how long,
how many lookups skipped), one line when Redis answers again; every lookup meanwhile still
reports the cache unavailable (the pipeline turns that into ``x-expertgate-cache: bypass``,
``x-expertgate-degraded: cache`` and ``expertgate_decision_cache_total{result="unavailable"}``,
tests/integration/test_redis.py)."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
import redis.asyncio as aioredis

from gateway.cache import CacheUnavailable, RedisDecisionCache
from tests.integration.conftest import RedisServer

pytestmark = pytest.mark.integration


async def test_an_outage_logs_one_warning_a_bounded_number_of_reminders_and_the_recovery(
        redis_clean: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    client = aioredis.Redis.from_url(redis_clean.url, socket_timeout=0.5,
                                     socket_connect_timeout=0.5)
    cache = RedisDecisionCache(client, retry_s=0.01, remind_s=0.4)
    caplog.set_level(logging.INFO, logger="expertgate.cache")
    try:
        await cache.set("k", {"mode": "single"}, ttl_s=60)
        assert await cache.get("k") == {"mode": "single"}

        redis_clean.stop()  # our own instance only, by its PID
        lookups = 0
        t_end = time.monotonic() + 1.0  # a hundred back-off periods
        while time.monotonic() < t_end:
            with pytest.raises(CacheUnavailable):
                await cache.get("k")
            lookups += 1
            await asyncio.sleep(0.005)
        assert lookups > 50
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert warnings[0].startswith("decision cache: Redis unavailable")
        reminders = warnings[1:]
        # one per remind_s at most (1.0 s / 0.4 s), not one per retry_s
        assert 1 <= len(reminders) <= 3, warnings
        assert all("still unavailable" in w and "lookup(s) skipped" in w for w in reminders)

        caplog.clear()
        redis_clean.start()  # same port, empty
        got = None
        for _ in range(200):
            try:
                got = await cache.get("k")
                break
            except CacheUnavailable:
                await asyncio.sleep(0.02)
        assert got is None  # answered (empty: the restarted server kept nothing)
        lines = [(r.levelno, r.getMessage()) for r in caplog.records]
        recovered = [m for lvl, m in lines if lvl == logging.INFO and "recovered after" in m]
        assert len(recovered) == 1, lines
        assert "lookup(s) skipped" in recovered[0]
        assert not [m for lvl, m in lines if lvl >= logging.WARNING], lines
        # up again: nothing more is said
        caplog.clear()
        await cache.set("k2", {"mode": "single"}, ttl_s=60)
        assert await cache.get("k2") == {"mode": "single"}
        assert not caplog.records
    finally:
        await client.aclose()
