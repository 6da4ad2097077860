"""/readyz checks a LoRA adapter expert on its parent's vLLM server, as vLLM lists it.

An adapter (``parent:``) has no server of its own: it was left out of /readyz, so an adapter
the server does not have (not in ``--lora-modules``, lost when vLLM restarted after a
runtime ``/v1/load_lora_adapter``, unloaded) read as ready while each of its requests failed
over to a fallback. The parent's ``GET /models`` (one per replica, already made for the
parent's own check) lists the adapters it serves; an adapter missing there is not ready on
that replica. A list that cannot be read (not JSON, a 401 without the key) says nothing about
adapters, and they count as served.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.api.health import READY_TTL_S
from tests.doubles.vllm import VLLMDouble
from tests.unit.gateway_helpers import gateway_client

BASE_MODEL = "meta-llama/Llama-3.1-8B-Instruct"


@pytest.fixture
async def vllm() -> AsyncIterator[VLLMDouble]:
    d = await VLLMDouble(BASE_MODEL, {"sql-lora": "/adapters/sql-lora"},
                         api_key="vllm-secret").start()
    yield d
    await d.stop()


def _cfg(base: str) -> dict[str, Any]:
    return {
        "embedder": {"kind": "hashing", "micro_batch": False},
        "experts": [
            {"name": "llama-base", "api_base": base, "model": BASE_MODEL,
             "api_key_env": "EG_TEST_VLLM_KEY"},
            {"name": "sql-lora", "parent": "llama-base"},
            {"name": "legal", "parent": "llama-base", "model": "legal-lora"},
        ],
        "policies": [],
    }


async def test_an_adapter_its_parent_does_not_serve_is_not_ready(
        vllm: VLLMDouble, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EG_TEST_VLLM_KEY", "vllm-secret")  # vLLM --api-key guards /v1/models
    async with gateway_client(_cfg(vllm.base), tmp_path, ready_check_upstreams=True) as (c, _):
        r = await c.get("/readyz")
        body = r.json()
        assert r.status_code == 200 and body["status"] == "degraded", body
        experts = body["checks"]["experts"]
        assert experts["llama-base"] == {"ready": True, "replicas_up": 1, "replicas": 1}
        assert experts["sql-lora"] == {"ready": True, "replicas_up": 1, "replicas": 1}
        assert experts["legal"] == {"ready": False, "replicas_up": 0, "replicas": 1}
        assert body["checks"]["experts_down"] == ["legal"]
        async with aiohttp.ClientSession() as s, s.post(
                vllm.base + "/load_lora_adapter", headers={"authorization": "Bearer vllm-secret"},
                json={"lora_name": "legal-lora", "lora_path": "/adapters/legal"}) as lr:
            assert lr.status == 200
        await asyncio.sleep(READY_TTL_S + 0.1)
        body = (await c.get("/readyz")).json()
        assert body["status"] == "ready" and body["checks"]["experts_down"] == [], body
        assert body["checks"]["experts"]["legal"]["ready"] is True


async def test_an_unreadable_model_list_says_nothing_about_adapters(
        vllm: VLLMDouble, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EG_TEST_VLLM_KEY", raising=False)  # /v1/models answers 401
    async with gateway_client(_cfg(vllm.base), tmp_path, ready_check_upstreams=True) as (c, _):
        body = (await c.get("/readyz")).json()
        assert body["status"] == "ready", body
        assert body["checks"]["experts"]["legal"]["ready"] is True
