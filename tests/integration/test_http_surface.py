"""The HTTP surface health checkers and sloppy clients meet, against a real ``expertgate
serve`` on 127.0.0.1: HEAD on the GET endpoints (load balancers probe with it) answers like
GET without a body, so the next request on the same keep-alive connection is read right; a
POST path with a trailing slash reaches its endpoint instead of a bare 307. Bounded: a
dozen requests."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from expertgate.bench.upstream_double import ThreadedDouble
from expertgate.procs import GatewayServer
from tests.integration.conftest import serve_coder

pytestmark = pytest.mark.integration


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[GatewayServer, ThreadedDouble]]:
    with serve_coder(tmp_path) as both:
        yield both


def _read_response(s: socket.socket) -> tuple[bytes, bytes]:
    """(head, body) of one response on ``s`` (content-length framing)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        assert chunk, "connection closed before a response head"
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")[1:]
                   if line.lower().startswith(b"content-length:")), 0)
    return head, rest[:length] if length else rest


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/v1/models"])
def test_head_answers_like_get_without_a_body_on_a_kept_alive_connection(
        served: tuple[GatewayServer, ThreadedDouble], path: str) -> None:
    gw, _ = served
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    try:
        s.sendall(b"HEAD %s HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n" % path.encode())
        head, _ = _read_response(s)
        assert head.split(b"\r\n", 1)[0].endswith(b" 200 OK"), head
        # the same connection: had HEAD carried a body, this response would be misread
        s.sendall(b"GET %s HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n" % path.encode())
        head, body = _read_response(s)
        assert head.split(b"\r\n", 1)[0].endswith(b" 200 OK"), head
        assert body.startswith(b"{")
    finally:
        s.close()


def test_a_trailing_slash_reaches_the_endpoint(served: tuple[GatewayServer, ThreadedDouble]
                                               ) -> None:
    gw, _ = served
    with httpx.Client(base_url=f"http://127.0.0.1:{gw.port}", timeout=10) as c:
        r = c.post("/v1/chat/completions/", json={
            "model": "coder", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200 and r.json()["object"] == "chat.completion"
        assert r.headers["x-expertgate-expert"] == "coder"
        # any other unknown path: an OpenAI-shaped 404, never a redirect
        r = c.get("/v1/nothing/", follow_redirects=False)
        assert r.status_code == 404 and set(r.json()["error"]) >= {"message", "type", "code"}
