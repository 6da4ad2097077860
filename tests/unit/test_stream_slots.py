"""A stream holds its replica's in-flight count and its expert's ``max_concurrency`` slot
until it ends, however it ends, and gives them back exactly once.

The upstream call returns at a stream's first token; the response writer drains the rest for
seconds or minutes. Counting the call only up to that first token let the least-loaded
replica choice and the concurrency limit see almost nothing of the streams in progress.
Requests are driven through the raw ASGI app so that the client can leave, or its connection
fail, at any point; upstreams are doubles on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from expertgate.bench.upstream_double import OpenAIUpstreamDouble
from gateway.dispatch import DispatchResult
from tests.doubles.sse_script import ScriptedSSE, chunk, event
from tests.unit.gateway_helpers import AsgiRequest, base_config, chat, coder_cfg

TOKEN = chunk({"content": "Hel"})
MORE = chunk({"content": "lo"})
FINISH = chunk({}, finish="stop")
DONE = b"data: [DONE]\n\n"
ERROR = event({"error": {"message": "CUDA out of memory", "type": "InternalServerError",
                         "param": None, "code": 500}})


@pytest.fixture
async def slow() -> AsyncIterator[tuple[OpenAIUpstreamDouble, OpenAIUpstreamDouble]]:
    """Two doubles whose streams take ~0.9 s (four events, 0.3 s apart)."""
    a = await OpenAIUpstreamDouble("a-double", event_delay_s=0.3).start()
    b = await OpenAIUpstreamDouble("b-double", event_delay_s=0.3).start()
    yield a, b
    await a.stop()
    await b.stop()


class Client(AsgiRequest):
    """One request through the raw ASGI app. ``leave_after``: the client disconnects once it
    has that many body chunks (0: as soon as the upstream has the request); ``fail_on``:
    the server's ``send`` raises on that message (``start``, or the n-th body chunk)."""

    def __init__(self, app: Any, body: dict[str, Any], *, leave_after: int | None = None,
                 fail_on: str | int | None = None) -> None:
        super().__init__(app, body)
        self.leave_after = leave_after
        self.fail_on = fail_on
        self.started = asyncio.Event()
        self.ended = False
        #: what the gateway held while the client had the first body chunk / the end
        self.held_at_first: dict[str, Any] | None = None
        self.held_at_end: dict[str, Any] | None = None

    async def send(self, msg: dict[str, Any]) -> None:
        gw = self.app.gateway
        if msg["type"] == "http.response.start":
            if self.fail_on == "start":
                raise OSError("connection lost")
            self.status = msg["status"]
            return
        if self.fail_on == len(self.chunks) + 1:
            raise OSError("connection lost")
        self.chunks.append(msg.get("body", b""))
        if len(self.chunks) == 1:
            self.held_at_first = held(gw)
            self.started.set()
        if not msg.get("more_body", False):
            self.held_at_end = held(gw)
            self.ended = True
        if self.leave_after is not None and len(self.chunks) >= self.leave_after:
            self.gone.set()

    async def run(self) -> None:
        # the connection this client's server lost: the server's own business
        with contextlib.suppress(OSError):
            await super().run()


async def start(*clients: Client) -> list[asyncio.Task[None]]:
    """Run ``clients`` until each has its first body chunk (bounded: 5 s); their tasks."""
    tasks = [asyncio.ensure_future(c.run()) for c in clients]
    await asyncio.wait_for(asyncio.gather(*(c.started.wait() for c in clients)), 5)
    return tasks


def held(gw: Any) -> dict[str, Any]:
    """Every expert's concurrency slots in use and its replicas' in-flight counts."""
    out: dict[str, Any] = {}
    for name, pool in gw.dispatcher.pools.items():
        out[name] = (pool.slots.used,
                     [r.inflight for r in pool.replicas])
    return out


def nothing_held(gw: Any) -> dict[str, Any]:
    return {name: (0, [0] * len(pool.replicas)) for name, pool in gw.dispatcher.pools.items()}


def _metric(text: str, name: str, expert: str) -> float:
    for line in text.splitlines():
        if line.startswith(f'{name}{{expert="{expert}"}}'):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} for {expert} in /metrics")


# ------------------------------------------------------------------ max_concurrency


