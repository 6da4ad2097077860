"""Request-caused upstream errors against real llama.cpp experts (issue 19, item 1).

llama.cpp answers 500 to requests it cannot serve: ``response_format`` json_schema (what
LangChain's ``with_structured_output`` sends), image content parts, ``content: null`` on an
assistant turn, a prompt list on /v1/completions. Such a
500 must come back to its client as llama.cpp's own error, and must never be retried, sent to
the other expert, or counted toward the circuit breaker that protects every other client.
Also here, because llama.cpp shows it: a stream asked for usage gets one (estimated). JSON
nested deeper than the gateway can write again (1,000 levels in an extra field, which
llama.cpp answered with a 500) never reaches an expert: a 400, routed or named
(gateway/request/read.py ``_forwardable``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.integration.conftest import LocalExperts
from tests.unit.gateway_helpers import gateway_client

pytestmark = pytest.mark.integration

SCHEMA = {"type": "json_schema", "json_schema": {
    "name": "answer", "schema": {"type": "object", "properties": {"a": {"type": "string"}}}}}
IMAGE = [{"type": "text", "text": "what is this?"},
         {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]


def _deep(n: int) -> bytes:
    return b'{"a":' * n + b"1" + b"}" * n


def _config(experts: LocalExperts) -> dict[str, Any]:
    ports = experts.ports
    return {
        "embedder": {"kind": "hashing", "micro_batch": False},
        "experts": [
            {"name": "smollm2", "api_base": f"http://127.0.0.1:{ports['smollm2']}/v1",
             "timeout_s": 60},
            {"name": "gemma3", "api_base": f"http://127.0.0.1:{ports['gemma3']}/v1",
             "timeout_s": 60}],
        "policies": [{"name": "auto", "params": {"threshold": 0.0}, "fallback": ["gemma3"],
                      "routes": [{"name": "chat", "expert": "smollm2",
                                  "examples": ["hi", "tell me a joke", "what is this?"]}]}],
    }


@pytest.fixture
async def client(llama_experts: LocalExperts, tmp_path: Path
                 ) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    llama_experts.ensure_running()
    async with gateway_client(_config(llama_experts), tmp_path,
                              request_deadline_s=120) as (c, gw):
        yield c, gw


def _bad_requests() -> list[tuple[str, bytes]]:
    def chat(**kw: Any) -> bytes:
        return orjson.dumps({"model": "auto", "max_tokens": 4, **kw})

    return [
        ("/v1/chat/completions", chat(messages=[{"role": "user", "content": "hi"}],
                                      response_format=SCHEMA)),
        ("/v1/chat/completions", chat(messages=[{"role": "user", "content": IMAGE}])),
        ("/v1/chat/completions", chat(messages=[
            {"role": "user", "content": "hi"}, {"role": "assistant", "content": None},
            {"role": "user", "content": "tell me a joke"}])),
        ("/v1/completions", orjson.dumps({"model": "smollm2", "max_tokens": 4,
                                          "prompt": ["a", "b"]})),
    ]


async def test_request_caused_500s_pass_through_and_never_trip_the_circuit(client: Any
                                                                           ) -> None:
    c, gw = client
    for _ in range(2):  # eight bad requests: over twice the breaker's threshold
        for path, body in _bad_requests():
            r = await c.post(path, content=body, headers={"content-type": "application/json"})
            assert r.status_code == 500, (path, r.text[:300])
            err = r.json()["error"]
            assert set(err) == {"message", "type", "param", "code"}
            assert "127.0.0.1" not in r.text
            assert r.headers["x-expertgate-expert"] == "smollm2"  # never gemma3
            assert "x-expertgate-degraded" not in r.headers
    states = gw.dispatcher.replica_states()
    assert all(rep["circuit"] == "closed" for rep in states["smollm2"])
    m = (await c.get("/metrics")).text
    assert 'expertgate_upstream_errors_total{expert="smollm2",kind="request_error"} 8.0' in m
    assert 'kind="status"' not in m  # none was counted as the replica's failure
    # every other client is served by the expert at once
    r = await c.post("/v1/chat/completions", json={
        "model": "auto", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200 and r.headers["x-expertgate-expert"] == "smollm2"
    assert r.json()["choices"][0]["message"]["content"] is not None
    # JSON too deep for the gateway to write again is a clear 400, routed (re-encoded with its
    # model name) or naming an expert (no longer passed through to llama.cpp's 500)
    for model in (b"auto", b"smollm2"):
        r = await c.post("/v1/chat/completions", content=b'{"model": "' + model + b'", '
                         b'"messages": [{"role": "user", "content": "hi"}], "extra": '
                         + _deep(1000) + b"}", headers={"content-type": "application/json"})
        assert r.status_code == 400 and "nested too deeply" in r.json()["error"]["message"]
    assert 'kind="request_error"} 8.0' in (await c.get("/metrics")).text


async def test_a_json_schema_500_is_llama_cpps_own_message(client: Any) -> None:
    c, _ = client
    r = await c.post("/v1/chat/completions", json={
        "model": "smollm2", "max_tokens": 4, "response_format": SCHEMA,
        "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 500
    assert "json_schema" in r.json()["error"]["message"]


async def test_stream_usage_is_reported_although_llama_cpp_sends_none(client: Any) -> None:
    c, _ = client
    r = await c.post("/v1/chat/completions", json={
        "model": "smollm2", "max_tokens": 5, "stream": True, "temperature": 0.0,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "Say hello."}]})
    assert r.status_code == 200
    events = [ln[6:] for ln in r.text.split("\n") if ln.startswith("data: ")]
    assert events[-1] == "[DONE]"
    usage = orjson.loads(events[-2])["usage"]
    content = [e for e in events[:-2] if orjson.loads(e)["choices"][0]["delta"].get("content")]
    assert usage["estimated"] is True and usage["completion_tokens"] == len(content) >= 1
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
