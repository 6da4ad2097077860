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
        # its status and message, OpenAI-shaped (a 4xx is the client's problem, never
        # retried on another expert)
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
