"""The HTTP layer's own refusals (before there is a request) are counted in /metrics: a real
``expertgate serve`` on 127.0.0.1, a few sockets, short timeouts (request path)."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from expertgate.procs import GatewayServer

pytestmark = pytest.mark.integration

MAX_CONNECTIONS = 8


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[GatewayServer]:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(yaml.safe_dump({"experts": [
        {"name": "smollm2", "api_base": "http://127.0.0.1:9/v1"}]}))
    gw = GatewayServer(cfg, log_path=tmp_path / "gw.log", routing_log=tmp_path / "log.jsonl",
                       check_upstreams=False,
                       env={"EXPERTGATE_HEADER_TIMEOUT_S": "1",
                            "EXPERTGATE_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
                            "EXPERTGATE_MAX_HEADER_BYTES": "4096"})
    gw.start()
    yield gw
    gw.stop()


def _status(s: socket.socket) -> int:
    s.settimeout(5)
    data = b""
    while b"\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1]) if data else 0


def _count(text: str, status: int, code: str) -> float:
    m = re.search(rf'^expertgate_http_refused_total\{{code="{code}",status="{status}"\}} '
                  r"(\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_refusals_before_a_request_are_counted(gateway: GatewayServer) -> None:
    # a gateway at its connection cap answered 503 to every new client (and 431, 408, 400
    # to bad ones) with nothing in /metrics: an operator saw requests fall, not why
    socks = [socket.create_connection(("127.0.0.1", gateway.port), timeout=5)
             for _ in range(MAX_CONNECTIONS + 3)]
    try:
        refused = sum(_status(s) == 503 for s in socks[MAX_CONNECTIONS:])
    finally:
        for s in socks:
            s.close()
    assert refused >= 2  # the readiness probe's connection may still be closing
    time.sleep(0.5)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-pad: " + b"p" * 8000 + b"\r\n\r\n")
        assert _status(s) == 431
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\ncontent-length: abc\r\n\r\n")
        assert _status(s) == 400
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as s:
        assert _status(s) == 408  # no head within the header timeout
    time.sleep(0.5)
    text = httpx.get(gateway.url + "/metrics", timeout=10).text
    assert _count(text, 503, "too_many_connections") >= refused
    assert _count(text, 431, "request_header_fields_too_large") == 1
    assert _count(text, 400, "invalid_request") == 1
    assert _count(text, 408, "request_timeout") == 1
