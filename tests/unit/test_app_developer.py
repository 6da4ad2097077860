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
