"""A request refused on its key's token budget was never served: it costs no request of the
key's requests_per_minute either (both dimensions are one admission, docs/reliability.md)."""

from __future__ import annotations

from pathlib import Path

from expertgate.bench.upstream_double import OpenAIUpstreamDouble
from gateway.auth import hash_key
from tests.unit.gateway_helpers import base_config, chat, gateway_client


def limited_config(coder: str, chatter: str) -> dict:
    cfg = base_config(coder, chatter)
    cfg["api_keys"] = [{"name": "team-a", "sha256": hash_key("sk-a"),
                        "requests_per_minute": 3, "tokens_per_minute": 500}]
    return cfg


async def check_refused_on_tokens_costs_no_request(client, auth: dict[str, str]) -> None:
    for _ in range(3):  # each over the whole token budget: refused, "lower max_tokens"
        r = await client.post("/v1/chat/completions",
                              json=chat("chatter", "hi", max_tokens=10_000), headers=auth)
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_tokens"
    for i in range(3):  # the key's three requests are all still there
        r = await client.post("/v1/chat/completions",
                              json=chat("chatter", "hi", max_tokens=10), headers=auth)
        assert r.status_code == 200, (i, r.text)
        assert r.headers["x-ratelimit-remaining-requests"] == str(2 - i)
    r = await client.post("/v1/chat/completions", json=chat("chatter", "hi", max_tokens=10),
                          headers=auth)
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_requests"


async def test_a_request_refused_on_tokens_costs_no_request(
        ups: tuple[OpenAIUpstreamDouble, OpenAIUpstreamDouble], tmp_path: Path) -> None:
    cfg = limited_config(ups[0].base, ups[1].base)
    async with gateway_client(cfg, tmp_path) as (c, _):
        await check_refused_on_tokens_costs_no_request(c, {"authorization": "Bearer sk-a"})
    assert len(ups[1].received) == 3
