"""Two real gateway processes on one Redis share one rate-limit budget.

600 requests for one key with a budget of 300 requests/minute, spread evenly over both
gateways inside one window: the number accepted must be within 2% of 300 (the limit must not
multiply with the number of replicas: LiteLLM #27736, #40291).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import yaml

from expertgate.bench.upstream_double import OpenAIUpstreamDouble
from expertgate.procs import GatewayServer, RedisServer
from gateway.auth import hash_key
from tests.unit.gateway_helpers import base_config

pytestmark = pytest.mark.integration

BUDGET = 300
SENT = 600
CONCURRENCY = 8


@pytest.fixture
async def setup(redis_clean: RedisServer, tmp_path: Path
                ) -> AsyncIterator[tuple[list[GatewayServer], OpenAIUpstreamDouble]]:
    up = await OpenAIUpstreamDouble("shared").start()
    cfg = base_config(up.base, up.base)
    cfg["api_keys"] = [{"name": "tenant", "sha256": hash_key("sk-shared"),
                        "requests_per_minute": BUDGET}]
    (tmp_path / "gw.yaml").write_text(yaml.safe_dump(cfg))
    gws = [GatewayServer(tmp_path / "gw.yaml", redis_url=redis_clean.url, check_upstreams=False,
                         routing_log=tmp_path / f"log{i}.jsonl", log_path=tmp_path / f"gw{i}.out")
           for i in range(2)]
    try:
        for g in gws:
            await asyncio.to_thread(g.start)
        yield gws, up
    finally:
        for g in gws:
            await asyncio.to_thread(g.stop)
        await up.stop()


async def test_two_gateways_share_one_budget(setup) -> None:
    gws, up = setup
    statuses: list[int] = []
    backends: set[str] = set()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(SENT):
        queue.put_nowait(i)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            gw = gws[i % 2]
            r = await client.post(gw.url + "/v1/chat/completions",
                                  headers={"authorization": "Bearer sk-shared"},
                                  json={"model": "chatter", "max_tokens": 4,
                                        "messages": [{"role": "user", "content": f"r{i}"}]})
            statuses.append(r.status_code)
            if r.status_code == 429:
                err = r.json()["error"]
                assert err["type"] == "rate_limit_error"
                assert int(r.headers["retry-after"]) >= 1
                assert r.headers["x-ratelimit-remaining-requests"] == "0"
            backends.add(r.headers.get("x-expertgate-ratelimit", "?"))

    async with httpx.AsyncClient(timeout=30) as client:
        await asyncio.gather(*(worker(client) for _ in range(CONCURRENCY)))
    accepted = statuses.count(200)
    print(f"shared rate limit: sent {len(statuses)}, accepted {accepted}, "
          f"refused {statuses.count(429)}, budget {BUDGET}/min over 2 gateways")
    assert len(statuses) == SENT
    assert set(statuses) <= {200, 429}
    assert abs(accepted - BUDGET) <= 0.02 * BUDGET
    assert backends == {"redis"}
    assert len(up.received) == accepted  # a refused request never reached the upstream
