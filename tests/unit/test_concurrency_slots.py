"""Concurrency slots: a LoRA adapter takes its parent server's slots; the wait for a slot is
the gateway's queueing, not upstream time."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from gateway.config import parse_config
from gateway.dispatch import Dispatcher
from gateway.metrics import Metrics
from tests.unit.gateway_helpers import chat, gateway_client


class CountingDouble:
    """An OpenAI-compatible server (a vLLM with its adapters: any model name) that answers
    after ``delay_s`` and records the most requests it had in progress at once."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.now = 0
        self.peak = 0
        self.models: list[str] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.models.append(body["model"])
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            await asyncio.sleep(self.delay_s)
        finally:
            self.now -= 1
        return web.json_response({
            "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "ok"}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

    async def start(self) -> CountingDouble:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@contextlib.asynccontextmanager
async def counting(delay_s: float) -> AsyncIterator[CountingDouble]:
    d = await CountingDouble(delay_s).start()
    try:
        yield d
    finally:
        await d.stop()


def _config(base: str, *adapters: dict[str, Any], **parent: Any) -> dict[str, Any]:
    return {"embedder": {"kind": "hashing", "micro_batch": False},
            "experts": [{"name": "base", "api_base": base, "timeout_s": 5, **parent},
                        *adapters],
            "policies": []}


async def test_lora_adapters_share_their_parents_concurrency_limit(tmp_path: Path) -> None:
    async with counting(0.3) as ups:
        cfg = _config(ups.base, {"name": "sql", "parent": "base"},
                      {"name": "law", "parent": "base"}, max_concurrency=2)
        async with gateway_client(cfg, tmp_path) as (c, gw):
            rs = await asyncio.gather(*(c.post("/v1/chat/completions", json=chat(m, "x"))
                                        for m in ("sql", "law", "base", "sql")))
            assert [r.status_code for r in rs] == [200] * 4
            assert sorted(ups.models) == ["base", "law", "sql", "sql"]
            # the server's limit held across its adapters (it saw 4 at once before)
            assert ups.peak == 2
            assert all(p.busy == 0 for p in gw.dispatcher.pools.values())


async def test_an_adapters_explicit_limit_holds_within_its_parents(tmp_path: Path) -> None:
    async with counting(0.2) as ups:
        cfg = _config(ups.base, {"name": "sql", "parent": "base", "max_concurrency": 1},
                      max_concurrency=3)
        async with gateway_client(cfg, tmp_path) as (c, _gw):
            rs = await asyncio.gather(*(c.post("/v1/chat/completions", json=chat("sql", "x"))
                                        for _ in range(3)))
            assert [r.status_code for r in rs] == [200] * 3
            assert ups.peak == 1  # the adapter's own limit, below its parent's
            ups.peak = 0
            rs = await asyncio.gather(*(c.post("/v1/chat/completions", json=chat(m, "x"))
                                        for m in ("sql", "sql", "base", "base", "base")))
            assert [r.status_code for r in rs] == [200] * 5
            assert ups.peak == 3  # the parent's limit, with one sql at most among them


def test_an_adapter_without_a_limit_of_its_own_takes_only_its_parents_slots() -> None:
    cfg = parse_config({"experts": [
        {"name": "base", "api_base": "http://127.0.0.1:1/v1", "max_concurrency": 4},
        {"name": "sql", "parent": "base"}, {"name": "law", "parent": "base",
                                            "max_concurrency": 2}]})
    d = Dispatcher(cfg, Metrics())
    p = d.pools
    assert p["base"].gates == [p["base"]]
    assert p["sql"].gates == [p["base"]]  # the default 256 is no limit of its own
    assert p["law"].gates == [p["law"], p["base"]]


async def test_a_wait_for_a_parents_slot_that_outlives_the_deadline_frees_the_adapters(
        tmp_path: Path) -> None:
    async with counting(1.0) as ups:
        cfg = _config(ups.base, {"name": "sql", "parent": "base", "max_concurrency": 2},
                      max_concurrency=1)
        async with gateway_client(cfg, tmp_path, request_deadline_s=0.4) as (c, gw):
            first = asyncio.ensure_future(c.post("/v1/chat/completions", json=chat("base", "x")))
            await asyncio.sleep(0.1)
            r = await c.post("/v1/chat/completions", json=chat("sql", "x"))
            assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded"
            pools = gw.dispatcher.pools
            assert pools["sql"].slots.used == 0 and pools["sql"].busy == 0
            await first
            assert pools["base"].slots.used == 0 and pools["base"].busy == 0


def _stage_sum(metrics: str, stage: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(f'expertgate_stage_seconds_sum{{stage="{stage}"}}'):
            return float(line.split()[-1])
    raise AssertionError(f"no stage {stage} in /metrics")


async def test_the_wait_for_a_slot_is_queueing_not_upstream_time(tmp_path: Path) -> None:
    delay = 0.4
    async with counting(delay) as ups:
        cfg = _config(ups.base, max_concurrency=1)
        async with gateway_client(cfg, tmp_path) as (c, _gw):
            t0 = time.perf_counter()
            first = asyncio.ensure_future(c.post("/v1/chat/completions",
                                                 json=chat("base", "first")))
            await asyncio.sleep(0.05)
            second = await c.post("/v1/chat/completions", json=chat("base", "second"))
            total = time.perf_counter() - t0
            assert (await first).status_code == 200 and second.status_code == 200
            assert total >= 2 * delay
            queued = _stage_sum((await c.get("/metrics")).text, "queue")
    recs = [orjson.loads(x) for x in (tmp_path / "log.jsonl").read_bytes().splitlines()]
    assert len(recs) == 2
    for rec in recs:
        # each record's upstream time is its own call's, not the wait before it
        assert delay * 1000 <= rec["upstream_ms"] < delay * 1000 + 250
    second_rec = max(recs, key=lambda r: r["latency_ms"])
    # the second waited for the first's call: the gateway's added latency says so
    assert second_rec["latency_ms"] - second_rec["upstream_ms"] > (delay - 0.05) * 1000 - 50
    # and the record names the wait: queue_ms, beside upstream_ms
    first_rec = min(recs, key=lambda r: r["latency_ms"])
    assert first_rec["queue_ms"] < 50
    assert (delay - 0.1) * 1000 < second_rec["queue_ms"] < (delay + 0.25) * 1000
    assert (delay - 0.05) - 0.05 < queued < delay + 0.25
