"""An expert's dialect in a chain: a request its server cannot carry (an image part to a
llama.cpp expert) goes to the chain's next expert, an ensemble's other members, or the
members' best answer, and is a 400 only when no expert of the chain can serve it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from expertgate.bench.upstream_double import OpenAIUpstreamDouble
from tests.unit.gateway_helpers import base_config, gateway_client
from tests.unit.test_upstream_faults import _skills_artifact

IMAGE = {"role": "user", "content": [
    {"type": "text", "text": "tell me a joke about this picture"},
    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}


def _chain_config(ups: Any, llama: str, fallback: list[str]) -> dict[str, Any]:
    cfg = base_config(ups[0].base, ups[1].base, fallback=fallback)
    for e in cfg["experts"]:
        if e["name"] in llama.split(","):
            e["dialect"] = "llama-cpp-python"
    return cfg


async def test_a_fallback_serves_what_the_first_experts_dialect_cannot(ups, tmp_path: Path
                                                                      ) -> None:
    coder, chatter = ups
    # 'a joke' routes to chatter, a llama.cpp server; coder (openai) is its fallback
    async with gateway_client(_chain_config(ups, "chatter", ["chatter", "coder"]),
                              tmp_path) as (c, gw):
        r = await c.post("/v1/chat/completions", json={"model": "auto", "messages": [IMAGE]})
        assert r.status_code == 200, r.text
        assert r.headers["x-expertgate-expert"] == "coder"
        assert r.headers["x-expertgate-degraded"] == "expert-fallback"
        assert "chatter:unsupported" in r.headers["x-expertgate-reason"]
        assert chatter.received == []  # nothing was sent to the server that cannot read it
        assert coder.received[-1]["messages"] == [IMAGE]  # the fallback got it as sent
        # counted as a fallback for the dialect, not as an upstream's failure
        fallbacks = gw.metrics.fallbacks
        assert fallbacks.labels("auto", "unsupported")._value.get() == 1
        assert fallbacks.labels("auto", "upstream")._value.get() == 0
    rec = orjson.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])
    assert rec["expert"] == "coder" and rec["status"] == "ok"


async def test_no_expert_of_the_chain_can_serve_it_is_the_dialects_400(ups, tmp_path: Path
                                                                      ) -> None:
    coder, chatter = ups
    cfg = _chain_config(ups, "chatter,coder", ["chatter"])
    async with gateway_client(cfg, tmp_path) as (c, _):
        for model in ("auto", "chatter"):  # routed, or the expert named
            r = await c.post("/v1/chat/completions", json={"model": model, "messages": [IMAGE]})
            assert r.status_code == 400, r.text
            err = r.json()["error"]
            assert err["code"] == "unsupported_parameter"
            assert err["param"] == "messages.0.content.1"
        assert chatter.received == [] and coder.received == []


async def test_the_dialect_is_applied_per_expert_down_the_chain(ups, tmp_path: Path) -> None:
    # first choice openai, fallback llama.cpp: the fallback gets the adapted body
    coder, chatter = ups
    coder.mode = "status"  # every answer a 500
    fix = "fix this bug in my code"
    async with gateway_client(_chain_config(ups, "chatter", ["chatter"]), tmp_path
                              ) as (c, _):
        r = await c.post("/v1/chat/completions", json={
            "model": "auto", "max_completion_tokens": 9, "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": fix}]}]})
        assert r.status_code == 200 and r.headers["x-expertgate-expert"] == "chatter"
    assert coder.received[0]["messages"][0]["role"] == "developer"
    assert "max_tokens" not in coder.received[0]
    assert chatter.received[-1]["messages"] == [{"role": "system", "content": "be brief"},
                                                {"role": "user", "content": fix}]
    assert chatter.received[-1]["max_tokens"] == 9


async def _panel(ups: Any, agg: OpenAIUpstreamDouble, tmp_path: Path, llama: set[str]
                 ) -> Any:
    cfg = base_config(ups[0].base, ups[1].base)
    cfg["experts"].append({"name": "agg", "api_base": agg.base, "timeout_s": 2})
    for e in cfg["experts"]:
        if e["name"] in llama:
            e["dialect"] = "llama-cpp-python"
    cfg["policies"] = [{"name": "panel", "router": "skills",
                        "artifact": str(_skills_artifact(tmp_path / "skills"))}]
    return gateway_client(cfg, tmp_path)


async def test_an_ensemble_member_that_cannot_read_it_leaves_the_others(ups, tmp_path: Path
                                                                       ) -> None:
    chatter = ups[1]
    agg = await OpenAIUpstreamDouble("agg-double").start()
    try:
        async with await _panel(ups, agg, tmp_path, {"chatter"}) as (c, _):
            r = await c.post("/v1/chat/completions", json={"model": "panel", "messages": [
                {"role": "user", "content": [*IMAGE["content"][1:], {
                    "type": "text", "text": "explain topic 3"}]}]})
            assert r.status_code == 200, r.text
            assert r.headers["x-expertgate-expert"] == "agg"
            assert r.headers["x-expertgate-ensemble"] == "coder"
            assert "ensemble-partial" in r.headers["x-expertgate-degraded"]
            assert chatter.received == []
    finally:
        await agg.stop()


async def test_an_aggregator_that_cannot_read_it_leaves_the_members_best_answer(
        ups, tmp_path: Path) -> None:
    agg = await OpenAIUpstreamDouble("agg-double").start()
    try:
        async with await _panel(ups, agg, tmp_path, {"agg"}) as (c, _):
            r = await c.post("/v1/chat/completions", json={"model": "panel", "messages": [
                {"role": "user", "content": [*IMAGE["content"][1:], {
                    "type": "text", "text": "explain topic 3"}]}]})
            assert r.status_code == 200, r.text
            assert "ensemble-unaggregated" in r.headers["x-expertgate-degraded"]
            assert agg.received == []
    finally:
        await agg.stop()


async def test_an_ensemble_no_member_can_read_is_the_dialects_400(ups, tmp_path: Path
                                                                 ) -> None:
    agg = await OpenAIUpstreamDouble("agg-double").start()
    try:
        async with await _panel(ups, agg, tmp_path, {"coder", "chatter"}) as (c, _):
            r = await c.post("/v1/chat/completions", json={"model": "panel", "messages": [
                {"role": "user", "content": [*IMAGE["content"][1:], {
                    "type": "text", "text": "explain topic 3"}]}]})
            assert r.status_code == 400, r.text
            assert r.json()["error"]["code"] == "unsupported_parameter"
    finally:
        await agg.stop()


async def test_the_dry_run_names_the_experts_a_live_request_passes_over(ups, tmp_path: Path
                                                                       ) -> None:
    # /v1/route said chatter first for an image request a live request serves with coder
    async with gateway_client(_chain_config(ups, "chatter", ["chatter", "coder"]),
                              tmp_path) as (c, _):
        r = await c.post("/v1/route", json={"model": "auto", "messages": [IMAGE]})
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["fallback_chain"][0] == "chatter"
        assert list(out["unsupported"]) == ["chatter"]
        assert "image_url" in out["unsupported"]["chatter"]
        r = await c.post("/v1/route", json={"model": "auto", "messages": [
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "tell me a joke"}]}]})
        assert "unsupported" not in r.json()  # what the dialect rewrites, it carries


async def test_a_text_part_without_text_is_the_clients_400_not_the_experts(ups, tmp_path: Path
                                                                          ) -> None:
    # it was 'messages.0.content.0 is a 'text' part; it reads text parts only' (so the chain
    # went on past the llama.cpp expert): every expert refuses it, it says what is wrong
    async with gateway_client(_chain_config(ups, "chatter", ["chatter"]), tmp_path
                              ) as (c, _):
        r = await c.post("/v1/chat/completions", json={"model": "chatter", "messages": [
            {"role": "user", "content": [{"type": "text", "text": None}]}]})
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] == "messages.0.content.0.text"
        assert err["code"] == "invalid_request"
        assert "must be a string" in err["message"]
