"""Streams hold their expert's concurrency slot until they end, through a real ``expertgate
serve`` on 127.0.0.1 (its own server reports a lost connection; the unit tests drive the
ASGI app): counted while they stream, and given back whether the client reads to the end,
leaves mid-stream or leaves before the first byte. Bounded: six requests, a few seconds."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from expertgate.procs import GatewayServer
from tests.integration.conftest import serve_coder
from tests.integration.test_client_disconnect import _send

pytestmark = pytest.mark.integration


def _inflight(gw: GatewayServer) -> float:
    text = httpx.get(f"http://127.0.0.1:{gw.port}/metrics").text
    for line in text.splitlines():
        if line.startswith('expertgate_upstream_inflight{expert="coder"}'):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no expertgate_upstream_inflight for coder")


def _settles_at(gw: GatewayServer, want: float, timeout_s: float = 5.0) -> None:
    end = time.monotonic() + timeout_s
    while (got := _inflight(gw)) != want and time.monotonic() < end:
        time.sleep(0.05)
    assert got == want


def test_streams_give_their_slots_back_however_the_client_ends_them(tmp_path: Path) -> None:
    with serve_coder(tmp_path, event_delay_s=0.3) as (gw, up):
        # two streams in progress (first event received, ~1 s to go): both counted
        socks = [_send(gw, True) for _ in range(2)]
        for s in socks:
            assert b" 200 " in s.recv(4096).split(b"\r\n", 1)[0]
        assert _inflight(gw) == 2
        for s in socks:  # the clients leave mid-stream
            s.close()
        _settles_at(gw, 0)
        # gone before the first byte: the upstream takes 0.6 s to answer
        up.double.delay_s = 0.6
        s = _send(gw, True)
        time.sleep(0.2)
        assert _inflight(gw) == 1
        s.close()
        _settles_at(gw, 0)
        # read to the end
        up.double.delay_s = 0.0
        with httpx.stream("POST", f"http://127.0.0.1:{gw.port}/v1/chat/completions", json={
                "model": "coder", "stream": True,
                "messages": [{"role": "user", "content": "hi"}]}) as r:
            body = r.read()
        assert body.rstrip().endswith(b"data: [DONE]")
        _settles_at(gw, 0)
