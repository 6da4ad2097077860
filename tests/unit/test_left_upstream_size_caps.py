"""An upstream that sends an endless body (or an endless SSE line) no longer fills the
gateway's memory: the whole answer was read without any cap (``Response.read``) and a line
of an event stream was buffered until its newline. Past the cap the call fails as
``too_large`` (the connection closed at once): the request fails over, or is a 502
``upstream_protocol_error`` saying so, and ``expertgate_upstream_errors_total`` counts it
under ``kind="too_large"``. The caps are lowered here so the test sends little."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway import upstreams
from tests.unit.gateway_helpers import base_config, chat, gateway_client

CAP = 256 * 1024
SENT_AT_MOST = 32 * 1024 * 1024  # what the endless upstream sends before it gives up


class Endless:
    """A loopback upstream answering every request with a body (or, ``sse``, an SSE data
    line) that never ends: 64 KiB chunks until the client closes or SENT_AT_MOST."""

    def __init__(self, sse: bool) -> None:
        self.sse = sse
        self.sent = 0
        self.server: asyncio.Server | None = None

    @property
    def base(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            await r.readuntil(b"\r\n\r\n")
            ctype = b"text/event-stream" if self.sse else b"application/json"
            w.write(b"HTTP/1.1 200 OK\r\ncontent-type: " + ctype +
                    b"\r\ntransfer-encoding: chunked\r\n\r\n")
            first = b'data: {"x": "' if self.sse else b'{"x": "'
            w.write(b"%x\r\n%s\r\n" % (len(first), first))
            chunk = b"a" * 65536
            while self.sent < SENT_AT_MOST:
                w.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.sent += len(chunk)
                await w.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            w.close()

    async def __aenter__(self) -> Endless:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


@pytest.fixture
def small_caps(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    monkeypatch.setattr(upstreams, "MAX_UPSTREAM_BODY_BYTES", CAP, raising=False)
    monkeypatch.setattr(upstreams, "MAX_SSE_LINE_BYTES", CAP, raising=False)
    yield None


def _too_large(metrics: str) -> float:
    for line in metrics.splitlines():
        if line.startswith("expertgate_upstream_errors_total{") and \
                'expert="coder"' in line and 'kind="too_large"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_an_endless_body_is_a_clear_502_and_counted(
        small_caps: None, ups, tmp_path: Path) -> None:
    async with Endless(False) as endless, \
            gateway_client(base_config(endless.base, ups[1].base), tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json=chat("coder", "hello"))
        assert r.status_code == 502, r.text
        err = r.json()["error"]
        assert err["code"] == "upstream_protocol_error"
        assert "coder answered with a body over 262144 bytes" in err["message"], err
        assert endless.sent < SENT_AT_MOST  # the gateway closed the connection, not the end
        assert _too_large((await c.get("/metrics")).text) == 1


async def test_an_endless_sse_line_ends_the_stream_with_an_error_event(
        small_caps: None, ups, tmp_path: Path) -> None:
    async with Endless(True) as endless, \
            gateway_client(base_config(endless.base, ups[1].base), tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json=chat("coder", "hello", stream=True))
        # past the first 16 KiB the stream is the client's (200): it ends with an error event
        assert r.status_code == 200
        last = r.text.strip().splitlines()[-1]
        assert last.startswith("data: ") and '"code":"stream_invalid"' in last, last[-300:]
        assert "an SSE line over 262144 bytes" in last, last[-300:]
        assert endless.sent < SENT_AT_MOST
        assert _too_large((await c.get("/metrics")).text) == 1


async def test_a_routed_request_fails_over_from_an_endless_answer(
        small_caps: None, ups, tmp_path: Path) -> None:
    async with Endless(False) as endless, \
            gateway_client(base_config(endless.base, ups[1].base), tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions",
                         json=chat("auto", "fix this python function that crashes"))
        assert r.status_code == 200, r.text
        assert r.headers["x-expertgate-expert"] == "chatter"
        assert "expert-fallback" in r.headers["x-expertgate-degraded"]
        assert _too_large((await c.get("/metrics")).text) == 1
