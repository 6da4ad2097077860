"""A streamed request that a llama-cpp-python server refuses (a prompt over its context, a
``tool_choice`` naming no tool).

llama-cpp-python (0.3) answers it with 200 and an empty event stream: the error is raised in
its generator, written to its own log only. The gateway answered the client a 502
``upstream_protocol_error`` ("closed the stream before any data"), which the OpenAI SDK
retries twice, and counted a replica failure each time: five such requests from one client
opened the expert's circuit for every other client (seen against the demo's real llama.cpp
experts). The same request not streamed is llama-cpp-python's 400
``context_length_exceeded``, passed on as the request's own error.

gateway/upstreams.py (``call_openai``, ``_why_empty``): for a ``llama-cpp-python`` expert,
an empty stream is asked once more without streaming, and its 4xx passed on; its 500 is
judged as any 500; anything else is the protocol failure it was.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from expertgate.bench.upstream_double import LocalSite
from expertgate.procs import free_port
from tests.unit.gateway_helpers import coder_cfg, gateway_client

TOO_LONG = {"error": {
    "message": "This model's maximum context length is 2048 tokens. However, you requested "
               "9036 tokens (9031 in the messages, 5 in the completion).",
    "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}


@dataclass
class RefusingLlama(LocalSite):
    """llama-cpp-python's answers to a request it refuses: streamed, 200 and no event;
    not streamed, its 400."""

    port: int = field(default_factory=free_port)
    streamed: int = 0
    #: what it answers the same request not streamed: 400 (its refusal), 500, or 200
    unstreamed: int = 400
    _runner: web.AppRunner | None = None
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        return app

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not body.get("stream"):
            if self.unstreamed == 200:
                return web.json_response({
                    "id": "x", "object": "chat.completion", "model": "m", "choices": [{
                        "index": 0, "finish_reason": "stop",
                        "message": {"role": "assistant", "content": "hi"}}]})
            if self.unstreamed == 500:
                return web.json_response({"error": {"message": "boom"}}, status=500)
            return web.json_response(TOO_LONG, status=400)
        self.streamed += 1
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write_eof()
        return resp


async def test_a_refused_stream_is_the_experts_400_and_opens_no_circuit(
        ups: Any, tmp_path: Path) -> None:
    llama = await RefusingLlama().start()
    try:
        cfg = coder_cfg(llama.base, ups[1].base, dialect="llama-cpp-python")
        async with gateway_client(cfg, tmp_path) as (c, _):
            for _ in range(8):
                r = await c.post("/v1/chat/completions", json={
                    "model": "coder", "stream": True,
                    "messages": [{"role": "user", "content": "hello " * 9000}]})
                assert r.status_code == 400, r.text
                assert r.json() == TOO_LONG
                assert r.headers["x-expertgate-expert"] == "coder"
            state = (await c.get("/admin/state")).json()
    finally:
        await llama.stop()
    assert llama.streamed == 8
    assert [rep["circuit"] for rep in state["replicas"]["coder"]] == ["closed"]


@pytest.mark.parametrize("unstreamed", [200, 500])
async def test_an_empty_stream_not_explained_by_a_4xx_is_still_a_failure(
        ups: Any, tmp_path: Path, unstreamed: int) -> None:
    """Asked again, a replica that answers (it closed the stream for its own reasons) or
    fails with a 500 is a failure of the replica, as before: never a 200 stream built from
    nothing, never its 4xx."""
    llama = await RefusingLlama(unstreamed=unstreamed).start()
    try:
        cfg = coder_cfg(llama.base, ups[1].base, dialect="llama-cpp-python")
        async with gateway_client(cfg, tmp_path) as (c, _):
            r = await c.post("/v1/chat/completions", json={
                "model": "coder", "stream": True,
                "messages": [{"role": "user", "content": "hello"}]})
    finally:
        await llama.stop()
    assert llama.streamed >= 1
    assert r.status_code == 502, r.text
    err = r.json()["error"]
    assert err["code"] == ("upstream_protocol_error" if unstreamed == 200
                           else "upstream_unavailable")
    assert "coder" in err["message"]
