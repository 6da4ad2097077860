"""A gateway started with a Redis it cannot reach says so once: which Redis (its URL with the
password masked), the error, and what runs without it. It used to log only "request ids:
cannot share the secret through Redis yet (ConnectionError)", which named neither."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from expertgate.procs import free_port
from tests.unit.gateway_helpers import base_config, gateway_client


@pytest.mark.parametrize("userinfo", ["ops:s3cret-pw@", ":s3cret-pw@"])
async def test_an_unavailable_redis_at_start_is_named_once_with_what_runs_without_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, userinfo: str) -> None:
    port = free_port()  # nothing listens there
    url = f"redis://{userinfo}127.0.0.1:{port}/0"
    cfg = base_config("http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1")
    with caplog.at_level(logging.WARNING, logger="expertgate"):
        async with gateway_client(cfg, tmp_path, redis_url=url) as (c, _):
            assert (await c.get("/healthz")).status_code == 200
    lines = [r.getMessage() for r in caplog.records if "at start-up" in r.getMessage()]
    assert len(lines) == 1, lines
    line = lines[0]
    assert f"127.0.0.1:{port}" in line and "s3cret-pw" not in line
    assert "ConnectionError" in line and "refused" in line.lower()
    for part in ("decision cache skipped", "rate limits per process", "key_store_unavailable",
                 "routing log buffered", "canaries tested on this process's counts",
                 "request ids verified by this gateway only"):
        assert part in line
    assert not any("cannot share the secret" in r.getMessage() for r in caplog.records)
    assert not any("s3cret-pw" in r.getMessage() for r in caplog.records)
