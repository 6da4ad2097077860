"""Slow and idle clients against a real ``expertgate serve`` on 127.0.0.1 (bounded: short
timeouts set through the environment, a few dozen sockets).

A connection that sends nothing, or trickles its headers or its body, is answered with an
OpenAI-shaped 408 and closed; connections over the cap get a 503 at once; a bad
content-length is an OpenAI-shaped 400; and SIGTERM with a body still arriving ends promptly,
that client getting an OpenAI-shaped 503, not a plain-text 500 thirty seconds later.
"""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import yaml

from expertgate.procs import GatewayServer

pytestmark = pytest.mark.integration

HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.0
MAX_CONNECTIONS = 24


def _config(tmp: Path) -> Path:
    p = tmp / "gw.yaml"
    # the upstream never needs to answer: these clients never finish a request
    p.write_text(yaml.safe_dump({"experts": [
        {"name": "smollm2", "api_base": "http://127.0.0.1:9/v1"}]}))
    return p


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[GatewayServer]:
    gw = GatewayServer(_config(tmp_path), log_path=tmp_path / "gw.log",
                       routing_log=tmp_path / "log.jsonl", check_upstreams=False,
                       env={"EXPERTGATE_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
                            "EXPERTGATE_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
                            "EXPERTGATE_MAX_CONNECTIONS": str(MAX_CONNECTIONS)})
    gw.start()
    yield gw
    gw.stop()


def _connect(gw: GatewayServer) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    return s


def _read_response(s: socket.socket, limit_s: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Read until the server closes; (status, headers, body)."""
    s.settimeout(limit_s)
    data = b""
    while True:
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        data += chunk
        if b"\r\n\r\n" in data:
            head, _, body = data.partition(b"\r\n\r\n")
            n = [ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length:")]
            if n and len(body) >= int(n[0].split(b":")[1]):
                break
            if body.endswith(b"0\r\n\r\n"):  # the last chunk of a chunked body
                break
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines and lines[0] else 0
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return status, headers, body


def _dechunk(body: bytes) -> bytes:
    out = b""
    while body:
        size, _, rest = body.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            break
        out, body = out + rest[:n], rest[n + 2:]
    return out


def _error(body: bytes, code: str) -> None:
    obj = orjson.loads(body if body.startswith(b"{") else _dechunk(body))
    assert set(obj["error"]) == {"message", "type", "param", "code"}
    assert obj["error"]["code"] == code, obj


def test_an_answer_goes_out_whole_and_an_idle_keep_alive_connection_still_times_out(
        gateway: GatewayServer) -> None:
    # the protocol writes head and body together, with a length instead of chunked framing,
    # and arms the head timer after a response only where keep-alive would not end it first
    s = _connect(gateway)
    body = b'{"model": "nope", "messages": [{"role": "user", "content": "hi"}]}'
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\ncontent-type: "
              b"application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
    status, headers, answer = _read_response(s)
    assert status == 404 and "transfer-encoding" not in headers
    assert int(headers["content-length"]) == len(answer)
    _error(answer, "model_not_found")
    t0 = time.monotonic()
    status, _, answer = _read_response(s)  # the connection stays open, then idles
    assert status == 408 and time.monotonic() - t0 < HEADER_TIMEOUT_S + 3
    _error(answer, "request_timeout")


def test_silent_and_trickling_clients_are_timed_out(gateway: GatewayServer) -> None:
    t0 = time.monotonic()
    silent = _connect(gateway)
    status, _, body = _read_response(silent)
    assert status == 408 and time.monotonic() - t0 < HEADER_TIMEOUT_S + 3
    _error(body, "request_timeout")

    # headers one byte at a time: the head deadline does not restart with each byte
    slow = _connect(gateway)
    t0 = time.monotonic()
    head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\nx-slow: " + b"a" * 40
    for b in head:
        try:
            slow.send(bytes([b]))
        except OSError:
            break
        time.sleep(0.1)
        if time.monotonic() - t0 > HEADER_TIMEOUT_S + 2:
            break
    status, _, body = _read_response(slow)
    assert status == 408 and time.monotonic() - t0 < HEADER_TIMEOUT_S + 4
    _error(body, "request_timeout")

    # complete headers, then the body one byte at a time
    body_slow = _connect(gateway)
    body_slow.send(b"POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\n"
                   b"content-type: application/json\r\ncontent-length: 200\r\n\r\n")
    t0 = time.monotonic()
    for b in b'{"model": "smollm2", "messages": [':
        try:
            body_slow.send(bytes([b]))
        except OSError:
            break
        time.sleep(0.1)
        if time.monotonic() - t0 > BODY_TIMEOUT_S + 1:
            break
    status, headers, body = _read_response(body_slow)
    assert status == 408 and headers.get("connection") == "close"
    _error(body, "request_timeout")
    for s in (silent, slow, body_slow):
        s.close()


def test_connections_over_the_cap_get_503_and_bad_content_length_an_openai_400(
        gateway: GatewayServer) -> None:
    socks = [_connect(gateway) for _ in range(MAX_CONNECTIONS + 6)]
    try:
        refused = 0
        for s in socks[MAX_CONNECTIONS:]:
            status, _, body = _read_response(s, limit_s=3)
            if status == 503:
                _error(body, "too_many_connections")
                refused += 1
        assert refused >= 5  # the readiness probe's connection may still be closing
    finally:
        for s in socks:
            s.close()
    time.sleep(0.3)
    s = _connect(gateway)
    s.send(b"POST /v1/route HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n"
           b"content-length: abc\r\n\r\n{}")
    status, headers, body = _read_response(s)
    assert status == 400 and headers["content-type"] == "application/json"
    assert orjson.loads(body)["error"]["type"] == "invalid_request_error"
    s.close()


def test_sigterm_answers_a_body_still_arriving_with_503_and_exits_promptly(
        tmp_path: Path) -> None:
    gw = GatewayServer(_config(tmp_path), log_path=tmp_path / "gw.log",
                       routing_log=tmp_path / "log.jsonl", check_upstreams=False,
                       env={"EXPERTGATE_BODY_TIMEOUT_S": "60"})
    gw.start()
    try:
        s = _connect(gw)
        s.send(b"POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\n"
               b"content-type: application/json\r\ncontent-length: 200\r\n\r\n{\"model\"")
        time.sleep(0.3)
        t0 = time.monotonic()
        gw.send_signal(signal.SIGTERM)
        status, _, body = _read_response(s)
        assert status == 503 and time.monotonic() - t0 < 5
        _error(body, "shutting_down")
        # uvicorn re-raises the signal once shut down: ended by SIGTERM, not killed
        assert gw.wait(10) in (0, -signal.SIGTERM) and time.monotonic() - t0 < 10
        assert "Traceback" not in gw.log_tail(20_000)
        s.close()
    finally:
        gw.stop()
