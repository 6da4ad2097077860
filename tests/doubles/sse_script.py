"""An OpenAI-compatible upstream whose streamed answer is a script: what vLLM sends when
generation fails after its role chunk, stalls, or ends early, each piece its own network read.

Real HTTP on 127.0.0.1 (aiohttp). A script is a list of steps, played in order for every
streamed chat or completions request:

- ``bytes``: written as they are (one write; the gateway reads it on its own when a pause
  follows);
- a ``float``: a pause of that many seconds;
- ``"hang"``: no more writes until :meth:`ScriptedSSE.stop`;
- ``"abort"``: the connection closed at once, mid-body (no end of the chunked body).

After the last step the body is ended cleanly (``write_eof``). Every request is recorded.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from expertgate.bench.upstream_double import LocalSite
from expertgate.procs import free_port

__all__ = ["ScriptedSSE", "chunk", "completion_chunk", "event"]

Step = bytes | float | str


def event(obj: Any) -> bytes:
    """One SSE event: ``data: <json>`` and its blank line."""
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def chunk(delta: dict[str, Any], *, finish: str | None = None, index: int = 0,
          model: str = "up-coder") -> bytes:
    """A chat stream's event with one choice (vLLM's shape)."""
    return event({"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1,
                  "model": model, "choices": [{"index": index, "delta": delta,
                                               "logprobs": None, "finish_reason": finish}]})


def completion_chunk(text: str, *, finish: str | None = None) -> bytes:
    """A legacy completions stream's event."""
    return event({"id": "cmpl-s", "object": "text_completion", "created": 1,
                  "model": "up-coder", "choices": [{"index": 0, "text": text,
                                                    "logprobs": None,
                                                    "finish_reason": finish}]})


@dataclass
class ScriptedSSE(LocalSite):
    script: list[Step] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    received: list[dict[str, Any]] = field(default_factory=list)
    #: streams whose script ran to its end / whose reader went away first
    finished: int = 0
    abandoned: int = 0
    _runner: web.AppRunner | None = None
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._play)
        app.router.add_post("/v1/completions", self._play)
        return app

    async def _play(self, request: web.Request) -> web.StreamResponse:
        self.received.append(await request.json())
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        try:
            for step in self.script:
                if isinstance(step, bytes):
                    await resp.write(step)
                elif isinstance(step, float):
                    await asyncio.sleep(step)
                elif step == "hang":
                    await self._stopping.wait()
                    return resp
                elif step == "abort":
                    assert request.transport is not None
                    request.transport.close()
                    return resp
                else:
                    raise ValueError(f"unknown step {step!r}")
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            self.abandoned += 1
            raise
        self.finished += 1
        return resp
