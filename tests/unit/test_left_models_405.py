"""A method a GET endpoint does not take (OPTIONS or POST /v1/models) is a 405 whose Allow
header and message name GET and HEAD: it said ``/v1/models takes HEAD`` (Starlette named
the first of the path's two routes, the HEAD one), so a client learned to send HEAD."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.gateway_helpers import base_config, gateway_client


@pytest.mark.parametrize("path", ["/v1/models", "/models", "/openai/models",
                                  "/v1/models/coder", "/healthz", "/readyz", "/metrics"])
@pytest.mark.parametrize("method", ["OPTIONS", "POST", "DELETE"])
async def test_a_405_names_get_and_head(tmp_path: Path, path: str, method: str) -> None:
    cfg = base_config("http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1")
    async with gateway_client(cfg, tmp_path) as (c, _):
        r = await c.request(method, path)
        assert r.status_code == 405, r.text
        assert r.headers["allow"] == "GET, HEAD"
        err = r.json()["error"]
        assert err["code"] == "method_not_allowed"
        assert err["message"] == f"Invalid method ({method} {path}): {path} takes GET, HEAD"
        assert r.headers["x-request-id"]


async def test_a_post_endpoint_still_names_post(tmp_path: Path) -> None:
    cfg = base_config("http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1")
    async with gateway_client(cfg, tmp_path) as (c, _):
        r = await c.get("/v1/chat/completions")
        assert r.status_code == 405 and r.headers["allow"] == "POST"
