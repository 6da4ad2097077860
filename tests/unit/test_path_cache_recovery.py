"""The Redis decision cache's outage state under concurrent lookups (request path)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from gateway.cache import CacheUnavailable, RedisDecisionCache


class _Client:
    """A Redis client stand-in: ``get`` of ``slow`` waits for ``release``; ``get`` of
    ``bad`` times out; every call is recorded."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.calls: list[str] = []

    async def get(self, key: str) -> bytes | None:
        self.calls.append(key)
        if key == "slow":
            await self.release.wait()
        if key == "bad":
            raise TimeoutError("Timeout reading from 127.0.0.1:6379")
        return None


async def test_a_lookup_after_redis_answered_again_reaches_redis(
        caplog: pytest.LogCaptureFixture) -> None:
    # Two lookups in flight: one times out (a burst's connect timeout), the other is then
    # answered. The log says Redis recovered, so the next request must use the cache: it
    # was skipped for retry_s (every response 'x-expertgate-degraded: cache', a lookup
    # counted 'unavailable') while the log said Redis was back.
    client = _Client()
    cache = RedisDecisionCache(client, retry_s=3600.0)
    slow = asyncio.create_task(cache.get("slow"))
    await asyncio.sleep(0)
    with pytest.raises(CacheUnavailable):
        await cache.get("bad")
    client.release.set()
    with caplog.at_level(logging.INFO, "expertgate.cache"):
        assert await slow is None
    assert "Redis recovered" in caplog.text
    assert cache.available
    assert await cache.get("next") is None
    assert client.calls == ["slow", "bad", "next"]
    assert cache.skipped == 0


async def test_redis_still_down_is_skipped_for_retry_s() -> None:
    # the interval itself stays: a dead Redis costs one timeout per retry_s, not per request
    client = _Client()
    cache = RedisDecisionCache(client, retry_s=3600.0)
    with pytest.raises(CacheUnavailable):
        await cache.get("bad")
    with pytest.raises(CacheUnavailable, match="marked down"):
        await cache.get("next")
    assert client.calls == ["bad"]
    assert cache.skipped == 2


