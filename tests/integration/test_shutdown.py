"""Stopping a real ``expertgate serve`` while requests are in flight, as an operator does
(``kill PID``, ``docker stop``, Ctrl-C): in-flight requests finish, new connections are
refused at once (not accepted and left hanging until a reset), the command exits 0. Against
real processes on 127.0.0.1 with an upstream double; bounded: a few requests, seconds."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from expertgate.bench.upstream_double import ThreadedDouble
from expertgate.procs import GatewayServer

pytestmark = pytest.mark.integration


def _refused(url: str) -> bool:
    """Whether a new request to the gateway is refused at connect time."""
    try:
        httpx.get(url + "/healthz", timeout=httpx.Timeout(5.0, connect=1.0))
    except httpx.ConnectError:
        return True
    except httpx.TransportError:
        return False  # accepted, then dropped or left hanging: not a clean refusal
    return False


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_drains_in_flight_refuses_new_connections_and_exits_0(
        tmp_path: Path, workers: int) -> None:
    up = ThreadedDouble("slow", delay_s=3.0)
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump({"experts": [{"name": "slow", "api_base": up.base,
                                                 "timeout_s": 30}]}))
    gw = GatewayServer(path, log_path=tmp_path / "gw.log", routing_log=tmp_path / "log.jsonl",
                       check_upstreams=False, env={"EXPERTGATE_WORKERS": str(workers)})
    gw.start()
    try:
        answer: list[httpx.Response] = []
        inflight = threading.Thread(target=lambda: answer.append(httpx.post(
            gw.url + "/v1/chat/completions", timeout=30, json={
                "model": "slow", "messages": [{"role": "user", "content": "hi"}]})))
        inflight.start()
        end = time.monotonic() + 10
        while not up.double.received and time.monotonic() < end:
            time.sleep(0.05)
        assert up.double.received, "the request did not reach the upstream"
        gw.send_signal(signal.SIGTERM)
        # within a second the listener is closed for good: a new client is refused, never
        # queued behind a listener nobody accepts on (it hung until the exit, then was reset)
        time.sleep(1.0)
        t0 = time.monotonic()
        assert _refused(gw.url), gw.log_tail()
        assert time.monotonic() - t0 < 2
        inflight.join(30)
        assert answer and answer[0].status_code == 200, answer
        assert gw.wait(40) == 0, gw.log_tail()
    finally:
        gw.stop()
        up.stop()
