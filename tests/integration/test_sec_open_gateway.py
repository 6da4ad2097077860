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
