"""A reload keeps an expert's concurrency slots: the calls still in flight on the old pool
count against the limit of the new one, so a reload never lets an expert see more than its
``max_concurrency`` calls at once (it used to allow twice as many until the old pool
drained). Bounded: a dozen requests against an upstream double on 127.0.0.1."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml

from expertgate.bench.upstream_double import OpenAIUpstreamDouble
from gateway.config import parse_config
from gateway.dispatch import Dispatcher, Slots
from gateway.metrics import Metrics
from tests.unit.gateway_helpers import chat, gateway_client
from tests.unit.test_concurrency_slots import CountingDouble, counting
from tests.unit.test_stream_slots import Client


def _config(base: str, *adapters: dict[str, Any], description: str = "",
            **parent: Any) -> dict[str, Any]:
    return {"embedder": {"kind": "hashing", "micro_batch": False},
            "experts": [{"name": "base", "api_base": base, "timeout_s": 5,
                         "description": description, **parent}, *adapters],
            "policies": []}


async def _reach(ups: CountingDouble, n: int) -> None:
    """Until the upstream has ``n`` requests in progress (bounded: 5 s)."""
    async with asyncio.timeout(5):
        while ups.now < n:
            await asyncio.sleep(0.01)


async def _reload(gw: Any, path: Path, cfg: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(cfg))
    old = gw.dispatcher
    await gw.reload(path)
    assert gw.dispatcher is not old  # the experts changed: a new pool serves from here


async def test_a_reload_does_not_double_an_experts_concurrency(tmp_path: Path) -> None:
    async with counting(0.6) as ups:
        cfg = _config(ups.base, max_concurrency=2)
        async with gateway_client(cfg, tmp_path) as (c, gw):
            first = [asyncio.ensure_future(c.post("/v1/chat/completions",
                                                  json=chat("base", "x"))) for _ in range(2)]
            await _reach(ups, 2)
            await _reload(gw, tmp_path / "gw.yaml",
                          _config(ups.base, max_concurrency=2, description="reloaded"))
            rs = await asyncio.gather(*first, *(c.post("/v1/chat/completions",
                                                       json=chat("base", "x"))
                                                for _ in range(2)))
            assert [r.status_code for r in rs] == [200] * 4
            assert ups.peak == 2  # 4 before: the new pool had two fresh slots
            assert gw.dispatcher.slots_in_use() == [("base", 0)]


async def test_a_lowered_limit_counts_the_slots_already_held(tmp_path: Path) -> None:
    async with counting(0.4) as ups, \
            gateway_client(_config(ups.base, max_concurrency=3), tmp_path) as (c, gw):
        first = [asyncio.ensure_future(c.post("/v1/chat/completions",
                                              json=chat("base", "x"))) for _ in range(3)]
        await _reach(ups, 3)
        await _reload(gw, tmp_path / "gw.yaml", _config(ups.base, max_concurrency=2))
        later = [asyncio.ensure_future(c.post("/v1/chat/completions",
                                              json=chat("base", "x"))) for _ in range(3)]
        await asyncio.gather(*first)
        assert ups.peak == 3  # no new call beside the three held: 5 before
        ups.peak = ups.now
        rs = await asyncio.gather(*later)
        assert [r.status_code for r in rs] == [200] * 3
        assert ups.peak == 2  # the new limit


async def test_a_raised_limit_admits_new_calls_beside_the_held_ones(tmp_path: Path) -> None:
    async with counting(0.5) as ups, \
            gateway_client(_config(ups.base, max_concurrency=1), tmp_path) as (c, gw):
        first = asyncio.ensure_future(c.post("/v1/chat/completions", json=chat("base", "x")))
        await _reach(ups, 1)
        await _reload(gw, tmp_path / "gw.yaml", _config(ups.base, max_concurrency=3))
        rs = await asyncio.gather(first, *(c.post("/v1/chat/completions",
                                                  json=chat("base", "x"))
                                           for _ in range(4)))
        assert [r.status_code for r in rs] == [200] * 5
        assert ups.peak == 3


async def test_an_adapters_calls_across_a_reload_take_the_kept_parents_slots(
        tmp_path: Path) -> None:
    async with counting(0.6) as ups:
        cfg = _config(ups.base, {"name": "sql", "parent": "base"}, max_concurrency=2)
        async with gateway_client(cfg, tmp_path) as (c, gw):
            first = [asyncio.ensure_future(c.post("/v1/chat/completions",
                                                  json=chat(m, "x"))) for m in ("sql", "base")]
            await _reach(ups, 2)
            await _reload(gw, tmp_path / "gw.yaml",
                          _config(ups.base, {"name": "sql", "parent": "base"},
                                  {"name": "law", "parent": "base"}, max_concurrency=2))
            rs = await asyncio.gather(*first, *(c.post("/v1/chat/completions",
                                                       json=chat(m, "x"))
                                                for m in ("law", "sql", "base")))
            assert [r.status_code for r in rs] == [200] * 5
            assert ups.peak == 2


async def test_a_stream_in_flight_across_a_reload_keeps_its_slot(app_for: Any,
                                                                 tmp_path: Path) -> None:
    # a stream holds its slot until its end, also when a reload replaced its pool meanwhile
    up = await OpenAIUpstreamDouble("base-double", event_delay_s=0.3).start()
    try:
        cfg = _config(up.base, max_concurrency=1)
        app = await app_for(cfg)
        gw = app.gateway
        long = Client(app, chat("base", "story", stream=True))
        t1 = asyncio.ensure_future(long.run())
        await asyncio.wait_for(long.started.wait(), 5)
        await _reload(gw, tmp_path / "gw.yaml", _config(up.base, max_concurrency=1,
                                                        description="reloaded"))
        late = Client(app, chat("base", "another", stream=True))
        t2 = asyncio.ensure_future(late.run())
        await asyncio.sleep(0.3)
        assert len(up.received) == 1 and late.status is None  # queued, not at the upstream
        await asyncio.wait_for(asyncio.gather(t1, t2), 5)
        assert long.status == late.status == 200 and len(up.received) == 2
        assert gw.dispatcher.slots_in_use() == [("base", 0)]
    finally:
        await up.stop()


def test_slots_are_kept_only_for_the_same_expert_on_the_same_server() -> None:
    def disp(**base: Any) -> Dispatcher:
        return Dispatcher(parse_config({"experts": [
            {"name": "base", "api_base": "http://127.0.0.1:1/v1", "max_concurrency": 2,
             **base},
            {"name": "sql", "parent": "base", "max_concurrency": 1},
            {"name": "other", "api_base": "http://127.0.0.1:2/v1"}]}), Metrics())

    old = disp()
    same = disp(timeout_s=9, max_concurrency=5)
    same.keep_slots(old)
    for name in ("base", "sql", "other"):
        assert same.pools[name].slots is old.pools[name].slots
    assert old.pools["base"].slots.limit == 5  # the new limit, for the old pool's waiters too
    moved = disp(api_base="http://127.0.0.1:3/v1")
    moved.keep_slots(old)
    # another server: its own capacity (the adapter moved with its parent)
    assert moved.pools["base"].slots is not old.pools["base"].slots
    assert moved.pools["sql"].slots is not old.pools["sql"].slots
    assert moved.pools["other"].slots is old.pools["other"].slots


async def test_a_slot_given_to_a_waiter_cancelled_meanwhile_goes_to_the_next() -> None:
    slots = Slots(1)
    await slots.acquire()
    first = asyncio.ensure_future(slots.acquire())
    second = asyncio.ensure_future(slots.acquire())
    await asyncio.sleep(0)
    slots.release()  # the slot is the first waiter's from here ...
    first.cancel()  # ... which is cancelled before it runs: the slot passes on
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 1)
    assert slots.used == 1
    third = asyncio.ensure_future(slots.acquire())
    await asyncio.sleep(0)
    third.cancel()  # cancelled while waiting: it took nothing
    with pytest.raises(asyncio.CancelledError):
        await third
    slots.release()
    assert slots.used == 0 and not slots.locked()


async def test_a_lowered_limit_waits_for_the_held_slots_to_fall_below_it() -> None:
    slots = Slots(3)
    for _ in range(3):
        await slots.acquire()
    slots.resize(2)
    waiter = asyncio.ensure_future(slots.acquire())
    slots.release()  # 2 held: still not below 2
    await asyncio.sleep(0)
    assert not waiter.done()
    slots.release()  # 1 held: one more may go
    await asyncio.wait_for(waiter, 1)
    assert slots.used == 2
