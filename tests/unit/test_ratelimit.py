"""Per-key rate limits: the sliding window in process and in Redis, and through the gateway."""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from expertgate.bench.upstream_double import OpenAIUpstreamDouble
from gateway.auth import hash_key
from gateway.ratelimit import (
    DEFAULT_COMPLETION_ESTIMATE,
    WINDOW_S,
    Limits,
    RateLimiter,
    estimate_tokens,
)
from tests.unit.gateway_helpers import base_config, chat, gateway_client


class FakeClock:
    def __init__(self, t: float = 1_000_000.25) -> None:
        self.t = t

    def time(self) -> float:
        return self.t

    def monotonic(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    c = FakeClock()
    import gateway.ratelimit as rl

    monkeypatch.setattr(rl, "time", types.SimpleNamespace(time=c.time, monotonic=c.monotonic))
    return c


async def test_local_requests_per_minute_refuses_the_next_with_retry_after(clock: FakeClock
                                                                          ) -> None:
    rl = RateLimiter()
    lim = Limits(requests_per_minute=3)
    got = [await rl.acquire("k", lim, 10) for _ in range(3)]
    assert all(d.allowed and d.backend == "local" for d in got)
    assert [dict(d.headers())[b"x-ratelimit-remaining-requests"] for d in got] == [
        b"2", b"1", b"0"]
    clock.t += 10
    d = await rl.acquire("k", lim, 10)
    assert not d.allowed and d.failed == "requests"
    # the first three were charged 10 s ago: they leave the window in 50 s
    assert d.retry_after_s == pytest.approx(WINDOW_S - 10, abs=1)
    err = d.error()
    assert err.status == 429 and err.code == "rate_limit_requests"
    assert err.headers["retry-after"] == "50"
    assert err.headers["x-ratelimit-limit-requests"] == "3"
    # another key has its own budget
    assert (await rl.acquire("other", lim, 10)).allowed
    clock.t += 51
    assert (await rl.acquire("k", lim, 10)).allowed


async def test_local_window_slides_one_bucket_at_a_time(clock: FakeClock) -> None:
    rl = RateLimiter()
    lim = Limits(requests_per_minute=2)
    assert (await rl.acquire("k", lim, 0)).allowed
    clock.t += 30
    assert (await rl.acquire("k", lim, 0)).allowed
    clock.t += 29
    assert not (await rl.acquire("k", lim, 0)).allowed
    clock.t += 1.5  # the first request left the window, the second has not
    assert (await rl.acquire("k", lim, 0)).allowed
    assert not (await rl.acquire("k", lim, 0)).allowed


async def test_local_tokens_per_minute_with_reconciliation(clock: FakeClock) -> None:
    rl = RateLimiter()
    lim = Limits(tokens_per_minute=1000)
    ds = [await rl.acquire("k", lim, 300) for _ in range(3)]
    assert all(d.allowed for d in ds)
    d4 = await rl.acquire("k", lim, 300)
    assert not d4.allowed and d4.failed == "tokens"
    assert d4.error().code == "rate_limit_tokens"
    # the upstream reported 50 tokens for each: 750 of the estimate comes back
    for d in ds:
        await rl.reconcile("k", d, 50)
    d5 = await rl.acquire("k", lim, 300)
    assert d5.allowed and d5.tokens_used == 450


async def test_a_request_larger_than_the_token_budget_says_so(clock: FakeClock) -> None:
    rl = RateLimiter()
    d = await rl.acquire("k", Limits(tokens_per_minute=100), 500)
    assert not d.allowed
    assert "lower max_tokens" in d.error().message


def test_estimate_tokens_counts_prompt_and_completion_budget() -> None:
    body = {"messages": [{"role": "user", "content": "x" * 400},
                         {"role": "user", "content": [{"type": "text", "text": "y" * 40}]}],
            "max_tokens": 100}
    assert estimate_tokens(body) == 110 + 1 + 100
    assert estimate_tokens({"prompt": "abcd"}) == 1 + 1 + DEFAULT_COMPLETION_ESTIMATE
    assert estimate_tokens({"prompt": ["abcd"], "max_tokens": 1000}, cap=64) == 2 + 64


# --------------------------------------------------------------------------- gateway

def _with_key(cfg: dict, **limits: int) -> dict:
    cfg["api_keys"] = [{"name": "team-a", "sha256": hash_key("sk-a"), **limits}]
    return cfg


async def test_gateway_answers_429_with_retry_after_and_ratelimit_headers(
        ups: tuple[OpenAIUpstreamDouble, OpenAIUpstreamDouble], tmp_path: Path) -> None:
    cfg = _with_key(base_config(ups[0].base, ups[1].base), requests_per_minute=2)
    auth = {"authorization": "Bearer sk-a"}
    async with gateway_client(cfg, tmp_path) as (c, _):
        r1 = await c.post("/v1/chat/completions", json=chat("auto", "tell me a joke"),
                          headers=auth)
        assert r1.status_code == 200
        assert r1.headers["x-ratelimit-limit-requests"] == "2"
        assert r1.headers["x-ratelimit-remaining-requests"] == "1"
        assert r1.headers["x-expertgate-ratelimit"] == "local"
        await c.post("/v1/chat/completions", json=chat("auto", "tell me a joke"), headers=auth)
        r3 = await c.post("/v1/chat/completions", json=chat("auto", "tell me a joke"),
                          headers=auth)
        assert r3.status_code == 429
        assert int(r3.headers["retry-after"]) >= 1
        assert r3.headers["x-ratelimit-remaining-requests"] == "0"
        err = r3.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}
        assert err["type"] == "rate_limit_error" and err["code"] == "rate_limit_requests"
    assert len(ups[1].received) == 2  # the refused request never reached an upstream


