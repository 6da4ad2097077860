"""A gateway whose Redis holds API keys (``expertgate keys add``) while its config asks for
none (no api_keys, require_auth false) serves every request without a key: `serve` says so
at start instead of leaving the operator to believe the keys protect it."""

from __future__ import annotations

import pytest

from expertgate.cli.serve import unchecked_keys
from gateway.auth import KEY_PREFIX
from gateway.config import Settings, parse_config
from tests.integration.conftest import RedisServer

pytestmark = pytest.mark.integration

CFG = {"embedder": {"kind": "hashing"},
       "experts": [{"name": "a", "api_base": "http://127.0.0.1:9/v1"}],
       "policies": [{"name": "auto", "routes": [
           {"name": "r1", "expert": "a", "examples": ["hello"]}]}]}


def test_keys_in_redis_that_the_gateway_never_checks_are_warned_about(
        redis_clean: RedisServer) -> None:
    s = Settings(redis_url=redis_clean.url)
    cfg = parse_config(CFG, "gw.yaml")
    assert unchecked_keys(cfg, s) == []  # no keys in Redis: nothing is left unchecked
    r = redis_clean.client()
    r.hset(KEY_PREFIX + "ab" * 32, mapping={"name": "t1", "policies": "*"})
    r.close()
    lines = unchecked_keys(cfg, s)
    assert len(lines) == 1
    assert "holds API keys (expertgate keys add), but they are not checked" in lines[0]
    assert "require_auth: true" in lines[0]
    # with require_auth the keys are checked: no warning
    assert unchecked_keys(parse_config({**CFG, "require_auth": True}, "gw.yaml"), s) == []


async def test_a_reload_that_stops_checking_the_redis_keys_warns(
        redis_clean: RedisServer, ups, tmp_path) -> None:
    """A running gateway whose tenants' keys live in Redis, reloaded to a file without
    require_auth (nor api_keys): every request was served without a key from then on, and
    the reload answered warnings: []."""
    import yaml

    from gateway.auth import hash_key
    from tests.unit.gateway_helpers import base_config, gateway_client

    r = redis_clean.client()
    r.hset(KEY_PREFIX + hash_key("sk-tenant-redis"), mapping={"name": "t1", "policies": "*"})
    r.close()
    cfg = base_config(ups[0].base, ups[1].base)
    cfg.update(require_auth=True,
               api_keys=[{"name": "ops", "sha256": hash_key("sk-ops-2"), "admin": True}])
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(cfg))
    admin = {"authorization": "Bearer sk-ops-2"}
    async with gateway_client(cfg, tmp_path, config=path, redis_url=redis_clean.url) as (c, gw):
        assert await gw.auth.refresh() == 1
        r1 = await c.post("/admin/reload", headers=admin)
        assert r1.status_code == 200 and r1.json()["warnings"] == []
        del cfg["require_auth"], cfg["api_keys"]
        path.write_text(yaml.safe_dump(cfg))
        r2 = await c.post("/admin/reload", headers=admin)
        assert r2.status_code == 200, r2.text
        (line,) = r2.json()["warnings"]
        assert "Redis holds 1 API key(s)" in line and "not checked" in line
