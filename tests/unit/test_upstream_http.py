"""The upstream HTTP/1.1 client (gateway/upstream_http.py) against real asyncio servers.

Each test runs a raw TCP server on 127.0.0.1 that answers with exactly the bytes the test
wants (content-length, chunked, split into single bytes, cut short, closed, garbage), and
checks what the client makes of them: bodies, connection reuse, the retry of a stale pooled
connection, timeouts through ``call_openai``, flow control for big bodies, clean close, and
https against a local TLS server whose certificate the trust store does or does not hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import orjson
import pytest

from gateway.config import ExpertConfig
from gateway.upstream_http import (
    ConnectFailed,
    InvalidResponse,
    ResponseIncomplete,
    ServerDisconnected,
    UpstreamHTTP,
)
from gateway.upstreams import UpstreamFailure, call_openai

Handler = Callable[["Req", asyncio.StreamWriter], Awaitable[bool]]


@dataclass
class Req:
    head: bytes
    body: bytes
    conn: int


@dataclass
class RawServer:
    """Reads each request (head + content-length body) and lets ``handler`` answer it;
    the handler returns False to end the connection."""

    handler: Handler
    requests: list[Req] = field(default_factory=list)
    connections: int = 0
    closed_by_client: int = 0
    server: asyncio.Server | None = None

    @property
    def base(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = self.connections
        try:
            while True:
                head = await r.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    k, _, v = line.partition(b":")
                    if k.strip().lower() == b"content-length":
                        length = int(v)
                body = await r.readexactly(length)
                req = Req(head, body, conn)
                self.requests.append(req)
                if not await self.handler(req, w):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed_by_client += 1
        finally:
            w.close()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[RawServer]]]:
    servers: list[RawServer] = []

    async def start(handler: Handler) -> RawServer:
        s = RawServer(handler)
        s.server = await asyncio.start_server(s._serve, "127.0.0.1", 0)
        servers.append(s)
        return s

    yield start
    for s in servers:
        assert s.server is not None
        s.server.close()


def _ok(body: bytes, extra: bytes = b"") -> bytes:
    return (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n" + extra +
            b"content-length: %d\r\n\r\n" % len(body) + body)


def _chunked(parts: list[bytes], ctype: bytes = b"text/event-stream") -> bytes:
    out = b"HTTP/1.1 200 OK\r\ncontent-type: " + ctype + b"\r\ntransfer-encoding: chunked\r\n\r\n"
    for p in parts:
        out += b"%x\r\n" % len(p) + p + b"\r\n"
    return out + b"0\r\n\r\n"


async def _client() -> UpstreamHTTP:
    return UpstreamHTTP(asyncio.get_running_loop(), keepalive_s=30.0)


async def _post(http: UpstreamHTTP, base: str, body: bytes = b'{"a":1}',
                headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    r = await http.request(b"POST", base, "/chat/completions", body,
                           headers or {"content-type": "application/json"},
                           connect_timeout_s=2.0)
    return r.status, r.content_type, await r.read()


EXPERT = ExpertConfig(name="x", api_base="http://127.0.0.1:1/v1", timeout_s=5,
                      connect_timeout_s=1.0)


async def test_content_length_answers_reuse_one_keep_alive_connection(serve) -> None:
    async def h(req: Req, w: asyncio.StreamWriter) -> bool:
        w.write(_ok(b'{"n":%d}' % len(req.body)))
        return True

    srv = await serve(h)
    http = await _client()
    for i in range(5):
        assert await _post(http, srv.base, b"x" * i) == (200, "application/json",
                                                          b'{"n":%d}' % i)
    assert srv.connections == 1
    head = srv.requests[0].head
    assert head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    host = srv.base.split("//")[1].split("/")[0].encode()
    assert b"host: " + host + b"\r\n" in head and b"content-type: application/json" in head
    await http.close()


async def test_chunked_and_byte_by_byte_answers_are_read_whole_or_as_they_come(serve) -> None:
    events = [b'data: {"i":%d}\n\n' % i for i in range(4)]
    gate = asyncio.Event()

    async def h(req: Req, w: asyncio.StreamWriter) -> bool:
        raw = _chunked(events)
        if req.body == b"slow":  # one byte per write: heads and chunk sizes split anywhere
            for i in range(len(raw)):
                w.write(raw[i:i + 1])
                await w.drain()
                await asyncio.sleep(0)
            return True
        if req.body == b"stream":  # the first event, then the rest once the test read it
            head, rest = raw.split(b"\r\n\r\n", 1)
            first = b"%x\r\n" % len(events[0]) + events[0] + b"\r\n"
            w.write(head + b"\r\n\r\n" + first)
            await gate.wait()
            w.write(rest[len(first):])
            return True
        w.write(raw)
        return True

    srv = await serve(h)
    http = await _client()
    assert await _post(http, srv.base, b"all") == (200, "text/event-stream", b"".join(events))
    assert await _post(http, srv.base, b"slow") == (200, "text/event-stream", b"".join(events))
    r = await http.request(b"POST", srv.base, "/chat/completions", b"stream", {},
                           connect_timeout_s=2.0)
    assert await r.read_any() == events[0]  # handed over before the rest exists
    gate.set()
    got = b""
    while chunk := await r.read_any():
        got += chunk
    assert got == b"".join(events[1:])
    assert srv.connections == 1  # every body ended cleanly: the connection was kept
    await http.close()


async def test_a_pooled_connection_the_upstream_closed_is_retried_once_on_a_new_one(
        serve) -> None:
    async def h(req: Req, w: asyncio.StreamWriter) -> bool:
        if req.body == b"close-after":
            w.write(_ok(b"{}"))  # keep-alive answer, then the upstream drops the connection
            await w.drain()
            return False
        if req.body == b"never":
            return False  # reads the request, closes without a byte
        w.write(_ok(b'{"ok":true}'))
        return True

    srv = await serve(h)
    http = await _client()
    assert (await _post(http, srv.base, b"close-after"))[0] == 200
    await asyncio.sleep(0)  # the close may or may not have been seen yet: both must work
    assert await _post(http, srv.base, b"again") == (200, "application/json", b'{"ok":true}')
    assert srv.requests[-1].body == b"again"

    # a pooled connection that dies without answering: sent once more, on a new connection
    # (which dies too: that is the upstream's failure, not retried again)
    n = len(srv.requests)
    with pytest.raises(ServerDisconnected):
        await _post(http, srv.base, b"never")
    assert [r.body for r in srv.requests[n:]] == [b"never", b"never"]
    assert srv.requests[-1].conn != srv.requests[-2].conn
    await http.close()


async def test_a_new_connection_closed_without_an_answer_is_not_resent(serve) -> None:
    async def h(req: Req, w: asyncio.StreamWriter) -> bool:
        return False

    srv = await serve(h)
    http = await _client()
    with pytest.raises(ServerDisconnected):
        await _post(http, srv.base)
    assert len(srv.requests) == 1  # a request on a fresh connection is never sent twice
    await http.close()


async def test_connection_close_and_eof_delimited_bodies(serve) -> None:
    async def h(req: Req, w: asyncio.StreamWriter) -> bool:
        if req.body == b"close":
            w.write(_ok(b'{"c":1}', b"connection: close\r\n"))
            return False
        # no content-length, no chunking: the body is what comes until the close
        w.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n" + b'{"e":')
        await w.drain()
        await asyncio.sleep(0.01)
        w.write(b"2}")
        return False

    srv = await serve(h)
    http = await _client()
    assert await _post(http, srv.base, b"close") == (200, "application/json", b'{"c":1}')
    assert await _post(http, srv.base, b"eof") == (200, "application/json", b'{"e":2}')
    assert srv.connections == 2  # connection: close was honoured
    await http.close()


async def test_cut_and_garbage_answers_are_errors_not_bodies(serve) -> None:
    async def h(req: Req, w: asyncio.StreamWriter) -> bool:
        if req.body == b"cut":
            w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + b'{"partial"')
            return False
        if req.body == b"cut-chunked":
            w.write(_chunked([b"data: {}\n\n"])[:-5])  # no last chunk
            return False
        w.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        return False

    srv = await serve(h)
    http = await _client()
    with pytest.raises(ResponseIncomplete):
        await _post(http, srv.base, b"cut")
    r = await http.request(b"POST", srv.base, "/chat/completions", b"cut-chunked", {},
                           connect_timeout_s=2.0)
    assert await r.read_any() == b"data: {}\n\n"
    with pytest.raises(ResponseIncomplete):
        await r.read_any()
    with pytest.raises(InvalidResponse):
        await _post(http, srv.base, b"garbage")

    # through call_openai: the kinds and messages the dispatcher and clients see
    with pytest.raises(UpstreamFailure) as e:
        await call_openai(http, EXPERT, srv.base, "/chat/completions", b"cut", stream=False,
                          timeout_s=5)
    assert e.value.kind == "protocol" and e.value.public == \
        "broke the connection (ResponseIncomplete)"
    with pytest.raises(UpstreamFailure) as e:
        await call_openai(http, EXPERT, srv.base, "/chat/completions", b"garbage",
                          stream=False, timeout_s=5)
    assert e.value.kind == "protocol" and "127.0.0.1" not in e.value.public
    await http.close()


async def test_refused_connection_is_a_connect_failure() -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    http = await _client()
    base = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(ConnectFailed) as c:
        await _post(http, base)
    assert not c.value.timed_out
    with pytest.raises(UpstreamFailure) as e:
        await call_openai(http, EXPERT, base, "/chat/completions", b"{}", stream=False,
                          timeout_s=5)
    assert e.value.kind == "connect" and e.value.retryable and \
        e.value.public == "connection failed"
    await http.close()


#: a stream's event with a token (before one, a stall is a failure that falls back:
#: tests/unit/test_stream_failover.py)
_TOKEN = b'data: {"choices":[{"index":0,"delta":{"content":"a"}}]}\n\n'


async def test_timeouts_close_the_connection_and_keep_their_kinds(serve) -> None:
    async def h(req: Req, w: asyncio.StreamWriter) -> bool:
        if req.body == b"stall-stream":
            w.write(_chunked([_TOKEN])[:-5])  # one token, then silence
            await asyncio.sleep(10)
        elif req.body == b"stall":
            await asyncio.sleep(10)
        w.write(_ok(b"{}"))
        return True

    srv = await serve(h)
    http = await _client()
    with pytest.raises(UpstreamFailure) as e:
        await call_openai(http, EXPERT, srv.base, "/chat/completions", b"stall", stream=False,
                          timeout_s=0.2)
    assert e.value.kind == "timeout" and e.value.public == "sent no data within 0.2s"
    reply = await call_openai(http, EXPERT, srv.base, "/chat/completions", b"stall-stream",
                              stream=True, timeout_s=0.2)
    assert reply.first == _TOKEN
    with pytest.raises(TimeoutError):
        await reply.rest.__anext__()  # the read timeout between events
    reply.release()
    # the timed-out calls' connections were closed, not pooled: the next call is answered
    assert (await _post(http, srv.base, b"fine"))[0] == 200
    assert srv.connections == 3
    await http.close()


async def test_big_bodies_both_ways_and_a_slow_stream_reader(serve) -> None:
    big = bytes(range(256)) * 12_000  # ~3 MB: past the copy limit and the high-water mark

    async def h(req: Req, w: asyncio.StreamWriter) -> bool:
        if req.body.startswith(b"stream"):
            w.write(_chunked([big[i:i + 65536] for i in range(0, len(big), 65536)]))
        else:
            w.write(_ok(req.body))  # echo
        await w.drain()
        return True

    srv = await serve(h)
    http = await _client()
    assert await _post(http, srv.base, big) == (200, "application/json", big)
    r = await http.request(b"POST", srv.base, "/chat/completions", b"stream", {},
                           connect_timeout_s=2.0)
    got = []
    while chunk := await r.read_any():
        got.append(chunk)
        await asyncio.sleep(0.001)  # a slow reader: reading pauses and resumes meanwhile
    assert b"".join(got) == big
    assert await _post(http, srv.base, b"after") == (200, "application/json", b"after")
    assert srv.connections == 1
    await http.close()


async def test_a_cancelled_call_closes_its_connection_and_close_ends_idle_ones(serve) -> None:
    async def h(req: Req, w: asyncio.StreamWriter) -> bool:
        if req.body == b"hang":
            await asyncio.sleep(10)
        w.write(_ok(b"{}"))
        return True

    srv = await serve(h)
    http = await _client()
    task = asyncio.ensure_future(_post(http, srv.base, b"hang"))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await _post(http, srv.base, b"ok"))[0] == 200
    assert srv.connections == 2  # the cancelled call's connection was not reused
    await http.close()
    for _ in range(50):
        if srv.closed_by_client:
            break
        await asyncio.sleep(0.01)
    assert srv.closed_by_client >= 1  # the idle pooled connection was closed
    with pytest.raises(ConnectFailed):
        await _post(http, srv.base)


async def test_idle_connections_expire_after_the_keep_alive_time(serve) -> None:
    async def h(req: Req, w: asyncio.StreamWriter) -> bool:
        w.write(_ok(b"{}"))
        return True

    srv = await serve(h)
    http = UpstreamHTTP(asyncio.get_running_loop(), keepalive_s=0.1)
    await _post(http, srv.base)
    for _ in range(100):
        if srv.closed_by_client:
            break
        await asyncio.sleep(0.01)
    assert srv.closed_by_client == 1
    await _post(http, srv.base)
    assert srv.connections == 2
    await http.close()


async def test_interim_answers_are_skipped_and_error_statuses_keep_their_body(serve) -> None:
    async def h(req: Req, w: asyncio.StreamWriter) -> bool:
        err = orjson.dumps({"error": {"message": "bad", "type": "x"}})
        w.write(b"HTTP/1.1 100 Continue\r\n\r\n" + (
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n" % len(err) + err))
        return True

    srv = await serve(h)
    http = await _client()
    reply = await call_openai(http, EXPERT, srv.base, "/chat/completions", b"{}",
                              stream=False, timeout_s=5)
    assert reply.status == 400 and orjson.loads(reply.first)["error"]["message"] == "bad"
    await http.close()


def test_header_values_with_line_breaks_are_refused() -> None:
    http = UpstreamHTTP(asyncio.new_event_loop())
    with pytest.raises(ValueError):
        http._head(http.target("http://127.0.0.1:1/v1"), b"POST", "/x",
                   {"authorization": "Bearer a\r\nx-injected: 1"})
    http.loop.close()


async def test_a_connection_not_accepted_in_time_is_a_connect_timeout() -> None:
    # a listener whose accept queue is full: Linux drops the next SYNs, the connect hangs
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(0)
    port = ls.getsockname()[1]
    fill = []
    for _ in range(8):
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", port))
        fill.append(s)
    http = await _client()
    base = f"http://127.0.0.1:{port}/v1"
    try:
        with pytest.raises(ConnectFailed) as c:
            await http.request(b"POST", base, "/x", b"", {}, connect_timeout_s=0.2)
        assert c.value.timed_out
        expert = ExpertConfig(name="x", api_base=base, timeout_s=5, connect_timeout_s=0.2)
        with pytest.raises(UpstreamFailure) as e:
            await call_openai(http, expert, base, "/chat/completions", b"{}", stream=False,
                              timeout_s=5)
        assert e.value.kind == "timeout" and e.value.public == "connection timed out (0.2s)"
    finally:
        await http.close()
        for s in fill:
            s.close()
        ls.close()


async def test_https_upstreams_are_verified_against_the_system_trust_store(
        tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)

    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            head = await r.readuntil(b"\r\n\r\n")
            assert head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
            w.write(_ok(b'{"tls":true}'))
            await w.drain()
            await r.read()  # until the client closes
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            w.close()

    srv = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)
    base = f"https://127.0.0.1:{srv.sockets[0].getsockname()[1]}/v1"
    try:
        untrusting = await _client()
        with pytest.raises(ConnectFailed):  # a self-signed certificate nobody trusts
            await _post(untrusting, base)
        await untrusting.close()
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # now the trust store holds it
        http = await _client()
        assert await _post(http, base) == (200, "application/json", b'{"tls":true}')
        await http.close()
    finally:
        srv.close()


async def test_a_stream_dropped_unread_closes_its_connection(serve) -> None:
    async def h(req: Req, w: asyncio.StreamWriter) -> bool:
        # an endless stream (one event every few ms) until the client goes away
        w.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"transfer-encoding: chunked\r\n\r\n")
        while True:
            ev = b'data: {"x":1}\n\n'
            w.write(b"%x\r\n" % len(ev) + ev + b"\r\n")
            await w.drain()
            await asyncio.sleep(0.005)

    srv = await serve(h)
    http = await _client()
    r = await http.request(b"POST", srv.base, "/chat/completions", b"{}", {},
                           connect_timeout_s=2.0)
    assert (await r.read_any()).startswith(b"data: ")
    del r  # neither read to its end nor released
    for _ in range(100):
        if srv.closed_by_client:
            break
        await asyncio.sleep(0.01)
    assert srv.closed_by_client == 1
    await http.close()
