"""Circuit breakers, retries before the first byte, recovery, deadlines and request limits."""

from __future__ import annotations

import asyncio
import time
import types
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from aiohttp import web

import gateway.dispatch as dispatch_mod
from expertgate.bench.upstream_double import OpenAIUpstreamDouble
from gateway.dispatch import CircuitBreaker, RetryPolicy
from tests.unit.gateway_helpers import base_config, chat, coder_cfg, gateway_client, open_circuit


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def monotonic(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(dispatch_mod, "time", types.SimpleNamespace(
        monotonic=c.monotonic, perf_counter=c.monotonic))
    return c


def test_breaker_opens_after_threshold_and_half_opens_one_probe(clock: Clock) -> None:
    b = CircuitBreaker(threshold=3, cooldown_s=2.0, max_cooldown_s=5.0)
    for _ in range(2):
        b.failure()
        assert b.state == "closed" and b.allow()
    b.failure()
    assert b.state == "open" and not b.allow()
    clock.t += 2.0
    assert b.state == "half-open"
    assert b.allow()          # the one probe
    assert not b.allow()      # everyone else waits for its verdict
    b.failure()               # the probe failed: open again, cooldown doubled
    assert b.state == "open"
    clock.t += 2.0
    assert b.state == "open"
    clock.t += 2.0
    assert b.allow()
    b.failure()
    clock.t += 5.0            # doubled again, but capped at max_cooldown_s
    assert b.allow()
    b.success()               # the probe succeeded: closed, cooldown back to its base
    assert b.state == "closed" and b.allow() and b.cooldown == 2.0


def test_abandoned_or_lost_probe_frees_the_half_open_slot(clock: Clock) -> None:
    b = CircuitBreaker(threshold=1, cooldown_s=1.0, probe_timeout_s=30.0)
    b.failure()
    clock.t += 1.0
    assert b.allow() and not b.allow()
    b.abandon()  # the probing request was cancelled: no verdict
    assert b.allow()
    clock.t += 31.0  # and a probe that never reports is presumed lost after its timeout
    assert b.allow()


# --------------------------------------------------------------------------- with upstreams


class FlakyDouble(OpenAIUpstreamDouble):
    """Fails the first ``fail_first`` requests with ``status``, then answers."""

    fail_first: int = 0
    #: the failures' retry-after header, if any
    retry_after: str | None = None

    async def _gate(self, body: dict[str, Any]) -> web.Response | None:
        if self.fail_first > 0:
            self.fail_first -= 1
            self.received.append(body)
            return web.json_response({"error": {"message": "busy"}}, status=self.status,
                                     headers={"retry-after": self.retry_after}
                                     if self.retry_after else None)
        return await super()._gate(body)


@pytest.fixture
async def ups() -> AsyncIterator[tuple[FlakyDouble, FlakyDouble]]:
    a = await FlakyDouble("coder-double").start()
    b = await FlakyDouble("chatter-double").start()
    yield a, b
    await a.stop()
    await b.stop()


def _err(r: httpx.Response) -> dict[str, Any]:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]  # type: ignore[no-any-return]


async def test_transient_failure_of_the_last_expert_is_retried_with_jitter(ups, tmp_path: Path
                                                                          ) -> None:
    coder, _ = ups
    # a 502 is the replica's (a 500 that a probe shows to be the request's is not retried:
    # test_request_caused_500_*)
    coder.fail_first, coder.status = 1, 502
    async with gateway_client(base_config(coder.base, ups[1].base), tmp_path) as (c, _gw):
        r = await c.post("/v1/chat/completions", json=chat("coder", "x"))
        assert r.status_code == 200
        assert len(coder.received) == 2  # failed once, retried once, answered
        m = (await c.get("/metrics")).text
        assert 'expertgate_upstream_errors_total{expert="coder",kind="status"} 1.0' in m


async def test_retry_is_bounded_in_attempts_then_502(ups, tmp_path: Path) -> None:
    coder, _ = ups
    coder.fail_first, coder.status = 10, 502
    async with gateway_client(base_config(coder.base, ups[1].base), tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json=chat("coder", "x"))
        assert r.status_code == 502 and _err(r)["code"] == "upstream_unavailable"
        assert len(coder.received) == RetryPolicy().attempts_per_expert


