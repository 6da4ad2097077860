"""Answers the raw ASGI front gives itself, before FastAPI or the request path, carry the
request id every response promises (README: "Every response ... carries x-request-id")."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from tests.unit.gateway_helpers import base_config, gateway_client

_ID = re.compile(r"^[0-9a-f]{32,}$")


async def test_a_405_of_a_post_endpoint_carries_the_request_id_and_routing_headers(
        ups, tmp_path: Path) -> None:
    # GET /v1/chat/completions (a client with the wrong method) was answered with no
    # x-request-id and none of the x-expertgate-* set the endpoint's responses carry
    coder, chatter = ups
    async with gateway_client(base_config(coder.base, chatter.base), tmp_path) as (c, _):
        for method, path in (("GET", "/v1/chat/completions"), ("DELETE", "/v1/completions"),
                             ("GET", "/openai/deployments/auto/chat/completions")):
            r = await c.request(method, path, headers={"x-request-id": "mine-1"})
            assert r.status_code == 405 and r.headers["allow"] == "POST"
            assert r.json()["error"]["code"] == "method_not_allowed"
            assert _ID.match(r.headers["x-request-id"]), r.headers
            assert r.headers["x-client-request-id"] == "mine-1"
            assert r.headers["x-expertgate-policy"] == "none"
            assert r.headers["x-expertgate-expert"] == "none"
            assert r.headers["x-expertgate-cache"] == "none"
            assert r.headers["x-expertgate-decision-ms"] == "0.000"
        r = await c.get("/v1/feedback")  # its answers carry no routing headers
        assert r.status_code == 405 and _ID.match(r.headers["x-request-id"])
        assert not any(k.startswith("x-expertgate-") for k in r.headers)
    assert coder.received == [] and chatter.received == []


async def test_a_refused_admin_read_and_an_oversized_body_carry_the_request_id(
        ups, tmp_path: Path) -> None:
    coder, chatter = ups
    cfg = base_config(coder.base, chatter.base)
    cfg["api_keys"] = [{"name": "t", "sha256": hashlib.sha256(b"tenant-key").hexdigest()}]
    async with gateway_client(cfg, tmp_path, max_body_bytes=1000) as (c, _):
        tenant = {"authorization": "Bearer tenant-key"}
        ids = set()
        for r in (await c.get("/metrics", headers=tenant),  # admin only: 403
                  await c.get("/metrics"),  # no key: 401
                  await c.request("GET", "/v1/models", headers=tenant,
                                  content=b"x" * 2000)):  # a body over the limit: 413
            assert r.status_code in (401, 403, 413), r.text
            assert set(r.json()) == {"error"}
            assert _ID.match(r.headers["x-request-id"]), (r.status_code, r.headers)
            ids.add(r.headers["x-request-id"])
        assert len(ids) == 3
