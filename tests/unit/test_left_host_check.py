"""A keyless gateway on loopback answers only requests whose Host names this machine (or an
allowed host): a web page whose own name a DNS-rebinding attack resolved to 127.0.0.1 could
send chat requests through the gateway (spending its experts) and read /v1/models; only the
admin endpoints checked the Host."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.auth import hash_key
from tests.unit.gateway_helpers import base_config, chat, gateway_client


def _cfg(ups) -> dict:
    return base_config(ups[0].base, ups[1].base)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/models", "/healthz"])
async def test_a_rebound_host_is_refused(ups, tmp_path: Path, path: str) -> None:
    async with gateway_client(_cfg(ups), tmp_path, base_url="http://attacker.example:8080",
                              host_check=True) as (c, _):
        r = (await c.post(path, json=chat("auto", "hi")) if path.endswith("completions")
             else await c.get(path))
        assert r.status_code == 403, r.text
        err = r.json()["error"]
        assert err["code"] == "untrusted_host" and err["type"] == "permission_error"
        assert "'attacker.example:8080'" in err["message"]
        assert r.headers["x-request-id"]
        if path.endswith("completions"):
            assert r.headers["x-expertgate-expert"] == "none"
            assert r.headers["x-expertgate-reason"] == "untrusted host"


@pytest.mark.parametrize("host", ["127.0.0.1:8080", "localhost", "[::1]:8080",
                                  "app.localhost"])
async def test_loopback_names_are_served(ups, tmp_path: Path, host: str) -> None:
    async with gateway_client(_cfg(ups), tmp_path, base_url=f"http://{host}",
                              host_check=True) as (c, _):
        r = await c.post("/v1/chat/completions", json=chat("auto", "tell me a joke"))
        assert r.status_code == 200, r.text


async def test_an_allowed_host_is_served(ups, tmp_path: Path) -> None:
    async with gateway_client(_cfg(ups), tmp_path, base_url="http://gw.example.com",
                              host_check=True, allowed_hosts="other.example, GW.example.com"
                              ) as (c, _):
        assert (await c.get("/v1/models")).status_code == 200


async def test_keys_or_a_public_bind_or_the_setting_off_skip_the_check(
        ups, tmp_path: Path) -> None:
    cfg = _cfg(ups)
    async with gateway_client(cfg, tmp_path, base_url="http://attacker.example",
                              host_check=False) as (c, _):
        assert (await c.get("/v1/models")).status_code == 200
    async with gateway_client(cfg, tmp_path, base_url="http://attacker.example",
                              host_check=True, host="0.0.0.0") as (c, _):
        assert (await c.get("/v1/models")).status_code == 200
    cfg["api_keys"] = [{"name": "t", "sha256": hash_key("sk-t")}]
    async with gateway_client(cfg, tmp_path, base_url="http://attacker.example",
                              host_check=True) as (c, _):
        r = await c.get("/v1/models", headers={"authorization": "Bearer sk-t"})
        assert r.status_code == 200
