"""The Redis outage state of the decision cache and the rate limiter under concurrent
calls (request path): one call that timed out beside one Redis answered."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Any

import pytest

from gateway.cache import CacheUnavailable, RedisDecisionCache
from gateway.errors import ServiceUnavailable
from gateway.ratelimit import Limits, RateLimiter


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




class _ScriptClient:
    """A Redis client stand-in for the rate limiter's scripts: the acquire of key ``slow``
    waits for ``release``, of key ``bad`` times out, any other is admitted."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.calls: list[str] = []

    def register_script(self, source: str) -> Any:
        async def run(keys: list[str], args: list[Any]) -> list[int]:
            ident = keys[0].split("{", 1)[1].split("}", 1)[0]
            self.calls.append(ident)
            if ident == "slow":
                await self.release.wait()
            if ident == "bad":
                raise TimeoutError("Timeout reading from 127.0.0.1:6379")
            return [1, 0, 1, 0, 0, 0, 0, 1]
        return run


async def test_limits_are_shared_again_once_redis_answered(
        caplog: pytest.LogCaptureFixture) -> None:
    # The same burst for the rate limiter: one check timed out, one in flight beside it was
    # answered and the log said "limits are shared again", yet every key was limited per
    # process (x-expertgate-degraded: ratelimit-local) until retry_s ran out.
    client = _ScriptClient()
    rl = RateLimiter(client, retry_s=3600.0)
    limits = Limits(100, None)
    slow = asyncio.create_task(rl.acquire("slow", limits, 0))
    await asyncio.sleep(0)
    assert (await rl.acquire("bad", limits, 0)).backend == "local"
    client.release.set()
    with caplog.at_level(logging.WARNING, "expertgate.ratelimit"):
        assert (await slow).backend == "redis"
    assert "Redis is back" in caplog.text
    assert rl.backend == "redis"
    assert (await rl.acquire("next", limits, 0)).backend == "redis"
    assert client.calls == ["slow", "bad", "next"]


class _KeyStore:
    """A Redis client stand-in for the API key store: the record of digest ``slow`` comes
    once ``release`` is set, of ``bad`` times out; every digest is a key."""

    def __init__(self, slow: str, bad: str) -> None:
        self.release = asyncio.Event()
        self.slow, self.bad = slow, bad
        self.calls: list[str] = []

    async def hgetall(self, key: str) -> dict[bytes, bytes]:
        digest = key.rsplit(":", 1)[1]
        self.calls.append(digest)
        if digest == self.slow:
            await self.release.wait()
        if digest == self.bad:
            raise TimeoutError("Timeout reading from 127.0.0.1:6379")
        return {b"name": b"tenant-" + digest[:4].encode()}


async def test_a_new_key_is_verified_once_the_key_store_answered() -> None:
    # One key lookup timed out in a burst while another was answered: a key not yet seen
    # by this process got 503 key_store_unavailable (its client's SDK retries) until
    # retry_s ran out, though the store was answering.
    from gateway.auth import Authenticator
    from gateway.config import parse_config

    cfg = parse_config({"experts": [{"name": "e", "api_base": "http://127.0.0.1:9/v1"}],
                        "require_auth": True}, "t.yaml")
    digest = {k: hashlib.sha256(k.encode()).hexdigest() for k in ("slow", "bad", "new")}
    store = _KeyStore(digest["slow"], digest["bad"])
    auth = Authenticator(cfg, store, retry_s=3600.0)
    slow = asyncio.create_task(auth.identify_token("slow"))
    await asyncio.sleep(0)
    with pytest.raises(ServiceUnavailable):
        await auth.identify_token("bad")
    store.release.set()
    assert (await slow) is not None
    key = await auth.identify_token("new")
    assert key is not None and key.sha256 == digest["new"]
    assert store.calls == [digest["slow"], digest["bad"], digest["new"]]