async def test_gateway_reconciles_tokens_with_upstream_usage(
        ups: tuple[OpenAIUpstreamDouble, OpenAIUpstreamDouble], tmp_path: Path) -> None:
    cfg = _with_key(base_config(ups[0].base, ups[1].base), tokens_per_minute=500)
    auth = {"authorization": "Bearer sk-a"}
    async with gateway_client(cfg, tmp_path) as (c, gw):
        # estimate: 14 chars / 4 + 1 + max_tokens 200 = 204; the double reports 12 tokens
        r = await c.post("/v1/chat/completions",
                         json=chat("chatter", "tell me a joke", max_tokens=200), headers=auth)
        assert r.status_code == 200
        assert r.headers["x-ratelimit-remaining-tokens"] == str(500 - 204)
        await gw.ratelimiter.drain()
        r = await c.post("/v1/chat/completions",
                         json=chat("chatter", "tell me a joke", max_tokens=200), headers=auth)
        assert r.headers["x-ratelimit-remaining-tokens"] == str(500 - 12 - 204)
        # without reconciliation this third one (3 x 204 > 500) would be refused
        await gw.ratelimiter.drain()
        r = await c.post("/v1/chat/completions",
                         json=chat("chatter", "tell me a joke", max_tokens=200), headers=auth)
        assert r.status_code == 200


async def test_a_refusal_gives_its_token_charge_back(
        ups: tuple[OpenAIUpstreamDouble, OpenAIUpstreamDouble], tmp_path: Path) -> None:
    # the policy's refusal is written by the gateway: nothing was generated upstream
    cfg = _with_key(base_config(ups[0].base, ups[1].base, params={"threshold": 0.99},
                                on_reject={"action": "refusal", "message": "no"}),
                    tokens_per_minute=500)
    auth = {"authorization": "Bearer sk-a"}
    async with gateway_client(cfg, tmp_path) as (c, gw):
        for _ in range(4):  # 4 x 204 estimated tokens > 500: refused without the refund
            r = await c.post("/v1/chat/completions",
                             json=chat("auto", "zxqv wplm", max_tokens=200), headers=auth)
            assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "no"
            await gw.ratelimiter.drain()
    assert ups[0].received == [] and ups[1].received == []


