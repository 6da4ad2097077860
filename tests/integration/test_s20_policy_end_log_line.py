"""A gateway that meets a candidate's end recorded in Redis logged that it was ended "by
`expertgate policy promote` on another gateway", also on the one gateway there is (the
command runs on no gateway: it writes the file and records the end). The line says who ended
it and where that was recorded, nothing more."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from expertgate.cli import main
from tests.integration.conftest import RedisServer
from tests.unit.gateway_helpers import base_config, gateway_client
from tests.unit.test_shadow_canary import _always_coder

pytestmark = pytest.mark.integration


async def test_the_end_line_names_the_command_and_redis_only(
        redis_clean: RedisServer, ups, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture[str]) -> None:
    art = _always_coder(tmp_path / "cand")
    cfg = base_config(ups[0].base, ups[1].base, candidate={
        "router": "knn", "artifact": str(art), "mode": "canary", "share": 0.5})
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(cfg))
    async with gateway_client(cfg, tmp_path / "a", config=path, redis_url=redis_clean.url,
                              canary_sync_s=60) as (_, gw):
        assert main(["policy", "promote", "auto", "--config", str(path),
                     "--redis-url", redis_clean.url]) == 0
        capsys.readouterr()
        with caplog.at_level(logging.WARNING, logger="expertgate"):
            await gw._canary_exchange()
        assert gw.policy_set.policies["auto"].candidate is None
    lines = [r.getMessage() for r in caplog.records if "candidate was" in r.getMessage()]
    assert lines == ["policy auto: its canary candidate was promoted by `expertgate policy "
                     "promote` (recorded in Redis); it stops here, and the configuration file "
                     "is read again"], lines
