"""A routed request whose LoRA adapter is not loaded on vLLM falls back to the adapter's base
model. With the policy's default ``max_attempts`` it went to the chain's next target
instead, another task's adapter: a legal question answered by the text-to-SQL adapter."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests.doubles.vllm import VLLMDouble
from tests.unit.gateway_helpers import chat, gateway_client
from tests.unit.test_vllm_lora_double import BASE_MODEL, lora_config, vllm  # noqa: F401


@pytest.mark.parametrize("stream", [False, True])
async def test_a_missing_adapter_is_followed_by_its_base_model(
        vllm: VLLMDouble, tmp_path: Path, stream: bool) -> None:  # noqa: F811
    cfg = lora_config(vllm.base)
    assert "max_attempts" not in cfg["policies"][0]  # the default: every target is tried
    async with gateway_client(cfg, tmp_path) as (c, _):
        dry = await c.post("/v1/route", json=chat("lora-auto", "summarise this contract clause"))
        assert dry.json()["fallback_chain"][:2] == ["legal-lora", "sql-lora"]
        r = await c.post("/v1/chat/completions",
                         json=chat("lora-auto", "summarise this contract clause", stream=stream))
        assert r.status_code == 200
        assert r.headers["x-expertgate-expert"] == "llama-base"
        assert r.headers["x-expertgate-degraded"] == "expert-fallback"
        assert "fallback to llama-base after legal-lora:not_found" in \
            r.headers["x-expertgate-reason"]
        assert f'"model":"{BASE_MODEL}"' in r.text.replace(" ", "")
        assert [b["model"] for b in vllm.received] == ["legal-lora", BASE_MODEL]
        # named by the client, the adapter is the server's own 404: never another model
        r = await c.post("/v1/chat/completions", json=chat("legal-lora", "x"))
        assert r.status_code == 404
        assert [b["model"] for b in vllm.received[2:]] == ["legal-lora"]
        m = (await c.get("/metrics")).text
        assert 'expertgate_fallbacks_total{policy="lora-auto",reason="upstream"} 1.0' in m
    rec = orjson.loads((tmp_path / "log.jsonl").read_text().splitlines()[0])
    assert (rec["expert"], rec["fallback"], rec["degraded"][0]) == (
        "llama-base", True, "expert-fallback")
