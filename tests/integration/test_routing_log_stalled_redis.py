"""The routing log's Redis stream sink at shutdown when a real redis-server has stalled
(SIGSTOP, by the PID this session started): the close is bounded by its timeout and the
records still queued are counted in ``expertgate_log_records_dropped_total``, not lost
without a trace (tests/unit/test_routing_log_shutdown.py: an unwritable JSONL target)."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
import redis.asyncio as aioredis

from gateway.logs import LOG_STREAM, RedisStreamSink
from gateway.metrics import Metrics
from tests.integration.conftest import RedisServer
from tests.unit.test_routing_log_shutdown import _rec, started_log

pytestmark = pytest.mark.integration


async def test_a_stalled_redis_at_shutdown_costs_the_timeout_and_the_records_are_counted(
        redis_clean: RedisServer) -> None:
    client = aioredis.Redis.from_url(redis_clean.url, socket_timeout=10,
                                     socket_connect_timeout=10)
    m = Metrics()
    pid = redis_clean.pid
    assert pid is not None
    stopped = False
    try:
        rlog = await started_log(RedisStreamSink(client), m)
        os.kill(pid, signal.SIGSTOP)
        stopped = True
        for i in range(4):
            rlog.record(_rec(f"r{i}"))
        await asyncio.sleep(0.1)  # the writer's XADD is now waiting on the stalled server
        t0 = time.monotonic()
        await rlog.close(timeout_s=0.5)
        assert time.monotonic() - t0 < 2.0
        assert m.registry.get_sample_value("expertgate_log_records_dropped_total") == 4
        assert rlog.pending == 0
    finally:
        if stopped:
            os.kill(pid, signal.SIGCONT)
        await client.aclose()
    r = redis_clean.client()
    try:
        # what the cancelled write had sent may still land (at most the counted ones)
        assert 1 <= r.xlen(LOG_STREAM) <= 5
    finally:
        r.close()
