"""The gateway in front of vLLM multi-LoRA, tested against a vLLM test double (no GPU here).

A base expert and two LoRA adapters configured as experts with ``parent``: adapters are
listed like vLLM lists them, and an adapter request goes to the base model's server with
``model`` = the adapter's name (that is how vLLM selects an adapter).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from tests.doubles.vllm import VLLMDouble
from tests.unit.gateway_helpers import chat, gateway_client

BASE_MODEL = "meta-llama/Llama-3.1-8B-Instruct"


@pytest.fixture
async def vllm() -> AsyncIterator[VLLMDouble]:
    d = await VLLMDouble(BASE_MODEL, {"sql-lora": "/adapters/sql-lora"}).start()
    yield d
    await d.stop()


def lora_config(base: str) -> dict[str, Any]:
    return {
        "embedder": {"kind": "hashing", "micro_batch": False},
        "experts": [
            {"name": "llama-base", "api_base": base, "model": BASE_MODEL, "timeout_s": 2},
            {"name": "sql-lora", "parent": "llama-base", "description": "text-to-SQL adapter"},
            {"name": "legal-lora", "parent": "llama-base"},
        ],
        "policies": [{
            "name": "lora-auto", "params": {"threshold": 0.05}, "fallback": ["llama-base"],
            "routes": [
                {"name": "sql", "expert": "sql-lora", "examples": [
                    "write a sql query", "select all rows from the table",
                    "join two tables in sql", "count rows grouped by column in sql"]},
                {"name": "legal", "expert": "legal-lora", "examples": [
                    "summarise this contract clause", "is this lease agreement legal",
                    "what does this legal term mean"]},
                {"name": "general", "expert": "llama-base", "examples": [
                    "tell me a joke", "how are you today", "plan a trip to Rome"]},
            ]}],
    }


async def test_vllm_double_lists_adapters_with_parent_and_root(vllm: VLLMDouble) -> None:
    async with aiohttp.ClientSession() as s, s.get(vllm.base + "/models") as r:
        data = {m["id"]: m for m in (await r.json())["data"]}
    assert data[BASE_MODEL]["parent"] is None and data[BASE_MODEL]["root"] == BASE_MODEL
    assert data["sql-lora"]["parent"] == BASE_MODEL
    assert data["sql-lora"]["root"] == "/adapters/sql-lora"


async def test_gateway_lists_adapters_with_parent(vllm: VLLMDouble, tmp_path: Path) -> None:
    async with gateway_client(lora_config(vllm.base), tmp_path) as (c, _):
        data = {m["id"]: m for m in (await c.get("/v1/models")).json()["data"]}
    assert data["llama-base"]["parent"] is None
    assert data["llama-base"]["expertgate"]["kind"] == "expert"
    for name in ("sql-lora", "legal-lora"):
        assert data[name]["parent"] == "llama-base"
        assert data[name]["expertgate"]["kind"] == "adapter"
    assert data["lora-auto"]["expertgate"]["kind"] == "policy"
    assert vllm.received == []  # listing never calls the upstream


async def test_adapter_request_goes_to_the_base_server_with_the_adapter_name(
        vllm: VLLMDouble, tmp_path: Path) -> None:
    async with gateway_client(lora_config(vllm.base), tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json=chat("sql-lora", "anything"))
        assert r.status_code == 200
        assert r.headers["x-expertgate-expert"] == "sql-lora"
        assert r.json()["choices"][0]["message"]["content"] == "answer from adapter sql-lora"
        assert vllm.received[-1]["model"] == "sql-lora"
        # the base expert is sent under its upstream model id
        r = await c.post("/v1/chat/completions", json=chat("llama-base", "anything"))
        assert r.status_code == 200
        assert vllm.received[-1]["model"] == BASE_MODEL
        # through the OpenAI SDK, streamed
        client = openai.AsyncOpenAI(base_url="http://gw/v1", api_key="unused", http_client=c)
        stream = await client.chat.completions.create(
            model="sql-lora", stream=True, messages=[{"role": "user", "content": "x"}])
        text = "".join([ch.choices[0].delta.content or "" async for ch in stream])
        assert text == "answer from adapter sql-lora"
    assert len(vllm.received) == 3


async def test_policy_routes_among_adapters_of_one_base(vllm: VLLMDouble, tmp_path: Path
                                                        ) -> None:
    async with gateway_client(lora_config(vllm.base), tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions",
                         json=chat("lora-auto", "write a sql query to count rows per column"))
        assert r.status_code == 200
        assert r.headers["x-expertgate-policy"] == "lora-auto"
        assert r.headers["x-expertgate-expert"] == "sql-lora"
        assert vllm.received[-1]["model"] == "sql-lora"
        r = await c.post("/v1/chat/completions", json=chat("lora-auto", "tell me a joke"))
        assert r.headers["x-expertgate-expert"] == "llama-base"
        assert vllm.received[-1]["model"] == BASE_MODEL


async def test_adapter_loaded_at_run_time_becomes_servable(vllm: VLLMDouble, tmp_path: Path
                                                           ) -> None:
    async with gateway_client(lora_config(vllm.base), tmp_path) as (c, _):
        # configured in the gateway but not yet loaded in vLLM: vLLM's 404 comes back with
        # its status and message, OpenAI-shaped (the client named this expert: nothing
        # else to try, and its one replica is not asked twice)
        r = await c.post("/v1/chat/completions", json=chat("legal-lora", "x"))
        assert r.status_code == 404
        err = r.json()["error"]
        assert "legal-lora" in err["message"] and err["type"] == "NotFoundError"
        assert len(vllm.received) == 1
        async with aiohttp.ClientSession() as s:
            async with s.post(vllm.base + "/load_lora_adapter", json={
                    "lora_name": "legal-lora", "lora_path": "/adapters/legal"}) as lr:
                assert lr.status == 200
                assert "added successfully" in await lr.text()
            async with s.post(vllm.base + "/load_lora_adapter", json={
                    "lora_name": "legal-lora", "lora_path": "/adapters/legal"}) as lr:
                assert lr.status == 400  # already loaded
        r = await c.post("/v1/chat/completions", json=chat("legal-lora", "x"))
        assert r.status_code == 200
        assert r.json()["choices"][0]["message"]["content"] == "answer from adapter legal-lora"
        async with aiohttp.ClientSession() as s:
            async with s.post(vllm.base + "/unload_lora_adapter",
                              json={"lora_name": "legal-lora"}) as ur:
                assert ur.status == 200
            async with s.post(vllm.base + "/unload_lora_adapter",
                              json={"lora_name": "legal-lora"}) as ur:
                assert ur.status == 404
        r = await c.post("/v1/chat/completions", json=chat("legal-lora", "x"))
        assert r.status_code == 404


async def test_runtime_lora_endpoints_absent_without_the_vllm_flag() -> None:
    d = await VLLMDouble(BASE_MODEL, allow_runtime_lora=False).start()
    try:
        async with aiohttp.ClientSession() as s, s.post(
                d.base + "/load_lora_adapter",
                json={"lora_name": "a", "lora_path": "/a"}) as r:
            assert r.status == 404
        assert d.lora_modules == {}
    finally:
        await d.stop()


async def test_a_routed_adapter_missing_on_the_server_falls_back_to_the_base_model(
        vllm: VLLMDouble, tmp_path: Path) -> None:
    # the policy chose legal-lora, configured but not loaded in vLLM: vLLM's 404 says the
    # model is not on that server (the expert's failure, not the request's), so the decision's
    # chain goes on to the base model. It was passed to the client as 404 "The model
    # `legal-lora` does not exist" for a policy that exists, with no fallback tried
    cfg = lora_config(vllm.base)
    cfg["policies"][0]["max_attempts"] = 1  # the chosen adapter, then the policy's fallback
    async with gateway_client(cfg, tmp_path) as (c, gw):
        client = openai.AsyncOpenAI(base_url="http://gw/v1", api_key="unused", http_client=c,
                                    max_retries=0)
        for stream in (False, True):
            raw = await client.chat.completions.with_raw_response.create(
                model="lora-auto", stream=stream,
                messages=[{"role": "user", "content": "summarise this contract clause"}])
            assert raw.status_code == 200
            h = raw.headers
            assert h["x-expertgate-expert"] == "llama-base"
            assert h["x-expertgate-degraded"] == "expert-fallback"
            assert "fallback to llama-base after legal-lora:not_found" in \
                h["x-expertgate-reason"]
            assert [b["model"] for b in vllm.received[-2:]] == ["legal-lora", BASE_MODEL]
        # a missing adapter is no failure of the server its parent shares: after many 404s
        # the base model and the other adapter still answer (no circuit opened)
        for _ in range(8):
            r = await c.post("/v1/chat/completions", json=chat("legal-lora", "x"))
            assert r.status_code == 404  # named by the client: the server's own answer
            assert r.json()["error"]["type"] == "NotFoundError"
        r = await c.post("/v1/chat/completions", json=chat("sql-lora", "x"))
        assert r.status_code == 200
        assert all(rep["circuit"] == "closed"
                   for rep in gw.dispatcher.replica_states()["llama-base"])
        m = (await c.get("/metrics")).text
        assert 'expertgate_upstream_errors_total{expert="legal-lora",kind="not_found"} 10.0' \
            in m
    recs = [orjson.loads(ln) for ln in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [(r["expert"], r["http_status"], r["fallback"]) for r in recs[:2]] == [
        ("llama-base", 200, True)] * 2


async def test_an_adapter_loaded_on_one_replica_only_is_served_by_that_replica(
        tmp_path: Path) -> None:
    # runtime-loaded adapters arrive on replicas one by one: the replica without it answers
    # 404, the next replica of the same expert serves it
    a = await VLLMDouble(BASE_MODEL).start()
    b = await VLLMDouble(BASE_MODEL, {"sql-lora": "/adapters/sql-lora"}).start()
    try:
        cfg = lora_config(a.base)
        cfg["experts"][0] = {"name": "llama-base", "replicas": [a.base, b.base],
                             "model": BASE_MODEL, "timeout_s": 2}
        async with gateway_client(cfg, tmp_path) as (c, _):
            for _ in range(4):  # whichever replica affinity picks first
                r = await c.post("/v1/chat/completions", json=chat("sql-lora", "x"))
                assert r.status_code == 200
                assert r.json()["choices"][0]["message"]["content"] == \
                    "answer from adapter sql-lora"
                assert r.headers["x-expertgate-expert"] == "sql-lora"
        assert len(b.received) == 4
    finally:
        await a.stop()
        await b.stop()


async def test_adapter_calls_carry_their_parent_servers_credentials(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # vLLM started with --api-key: the base expert names the key (api_key_env); its adapters
    # are served by the same server and must send the same key. They sent none (the
    # adapter's own, empty, credentials): every adapter call was a 401, failed over to the
    # base model (routed) or answered 502 upstream_auth_failed (named)
    monkeypatch.setenv("VLLM_KEY", "sk-vllm-secret")
    d = await VLLMDouble(BASE_MODEL, {"sql-lora": "/adapters/sql-lora"},
                         api_key="sk-vllm-secret").start()
    try:
        cfg = lora_config(d.base)
        cfg["experts"][0]["api_key_env"] = "VLLM_KEY"
        async with gateway_client(cfg, tmp_path) as (c, _):
            r = await c.post("/v1/chat/completions", json=chat("sql-lora", "x"))
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["message"]["content"] == \
                "answer from adapter sql-lora"
            r = await c.post("/v1/chat/completions",
                             json=chat("lora-auto", "write a sql query to count rows"))
            assert r.status_code == 200
            assert r.headers["x-expertgate-expert"] == "sql-lora"
            assert "x-expertgate-degraded" not in r.headers
    finally:
        await d.stop()
