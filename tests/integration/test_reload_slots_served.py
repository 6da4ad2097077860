"""A SIGHUP reload of a real ``expertgate serve`` keeps its experts' concurrency slots: the
calls in flight on the replaced pool count against the new pool's ``max_concurrency``, so the
upstream never sees more than the limit at once (it saw twice as many until the old pool
drained). The upstream is a counting server on 127.0.0.1 that holds every call until the
test lets them go. It keeps a replica's circuit breaker too: a dead replica (a port nothing
listens on) whose circuit opened gets no call after the reload. Bounded: a few requests and a
reload per test, a few seconds."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from expertgate.procs import GatewayServer, free_port

pytestmark = pytest.mark.integration


class HoldingUpstream:
    """An OpenAI-compatible chat server that holds each call until :attr:`go` is set (at
    most 20 s) and records the most calls it had in progress at once."""

    def __init__(self) -> None:
        self.go = threading.Event()
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0
        up = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                with up.lock:
                    up.now += 1
                    up.peak = max(up.peak, up.now)
                try:
                    up.go.wait(20)
                finally:
                    with up.lock:
                        up.now -= 1
                out = json.dumps({
                    "id": "x", "object": "chat.completion", "created": 0,
                    "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": "ok"}}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1,
                              "total_tokens": 2}}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def stop(self) -> None:
        self.go.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def upstream() -> Iterator[HoldingUpstream]:
    up = HoldingUpstream()
    yield up
    up.stop()


def _until(cond: Any, what: str, timeout_s: float = 10.0) -> None:
    end = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < end, f"not within {timeout_s}s: {what}"
        time.sleep(0.02)


def _reloads_ok(port: int) -> float:
    for line in httpx.get(f"http://127.0.0.1:{port}/metrics").text.splitlines():
        if line.startswith('expertgate_config_reloads_total{result="ok"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@contextlib.contextmanager
def _serving(tmp_path: Path, expert: dict[str, Any]) -> Iterator[tuple[GatewayServer, Path]]:
    """``expertgate serve`` of one expert on 127.0.0.1, and its config file (to rewrite
    before a SIGHUP); stopped at the end."""
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump({"experts": [expert]}))
    with GatewayServer(path, log_path=tmp_path / "gw.log", routing_log=tmp_path / "log.jsonl",
                       check_upstreams=False) as gw:
        yield gw, path


def _reload(gw: GatewayServer, path: Path, expert: dict[str, Any]) -> None:
    """SIGHUP with ``expert`` changed (its description): a new upstream pool serves."""
    path.write_text(yaml.safe_dump({"experts": [{**expert, "description": "reloaded"}]}))
    gw.send_signal(signal.SIGHUP)
    _until(lambda: _reloads_ok(gw.port) == 1, "the reload")


BODY = {"model": "coder", "messages": [{"role": "user", "content": "hi"}]}


def test_a_sighup_reload_keeps_the_experts_slots(tmp_path: Path,
                                                  upstream: HoldingUpstream) -> None:
    expert = {"name": "coder", "api_base": upstream.base, "max_concurrency": 2,
              "timeout_s": 30}
    with _serving(tmp_path, expert) as (gw, path):
        url = f"http://127.0.0.1:{gw.port}/v1/chat/completions"
        with ThreadPoolExecutor(4) as pool:
            def send() -> Future[httpx.Response]:
                return pool.submit(httpx.post, url, json=BODY, timeout=30)

            try:
                first = [send() for _ in range(2)]
                _until(lambda: upstream.now == 2, "two calls at the upstream")
                _reload(gw, path, expert)
                later = [send() for _ in range(2)]
                time.sleep(0.5)  # time for them to reach the upstream, were slots free
                assert upstream.now == 2
            finally:
                upstream.go.set()
            codes = [f.result(30).status_code for f in (*first, *later)]
        assert codes == [200] * 4
        assert upstream.peak == 2  # 4 before: the reloaded pool had slots of its own


def test_a_sighup_reload_keeps_a_dead_replicas_open_circuit(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"  # refuses connections
    expert = {"name": "coder", "api_base": dead, "timeout_s": 5}
    with _serving(tmp_path, expert) as (gw, path):
        url = f"http://127.0.0.1:{gw.port}/v1/chat/completions"

        def code() -> str:
            r = httpx.post(url, json=BODY, timeout=30)
            assert r.status_code == 502
            return str(r.json()["error"]["code"])

        codes = [code() for _ in range(2)]  # two tries each: the third failure opens it
        assert codes[0] != "circuit_open"
        _reload(gw, path, expert)
        assert code() == "circuit_open"  # not tried again: a fresh breaker would have