@pytest.mark.parametrize("third_streams", [True, False])
async def test_a_stream_holds_its_slot_so_a_third_request_waits_as_a_call_would(
        slow: Any, app_for: Any, third_streams: bool) -> None:
    # max_concurrency 2, two long streams in progress: a third request, streamed or not,
    # waits for a slot (as a third non-streamed call always did) and is served when one of
    # the streams ends
    up, chatter = slow
    app = await app_for(coder_cfg(up.base, chatter.base, max_concurrency=2))
    gw = app.gateway
    first = [Client(app, chat("coder", f"story {i}", stream=True)) for i in range(2)]
    tasks = await start(*first)
    assert held(gw)["coder"] == (2, [2])
    third = Client(app, chat("coder", "story 3", stream=third_streams))
    t3 = asyncio.ensure_future(third.run())
    await asyncio.sleep(0.3)
    assert len(up.received) == 2 and third.status is None  # queued, not at the upstream
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    await asyncio.wait_for(t3, 5)
    assert len(up.received) == 3 and third.status == 200
    assert all(c.status == 200 and c.body.rstrip().endswith(b"[DONE]") for c in first)
    assert held(gw) == nothing_held(gw)


@pytest.mark.parametrize("third_streams", [True, False])
async def test_a_request_waiting_for_a_slot_past_its_deadline_is_a_504(
        slow: Any, app_for: Any, third_streams: bool) -> None:
    # the request deadline covers the wait for a slot as it covers every attempt
    up, chatter = slow
    app = await app_for(coder_cfg(up.base, chatter.base, max_concurrency=1),
                        request_deadline_s=0.4)
    gw = app.gateway
    long = Client(app, chat("coder", "story", stream=True))
    (t1,) = await start(long)
    late = Client(app, chat("coder", "another", stream=third_streams))
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await asyncio.wait_for(late.run(), 5)
    assert late.status == 504 and loop.time() - t0 < 0.8
    assert orjson.loads(late.body)["error"]["code"] == "deadline_exceeded"
    assert len(up.received) == 1
    await asyncio.wait_for(t1, 5)
    assert long.status == 200 and long.body.rstrip().endswith(b"[DONE]")
    assert held(gw) == nothing_held(gw)


# ------------------------------------------------------------------ replica choice


@pytest.mark.parametrize("second_streams", [True, False])
async def test_the_next_request_goes_to_the_replica_without_a_stream(
        slow: Any, app_for: Any, second_streams: bool) -> None:
    a, b = slow
    chatter = await OpenAIUpstreamDouble("chatter-double").start()
    try:
        cfg = base_config(a.base, chatter.base)
        cfg["experts"][0].update(api_base=None, replicas=[a.base, b.base])
        app = await app_for(cfg)
        gw = app.gateway
        # the same prompt: the same pair of replicas by affinity, the less loaded first
        long = Client(app, chat("coder", "write a python function", stream=True))
        (t1,) = await start(long)
        busy, idle = (a, b) if a.received else (b, a)
        assert len(busy.received) == 1 and not idle.received
        nxt = Client(app, chat("coder", "write a python function", stream=second_streams))
        await asyncio.wait_for(nxt.run(), 5)
        assert nxt.status == 200
        assert len(busy.received) == 1 and len(idle.received) == 1
        await asyncio.wait_for(t1, 5)
        assert held(gw) == nothing_held(gw)
    finally:
        await chatter.stop()


# ------------------------------------------------------------------ released exactly once

#: how the stream ends -> (the upstream's script, the client's options)
ENDINGS: dict[str, tuple[list[Any], dict[str, Any]]] = {
    "done": ([TOKEN, 0.2, MORE, FINISH, DONE], {}),
    "upstream-cut": ([TOKEN, 0.2, "abort"], {}),
    "error-event": ([TOKEN, 0.2, ERROR, DONE], {}),
    "body-open-after-done": ([TOKEN, 0.1, FINISH, DONE, "hang"], {}),
    "client-left-mid-stream": ([TOKEN, 0.2, MORE, 5.0, FINISH, DONE], {"leave_after": 1}),
    "writer-raised-mid-stream": ([TOKEN, 0.2, MORE, 0.2, FINISH, DONE], {"fail_on": 2}),
    "client-left-before-first-token": ([0.3, TOKEN, FINISH, DONE], {"leave_after": 0}),
    "writer-raised-at-response-start": ([TOKEN, 0.2, FINISH, DONE], {"fail_on": "start"}),
}


