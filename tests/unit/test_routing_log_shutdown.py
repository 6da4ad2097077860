"""Routing-log records still queued when the gateway shuts down: the writer keeps trying
within the drain timeout (so a short sink outage loses nothing), and what it could not write
is counted in ``expertgate_log_records_dropped_total`` and said in one line. The sink is the
real JSONL sink; its target is made unwritable by putting a directory where the file was
(root can write through any file mode, not into a directory). A slow Redis is in
tests/integration/test_routing_log_stalled_redis.py."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, cast

import orjson
import pytest

from gateway.logs import JsonlSink, RoutingLog
from gateway.metrics import Metrics
from routers.logrecord import RequestRecord


def _rec(request_id: str) -> RequestRecord:
    """A record carrying only its id (the log takes any JSON object)."""
    return cast(RequestRecord, {"request_id": request_id})


def _dropped(m: Metrics) -> float:
    v = m.registry.get_sample_value("expertgate_log_records_dropped_total")
    return 0.0 if v is None else v


def _block(path: Path) -> Path:
    """Move the log away and put a directory at its path: the sink's next batch cannot
    open a file there. Returns the moved file."""
    moved = path.with_name(path.name + ".1")
    path.rename(moved)
    path.mkdir()
    return moved


async def started_log(sink: Any, m: Metrics) -> RoutingLog:
    """A started routing log on ``sink`` whose first record is written (the sink works)."""
    rlog = RoutingLog(sink, m, linger_s=0.0)
    rlog.start()
    rlog.record(_rec("first"))
    for _ in range(100):
        if rlog.written:
            break
        await asyncio.sleep(0.01)
    assert rlog.written == 1
    return rlog


async def _logged(tmp_path: Path, n: int) -> tuple[RoutingLog, Metrics, Path]:
    m = Metrics()
    path = tmp_path / "log.jsonl"
    rlog = await started_log(JsonlSink(path, tmp_path / "fb.jsonl"), m)
    _block(path)
    for i in range(n):
        rlog.record(_rec(f"r{i}"))
    await asyncio.sleep(0.05)  # the writer tried and failed: they stay queued
    assert rlog.pending == n and not rlog.sink_ok
    return rlog, m, path


async def test_records_the_sink_cannot_take_by_shutdown_are_counted_and_said(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rlog, m, _ = await _logged(tmp_path, 7)
    t0 = time.monotonic()
    await rlog.close(timeout_s=0.5)
    assert time.monotonic() - t0 < 2.0  # bounded
    assert rlog.pending == 0
    assert _dropped(m) == 7 and rlog.dropped == 7
    lost = [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and "lost at shutdown" in r.getMessage()]
    assert len(lost) == 1 and lost[0].startswith("routing log: 7 record(s) lost at shutdown")
    # and what arrives after the writer stopped is no silent loss either
    rlog.record(_rec("late"))
    assert _dropped(m) == 8


async def test_a_sink_that_comes_back_within_the_drain_timeout_loses_nothing(
        tmp_path: Path) -> None:
    rlog, m, path = await _logged(tmp_path, 5)

    async def unblock() -> None:
        await asyncio.sleep(0.8)  # past the writer's first retry after the close
        path.rmdir()  # the writer opens a new file there at its next try

    fix = asyncio.ensure_future(unblock())
    await rlog.close(timeout_s=3.0)
    await fix
    assert _dropped(m) == 0 and rlog.written == 6
    ids = [orjson.loads(x)["request_id"] for x in path.read_bytes().splitlines()]
    assert ids == [f"r{i}" for i in range(5)]
