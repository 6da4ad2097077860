"""A client that goes away after sending its request, against a real ``expertgate serve`` on
127.0.0.1: the request is cancelled, its upstream call abandoned (the upstream stops
generating), and it is logged and counted as 499 ``client_disconnected``, not as a 200 that
ran to the end for nobody. Bounded: two requests, a few seconds."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from expertgate.bench.upstream_double import ThreadedDouble
from expertgate.procs import GatewayServer
from tests.integration.conftest import serve_coder

pytestmark = pytest.mark.integration


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[GatewayServer, ThreadedDouble]]:
    with serve_coder(tmp_path, event_delay_s=0.5) as both:
        yield both


def _send(gw: GatewayServer, stream: bool) -> socket.socket:
    body = orjson.dumps({"model": "coder", "stream": stream,
                         "messages": [{"role": "user", "content": "write a long story"}]})
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
              b"content-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
    return s


def _records(gw: GatewayServer, n: int, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if gw.routing_log.exists():
            lines = gw.routing_log.read_text().splitlines()
            if len(lines) >= n:
                return [orjson.loads(ln) for ln in lines]
        time.sleep(0.05)
    raise AssertionError(f"fewer than {n} routing-log records after {timeout_s} s")


def test_a_client_that_leaves_cancels_its_request(served: tuple[GatewayServer, ThreadedDouble]
                                                  ) -> None:
    gw, up = served
    # a stream: the first event arrives, then the client closes the connection
    s = _send(gw, stream=True)
    assert b" 200 " in s.recv(4096).split(b"\r\n", 1)[0]
    t_left = time.monotonic()
    s.close()
    (rec,) = _records(gw, 1)
    assert rec["http_status"] == 499 and rec["error_type"] == "client_disconnected"
    # logged when the client left, not when the 4-event stream (~1.5 s) would have ended
    assert rec["latency_ms"] < 1400
    end = time.monotonic() + 5
    while up.double.streams_abandoned < 1 and time.monotonic() < end:
        time.sleep(0.05)
    assert up.double.streams_abandoned == 1 and up.double.streams_finished == 0
    assert time.monotonic() - t_left < 5
    # not streamed: the upstream takes 2 s; the client leaves after 0.3 s
    up.double.delay_s = 2.0
    s = _send(gw, stream=False)
    time.sleep(0.3)
    s.close()
    recs = _records(gw, 2)
    assert recs[1]["http_status"] == 499 and recs[1]["latency_ms"] < 1500
    # both name the expert that was working on them (the second had no answer yet)
    assert rec["expert"] == recs[1]["expert"] == "coder"
    # the gateway's own log has no traceback for either (a client leaving is not an error)
    out = gw.log_path.read_text()
    assert "Traceback" not in out and "Exception in ASGI application" not in out
    # and the next client is served normally
    up.double.delay_s = 0.0
    s = _send(gw, stream=False)
    assert b" 200 " in s.recv(4096).split(b"\r\n", 1)[0]
    s.close()


def test_clients_that_break_the_framing_leave_no_traceback(
        served: tuple[GatewayServer, ThreadedDouble]) -> None:
    gw, _ = served
    body = orjson.dumps({"model": "coder", "messages": [{"role": "user", "content": "hi"}]})
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
            b"content-type: application/json\r\ncontent-length: %d\r\n\r\n")
    # gone in the middle of its body
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    s.sendall(head % (len(body) + 100) + body)
    time.sleep(0.2)
    s.close()
    (rec,) = _records(gw, 1)
    assert rec["http_status"] == 499 and rec["error_type"] == "client_disconnected"
    assert rec["expert"] is None  # never routed
    # a content-length shorter than the body: the rest is a second, malformed request
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    s.sendall(head % 10 + body)
    s.settimeout(5)
    got = b""
    try:
        while chunk := s.recv(65536):
            got += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    s.close()
    assert got.startswith(b"HTTP/1.1 400")
    _records(gw, 2)
    time.sleep(0.3)
    out = gw.log_path.read_text()
    assert "Traceback" not in out and "Exception in ASGI application" not in out, out[-3000:]


def test_a_stream_read_to_done_is_an_answer_not_a_disconnect(tmp_path: Path) -> None:
    # the OpenAI SDK closes the connection as soon as it reads data: [DONE]; an upstream
    # that ends its body a moment after [DONE] (or keeps it open) made the gateway wait for
    # that end before its own, so the SDK's close landed first: a stream the client read
    # whole was logged and counted 499 client_disconnected, with no tokens
    import httpx
    import openai

    with serve_coder(tmp_path, after_done_s=0.5) as (gw, _):
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{gw.port}/v1", api_key="unused",
                               max_retries=0)
        chunks = list(client.chat.completions.create(
            model="coder", messages=[{"role": "user", "content": "hi"}], stream=True,
            stream_options={"include_usage": True}))
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
        (rec,) = _records(gw, 1)
        assert rec["http_status"] == 200 and rec["error_type"] is None, rec
        assert (rec["prompt_tokens"], rec["completion_tokens"]) == (7, 5)
        # a client that reads the body to its end has it when [DONE] is out, not when the
        # upstream closes its own
        t0 = time.monotonic()
        with httpx.stream("POST", f"http://127.0.0.1:{gw.port}/v1/chat/completions", json={
                "model": "coder", "stream": True,
                "messages": [{"role": "user", "content": "hi"}]}) as r:
            body = r.read()
        assert time.monotonic() - t0 < 0.4
        assert body.rstrip().endswith(b"data: [DONE]") and b"error" not in body
        recs = _records(gw, 2)
        assert recs[1]["http_status"] == 200 and recs[1]["degraded"] is None, recs[1]
        metrics = httpx.get(f"http://127.0.0.1:{gw.port}/metrics").text
        assert 'status="499"' not in metrics
