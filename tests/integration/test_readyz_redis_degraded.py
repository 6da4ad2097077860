"""/readyz says when the gateway serves without its Redis, against a real redis-server.

Without Redis every request is degraded (no shared decision cache, rate limits per process,
routing log buffered), and each response says so in ``x-expertgate-degraded``; /readyz
stays 200 (Redis is optional), but its ``status`` is ``degraded`` like for an expert down,
so a probe that reads only the status (no key: no checks) sees it. A Redis that answers but
refuses the gateway (a database index it does not have, a wrong password) is named by its
own message, since it will not heal by waiting.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from gateway.api.health import READY_TTL_S, REDIS_PING_TIMEOUT_S
from gateway.auth import hash_key
from tests.integration.conftest import RedisServer
from tests.unit.gateway_helpers import base_config, chat, gateway_client

pytestmark = pytest.mark.integration


async def _status_until(c: object, want: str) -> dict[str, object]:
    deadline = time.monotonic() + READY_TTL_S + REDIS_PING_TIMEOUT_S + 3.0
    while True:
        r = await c.get("/readyz")  # type: ignore[attr-defined]
        assert r.status_code == 200, r.text  # Redis never changes the status code
        body: dict[str, object] = r.json()
        if body["status"] == want or time.monotonic() > deadline:
            return body
        await asyncio.sleep(0.1)


async def test_readyz_is_degraded_while_redis_is_down_and_ready_when_back(
        redis_clean: RedisServer, ups, tmp_path: Path) -> None:
    cfg = base_config(ups[0].base, ups[1].base)
    async with gateway_client(cfg, tmp_path, redis_url=redis_clean.url) as (c, _gw):
        body = await _status_until(c, "ready")
        assert body["status"] == "ready" and body["checks"]["redis"] == "ok", body
        redis_clean.stop()  # our own instance, by its PID
        try:
            body = await _status_until(c, "degraded")
            # it said "ready" while every request went uncached and limits were per process
            assert body["status"] == "degraded", body
            assert str(body["checks"]["redis"]).startswith("unavailable"), body
        finally:
            redis_clean.start()
        body = await _status_until(c, "ready")
        assert body["status"] == "ready" and body["checks"]["redis"] == "ok", body


async def test_a_redis_that_refuses_the_gateway_is_named_by_its_message(
        redis_clean: RedisServer, ups, tmp_path: Path) -> None:
    cfg = base_config(ups[0].base, ups[1].base)
    url = redis_clean.url.rsplit("/", 1)[0] + "/99"  # redis-server has 16 databases
    async with gateway_client(cfg, tmp_path, redis_url=url) as (c, _gw):
        body = await _status_until(c, "degraded")
        assert body["status"] == "degraded", body
        # it said "unavailable (ResponseError)", the same as a Redis briefly away
        assert "DB index is out of range" in str(body["checks"]["redis"]), body


async def test_the_process_log_names_why_redis_refuses_the_cache_and_the_limits(
        redis_clean: RedisServer, ups, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # the warnings said "Redis unavailable (ResponseError)": the same words for a Redis
    # restarting, one out of memory (compose's --maxmemory) and a URL naming a database
    # that does not exist
    cfg = base_config(ups[0].base, ups[1].base)
    cfg["api_keys"] = [{"name": "team-a", "sha256": hash_key("sk-team-a"),
                        "requests_per_minute": 100}]
    url = redis_clean.url.rsplit("/", 1)[0] + "/99"
    caplog.set_level(logging.WARNING)
    async with gateway_client(cfg, tmp_path, redis_url=url) as (c, _gw):
        r = await c.post("/v1/chat/completions", json=chat("auto", "fix this bug in my code"),
                         headers={"authorization": "Bearer sk-team-a"})
        assert r.status_code == 200, r.text
        assert {"cache", "ratelimit-local"} <= set(r.headers["x-expertgate-degraded"].split(","))
    lines = [m for m in caplog.messages if "Redis unavailable" in m]
    assert any(m.startswith("decision cache:") and "DB index is out of range" in m
               for m in lines), lines
    assert any(m.startswith("rate limits:") and "DB index is out of range" in m
               for m in lines), lines