@pytest.mark.parametrize("ending", list(ENDINGS))
async def test_every_way_a_stream_ends_gives_its_slot_back_once(
        scripted: ScriptedSSE, ups: Any, app_for: Any, ending: str) -> None:
    script, opts = ENDINGS[ending]
    scripted.script = script
    app = await scripted_app(scripted, ups, app_for)
    gw = app.gateway
    for i in range(3):
        c = Client(app, chat("coder", f"x{i}", stream=True), **opts)
        if opts.get("leave_after") == 0:
            task = asyncio.ensure_future(c.run())
            while len(scripted.received) <= i:
                await asyncio.sleep(0.01)
            c.gone.set()
            await asyncio.wait_for(task, 5)
        else:
            await asyncio.wait_for(c.run(), 5)
        if c.held_at_first is not None:
            # the stream was counted while it was passed on
            assert c.held_at_first["coder"] == (1, [1]), ending
        if ending == "body-open-after-done":
            # [DONE] is the end of the upstream's work: counted no longer, though its body
            # is still read (for up to a second) so that its connection can be kept
            assert c.held_at_end == nothing_held(gw)
        assert held(gw) == nothing_held(gw), (ending, i)
    assert len(scripted.received) == 3
    metrics = await _metrics(app)
    assert _metric(metrics, "expertgate_upstream_inflight", "coder") == 0.0


async def test_a_stream_cut_short_by_the_shutdown_gives_its_slot_back(
        scripted: ScriptedSSE, ups: Any, app_for: Any) -> None:
    # the server's graceful shutdown ran out: it cancels the requests still streaming
    scripted.script = [TOKEN, "hang"]
    app = await scripted_app(scripted, ups, app_for)
    gw = app.gateway
    clients = [Client(app, chat("coder", f"x{i}", stream=True)) for i in range(3)]
    tasks = await start(*clients)
    assert held(gw)["coder"] == (3, [3])
    assert _metric(await _metrics(app), "expertgate_upstream_inflight", "coder") == 3.0
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert held(gw) == nothing_held(gw)


async def test_a_stream_reply_nobody_reads_is_given_back_when_dropped(
        scripted: ScriptedSSE, ups: Any, app_for: Any, caplog: pytest.LogCaptureFixture
        ) -> None:
    # the last guard: a reply dropped without release (a bug on the caller's side) still
    # gives its slot back, and says so
    scripted.script = [TOKEN, 0.2, FINISH, DONE]
    app = await scripted_app(scripted, ups, app_for)
    gw = app.gateway
    res = await stream_call(gw)
    assert held(gw)["coder"] == (1, [1])
    with caplog.at_level(logging.WARNING, "expertgate.dispatch"):
        del res
        gc.collect()
        await asyncio.sleep(0)
    assert held(gw) == nothing_held(gw)
    assert "released by no reader" in caplog.text


async def test_release_is_idempotent(scripted: ScriptedSSE, ups: Any, app_for: Any) -> None:
    scripted.script = [TOKEN, 0.1, FINISH, DONE]
    app = await scripted_app(scripted, ups, app_for)
    gw = app.gateway
    res = await stream_call(gw)
    res.reply.ended()
    res.reply.release()
    res.reply.release()
    res.reply.ended()
    assert held(gw) == nothing_held(gw)


async def scripted_app(scripted: ScriptedSSE, ups: Any, app_for: Any) -> Any:
    """A gateway app whose ``coder`` (4 slots) streams ``scripted``'s script."""
    return await app_for(coder_cfg(scripted.base, ups[1].base, max_concurrency=4))


async def stream_call(gw: Any) -> DispatchResult:
    """A streamed call to ``coder`` straight through the dispatcher: its reply is the
    caller's to release."""
    return await gw.dispatcher.call(["coder"], "/chat/completions", {}, lambda e: orjson.dumps(
        chat("up-coder", "x", stream=True)), stream=True, affinity=b"",
        deadline=time.monotonic() + 60)


async def _metrics(app: Any) -> str:
    import httpx

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
        return (await c.get("/metrics")).text
