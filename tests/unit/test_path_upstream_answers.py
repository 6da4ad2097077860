"""What an upstream's 200 must hold to be passed on as the answer (request path)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests.unit.gateway_helpers import base_config, chat, gateway_client


@pytest.mark.parametrize("endpoint,body,needs", [
    ("/v1/chat/completions", chat("auto", "fix this bug in my code"), "choices"),
    ("/v1/completions", {"model": "auto", "prompt": "fix this bug in my code"}, "choices"),
])
@pytest.mark.parametrize("answer", [
    b'{"error": {"message": "model overloaded", "type": "server_error"}}',  # a 200 error
    b'{"object": "chat.completion", "choices": null}',
    b'{"foo": 1}',
    b'{"object": "chat.completion", "choices": []}',  # no answer either: choices[0] fails
])
async def test_a_200_json_object_that_is_no_answer_fails_over(
        ups, tmp_path: Path, endpoint: str, body: dict[str, object], needs: str,
        answer: bytes) -> None:
    # An upstream (a proxy, a server mid-restart) answering 200 with a JSON object that is
    # not an answer was passed to the client as its answer: the OpenAI SDK then has no
    # .choices, and the fallback expert that was up never got the request. It is a
    # protocol failure of that expert, like a 200 that is not JSON.
    coder, chatter = ups
    coder.raw = (200, "application/json", answer)
    async with gateway_client(base_config(coder.base, chatter.base), tmp_path) as (c, _):
        r = await c.post(endpoint, json=body)
        assert r.status_code == 200, r.text
        assert r.headers["x-expertgate-expert"] == "chatter"
        assert r.headers["x-expertgate-degraded"] == "expert-fallback"
        assert "coder:protocol" in r.headers["x-expertgate-reason"]
        assert isinstance(r.json()[needs], list)
        named = await c.post(endpoint, json={**body, "model": "coder"})
    assert named.status_code == 502
    err = named.json()["error"]
    assert err["code"] == "upstream_protocol_error"
    assert f"without '{needs}'" in err["message"] and "127.0.0.1" not in err["message"]
    rec = orjson.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])
    assert rec["status"] == "error" and rec["http_status"] == 502


async def test_an_embeddings_200_without_data_is_a_protocol_failure(
        ups, tmp_path: Path) -> None:
    coder, chatter = ups
    coder.raw = (200, "application/json", b'{"object": "list"}')
    cfg = base_config(coder.base, chatter.base)
    cfg["experts"][0]["embeddings"] = True
    async with gateway_client(cfg, tmp_path) as (c, _):
        r = await c.post("/v1/embeddings", json={"model": "coder", "input": "hi"})
        assert r.status_code == 502, r.text
        assert r.json()["error"]["code"] == "upstream_protocol_error"
        coder.raw = None
        ok = await c.post("/v1/embeddings", json={"model": "coder", "input": "hi"})
        assert ok.status_code == 200 and isinstance(ok.json()["data"], list)


async def test_a_litellm_experts_answer_without_choices_fails_over(
        ups, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # LiteLLM turned an OpenAI-compatible provider's '{"choices": []}' into a 200 answer
    # without choices, passed to the client as an openai expert's no longer is
    from expertgate.bench.upstream_double import OpenAIUpstreamDouble

    monkeypatch.setenv("EG_TEST_LITE_KEY", "sk-lite-test")
    coder, chatter = ups
    lite = await OpenAIUpstreamDouble("lite-double").start()
    try:
        lite.raw = (200, "application/json", b'{"object": "chat.completion", "choices": []}')
        cfg = base_config(coder.base, chatter.base)
        cfg["experts"].append({"name": "lite", "kind": "litellm", "model": "openai/m",
                               "api_base": lite.base, "api_key_env": "EG_TEST_LITE_KEY",
                               "timeout_s": 5})
        cfg["policies"][0]["fallback"] = ["lite", "chatter"]
        cfg["policies"][0]["routes"][0]["expert"] = "lite"
        async with gateway_client(cfg, tmp_path) as (c, _):
            r = await c.post("/v1/chat/completions", json=chat("lite", "x"))
            assert r.status_code == 502, r.text
            assert r.json()["error"]["code"] == "upstream_protocol_error"
            r = await c.post("/v1/chat/completions", json=chat("auto", "fix this bug in my code"))
            assert r.status_code == 200 and r.headers["x-expertgate-expert"] == "chatter"
            assert "lite:protocol" in r.headers["x-expertgate-reason"]
    finally:
        await lite.stop()