async def test_429_is_retried_in_place_before_the_fallback(ups, tmp_path: Path) -> None:
    coder, chatter = ups
    coder.fail_first, coder.status = 1, 429
    async with gateway_client(base_config(coder.base, chatter.base), tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json=chat("auto", "fix this bug in my code"))
        assert r.status_code == 200 and r.headers["x-expertgate-expert"] == "coder"
        assert len(coder.received) == 2 and chatter.received == []


async def test_an_expert_that_stays_rate_limited_answers_429_with_its_retry_after(
        ups, tmp_path: Path) -> None:
    # an upstream's 429 with retry-after came back as a 502 upstream_unavailable without it:
    # the client's SDK retried at once (its 5xx backoff) instead of waiting as asked
    coder, chatter = ups
    coder.fail_first, coder.status, coder.retry_after = 10, 429, "7"
    async with gateway_client(base_config(coder.base, chatter.base), tmp_path) as (c, _):
        client = openai.AsyncOpenAI(base_url="http://gw/v1", api_key="unused", http_client=c,
                                    max_retries=0)
        with pytest.raises(openai.RateLimitError) as e:
            await client.chat.completions.create(
                model="coder", messages=[{"role": "user", "content": "x"}])
        assert e.value.response.headers["retry-after"] == "7"
        assert e.value.code == "upstream_rate_limited"
        assert "x-expertgate-expert" in e.value.response.headers
        # routed: the fallback answers when it can (a 429 is the expert's failure) ...
        r = await c.post("/v1/chat/completions", json=chat("auto", "fix this bug in my code"))
        assert r.status_code == 200 and r.headers["x-expertgate-expert"] == "chatter"
        # ... and when the last expert of the chain is rate limited too, 429 it is
        chatter.fail_first, chatter.status = 10, 429
        r = await c.post("/v1/chat/completions", json=chat("auto", "fix this bug in my code"))
        assert r.status_code == 429 and _err(r)["code"] == "upstream_rate_limited"
        assert "retry-after" not in r.headers  # chatter said no time: none is made up
        assert r.headers["x-expertgate-degraded"] == "expert-fallback"


async def test_retry_budget_spent_goes_straight_to_the_error(ups, tmp_path: Path) -> None:
    coder, _ = ups
    coder.fail_first, coder.status = 1, 503
    async with gateway_client(base_config(coder.base, ups[1].base), tmp_path) as (c, gw):
        gw.dispatcher.retry = RetryPolicy(budget_s=0.0)
        r = await c.post("/v1/chat/completions", json=chat("coder", "x"))
        assert r.status_code == 502
        assert len(coder.received) == 1


async def test_open_circuit_skips_the_replica_and_a_recovered_one_is_used_again(
        ups, tmp_path: Path) -> None:
    good, other = ups
    dead = OpenAIUpstreamDouble("dead")  # never started: connection refused
    cfg = base_config(good.base, other.base)
    cfg["experts"][0] = {"name": "coder", "replicas": [dead.base, good.base], "timeout_s": 2}
    async with gateway_client(cfg, tmp_path) as (c, gw):
        pool = gw.dispatcher.pools["coder"]
        for r in pool.replicas:
            r.breaker.base_cooldown = r.breaker.cooldown = 0.3
        # explicit-expert requests share one affinity key, so the replica order is fixed and
        # the dead replica (first for that key) is tried until its circuit opens; every
        # request still answers, from the other replica
        for i in range(8):
            r = await c.post("/v1/chat/completions", json=chat("coder", f"prompt {i}"))
            assert r.status_code == 200
        dead_rep = next(r for r in pool.replicas if r.base == dead.base)
        assert dead_rep.breaker.state in ("open", "half-open")
        assert dead_rep.breaker.failures == dead_rep.breaker.threshold  # then skipped
        state = (await c.get("/admin/state")).json()["replicas"]["coder"]
        assert {s["base"]: s["circuit"] for s in state}[good.base] == "closed"
        # the dead replica comes back: after the cooldown a probe goes there, and it is used
        await dead.start()
        try:
            await asyncio.sleep(0.35)
            for i in range(8):
                r = await c.post("/v1/chat/completions", json=chat("coder", f"again {i}"))
                assert r.status_code == 200
            assert dead_rep.breaker.state == "closed"
            assert len(dead.received) >= 1
        finally:
            await dead.stop()


