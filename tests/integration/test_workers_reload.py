"""``expertgate serve --workers 2``: one POST /admin/reload reaches every worker (the worker
that got it checks and serves the file, then the supervisor replaces each worker by one
built from it), against a real server on 127.0.0.1; bounded: a few dozen requests."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
import yaml

from expertgate.bench.upstream_double import ThreadedDouble
from expertgate.procs import GatewayServer
from tests.unit.gateway_helpers import base_config, chat

pytestmark = pytest.mark.integration


def _experts(client: httpx.Client, n: int) -> set[str]:
    got = set()
    for _ in range(n):  # a new connection each: the kernel spreads them over the workers
        r = client.post("/v1/chat/completions", json=chat("auto", "tell me a joke"),
                        headers={"connection": "close"})
        assert r.status_code == 200
        got.add(r.headers["x-expertgate-expert"])
    return got


def test_one_reload_reaches_every_worker(tmp_path: Path) -> None:
    coder, chatter = ThreadedDouble("coder"), ThreadedDouble("chatter")
    cfg = base_config(coder.base, chatter.base)
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(cfg))
    gw = GatewayServer(path, log_path=tmp_path / "gw.log", routing_log=tmp_path / "log.jsonl",
                       check_upstreams=False, env={"EXPERTGATE_WORKERS": "2"})
    gw.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{gw.port}", timeout=30) as c:
            assert _experts(c, 12) == {"chatter"}
            for route in cfg["policies"][0]["routes"]:  # jokes now go to the coder
                route["expert"] = "coder"
            path.write_text(yaml.safe_dump(cfg))
            r = c.post("/admin/reload")
            assert r.status_code == 200 and r.json()["workers"]["count"] == 2
            end = time.monotonic() + 60
            while time.monotonic() < end:  # the supervisor replaces the workers in turn
                if _experts(c, 12) == {"coder"}:
                    break
                time.sleep(0.5)
            assert _experts(c, 24) == {"coder"}
    finally:
        gw.stop()
        coder.stop()
        chatter.stop()
