"""``serve --workers 2``: every SIGHUP reload is counted in
``expertgate_config_reloads_total`` (docs/architecture.md says so). The supervisor replaced
its workers on SIGHUP but counted nothing (ok or failed), and new workers start at zero, so
/metrics read 0 after any number of SIGHUP reloads; a POST /admin/reload (the worker reloads
in place, then SIGHUPs the supervisor) is counted once, not twice. Bounded: three reloads."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest
import yaml

from expertgate.bench.upstream_double import ThreadedDouble
from expertgate.procs import GatewayServer
from tests.integration.test_workers_reload import _workers
from tests.unit.gateway_helpers import base_config

pytestmark = pytest.mark.integration


def _reloads(c: httpx.Client) -> dict[str, float]:
    out = {}
    for line in c.get("/metrics").text.splitlines():
        if line.startswith("expertgate_config_reloads_total{"):
            result = line.split('result="', 1)[1].split('"', 1)[0]
            out[result] = float(line.rsplit(" ", 1)[1])
    return out


def _wait(what: str, ok: object, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not ok():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.3)


def test_every_sighup_reload_is_counted_once(tmp_path: Path) -> None:
    coder, chatter = ThreadedDouble("coder"), ThreadedDouble("chatter")
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(base_config(coder.base, chatter.base)))
    gw = GatewayServer(path, log_path=tmp_path / "gw.log", routing_log=tmp_path / "log.jsonl",
                       check_upstreams=False, env={"EXPERTGATE_WORKERS": "2"})
    gw.start()
    try:
        assert gw.pid is not None
        with httpx.Client(base_url=gw.url, timeout=30) as c:
            assert _reloads(c) == {"ok": 0, "failed": 0}
            before = _workers(gw.pid)
            os.kill(gw.pid, signal.SIGHUP)
            _wait("the workers were not replaced",
                  lambda: len(_workers(gw.pid)) == 2 and not _workers(gw.pid) & before)
            _wait("the SIGHUP reload was not counted", lambda: _reloads(c)["ok"] == 1, 10)

            good = path.read_text()
            path.write_text("experts: [\n")  # does not load: the running workers are kept
            os.kill(gw.pid, signal.SIGHUP)
            _wait("the failed SIGHUP reload was not counted",
                  lambda: _reloads(c) == {"ok": 1, "failed": 1}, 20)

            path.write_text(good)
            before = _workers(gw.pid)
            assert c.post("/admin/reload").status_code == 200
            _wait("the workers were not replaced",
                  lambda: len(_workers(gw.pid)) == 2 and not _workers(gw.pid) & before)
            time.sleep(1.0)  # a second count would land by now
            assert _reloads(c) == {"ok": 2, "failed": 1}
    finally:
        gw.stop()
        coder.stop()
        chatter.stop()
