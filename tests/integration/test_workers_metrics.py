"""``expertgate serve --workers 2``: /metrics is the view across workers (prometheus_client's
multiprocess mode), whichever worker answers the scrape, and a counter never goes down when
a SIGHUP reload replaces the workers; the supervisor's metrics directory is removed at its
exit. Against a real server on 127.0.0.1; bounded: about a hundred requests."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import httpx
import pytest
import yaml

from expertgate.bench.upstream_double import ThreadedDouble
from expertgate.procs import GatewayServer
from tests.integration.test_workers_reload import _workers
from tests.unit.gateway_helpers import base_config, chat

pytestmark = pytest.mark.integration

_REQUESTS = re.compile(r'^expertgate_requests_total\{([^}]*)\} (\S+)$', re.M)


def _chat_answered(text: str) -> float:
    """Sum of ``expertgate_requests_total`` over the chat endpoint's series."""
    return sum(float(v) for labels, v in _REQUESTS.findall(text)
               if 'endpoint="chat"' in labels)


def _scrape(client: httpx.Client) -> str:
    # a new connection each: the kernel spreads them over the workers
    r = client.get("/metrics", headers={"connection": "close"})
    assert r.status_code == 200
    return r.text


def test_metrics_count_every_worker_and_survive_a_reload(tmp_path: Path) -> None:
    coder, chatter = ThreadedDouble("coder"), ThreadedDouble("chatter")
    cfg = base_config(coder.base, chatter.base)
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(cfg))
    tmp = tmp_path / "tmp"  # where the supervisor makes its metrics directory
    tmp.mkdir()
    gw = GatewayServer(path, log_path=tmp_path / "gw.log", routing_log=tmp_path / "log.jsonl",
                       check_upstreams=False,
                       env={"EXPERTGATE_WORKERS": "2", "TMPDIR": str(tmp)})
    gw.start()
    try:
        assert [p.stat().st_mode & 0o777 for p in tmp.iterdir()] == [0o700]
        with httpx.Client(base_url=f"http://127.0.0.1:{gw.port}", timeout=30) as c:
            for _ in range(60):
                r = c.post("/v1/chat/completions", json=chat("auto", "tell me a joke"),
                           headers={"connection": "close"})
                assert r.status_code == 200
            scrapes = [_scrape(c) for _ in range(10)]
            assert [_chat_answered(t) for t in scrapes] == [60.0] * 10
            # in-flight requests are summed over the live workers (a scrape is not one),
            # the other gauges are each worker's, with its pid
            assert re.search(r"^expertgate_inflight_requests 0\.0$", scrapes[0], re.M)
            assert len(set(re.findall(r'^expertgate_config_reloads_total\{[^}]*pid="(\d+)"',
                                      scrapes[0], re.M))) == 0
            assert len(set(re.findall(r'^expertgate_ratelimit_shared\{pid="(\d+)"\}',
                                      scrapes[0], re.M))) == 2

            assert gw.pid is not None
            before = _workers(gw.pid)
            assert len(before) == 2
            os.kill(gw.pid, signal.SIGHUP)
            seen = [60.0]
            end = time.monotonic() + 60
            while time.monotonic() < end:  # scrape all through the replacement
                seen.append(_chat_answered(_scrape(c)))
                now = _workers(gw.pid)
                if len(now) == 2 and not now & before:
                    break
                time.sleep(0.1)
            assert not _workers(gw.pid) & before
            for _ in range(10):
                r = c.post("/v1/chat/completions", json=chat("auto", "tell me a joke"),
                           headers={"connection": "close"})
                assert r.status_code == 200
            last = [_scrape(c) for _ in range(5)]
            seen += [_chat_answered(t) for t in last]
            # the retired workers' gauges left with them: the two new workers' only
            assert {int(p) for p in re.findall(r'^expertgate_ratelimit_shared\{pid="(\d+)"\}',
                                               last[-1], re.M)} == _workers(gw.pid)
            assert seen == sorted(seen), seen  # never down, across the restart
            assert seen[-5:] == [70.0] * 5
    finally:
        gw.stop()
    assert list(tmp.iterdir()) == []