async def test_expert_that_timed_out_is_used_again_by_itself(ups, tmp_path: Path) -> None:
    """No permanent degradation after timeouts (Bifrost #5743)."""
    coder, chatter = ups
    coder.mode = "hang"
    cfg = coder_cfg(coder.base, chatter.base, timeout_s=0.2)
    async with gateway_client(cfg, tmp_path) as (c, gw):
        rep = gw.dispatcher.pools["coder"].replicas[0]
        rep.breaker.base_cooldown = rep.breaker.cooldown = 0.3
        for _ in range(3):
            r = await c.post("/v1/chat/completions", json=chat("auto", "fix this bug in my code"))
            assert r.status_code == 200 and r.headers["x-expertgate-expert"] == "chatter"
        assert rep.breaker.state == "open"
        r = await c.post("/v1/chat/completions", json=chat("auto", "fix this bug in my code"))
        assert r.headers["x-expertgate-expert"] == "chatter"
        assert "coder:circuit_open" in r.headers["x-expertgate-reason"]
        coder.mode = "ok"
        await asyncio.sleep(0.35)
        r = await c.post("/v1/chat/completions", json=chat("auto", "fix this bug in my code"))
        assert r.status_code == 200 and r.headers["x-expertgate-expert"] == "coder"
        assert "x-expertgate-degraded" not in r.headers
        assert rep.breaker.state == "closed"


async def test_every_circuit_open_answers_with_the_wait_until_a_probe(
        ups, tmp_path: Path) -> None:
    """The client's SDK honours retry-after: a named expert whose every replica has an open
    circuit says how long until one lets a probe through, instead of a bare 502 the SDK
    retries at once into the same open circuit."""
    coder, chatter = ups
    cfg = base_config(coder.base, chatter.base)
    async with gateway_client(cfg, tmp_path) as (c, gw):
        rep = gw.dispatcher.pools["coder"].replicas[0]
        open_circuit(rep.breaker)
        rep.breaker.open_until = time.monotonic() + 7.2
        r = await c.post("/v1/chat/completions", json=chat("coder", "x"))
        assert r.status_code == 502 and r.json()["error"]["code"] == "circuit_open"
        assert r.headers["retry-after"] == "8"
        assert not coder.received


async def test_cancelled_probe_does_not_leave_the_expert_degraded(ups, tmp_path: Path) -> None:
    coder, chatter = ups
    coder.mode = "hang"
    cfg = coder_cfg(coder.base, chatter.base, timeout_s=5)
    async with gateway_client(cfg, tmp_path) as (c, gw):
        rep = gw.dispatcher.pools["coder"].replicas[0]
        open_circuit(rep.breaker)
        rep.breaker.open_until = 0.0  # cooldown over: the next request is the probe
        probe = asyncio.ensure_future(
            c.post("/v1/chat/completions", json=chat("coder", "x")))
        for _ in range(200):
            if len(coder.received) == 1:
                break
            await asyncio.sleep(0.01)
        assert rep.breaker.probing
        probe.cancel()  # the client went away mid-probe
        with pytest.raises(asyncio.CancelledError):
            await probe
        assert not rep.breaker.probing
        coder.mode = "ok"
        r = await c.post("/v1/chat/completions", json=chat("coder", "x"))
        assert r.status_code == 200 and rep.breaker.state == "closed"


async def test_client_4xx_does_not_count_against_the_breaker(ups, tmp_path: Path) -> None:
    coder, _ = ups
    coder.mode, coder.status = "status", 400
    async with gateway_client(base_config(coder.base, ups[1].base), tmp_path) as (c, gw):
        for _ in range(5):
            r = await c.post("/v1/chat/completions", json=chat("coder", "x"))
            assert r.status_code == 400
        assert gw.dispatcher.pools["coder"].replicas[0].breaker.state == "closed"


