"""A reload keeps an expert's concurrency slots: the calls still in flight on the old pool
count against the limit of the new one, so a reload never lets an expert see more than its
``max_concurrency`` calls at once (it used to allow twice as many until the old pool
drained). It keeps a replica's in-flight count and circuit breaker too (same expert, same
URL): the replica choice sees the streams still running on the old pool, and a dead
replica's open circuit is not forgotten. Bounded: a dozen requests against upstream doubles
on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from expertgate.bench.upstream_double import OpenAIUpstreamDouble
from gateway.config import parse_config
from gateway.dispatch import Dispatcher, Lease, Slots
from gateway.metrics import Metrics
from tests.unit.gateway_helpers import chat, gateway_client, open_circuit
from tests.unit.test_concurrency_slots import CountingDouble, counting
from tests.unit.test_stream_slots import Client, held, nothing_held, start


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
        (t1,) = await start(long)
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


# ------------------------------------------------------------------ replicas


def _replicas_disp(base: list[str], other: str = "http://127.0.0.1:3/v1",
                   other_name: str = "other") -> Dispatcher:
    return Dispatcher(parse_config({"experts": [
        {"name": "base", "replicas": base},
        {"name": "sql", "parent": "base"},
        {"name": other_name, "api_base": other}]}), Metrics())


def _open(disp: Dispatcher, name: str, i: int) -> None:
    open_circuit(disp.pools[name].replicas[i].breaker)


async def test_a_kept_replica_keeps_its_in_flight_count_and_its_breaker() -> None:
    loop = asyncio.get_running_loop()
    u1, u2, u4 = (f"http://127.0.0.1:{p}/v1" for p in (1, 2, 4))
    old = _replicas_disp([u1, u2])
    running = Lease(old.pools["base"], old.pools["base"].replicas[1], loop)  # a call at u2
    _open(old, "base", 1)
    _open(old, "base", 0)
    _open(old, "other", 0)
    # u2 kept (now first), u1 gone, u4 new; "other" kept; the same server renamed is not
    new = _replicas_disp([u2, u4])
    new.keep_replicas(old)
    kept, fresh = new.pools["base"].replicas
    assert (kept.base, kept.inflight, kept.breaker.state) == (u2, 1, "open")
    assert (fresh.base, fresh.inflight, fresh.breaker.state) == (u4, 0, "closed")
    # the adapter still shares its parent's replicas, the kept one included
    assert new.pools["sql"].replicas is new.pools["base"].replicas
    assert new.pools["other"].replicas[0].breaker.state == "open"
    running.release()  # the old pool's call ends: the new pool's count follows
    assert kept.inflight == 0
    old.pools["base"].replicas[1].breaker.success()  # ... and so does its late verdict
    assert kept.breaker.state == "closed"
    renamed = _replicas_disp([u2, u4], other_name="another")
    renamed.keep_replicas(old)
    assert renamed.pools["another"].replicas[0].breaker.state == "closed"
    moved = _replicas_disp([u2, u4], other="http://127.0.0.1:5/v1")
    moved.keep_replicas(old)
    assert moved.pools["other"].replicas[0].breaker.state == "closed"


def test_a_half_open_breaker_stays_half_open_with_its_probe_out() -> None:
    u1 = "http://127.0.0.1:1/v1"
    old = _replicas_disp([u1])
    _open(old, "base", 0)
    breaker = old.pools["base"].replicas[0].breaker
    breaker.open_until = time.monotonic() - 0.1  # cooldown over
    assert breaker.allow()  # the half-open probe, in flight on the old pool
    new = _replicas_disp([u1])
    new.keep_replicas(old)
    rep = new.pools["base"].replicas[0]
    assert rep.breaker.state == "half-open"
    assert not rep.breaker.allow()  # one probe at a time: the old pool's is still out
    breaker.failure()  # the probe failed: open again, with a doubled cooldown
    assert rep.breaker.state == "open" and rep.breaker.cooldown == 2 * rep.breaker.base_cooldown


async def test_a_dead_replicas_open_circuit_survives_a_reload(tmp_path: Path) -> None:
    dead = await OpenAIUpstreamDouble("dead", mode="status", status=503).start()
    try:
        async with gateway_client(_config(dead.base), tmp_path) as (c, gw):
            for _ in range(2):  # two tries each (503 asks for a retry): the circuit opens
                r = await c.post("/v1/chat/completions", json=chat("base", "x"))
                assert r.status_code == 502
            assert gw.dispatcher.replica_states()["base"][0]["circuit"] == "open"
            tried = len(dead.received)
            await _reload(gw, tmp_path / "gw.yaml", _config(dead.base, description="reloaded"))
            assert gw.dispatcher.replica_states()["base"][0]["circuit"] == "open"
            r = await c.post("/v1/chat/completions", json=chat("base", "x"))
            assert r.status_code == 502 and r.json()["error"]["code"] == "circuit_open"
            assert len(dead.received) == tried  # the dead replica got no traffic
    finally:
        await dead.stop()


async def test_the_replica_choice_after_a_reload_sees_the_streams_in_flight(
        app_for: Any, tmp_path: Path) -> None:
    a = await OpenAIUpstreamDouble("a-double", event_delay_s=0.3).start()
    b = await OpenAIUpstreamDouble("b-double", event_delay_s=0.3).start()
    try:
        cfg = {**_config(a.base), "experts": [{"name": "base", "replicas": [a.base, b.base],
                                               "timeout_s": 5}]}
        app = await app_for(cfg)
        gw = app.gateway
        # the same prompt: the same pair of replicas by affinity, the less loaded first
        long = Client(app, chat("base", "story", stream=True))
        (t1,) = await start(long)
        busy, idle = (a, b) if a.received else (b, a)
        cfg["experts"][0]["description"] = "reloaded"
        await _reload(gw, tmp_path / "gw.yaml", cfg)
        assert held(gw)["base"] == (1, [1 if busy is a else 0, 1 if busy is b else 0])
        r = Client(app, chat("base", "story"))
        await asyncio.wait_for(r.run(), 5)
        assert r.status == 200
        assert len(busy.received) == 1 and len(idle.received) == 1
        await asyncio.wait_for(t1, 5)
        assert long.status == 200
        assert held(gw) == nothing_held(gw)
    finally:
        await a.stop()
        await b.stop()
