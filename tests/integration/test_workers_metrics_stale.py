"""``expertgate serve --workers 2`` killed with SIGKILL leaves its metrics directory under
``$TMPDIR`` (its ``finally`` never runs); the next start removes it. Against real servers
on 127.0.0.1: two starts, a few requests."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import httpx
import pytest
import yaml

from expertgate.bench.upstream_double import ThreadedDouble
from expertgate.cli.serve import METRICS_DIR_PREFIX
from expertgate.procs import GatewayServer
from tests.unit.gateway_helpers import base_config, chat

pytestmark = pytest.mark.integration


def _server(tmp_path: Path, cfg: Path, tmp: Path, n: int) -> GatewayServer:
    return GatewayServer(cfg, log_path=tmp_path / f"gw{n}.log",
                         routing_log=tmp_path / f"log{n}.jsonl", check_upstreams=False,
                         env={"EXPERTGATE_WORKERS": "2", "TMPDIR": str(tmp)})


def test_a_killed_supervisors_metrics_dir_is_removed_at_the_next_start(tmp_path: Path
                                                                         ) -> None:
    coder, chatter = ThreadedDouble("coder"), ThreadedDouble("chatter")
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(yaml.safe_dump(base_config(coder.base, chatter.base)))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    first = _server(tmp_path, cfg, tmp, 1)
    first.start()
    try:
        assert first.pid is not None
        [left] = list(tmp.iterdir())
        assert left.name.startswith(f"{METRICS_DIR_PREFIX}{first.pid}-")
        with httpx.Client(base_url=first.url, timeout=30) as c:
            r = c.post("/v1/chat/completions", json=chat("auto", "tell me a joke"))
            assert r.status_code == 200
        first.send_signal(signal.SIGKILL)  # the supervisor only: its finally never runs
        first.wait(30)
    finally:
        # its workers, orphaned, are still in the process group this test started
        with contextlib.suppress(ProcessLookupError):
            if first.proc is not None:
                os.killpg(first.proc.pid, signal.SIGKILL)
        first.stop()
    assert left.is_dir() and any(left.iterdir())  # what SIGKILL leaves behind

    second = _server(tmp_path, cfg, tmp, 2)
    second.start()
    try:
        assert not left.exists()
        [mine] = list(tmp.iterdir())
        assert mine.name.startswith(f"{METRICS_DIR_PREFIX}{second.pid}-")
    finally:
        second.stop()
    assert list(tmp.iterdir()) == []
