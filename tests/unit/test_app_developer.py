"""What an application developer meets when driving the gateway with the OpenAI SDKs and
plain HTTP: the ways clients send their key, and the answers to their mistakes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import openai

from gateway.auth import hash_key
from tests.unit.gateway_helpers import base_config, chat, gateway_client

TENANT, ADMIN = "sk-dev-tenant-123456", "sk-dev-admin-abcdef"


def _keys_cfg(ups: Any) -> dict[str, Any]:
    cfg = base_config(ups[0].base, ups[1].base)
    cfg["api_keys"] = [
        {"name": "team", "sha256": hash_key(TENANT), "policies": ["auto"]},
        {"name": "ops", "sha256": hash_key(ADMIN), "admin": True},
    ]
    return cfg


async def test_an_azure_style_api_key_header_is_accepted(ups, tmp_path: Path) -> None:
    async with gateway_client(_keys_cfg(ups), tmp_path) as (c, _):
        # the Azure OpenAI SDK sends its key as `api-key: <key>` (and an api-version query)
        transport = c._transport
        async with httpx.AsyncClient(transport=transport) as http:
            azure = openai.AsyncAzureOpenAI(base_url="http://gw/v1", api_key=TENANT,
                                            api_version="2024-10-21", http_client=http,
                                            max_retries=0)
            models = [m.id async for m in azure.models.list()]
            assert "auto" in models
            azure_bad = openai.AsyncAzureOpenAI(base_url="http://gw/v1", api_key="sk-wrong",
                                                api_version="2024-10-21", http_client=http,
                                                max_retries=0)
            try:
                await azure_bad.models.list()
            except openai.AuthenticationError as e:
                assert e.status_code == 401
            else:
                raise AssertionError("a wrong api-key was accepted")
        # the SDK puts chat under /deployments/{model}/: raw HTTP for the proxy endpoint
        r = await c.post("/v1/chat/completions", json=chat("auto", "tell me a joke"),
                         headers={"api-key": TENANT})
        assert r.status_code == 200, r.text
        r = await c.get("/admin/state", headers={"api-key": ADMIN})
        assert r.status_code == 200, r.text
        r = await c.get("/admin/state", headers={"api-key": TENANT})
        assert r.status_code == 403
        # a Bearer key still comes first, as with x-api-key
        r = await c.get("/admin/state", headers={"authorization": f"Bearer {TENANT}",
                                                 "api-key": ADMIN})
        assert r.status_code == 403
        # no key at all: the 401 names both ways to send one
        r = await c.post("/v1/chat/completions", json=chat("auto", "hi"))
        assert r.status_code == 401
        assert "api-key" in r.json()["error"]["message"]


async def test_an_upstream_error_passed_through_is_not_retried_by_the_sdk(ups, tmp_path: Path
                                                                           ) -> None:
    # llama.cpp answers a feature it lacks (a json_schema response format) with a 500; the
    # gateway passes it on as the request's own error, not retried, not failed over. The
    # OpenAI SDK retries any 5xx unless told not to: the same request would reach the
    # expert again and again
    coder = ups[0]
    coder.reject_if = lambda body: "response_format" in body
    async with gateway_client(base_config(coder.base, ups[1].base), tmp_path) as (c, _):
        async with httpx.AsyncClient(transport=c._transport) as http:
            sdk = openai.AsyncOpenAI(base_url="http://gw/v1", api_key="unused",
                                     http_client=http, max_retries=1)
            coder.received.clear()
            try:
                await sdk.chat.completions.create(
                    model="coder", messages=[{"role": "user", "content": "hi"}],
                    response_format={"type": "json_schema", "json_schema": {
                        "name": "x", "schema": {"type": "object"}}})
            except openai.InternalServerError as e:
                assert e.response.headers["x-should-retry"] == "false"
            else:
                raise AssertionError("the upstream's 500 was not passed on")
        asked = [b for b in coder.received if "response_format" in b]
        assert len(asked) == 1, asked
        # the gateway's own 5xx (every expert failed) stays retryable for the SDK
        coder.reject_if = None
        await coder.stop()
        r = await c.post("/v1/chat/completions", json=chat("coder", "hi"))
        assert r.status_code == 502 and "x-should-retry" not in r.headers


async def test_mistakes_in_openai_fields_are_400s_naming_the_field(ups, tmp_path: Path
                                                                    ) -> None:
    # what OpenAI (and vLLM) answer with a 400 reached the expert: llama.cpp answered a
    # string temperature with a 500 and its traceback, and ignored stream_options without
    # a stream, tool_choice without tools, top_logprobs without logprobs
    coder = ups[0]
    msgs = [{"role": "user", "content": "hi"}]
    bad = {
        "temperature": {"temperature": "hot"},
        "top_p": {"top_p": [1]},
        "seed": {"seed": 1.5},
        "stop": {"stop": ["\\n", 3]},
        "user": {"user": 42},
        "logprobs": {"logprobs": "yes"},
        "stream_options": {"stream_options": {"include_usage": True}},
        "tool_choice": {"tool_choice": "required"},
        "top_logprobs": {"top_logprobs": 2},
        "tools": {"tools": {"type": "function"}},
        "response_format": {"response_format": "json"},
    }
    async with gateway_client(base_config(coder.base, ups[1].base), tmp_path) as (c, _):
        async with httpx.AsyncClient(transport=c._transport) as http:
            sdk = openai.AsyncOpenAI(base_url="http://gw/v1", api_key="unused",
                                     http_client=http, max_retries=0)
            coder.received.clear()
            for param, extra in bad.items():
                try:
                    await sdk.chat.completions.create(model="coder", messages=msgs,
                                                      extra_body=extra)
                except openai.BadRequestError as e:
                    err = e.body
                    assert isinstance(err, dict), err
                    assert err["param"].split(".")[0] == param, (param, err)
                    assert err["type"] == "invalid_request_error"
                else:
                    raise AssertionError(f"{param}: {extra} was accepted")
            r = await c.post("/v1/completions", json={"model": "coder", "prompt": "x",
                                                      "logprobs": True})
            assert r.status_code == 400 and r.json()["error"]["param"] == "logprobs"
            r = await c.post("/v1/completions", json={"model": "coder", "prompt": "x",
                                                      "stream_options": {"include_usage": True}})
            assert r.status_code == 400 and r.json()["error"]["param"] == "stream_options"
            assert coder.received == []
            # what OpenAI accepts still passes, as the client wrote it
            ok = await sdk.chat.completions.create(
                model="coder", messages=msgs, temperature=1, top_p=0.5, seed=7, stop="\\n",
                user="u1", logprobs=True, top_logprobs=2, tool_choice="none",
                stream_options=None, parallel_tool_calls=False,
                response_format={"type": "json_object"})
            assert ok.choices
            s = await sdk.chat.completions.create(model="coder", messages=msgs, stream=True,
                                                  stream_options={"include_usage": True})
            assert [e async for e in s][-1].usage is not None
            r = await c.post("/v1/chat/completions", json=chat(
                "coder", "hi", tool_choice="auto", tools=[{"type": "function", "function": {
                    "name": "f", "parameters": {"type": "object"}}}], top_logprobs=0,
                stream_options={}))
            assert r.status_code == 200, r.text
            r = await c.post("/v1/completions", json={"model": "coder", "prompt": "x",
                                                      "logprobs": 2, "echo": False})
            assert r.status_code == 200, r.text
        assert len(coder.received) == 4
        assert coder.received[0]["seed"] == 7 and coder.received[0]["stop"] == "\\n"


async def test_a_path_the_gateway_does_not_serve_says_which_and_what_it_serves(
        ups, tmp_path: Path) -> None:
    async with gateway_client(base_config(ups[0].base, ups[1].base), tmp_path) as (c, _):
        async with httpx.AsyncClient(transport=c._transport) as http:
            sdk = openai.AsyncOpenAI(base_url="http://gw/v1", api_key="unused",
                                     http_client=http, max_retries=0)
            try:  # the Responses API: not served here
                await sdk.responses.create(model="auto", input="hi")
            except openai.NotFoundError as e:
                err = e.body
                assert isinstance(err, dict), err
                assert err["message"].startswith("Invalid URL (POST /v1/responses): ")
                assert "/v1/chat/completions" in err["message"]
                assert err["type"] == "invalid_request_error" and err["code"] == "not_found"
            else:
                raise AssertionError("/v1/responses answered")
        r = await c.get("/v1/chat/completions")
        assert r.status_code == 405 and r.headers["allow"] == "POST"
        assert r.json()["error"]["message"] == (
            "Invalid method (GET /v1/chat/completions): /v1/chat/completions takes POST")
        r = await c.get("/v1/" + "x" * 5000)
        assert r.status_code == 404 and len(r.json()["error"]["message"]) < 500
        # a handler's own 404 keeps its words
        r = await c.get("/v1/models/nope")
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
