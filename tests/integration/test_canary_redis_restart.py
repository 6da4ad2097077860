"""A canary's shared counts when the redis-server that holds them restarts without
persistence (``--save ""``, as the test set-up runs it): the first process to exchange after
the restart puts back the totals it last read, so the anytime-valid test goes on with its
evidence instead of starting over (which delayed the revert of a bad candidate by
``min_samples`` requests per restart, and made every restart a fresh chance of a false
revert: the alpha bound holds for one sequence, not for one per restart). The other processes
only add what they counted: nothing is counted twice (gateway/canary_sync.py)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import RedisServer
from tests.integration.test_canary_shared import _ask, _config, _two

pytestmark = pytest.mark.integration


def _requests(gw: Any) -> int:
    arms = gw.policy_set.policies["auto"].candidate.state()["arms"]
    return int(arms["incumbent"]["requests"] + arms["canary"]["requests"])


async def _exchange_until_shared(gw: Any) -> None:
    for _ in range(20):  # the first try after the restart may meet a dead pooled connection
        await gw._canary_exchange()
        if gw.policy_set.policies["auto"].candidate.state()["counts"] == "shared":
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the canary never read the shared counts again")


async def test_a_redis_restart_keeps_the_canary_counts_and_counts_nothing_twice(
        redis_clean: RedisServer, ups, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = _config(ups[0].base, ups[1].base, tmp_path, min_samples=10_000)
    a, b = _two(cfg, tmp_path, redis_clean.url, canary_sync_s=60,  # exchanges by hand
                redis_retry_s=0.05)
    async with a as (c1, gw1), b as (c2, gw2):
        for c, n in ((c1, 12), (c2, 8)):
            for _ in range(n):
                await _ask(c)
        for gw in (gw1, gw2, gw1):
            await gw._canary_exchange()
        assert _requests(gw1) == _requests(gw2) == 20

        redis_clean.stop()  # our own instance only, by its PID
        redis_clean.start()  # same port, empty: the counts and the request map are gone
        r = redis_clean.client()
        try:
            assert not r.keys("eg:{canary}:*")
        finally:
            r.close()
        caplog.set_level(logging.INFO, logger="expertgate.canary")
        for c, n in ((c1, 3), (c2, 2)):
            for _ in range(n):
                await _ask(c)
        await _exchange_until_shared(gw1)
        await _exchange_until_shared(gw2)
        await gw1._canary_exchange()
        # the 20 from before the restart, and the 5 since, each once
        assert _requests(gw1) == _requests(gw2) == 25
        restored = [x.getMessage() for x in caplog.records if "restored" in x.getMessage()]
        assert len(restored) == 1, restored  # one process put them back
