"""``expertgate keys revoke`` of a key the gateways' configuration lists: it answered "no such
key" (Redis holds none), which an operator read as "already revoked", and the key went on
working. With the configuration (``--config`` or EXPERTGATE_CONFIG) it says the key stays
valid until it is removed from the file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from expertgate.cli import main as cli
from gateway.auth import KEY_PREFIX, hash_key
from tests.integration.conftest import RedisServer

pytestmark = pytest.mark.integration


def test_revoking_a_key_the_config_lists_says_it_stays_valid(
        redis_clean: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(yaml.safe_dump({
        "experts": [{"name": "coder", "api_base": "http://127.0.0.1:9/v1"}],
        "api_keys": [{"name": "team-a", "sha256": hash_key("sk-in-config")}]}))
    rc = cli(["keys", "revoke", "--redis-url", redis_clean.url, "--config", str(cfg),
              "--key", "sk-in-config"])
    captured = capsys.readouterr()
    assert rc == 1
    assert "no such key" in captured.out
    assert f"this key is in {cfg} as api_keys[0](team-a)" in captured.err
    assert "stays valid" in captured.err and "sk-in-config" not in captured.err

    # a Redis key the config does not list: revoked, exit 0, nothing more said
    r = redis_clean.client()
    r.hset(KEY_PREFIX + hash_key("sk-in-redis"), mapping={"name": "team-b"})
    r.close()
    monkeypatch.setenv("EXPERTGATE_CONFIG", str(cfg))
    rc = cli(["keys", "revoke", "--redis-url", redis_clean.url, "--key", "sk-in-redis"])
    captured = capsys.readouterr()
    assert rc == 0 and "revoked" in captured.out and captured.err == ""


def test_revoke_takes_an_upper_case_digest(redis_clean: RedisServer,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    digest = hash_key("sk-upper")
    r = redis_clean.client()
    r.hset(KEY_PREFIX + digest, mapping={"name": "team-c"})
    r.close()
    rc = cli(["keys", "revoke", "--redis-url", redis_clean.url, "--sha256",
              digest.upper() + "\n"])
    assert rc == 0 and f"revoked: {KEY_PREFIX}{digest}" in capsys.readouterr().out


def test_re_adding_an_admin_key_without_admin_says_it_is_a_tenant_key_now(
        redis_clean: RedisServer, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["keys", "add", "--redis-url", redis_clean.url, "--name", "ops",
            "--key", "sk-ops-admin"]
    assert cli([*base, "--admin"]) == 0
    assert "note:" not in capsys.readouterr().err
    # re-added to set a limit, --admin forgotten: the key was demoted without a word
    assert cli([*base, "--requests-per-minute", "100"]) == 0
    err = capsys.readouterr().err
    assert "was an admin key and is a tenant key now" in err and "--admin" in err
    assert cli([*base, "--admin"]) == 0
    assert "note:" not in capsys.readouterr().err