async def test_request_deadline_bounds_the_whole_request(ups, tmp_path: Path) -> None:
    coder, chatter = ups
    coder.mode = chatter.mode = "hang"
    async with gateway_client(base_config(coder.base, chatter.base), tmp_path,
                              request_deadline_s=0.4) as (c, _):
        r = await c.post("/v1/chat/completions", json=chat("auto", "fix this bug in my code"))
        assert r.status_code == 504
        assert _err(r)["code"] in ("upstream_timeout", "deadline_exceeded")
        # the deadline, not the experts' 2 s timeouts, ended it: chatter was never reached or
        # was given only what was left
        assert len(coder.received) == 1 and len(chatter.received) <= 1


@pytest.mark.parametrize("asked,sent", [(None, 16), (1000, 16), (8, 8)])
async def test_policy_max_tokens_cap(ups, tmp_path: Path, asked: int | None, sent: int) -> None:
    cfg = base_config(ups[0].base, ups[1].base, max_tokens_cap=16)
    body = chat("auto", "tell me a joke")
    if asked is not None:
        body["max_tokens"] = asked
    async with gateway_client(cfg, tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json=body)
        assert r.status_code == 200
    assert ups[1].received[-1]["max_tokens"] == sent


async def test_message_count_limit(ups, tmp_path: Path) -> None:
    async with gateway_client(base_config(ups[0].base, ups[1].base), tmp_path,
                              max_messages=2) as (c, _):
        msgs = [{"role": "user", "content": "a"}] * 3
        r = await c.post("/v1/chat/completions", json={"model": "auto", "messages": msgs})
        assert r.status_code == 400 and _err(r)["param"] == "messages"
        assert "too many messages" in _err(r)["message"]
    assert ups[0].received == [] and ups[1].received == []


async def test_body_limit_checked_before_reading_when_content_length_says_so(ups, tmp_path: Path
                                                                             ) -> None:
    async with gateway_client(base_config(ups[0].base, ups[1].base), tmp_path,
                              max_body_bytes=100) as (c, _):
        r = await c.post("/v1/chat/completions", content=b"{" + b" " * 200 + b"}",
                         headers={"content-type": "application/json"})
        assert r.status_code == 413 and _err(r)["code"] == "request_too_large"


def test_lora_adapter_prefers_replicas_where_it_is_resident() -> None:
    from gateway.config import parse_config
    from gateway.dispatch import Dispatcher
    from gateway.metrics import Metrics

    cfg = parse_config({"experts": [
        {"name": "base", "replicas": ["http://127.0.0.1:1/v1", "http://127.0.0.1:2/v1",
                                      "http://127.0.0.1:3/v1"],
         "resident_adapters": {"http://127.0.0.1:3/v1": ["sql"]}},
        {"name": "sql", "parent": "base"}, {"name": "law", "parent": "base"}]})
    d = Dispatcher(cfg, Metrics())
    for i in range(20):  # whatever the prompt hashes to, the resident replica comes first
        key = f"prompt {i}".encode()
        assert d.pools["sql"].order(key, "sql")[0].base == "http://127.0.0.1:3/v1"
    firsts = {d.pools["law"].order(f"p{i}".encode(), "law")[0].base for i in range(40)}
    assert len(firsts) > 1  # no residency known: spread by affinity + load
    assert d.pools["sql"].replicas is d.pools["base"].replicas


async def test_unforwardable_request_does_not_take_the_half_open_probe(ups, tmp_path: Path
                                                                       ) -> None:
    # a routed request too deeply nested to serialise with the expert's model name is a 400;
    # it must not hold the half-open slot (that kept a recovered expert out for 120 s)
    coder, chatter = ups
    async with gateway_client(base_config(coder.base, chatter.base), tmp_path) as (c, gw):
        rep = gw.dispatcher.pools["coder"].replicas[0]
        open_circuit(rep.breaker)
        rep.breaker.open_until = 0.0  # cooldown over: the next request would be the probe
        deep: Any = []
        for _ in range(300):
            deep = [deep]
        r = await c.post("/v1/chat/completions",
                         json={**chat("coder", "fix this bug in my code"), "extra": deep})
        assert r.status_code == 400 and "nested too deeply" in r.json()["error"]["message"]
        assert not rep.breaker.probing and not coder.received
        r = await c.post("/v1/chat/completions", json=chat("coder", "fix this bug"))
        assert r.status_code == 200 and rep.breaker.state == "closed"
