"""The Redis that docker-compose.yml starts keeps the API keys across a restart.

``expertgate keys add`` stores keys in Redis, and only there: they are data, not cache.
Compose ran Redis with ``--save "" --appendonly no`` and no volume, so any restart of its
container (a crash, a host reboot, ``docker compose up -d`` after an image update) came back
empty: every key added at run time was gone and each tenant got 401 ``invalid_api_key``,
with nothing in the gateway's log. This starts a real redis-server with the compose file's
own flags (its data directory a temporary folder, as the volume is in compose), adds a key,
kills it and starts it again on the same folder.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import yaml

from expertgate.cli import main as cli
from expertgate.procs import RedisServer
from gateway.auth import KEY_PREFIX, hash_key
from tests.integration.conftest import require_redis

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _redis_service() -> dict[str, object]:
    svc: dict[str, object] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())[
        "services"]["redis"]
    return svc


class ComposeRedis(RedisServer):
    """redis-server with the compose service's arguments, its working directory ``dir``
    (where the image keeps /data, the volume)."""

    def __init__(self, data_dir: Path, log_path: Path) -> None:
        super().__init__(log_path=log_path, binary=require_redis())
        self.data_dir = data_dir

    def command(self) -> list[str]:
        args = [str(a) for a in _redis_service()["command"]]  # type: ignore[union-attr]
        assert args[0] == "redis-server", args
        return [self.binary, *args[1:], "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.data_dir), "--loglevel", "warning"]


def test_the_compose_redis_keeps_api_keys_across_a_restart(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    volumes = [str(v) for v in _redis_service().get("volumes", [])]  # type: ignore[attr-defined]
    assert any(v.split(":")[1] == "/data" for v in volumes if ":" in v), (
        "the redis image keeps its files in /data: a volume must hold them")
    data = tmp_path / "data"
    data.mkdir()
    srv = ComposeRedis(data, tmp_path / "redis.log")
    srv.start()
    try:
        assert cli(["keys", "add", "--redis-url", srv.url, "--name", "team-a",
                    "--key", "sk-team-a", "--policies", "*"]) == 0
        srv.stop(signal.SIGKILL)  # a crash: no shutdown save
        srv.start()
        r = srv.client()
        try:
            assert r.hget(KEY_PREFIX + hash_key("sk-team-a"), "name") == b"team-a"
        finally:
            r.close()
    finally:
        srv.stop()
    capsys.readouterr()
