"""``expertgate keys add`` against a real redis-server: the policies and experts a key names
are checked against the gateway's configuration before anything is stored."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from expertgate.cli import main as cli
from gateway.auth import KEY_PREFIX, hash_key
from tests.integration.conftest import RedisServer

pytestmark = pytest.mark.integration


def _config(tmp_path: Path) -> Path:
    p = tmp_path / "gw.yaml"
    p.write_text(yaml.safe_dump({
        "embedder": {"kind": "hashing"},
        "experts": [{"name": "coder", "api_base": "http://127.0.0.1:9/v1"},
                    {"name": "chatter", "api_base": "http://127.0.0.1:9/v1"}],
        "policies": [{"name": "auto", "routes": [
            {"name": "r", "expert": "coder", "examples": ["write python code"]}]}],
    }))
    return p


def _stored(redis_server: RedisServer, key: str) -> bool:
    r = redis_server.client()
    try:
        return bool(r.exists(KEY_PREFIX + hash_key(key)))
    finally:
        r.close()


@pytest.mark.parametrize("option, value, why", [
    ("--policies", "auto,autp", "no policy named 'autp'"),
    ("--experts", "coder,gpt-4o", "no expert named 'gpt-4o'"),
])
def test_keys_add_refuses_a_policy_or_expert_the_config_does_not_have(
        redis_clean: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        option: str, value: str, why: str) -> None:
    # it stored the key, and every request with it was a 404 model_not_found, nothing said
    cfg = _config(tmp_path)
    rc = cli(["keys", "add", "--redis-url", redis_clean.url, "--config", str(cfg),
              "--name", "team-a", "--key", "sk-team-a", option, value])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert option in err and why in err and str(cfg) in err, err
    assert not _stored(redis_clean, "sk-team-a")


def test_keys_add_checks_against_expertgate_config_and_stores_what_it_has(
        redis_clean: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("EXPERTGATE_CONFIG", str(_config(tmp_path)))  # as serve reads it
    assert cli(["keys", "add", "--redis-url", redis_clean.url, "--name", "team-a",
                "--key", "sk-team-a", "--policies", "nope"]) == 2
    assert not _stored(redis_clean, "sk-team-a")
    assert cli(["keys", "add", "--redis-url", redis_clean.url, "--name", "team-a",
                "--key", "sk-team-a", "--policies", "auto", "--experts", "chatter"]) == 0
    assert _stored(redis_clean, "sk-team-a")
    capsys.readouterr()


def test_keys_add_without_a_config_says_names_are_unchecked(
        redis_clean: RedisServer, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("EXPERTGATE_CONFIG", raising=False)
    assert cli(["keys", "add", "--redis-url", redis_clean.url, "--name", "team-a",
                "--key", "sk-team-a", "--policies", "auto"]) == 0
    assert _stored(redis_clean, "sk-team-a")
    assert "not checked" in capsys.readouterr().err


def test_keys_add_does_not_hand_another_tenants_key_over_silently(
        redis_clean: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # `keys add` deleted and rewrote the record of any key: the same key given for another
    # tenant (a pasted key, a reused --key) moved team-a's key, its limits and its policies
    # to team-b, and team-a's requests were logged and limited as team-b's
    cfg = str(_config(tmp_path))
    base = ["keys", "add", "--redis-url", redis_clean.url, "--config", cfg, "--key", "sk-1"]
    assert cli([*base, "--name", "team-a", "--requests-per-minute", "10"]) == 0
    capsys.readouterr()
    assert cli([*base, "--name", "team-b"]) == 2
    err = capsys.readouterr().err
    assert "team-a" in err and "--replace" in err, err
    r = redis_clean.client()
    try:
        rec = r.hgetall(KEY_PREFIX + hash_key("sk-1"))
        assert rec[b"name"] == b"team-a" and rec[b"requests_per_minute"] == b"10", rec
        # the same tenant's record is updated in place of the old one (new limits), and says so
        assert cli([*base, "--name", "team-a", "--requests-per-minute", "20"]) == 0
        assert "replaced" in capsys.readouterr().out
        assert r.hget(KEY_PREFIX + hash_key("sk-1"), "requests_per_minute") == b"20"
        assert cli([*base, "--name", "team-b", "--replace"]) == 0
        assert r.hget(KEY_PREFIX + hash_key("sk-1"), "name") == b"team-b"
    finally:
        r.close()
