"""A client gone mid-stream is a client disconnect, never the upstream's failure, and the
upstream is told: its connection is closed, whatever kind of expert served the stream.

- A ``kind: litellm`` expert's stream (LiteLLM's ``CustomStreamWrapper`` over the OpenAI SDK's
  httpx response) is closed when the response writer gives it up, as an ``openai``
  expert's connection is: the provider stops generating for nobody. A client leaving while
  the gateway reads from the provider already closed it (the cancellation lands in httpx's
  read); a writer that raised, or a client that stopped reading and then left (the
  cancellation lands in the write), left it open until the garbage collector found it.
- A write to the client that fails (the server's ``send`` raising: ASGI servers raise an
  ``OSError`` on a closed connection) is logged and counted 499 ``client_disconnected``:
  no upstream error, no circuit-breaker failure, no error event written through the broken
  writer. An upstream that breaks the stream stays the upstream's failure (502).

Requests go through the raw ASGI app, so the client's writer can fail or block at any
point; upstreams are doubles on 127.0.0.1 (LiteLLM's ``openai/`` provider included).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.doubles.sse_script import ScriptedSSE, chunk
from tests.unit.gateway_helpers import AsgiRequest, chat, coder_cfg

#: pydantic warns (once per process) when LiteLLM's streaming builds a schema of its
#: TypedDicts with ``ReadOnly`` items; pytest turns warnings into errors
pytestmark = pytest.mark.filterwarnings("ignore:Item.*`ReadOnly` qualifier:UserWarning")

KEY_ENV = "EXPERTGATE_TEST_LITE_KEY"
TOKEN = chunk({"content": "Hel"})
MORE = chunk({"content": "lo"})
FINISH = chunk({}, finish="stop")
DONE = b"data: [DONE]\n\n"
#: about 5 s of answer, an event every 0.1 s: an upstream left generating runs to its end
SLOW = [TOKEN, *([0.1, MORE] * 50), FINISH, DONE]


@pytest.fixture(autouse=True)
def _lite_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-lite-test")


def config(scripted: ScriptedSSE, chatter: str) -> dict[str, Any]:
    """``coder``: an openai expert, ``lite``: a litellm one, both streaming ``scripted``."""
    cfg = coder_cfg(scripted.base, chatter, timeout_s=10)
    cfg["experts"].append({"name": "lite", "kind": "litellm", "model": "openai/litemodel",
                           "api_base": scripted.base, "api_key_env": KEY_ENV,
                           "timeout_s": 10})
    return cfg


class Client(AsgiRequest):
    """One request through the raw ASGI app. The server's ``send`` raises ``OSError`` on
    message ``fail_on`` (``"start"``, the n-th body message, or ``"end"``: the body's last
    message), or blocks on body message
    ``block_on`` (a client that stopped reading: the server's write buffer is full) until
    the client disconnects (``http.disconnect``), ``leave_s`` later."""

    def __init__(self, app: Any, body: dict[str, Any], *, fail_on: str | int | None = None,
                 block_on: int | None = None, leave_s: float = 0.2,
                 path: str = "/v1/chat/completions") -> None:
        super().__init__(app, body, path=path)
        self.fail_on = fail_on
        self.block_on = block_on
        self.leave_s = leave_s
        #: body messages the app tried to send after the writer failed
        self.after_failure = 0
        self.failed = False
        #: when the writer failed, or the client left (time.monotonic())
        self.left_at: float | None = None

    async def send(self, msg: dict[str, Any]) -> None:
        if self.failed:
            self.after_failure += 1
            raise OSError("connection lost")
        if msg["type"] == "http.response.start":
            if self.fail_on == "start":
                self.fail()
            self.status = msg["status"]
            return
        n = len(self.chunks) + 1
        if self.fail_on == n or (self.fail_on == "end" and not msg.get("more_body", False)):
            self.fail()
        if self.block_on == n:
            asyncio.get_running_loop().call_later(self.leave_s, self.leave)
            await asyncio.Event().wait()  # never written: the client left
        self.chunks.append(msg.get("body", b""))

    def fail(self) -> None:
        self.failed = True
        self.left_at = time.monotonic()
        raise OSError("connection lost")

    def leave(self) -> None:
        self.left_at = time.monotonic()
        self.gone.set()


async def closed_by_gateway(scripted: ScriptedSSE, since: float, within_s: float) -> float:
    """Seconds from ``since`` until the upstream double saw its stream's connection closed
    (its next write failed), failing if its script ran to its end first or ``within_s``
    passed."""
    while scripted.abandoned + scripted.finished == 0 and time.monotonic() - since < 8:
        await asyncio.sleep(0.01)
    waited = time.monotonic() - since
    assert (scripted.abandoned, scripted.finished) == (1, 0), (
        f"the upstream's stream was not closed: it played its script to the end "
        f"({waited:.1f} s)")
    assert waited < within_s, waited
    return waited


async def records(app: Any, tmp_path: Path) -> list[dict[str, Any]]:
    """The routing log's records, once its writer has written what the requests queued."""
    rl = app.gateway.routing_log
    end = time.monotonic() + 3
    while rl.pending and time.monotonic() < end:
        await asyncio.sleep(0.01)
    return [orjson.loads(x) for x in (tmp_path / "log.jsonl").read_bytes().splitlines()]


def upstream_errors(app: Any, expert: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for metric in app.gateway.metrics.registry.collect():
        for s in metric.samples:
            if s.name == "expertgate_upstream_errors_total" and s.labels["expert"] == expert:
                out[s.labels["kind"]] = s.value
    return out


def breaker_failures(app: Any, expert: str) -> list[int]:
    return [r.breaker.failures for r in app.gateway.dispatcher.pools[expert].replicas]


# ------------------------------------------------------------------ the upstream is told


@pytest.mark.parametrize("expert", ["lite", "coder"])
@pytest.mark.parametrize("how", ["writer-raised", "stopped-reading-then-left"])
async def test_a_client_gone_mid_stream_closes_the_upstreams_stream(
        scripted: ScriptedSSE, ups: Any, app_for: Any, tmp_path: Path, expert: str,
        how: str) -> None:
    scripted.script = SLOW
    app = await app_for(config(scripted, ups[1].base))
    opts: dict[str, Any] = {"fail_on": 3} if how == "writer-raised" else {"block_on": 3}
    c = Client(app, chat(expert, "write a long story", stream=True), **opts)
    await asyncio.wait_for(c.run(), 8)
    assert c.status == 200 and len(c.chunks) == 2  # two events read, then gone
    assert c.left_at is not None
    # the double sees the close at its next write (0.1 s on), not when its 5 s script ends
    await closed_by_gateway(scripted, c.left_at, within_s=1.0)
    (rec,) = await records(app, tmp_path)
    assert (rec["http_status"], rec["error_type"], rec["expert"]) == (
        499, "client_disconnected", expert)
    assert upstream_errors(app, expert) == {}
    assert c.after_failure == 0
    assert len(scripted.received) == 1


# ------------------------------------------------------------------ whose failure


@pytest.mark.parametrize("fail_on", ["start", 1, 2, 3])
async def test_a_writer_that_fails_is_a_client_disconnect_not_an_upstream_failure(
        scripted: ScriptedSSE, ups: Any, app_for: Any, tmp_path: Path,
        caplog: pytest.LogCaptureFixture, fail_on: str | int) -> None:
    # message 1 carries the head and the first token; 3 is the [DONE]-less middle
    scripted.script = [TOKEN, 0.05, MORE, 0.05, MORE, 0.05, MORE, FINISH, DONE]
    app = await app_for(config(scripted, ups[1].base))
    c = Client(app, chat("coder", "write a story", stream=True), fail_on=fail_on)
    with caplog.at_level(logging.INFO):
        await asyncio.wait_for(c.run(), 5)  # nothing raised to the server either
    # nothing more was written through the broken writer (no error event)
    assert c.after_failure == 0
    (rec,) = await records(app, tmp_path)
    assert (rec["http_status"], rec["error_type"]) == (499, "client_disconnected"), rec
    assert rec["degraded"] is None
    # not the upstream's failure: no upstream error counted, no breaker failure
    assert upstream_errors(app, "coder") == {}
    assert breaker_failures(app, "coder") == [0]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING
                and r.name.startswith("expertgate")], caplog.text
    # and the next request to that expert is served as usual
    scripted.script = [TOKEN, FINISH, DONE]
    ok = Client(app, chat("coder", "again", stream=True))
    await asyncio.wait_for(ok.run(), 5)
    assert ok.status == 200 and ok.body.rstrip().endswith(b"data: [DONE]")


async def test_an_upstream_that_breaks_the_stream_stays_the_upstreams_failure(
        scripted: ScriptedSSE, ups: Any, app_for: Any, tmp_path: Path) -> None:
    scripted.script = [TOKEN, 0.05, MORE, 0.05, "abort"]
    app = await app_for(config(scripted, ups[1].base))
    c = Client(app, chat("coder", "write a story", stream=True))
    await asyncio.wait_for(c.run(), 5)
    assert b'"code":"stream_interrupted"' in c.chunks[-2] and c.chunks[-1] == b""
    (rec,) = await records(app, tmp_path)
    assert (rec["http_status"], rec["error_type"]) == (502, "stream_interrupted")
    assert rec["degraded"] == ["stream-cut"]
    assert upstream_errors(app, "coder") == {"stream_cut": 1.0}


async def test_an_upstream_cut_then_a_failing_writer_is_still_the_upstreams_failure(
        scripted: ScriptedSSE, ups: Any, app_for: Any, tmp_path: Path) -> None:
    # the cut comes first; the writer fails on the error event that says so: the log says
    # what ended the answer, and nothing more is written
    scripted.script = [TOKEN, 0.05, MORE, 0.05, "abort"]
    app = await app_for(config(scripted, ups[1].base))
    c = Client(app, chat("coder", "write a story", stream=True), fail_on=3)
    await asyncio.wait_for(c.run(), 5)
    assert c.after_failure == 0
    (rec,) = await records(app, tmp_path)
    assert (rec["http_status"], rec["error_type"]) == (502, "stream_interrupted")
    assert upstream_errors(app, "coder") == {"stream_cut": 1.0}


async def test_a_writer_that_fails_after_done_leaves_a_complete_answer(
        scripted: ScriptedSSE, ups: Any, app_for: Any, tmp_path: Path) -> None:
    # the client has the whole answer at [DONE] (the OpenAI SDK closes there): the end of
    # the body failing to go out is no disconnect
    scripted.script = [TOKEN, 0.05, FINISH, DONE]
    app = await app_for(config(scripted, ups[1].base))
    c = Client(app, chat("coder", "hi", stream=True), fail_on="end")
    await asyncio.wait_for(c.run(), 5)
    assert c.failed and c.body.rstrip().endswith(b"data: [DONE]")
    (rec,) = await records(app, tmp_path)
    assert (rec["http_status"], rec["error_type"]) == (200, None)



@pytest.mark.parametrize("fail_on", ["start", 1])
@pytest.mark.parametrize("case", ["error", "dry-run", "refusal"])
async def test_a_client_gone_before_a_gateway_answer_is_a_499_not_a_500(
        scripted: ScriptedSSE, ups: Any, app_for: Any, tmp_path: Path,
        caplog: pytest.LogCaptureFixture, case: str, fail_on: str | int) -> None:
    # the gateway's own answers (an error, the dry run's JSON, a policy's refusal) were
    # written with the server's send unguarded: a client gone under the write was an
    # unexpected error (logged 500 internal_error with a traceback, raised to the server)
    cfg = config(scripted, ups[1].base)
    cfg["policies"].append({"name": "strict", "routes": cfg["policies"][0]["routes"],
                            "params": {"threshold": 0.99},
                            "on_reject": {"action": "refusal", "message": "no"}})
    path = "/v1/chat/completions"
    body: dict[str, Any] = chat("auto", "write a python function to parse json")
    if case == "error":
        body["model"] = "no-such-model"
    elif case == "dry-run":
        path, body = "/v1/route", {"model": "auto", "text": "write a python function"}
    else:
        body = chat("strict", "zebra migration")
    app = await app_for(cfg)
    caplog.set_level(logging.DEBUG)
    c = Client(app, body, fail_on=fail_on, path=path)
    await c.run()  # nothing raised to the server
    assert c.failed and c.after_failure == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    if case == "dry-run":
        return  # the dry run writes no routing-log record
    rec = (await records(app, tmp_path))[-1]
    assert (rec["http_status"], rec["error_type"]) == (499, "client_disconnected"), rec
