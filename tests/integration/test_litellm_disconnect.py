"""A client that leaves a stream served by a ``kind: litellm`` expert, against a real
``expertgate serve`` on 127.0.0.1: the provider's connection is closed at once, so it stops
generating for nobody (as an ``openai`` expert's is), and the request is logged 499
``client_disconnected`` once. LiteLLM's ``openai/`` provider talks only to a double on
loopback. Bounded: two requests, a few seconds.

A client that leaves while the gateway waits on the provider (the common case) had its
provider's connection closed already: the cancellation lands in LiteLLM's read, which
closes the response. A client that stopped reading first (the gateway waiting on its write,
its buffers full) and then left did not: LiteLLM's stream was dropped unclosed and the
provider streamed its whole answer to the gateway, for nobody."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from expertgate.procs import GatewayServer
from tests.doubles.sse_script import ScriptedSSE, chunk

pytestmark = pytest.mark.integration

KEY_ENV = "EXPERTGATE_TEST_LITE_KEY"
TOKEN = chunk({"content": "Hel"})
MORE = chunk({"content": "lo"})
END = [chunk({}, finish="stop"), b"data: [DONE]\n\n"]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[GatewayServer, ScriptedSSE]]:
    """A real gateway with one litellm expert, ``lite``, in front of a scripted upstream
    double running on its own event loop; both stopped here."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    up = asyncio.run_coroutine_threadsafe(ScriptedSSE().start(), loop).result(10)
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(yaml.safe_dump({"experts": [{
        "name": "lite", "kind": "litellm", "model": "openai/litemodel", "api_base": up.base,
        "api_key_env": KEY_ENV, "timeout_s": 10}]}))
    gw = GatewayServer(cfg, log_path=tmp_path / "gw.log", routing_log=tmp_path / "log.jsonl",
                       check_upstreams=False,
                       env={KEY_ENV: "sk-lite-test", "LITELLM_LOCAL_MODEL_COST_MAP": "True"})
    gw.start()
    try:
        yield gw, up
    finally:
        gw.stop()
        asyncio.run_coroutine_threadsafe(up.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def _closed_within(up: ScriptedSSE, since: float, within_s: float) -> None:
    """The double saw its stream's connection closed (a write failed) within ``within_s``
    of ``since``, before its script ran to its end."""
    while up.abandoned + up.finished == 0 and time.monotonic() - since < 8:
        time.sleep(0.02)
    waited = time.monotonic() - since
    assert (up.abandoned, up.finished) == (1, 0), (
        f"the provider's stream was not closed: it streamed its answer to the end "
        f"({waited:.1f} s after the client left)")
    assert waited < within_s, waited


def _records(gw: GatewayServer, n: int, timeout_s: float = 5.0) -> list[dict[str, Any]]:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if gw.routing_log.exists():
            lines = gw.routing_log.read_text().splitlines()
            if len(lines) >= n:
                time.sleep(0.2)  # and no more than n
                return [orjson.loads(x) for x in gw.routing_log.read_text().splitlines()]
        time.sleep(0.05)
    raise AssertionError(f"fewer than {n} routing-log records after {timeout_s} s")


def test_a_client_that_leaves_a_litellm_stream_closes_the_providers_connection(
        served: tuple[GatewayServer, ScriptedSSE]) -> None:
    gw, up = served
    # reads two events and closes, while the provider streams slowly (~5 s of answer)
    up.script = [TOKEN, *([0.2, MORE] * 25), *END]
    events = 0
    with httpx.stream("POST", f"http://127.0.0.1:{gw.port}/v1/chat/completions", json={
            "model": "lite", "stream": True,
            "messages": [{"role": "user", "content": "write a long story"}]},
            timeout=10) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            events += line.startswith("data: {")
            if events == 2:
                break
    _closed_within(up, time.monotonic(), within_s=1.0)
    (rec,) = _records(gw, 1)
    assert (rec["http_status"], rec["error_type"], rec["expert"]) == (
        499, "client_disconnected", "lite")

    # stops reading after two events while the provider streams ~6.5 MB at once (the
    # gateway's writes to it back up), then leaves
    up.abandoned = 0
    up.script = [TOKEN, 0.05, MORE, 0.05,
                 *[chunk({"content": f"{i:06d}" + "x" * 8192}) for i in range(800)],
                 *([0.1, MORE] * 50), *END]
    body = orjson.dumps({"model": "lite", "stream": True,
                         "messages": [{"role": "user", "content": "write a long story"}]})
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # no window to grow into
    s.settimeout(10)
    s.connect(("127.0.0.1", gw.port))
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
              b"content-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
    got = b""
    while got.count(b"data: {") < 2:
        got += s.recv(256)
    time.sleep(1.5)
    s.close()
    _closed_within(up, time.monotonic(), within_s=1.0)
    recs = _records(gw, 2)
    assert len(recs) == 2
    assert (recs[1]["http_status"], recs[1]["error_type"], recs[1]["expert"]) == (
        499, "client_disconnected", "lite")
    out = gw.log_path.read_text()
    assert "Traceback" not in out, out[-3000:]
