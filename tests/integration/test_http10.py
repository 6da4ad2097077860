"""An HTTP/1.0 client against a real ``expertgate serve`` on 127.0.0.1: RFC 9112 section 6.1
(RFC 7230 section 3.3.1) forbids chunked framing toward a 1.0 peer, which does not know it
and would read the chunk-size lines as part of the event stream. A streamed answer goes out
unframed and ends with the connection; a whole answer has its content-length and
``connection: close``. Bounded: two requests, raw sockets with a 10 s timeout."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from expertgate.bench.upstream_double import ThreadedDouble
from expertgate.procs import GatewayServer
from tests.integration.conftest import serve_coder

pytestmark = pytest.mark.integration


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[GatewayServer, ThreadedDouble]]:
    with serve_coder(tmp_path) as both:
        yield both


def _post_http10(port: int, body: dict[str, object]) -> tuple[list[bytes], bytes]:
    """The header lines and the body of one ``POST /v1/chat/completions HTTP/1.0``, read
    until the server closes the connection (which must happen: the test fails on the
    socket's timeout otherwise)."""
    data = json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.0\r\nhost: 127.0.0.1\r\n"
                  b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                  % (len(data), data))
        buf = b""
        while chunk := s.recv(65536):
            buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head.split(b"\r\n"), rest


def _header(lines: list[bytes], name: bytes) -> bytes | None:
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == name:
            return v.strip().lower()
    return None


def test_a_stream_to_an_http10_client_is_unframed_and_ends_with_the_connection(
        served: tuple[GatewayServer, ThreadedDouble]) -> None:
    gw, _ = served
    lines, body = _post_http10(gw.port, {
        "model": "coder", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    assert lines[0].split(b" ", 2)[1] == b"200", lines
    assert _header(lines, b"transfer-encoding") is None, lines
    assert _header(lines, b"connection") == b"close", lines
    # the body is the event stream itself: every line an SSE field or blank, no chunk sizes
    events = body.split(b"\n\n")
    assert body.rstrip().endswith(b"data: [DONE]"), body[-200:]
    for event in events:
        for line in event.split(b"\n"):
            assert not line or line.startswith((b"data:", b":")), (line, body[:300])
    chunks = [json.loads(e[len(b"data:"):]) for e in events
              if e.startswith(b"data:") and e.strip() != b"data: [DONE]"]
    assert chunks and all(c["object"] == "chat.completion.chunk" for c in chunks)


def test_a_whole_answer_to_an_http10_client_has_its_length_and_closes(
        served: tuple[GatewayServer, ThreadedDouble]) -> None:
    gw, _ = served
    lines, body = _post_http10(gw.port, {
        "model": "coder", "messages": [{"role": "user", "content": "hi"}]})
    assert lines[0].split(b" ", 2)[1] == b"200", lines
    assert _header(lines, b"transfer-encoding") is None, lines
    assert _header(lines, b"connection") == b"close", lines
    assert _header(lines, b"content-length") == b"%d" % len(body), lines
    assert json.loads(body)["object"] == "chat.completion"
