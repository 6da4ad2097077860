"""Routing-log records dropped while the sink is down say so in the process log.

While the sink fails (Redis down, a disk full) records wait in a bounded queue; once it is
full the oldest go, counted in ``expertgate_log_records_dropped_total``. Nothing else said
it: the operator saw "buffering up to N records" and later "sink is back", and could not
tell from the log that the routing log (the training data of learned routers) has a hole.
Now the first drop of an outage is one warning, and the recovery line says how many went.
The sink is the real JSONL sink, made unwritable by a directory at its path."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import cast

import pytest

from gateway.logs import JsonlSink, RoutingLog
from gateway.metrics import Metrics
from routers.logrecord import RequestRecord


def _rec(i: int) -> RequestRecord:
    return cast(RequestRecord, {"request_id": f"r{i}"})


async def _until(cond: object, what: str) -> None:
    for _ in range(200):
        if cond():  # type: ignore[operator]
            return
        await asyncio.sleep(0.01)
    raise AssertionError(what)


async def test_records_dropped_during_a_sink_outage_are_said_once_and_counted_at_recovery(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="expertgate.logs")
    path = tmp_path / "log.jsonl"
    m = Metrics()
    rlog = RoutingLog(JsonlSink(path, tmp_path / "fb.jsonl"), m, max_queue=3, linger_s=0.0)
    rlog.start()
    try:
        rlog.record(_rec(0))
        await _until(lambda: rlog.written == 1, "the first record is written")
        path.rename(tmp_path / "log.1.jsonl")
        path.mkdir()  # the sink cannot reopen its file: it is down
        rlog.record(_rec(1))
        await _until(lambda: not rlog.sink_ok, "the sink fails")
        for i in range(2, 9):
            rlog.record(_rec(i))  # 8 records for a queue of 3: 5 dropped
        assert rlog.dropped == 5
        drops = [r.getMessage() for r in caplog.records if "dropping" in r.getMessage()]
        assert len(drops) == 1, drops
        assert "expertgate_log_records_dropped_total" in drops[0], drops
        path.rmdir()  # the disk is back
        await _until(lambda: rlog.sink_ok and rlog.pending == 0, "the sink recovers")
        back = [r.getMessage() for r in caplog.records if "is back" in r.getMessage()]
        assert back and "5 record(s) dropped" in back[-1], back
        # a second outage warns again
        path.rename(tmp_path / "log.2.jsonl")
        path.mkdir()
        for i in range(9, 15):
            rlog.record(_rec(i))
        await _until(lambda: not rlog.sink_ok, "the sink fails again")
        for i in range(15, 20):
            rlog.record(_rec(i))
        assert len([r for r in caplog.records if "dropping" in r.getMessage()]) == 2
    finally:
        if path.is_dir():
            path.rmdir()
        await rlog.close(timeout_s=1.0)
