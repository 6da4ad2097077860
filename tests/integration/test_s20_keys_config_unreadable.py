"""``expertgate keys add|revoke --config FILE`` when FILE does not load: ``add`` stores nothing
and exits 2 with the file's problem; ``revoke`` still revokes (the key's record is Redis's)
and says the file could not be read, so it could not say whether the file lists the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from expertgate.cli import main as cli
from gateway.auth import KEY_PREFIX, hash_key
from tests.integration.conftest import RedisServer

pytestmark = pytest.mark.integration


def _broken(tmp_path: Path) -> Path:
    p = tmp_path / "gw.yaml"
    p.write_text("experts: [\n")  # not valid YAML
    return p


def test_keys_add_with_a_config_that_does_not_load_stores_nothing(
        redis_clean: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _broken(tmp_path)
    rc = cli(["keys", "add", "--redis-url", redis_clean.url, "--config", str(cfg),
              "--name", "team-a", "--key", "sk-team-a"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert f"expertgate keys add: --config: {cfg}: not valid YAML" in err, err
    r = redis_clean.client()
    try:
        assert not r.exists(KEY_PREFIX + hash_key("sk-team-a"))
    finally:
        r.close()


def test_keys_revoke_with_a_config_that_does_not_load_still_revokes(
        redis_clean: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    digest = hash_key("sk-team-b")
    r = redis_clean.client()
    r.hset(KEY_PREFIX + digest, mapping={"name": "team-b"})
    cfg = _broken(tmp_path)
    try:
        rc = cli(["keys", "revoke", "--redis-url", redis_clean.url, "--config", str(cfg),
                  "--key", "sk-team-b"])
        out, err = capsys.readouterr()
        assert rc == 0, err
        assert f"revoked: {KEY_PREFIX}{digest}" in out
        assert f"expertgate keys revoke: --config: {cfg}: not valid YAML" in err, err
        assert not r.exists(KEY_PREFIX + digest)
    finally:
        r.close()