async def test_a_request_over_the_whole_token_budget_has_no_retry_after_and_one_header_each(
        ups: tuple[OpenAIUpstreamDouble, OpenAIUpstreamDouble], tmp_path: Path) -> None:
    cfg = _with_key(base_config(ups[0].base, ups[1].base), tokens_per_minute=500,
                    requests_per_minute=100)
    async with gateway_client(cfg, tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json=chat("chatter", "hi", max_tokens=10_000),
                         headers={"authorization": "Bearer sk-a"})
        assert r.status_code == 429 and "lower max_tokens" in r.json()["error"]["message"]
        assert "retry-after" not in r.headers  # no wait admits it
        names = [k for k, _ in r.headers.multi_items()]
        assert len(names) == len(set(names)), names


def test_a_token_id_prompt_counts_its_tokens() -> None:
    from gateway.ratelimit import DEFAULT_COMPLETION_ESTIMATE

    # two prompts of token ids: a batch, the completion budget once per prompt
    assert estimate_tokens({"prompt": [[1, 2], [3]], "max_tokens": 10}) == 3 + 1 + 2 * 10
    assert estimate_tokens({"prompt": [5, 6, 7, 8]}) == 4 + 1 + DEFAULT_COMPLETION_ESTIMATE
    # text beside: characters / 4, as before
    assert estimate_tokens({"prompt": ["abcdefgh"], "max_tokens": 1}) == 2 + 1 + 1


async def test_a_prompt_alone_over_the_token_budget_says_so_and_invites_no_retry(
        ups: tuple[OpenAIUpstreamDouble, OpenAIUpstreamDouble], tmp_path: Path) -> None:
    # 750,000 characters (about 187,500 tokens), no max_tokens: no max_tokens would fit it
    cfg = _with_key(base_config(ups[0].base, ups[1].base), tokens_per_minute=100_000)
    async with gateway_client(cfg, tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json=chat("chatter", "x" * 750_000),
                         headers={"authorization": "Bearer sk-a"})
    assert r.status_code == 429, r.text
    err = r.json()["error"]
    assert err["code"] == "rate_limit_tokens" and err["type"] == "rate_limit_error"
    msg = err["message"]
    # OpenAI's wording for a request larger than the TPM limit, then what is too large
    assert msg.startswith("Request too large for this key on tokens per min (TPM): "
                          "Limit 100000, Requested "), msg
    assert "prompt alone (estimated 187501 tokens)" in msg and "can never be admitted" in msg
    assert "max_tokens" not in msg, msg
    # nothing invites a retry that cannot succeed: the OpenAI SDK obeys x-should-retry
    # before it looks at the 429 (it retries a 429 without retry-after too)
    assert "retry-after" not in r.headers
    assert r.headers["x-should-retry"] == "false"
    assert ups[0].received == [] and ups[1].received == []


async def test_a_completion_budget_over_the_token_budget_says_to_lower_max_tokens(
        clock: FakeClock) -> None:
    rl = RateLimiter()
    d = await rl.acquire("k", Limits(tokens_per_minute=100), 500)
    e = d.error(prompt_tokens=2)
    assert "Limit 100, Requested 500" in e.message and "lower max_tokens" in e.message
    assert "prompt alone" not in e.message and e.headers["x-should-retry"] == "false"
    # a request that a wait admits is still retried, after its retry-after
    await rl.acquire("k2", Limits(tokens_per_minute=100), 80)
    busy = (await rl.acquire("k2", Limits(tokens_per_minute=100), 80)).error(prompt_tokens=1)
    assert "retry-after" in busy.headers and "x-should-retry" not in busy.headers
