"""``expertgate keys revoke`` printed ``revoked: eg:apikey:...`` and the key went on working:
a running gateway remembers a Redis key it has seen for ``KEY_CACHE_S`` (10 s), so an
operator who revoked a leaked key and tried it at once saw 200 and took the revocation for
broken. ``revoke`` (and ``add``, which replaces a record: limits, admin) says how long
running gateways take; a real gateway shows that the time said is the time it takes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from expertgate.cli import main as cli
from gateway.auth import KEY_CACHE_S
from tests.integration.conftest import RedisServer

pytestmark = pytest.mark.integration


def test_revoke_and_add_say_when_running_gateways_follow(
        redis_clean: RedisServer, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EXPERTGATE_CONFIG", raising=False)
    assert cli(["keys", "add", "--redis-url", redis_clean.url, "--name", "team-a",
                "--key", "sk-team-a"]) == 0
    assert "within" not in capsys.readouterr().out  # a new key: nobody holds an old record
    assert cli(["keys", "add", "--redis-url", redis_clean.url, "--name", "team-a",
                "--key", "sk-team-a", "--requests-per-minute", "5"]) == 0
    out = capsys.readouterr().out
    assert f"running gateways use the new record within {KEY_CACHE_S:g} s" in out, out
    assert cli(["keys", "revoke", "--redis-url", redis_clean.url, "--key", "sk-team-a"]) == 0
    out = capsys.readouterr().out
    assert "revoked: eg:apikey:" in out
    assert f"running gateways refuse it within {KEY_CACHE_S:g} s" in out, out
    # nothing to follow when nothing was revoked
    assert cli(["keys", "revoke", "--redis-url", redis_clean.url, "--key", "sk-team-a"]) == 1
    assert "within" not in capsys.readouterr().out


async def test_a_revoked_key_is_refused_within_the_time_said(
        ups, redis_clean: RedisServer, tmp_path: Path) -> None:
    from tests.unit.gateway_helpers import base_config, gateway_client

    cfg = base_config(ups[0].base, ups[1].base)
    cfg["require_auth"] = True
    assert cli(["keys", "add", "--redis-url", redis_clean.url, "--name", "team-a",
                "--key", "sk-team-a"]) == 0
    async with gateway_client(cfg, tmp_path, redis_url=redis_clean.url) as (client, _):
        headers = {"authorization": "Bearer sk-team-a"}
        assert (await client.get("/v1/models", headers=headers)).status_code == 200
        assert cli(["keys", "revoke", "--redis-url", redis_clean.url,
                    "--key", "sk-team-a"]) == 0
        revoked = time.monotonic()
        while (await client.get("/v1/models", headers=headers)).status_code == 200:
            assert time.monotonic() - revoked < KEY_CACHE_S + 1.0
            await asyncio.sleep(0.2)
        assert (await client.get("/v1/models", headers=headers)).status_code == 401
