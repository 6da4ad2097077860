"""Keys and rate limits kept in a real redis-server: keys added and revoked without a
restart, the key store down, one request/token budget shared by two limiters, local fallback
while Redis is down and recovery when it comes back."""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from expertgate.cli import keys as keys_cli
from gateway.auth import KEY_PREFIX, hash_key
from gateway.ratelimit import WINDOW_S, Limits, RateLimiter
from tests.integration.conftest import RedisServer
from tests.unit.gateway_helpers import base_config, chat, gateway_client

pytestmark = pytest.mark.integration


def _err(r: httpx.Response) -> dict[str, object]:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- Redis keys

def _add(url: str, key: str, **kw: object) -> None:
    ns = argparse.Namespace(key=key, generate=False, redis_url=url, name="team-r",
                            policies="*", experts="*", requests_per_minute=None,
                            tokens_per_minute=None)
    for k, v in kw.items():
        setattr(ns, k, v)
    assert keys_cli.cmd_add(ns) == 0


async def test_redis_keys_are_added_and_revoked_without_restart(ups, tmp_path: Path,
                                                                redis_clean: RedisServer
                                                                ) -> None:
    cfg = base_config(ups[0].base, ups[1].base)
    cfg["require_auth"] = True
    auth = {"authorization": "Bearer sk-redis-1"}
    async with gateway_client(cfg, tmp_path, redis_url=redis_clean.url) as (c, gw):
        gw.auth.cache_ttl_s = 0.0  # see revocations at once (default: within 10 s)
        gw.auth.negative_ttl_s = 0.0
        r = await c.post("/v1/chat/completions", json=chat("auto", "hi"), headers=auth)
        assert r.status_code == 401
        _add(redis_clean.url, "sk-redis-1", experts="chatter", policies="")
        r = await c.post("/v1/chat/completions", json=chat("chatter", "hi"), headers=auth)
        assert r.status_code == 200
        r = await c.post("/v1/chat/completions", json=chat("auto", "hi"), headers=auth)
        assert r.status_code == 404  # outside its allow-lists: as if it did not exist
        assert await gw.redis.exists(KEY_PREFIX + hash_key("sk-redis-1")) == 1
        ns = argparse.Namespace(key="sk-redis-1", generate=False, sha256=None,
                                redis_url=redis_clean.url)
        assert keys_cli.cmd_revoke(ns) == 0
        r = await c.post("/v1/chat/completions", json=chat("chatter", "hi"), headers=auth)
        assert r.status_code == 401


async def test_redis_key_store_down_known_keys_work_unknown_get_503(
        ups, tmp_path: Path, redis_clean: RedisServer) -> None:
    cfg = base_config(ups[0].base, ups[1].base)
    cfg["require_auth"] = True
    _add(redis_clean.url, "sk-known")
    async with gateway_client(cfg, tmp_path, redis_url=redis_clean.url,
                              redis_retry_s=0.0) as (c, gw):
        gw.auth.cache_ttl_s = 0.0
        known = {"authorization": "Bearer sk-known"}
        r = await c.post("/v1/chat/completions", json=chat("chatter", "hi"), headers=known)
        assert r.status_code == 200
        redis_clean.stop()
        r = await c.post("/v1/chat/completions", json=chat("chatter", "hi"), headers=known)
        assert r.status_code == 200
        r = await c.post("/v1/chat/completions", json=chat("chatter", "hi"),
                         headers={"authorization": "Bearer sk-never-seen"})
        assert r.status_code == 503
        e = _err(r)
        assert e["code"] == "key_store_unavailable" and r.headers["retry-after"] == "1"


async def test_redis_keys_reach_the_non_hot_endpoints_through_the_refresh(
        ups, tmp_path: Path, redis_clean: RedisServer) -> None:
    cfg = base_config(ups[0].base, ups[1].base)
    cfg["require_auth"] = True
    auth = {"authorization": "Bearer sk-listing"}
    async with gateway_client(cfg, tmp_path, redis_url=redis_clean.url) as (c, gw):
        assert (await c.get("/v1/models", headers=auth)).status_code == 401
        _add(redis_clean.url, "sk-listing")
        assert await gw.auth.refresh() == 1  # what the background task does every 10 s
        r = await c.get("/v1/models", headers=auth)
        assert r.status_code == 200 and r.json()["object"] == "list"
        await gw.redis.delete(KEY_PREFIX + hash_key("sk-listing"))
        assert await gw.auth.refresh() == 0
        assert (await c.get("/v1/models", headers=auth)).status_code == 401


# --------------------------------------------------------------------------- Redis

@pytest.fixture
async def clients(redis_clean: RedisServer) -> AsyncIterator[list[aioredis.Redis]]:
    cs = [aioredis.Redis.from_url(redis_clean.url, socket_timeout=0.5,
                                  socket_connect_timeout=0.5) for _ in range(2)]
    yield cs
    for c in cs:
        await c.aclose()


async def test_redis_budget_is_shared_by_two_limiters(clients: list[aioredis.Redis]) -> None:
    a, b = RateLimiter(clients[0]), RateLimiter(clients[1])
    lim = Limits(requests_per_minute=10, tokens_per_minute=10_000)
    got = [await (a if i % 2 else b).acquire("k", lim, 100) for i in range(25)]
    assert sum(d.allowed for d in got) == 10
    assert {d.backend for d in got} == {"redis"}
    refused = [d for d in got if not d.allowed]
    assert all(d.failed == "requests" and 0 < d.retry_after_s <= WINDOW_S for d in refused)
    assert got[9].tokens_used == 1000
    # reconciliation lands in the same bucket: the token sum drops by the difference
    await a.reconcile("k", got[0], 40)
    d = await b.acquire("other", Limits(tokens_per_minute=500), 200)
    assert d.allowed and d.tokens_used == 200
    raw = await clients[0].hgetall("eg:rl:{k}:t")
    assert sum(int(v) for v in raw.values()) == 1000 - 60


async def test_redis_down_falls_back_to_local_and_recovers(redis_clean: RedisServer,
                                                           clients: list[aioredis.Redis]
                                                           ) -> None:
    from gateway.metrics import Metrics

    m = Metrics()
    rl = RateLimiter(clients[0], m.registry, retry_s=0.0)
    lim = Limits(requests_per_minute=100)
    assert (await rl.acquire("k", lim, 1)).backend == "redis"
    redis_clean.stop()
    d = await rl.acquire("k", lim, 1)
    assert d.allowed and d.backend == "local"
    assert dict(d.headers())[b"x-expertgate-ratelimit"] == b"local"
    text = m.render().decode()
    assert "expertgate_ratelimit_shared 0.0" in text
    assert 'expertgate_ratelimit_decisions_total{backend="local",result="allowed"} 1.0' in text
    redis_clean.start()  # the same port
    d = await rl.acquire("k", lim, 1)
    assert d.allowed and d.backend == "redis"  # back by itself, no restart
    assert "expertgate_ratelimit_shared 1.0" in m.render().decode()


