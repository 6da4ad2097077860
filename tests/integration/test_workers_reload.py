"""``expertgate serve --workers 2``: one POST /admin/reload reaches every worker (the worker
that got it checks and serves the file, then the supervisor replaces each worker by one
built from it), against a real server on 127.0.0.1; bounded: a few dozen requests."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
import yaml

from expertgate.bench.proc import process_tree
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


def _workers(supervisor: int) -> set[int]:
    """The supervisor's worker processes (multiprocessing's spawned children, not its
    resource tracker), found by parent pid (:func:`expertgate.bench.proc.process_tree`):
    ``/proc/PID/task/TID/children`` is documented as unreliable while the tasks run, and
    once listed none of two live workers under load."""
    out = set()
    for pid in process_tree(supervisor):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile
        if pid != supervisor and b"spawn_main" in cmd:
            out.add(pid)
    return out


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
            assert gw.pid is not None
            before = _workers(gw.pid)
            assert len(before) == 2
            for route in cfg["policies"][0]["routes"]:  # jokes now go to the coder
                route["expert"] = "coder"
            path.write_text(yaml.safe_dump(cfg))
            r = c.post("/admin/reload")
            assert r.status_code == 200 and r.json()["workers"]["count"] == 2
            # the supervisor replaces the workers in turn: wait until both are new (a
            # sample of answers could all come from the first one replaced)
            end = time.monotonic() + 60
            while time.monotonic() < end:
                now = _workers(gw.pid)
                if len(now) == 2 and not now & before:
                    break
                time.sleep(0.2)
            assert not _workers(gw.pid) & before
            while time.monotonic() < end:  # and the second is serving
                if _experts(c, 12) == {"coder"}:
                    break
                time.sleep(0.5)
            assert _experts(c, 24) == {"coder"}
    finally:
        gw.stop()
        coder.stop()
        chatter.stop()
