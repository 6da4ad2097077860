"""The double of an OpenAI-compatible upstream (what vLLM or llama.cpp serve): the one used by
the tests and the soak.

Real HTTP on 127.0.0.1 (aiohttp), so the gateway's real client, pooling, timeouts and
streaming are exercised; only the model is fake. The integration tier uses real llama.cpp
servers instead. Behaviour is switchable per test: fail with a status, hang before the first
byte, cut a stream after the first chunk, answer 200 with broken JSON (``badjson``) or a
stream with an event that is not JSON (``badsse``; ``bad_after`` good events first), or
fail only the requests ``reject_if`` picks with a 500, as llama.cpp does for features it
lacks (json_schema, images). Every request received is recorded, so tests can prove that
nothing was sent twice (``record=False`` for long runs such as the soak).
``start_in_thread`` runs it on its own event loop for synchronous callers.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self

import orjson
from aiohttp import web

from expertgate.procs import free_port

__all__ = ["LocalSite", "OpenAIUpstreamDouble", "ThreadedDouble"]


class LocalSite:
    """An aiohttp application served on 127.0.0.1:``port``: what every upstream double shares.

    Subclasses are dataclasses with ``port``, ``_runner`` (None) and ``_stopping`` (an
    :class:`asyncio.Event`) fields and build their routes in :meth:`_app`; :meth:`stop` sets
    ``_stopping`` first, so a handler waiting on it (a hung stream) ends before the cleanup.
    """

    port: int
    _runner: web.AppRunner | None
    _stopping: asyncio.Event

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _app(self) -> web.Application:
        raise NotImplementedError

    async def start(self) -> Self:
        self._stopping.clear()
        self._runner = web.AppRunner(self._app(), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@dataclass
class OpenAIUpstreamDouble(LocalSite):
    name: str = "double"
    port: int = field(default_factory=free_port)
    mode: str = "ok"  # ok | status | hang | cut | badjson | badsse | refuse_lora
    status: int = 500
    delay_s: float = 0.0
    bad_after: int = 0
    #: requests this picks get llama.cpp's 500 for an unsupported feature; others succeed
    reject_if: Callable[[dict[str, Any]], bool] | None = None
    #: send a usage event at the end of streams when asked (llama.cpp never does)
    stream_usage: bool = True
    #: (status, content type, body): every chat request gets exactly this reply (an error
    #: page, another server's error shape, a body that is not what the protocol promises)
    raw: tuple[int, str, bytes] | None = None
    #: seconds between a stream's events (a long generation)
    event_delay_s: float = 0.0
    #: seconds between a stream's ``data: [DONE]`` and the end of its body (an upstream slow
    #: to close its stream, or one that keeps it open)
    after_done_s: float = 0.0
    #: write ``data: [DONE]``, its line end and its blank line in three pieces (what a
    #: reader may get when they cross TCP segments)
    split_done: bool = False
    #: streams written to their end / abandoned by the reader (the connection went away)
    streams_finished: int = 0
    streams_abandoned: int = 0
    received: list[dict[str, Any]] = field(default_factory=list)
    adapters: dict[str, str] = field(default_factory=dict)  # vLLM-style LoRA: name -> parent
    record: bool = True
    _runner: web.AppRunner | None = None
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/load_lora_adapter", self._load_lora)
        return app

    async def _models(self, request: web.Request) -> web.Response:
        data = [{"id": self.name, "object": "model", "parent": None}]
        data += [{"id": a, "object": "model", "parent": p} for a, p in self.adapters.items()]
        return web.json_response({"object": "list", "data": data})

    async def _load_lora(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.adapters[body["lora_name"]] = self.name
        return web.Response(text=f"Success: LoRA adapter '{body['lora_name']}' added")

    async def _gate(self, body: dict[str, Any]) -> web.Response | None:
        if self.record:
            self.received.append(body)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.reject_if is not None and self.reject_if(body):
            return web.json_response({"error": {
                "message": "can only concatenate str (not \"list\") to str",
                "type": "internal_server_error", "param": None, "code": None}}, status=500)
        if self.raw is not None:
            status, ctype, data = self.raw
            return web.Response(status=status, body=data, headers={"content-type": ctype})
        if self.mode == "badjson" and not body.get("stream"):
            return web.Response(body=b'{"choices": [{"message": {"content": "trunc',
                                content_type="application/json")
        if self.mode == "status":
            return web.json_response({"error": {"message": "boom", "type": "server_error"}},
                                     status=self.status)
        if self.mode == "hang":
            await self._stopping.wait()  # until stop(): never answers in a test's lifetime
            return web.json_response({"error": {"message": "stopped"}}, status=503)
        return None

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        early = await self._gate(body)
        if early is not None:
            return early
        model = body.get("model")
        text = f"answer from {self.name} ({model})"
        if body.get("stream"):
            try:
                return await self._stream(request, body, model, text)
            except (ConnectionResetError, asyncio.CancelledError):
                self.streams_abandoned += 1
                raise
        return web.json_response({
            "id": "chatcmpl-double", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}})

    async def _stream(self, request: web.Request, body: dict[str, Any], model: Any, text: str
                      ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for i, w in enumerate(text.split(" ")):
            if i and self.event_delay_s:
                await asyncio.sleep(self.event_delay_s)
            ev = {"id": "chatcmpl-double", "object": "chat.completion.chunk", "created": 1,
                  "model": model, "choices": [{"index": 0, "delta": {
                      "content": (" " if i else "") + w}, "finish_reason": None}]}
            if self.mode == "badsse" and i == self.bad_after:
                await asyncio.sleep(0.05)  # its own chunk, after the good ones
                await resp.write(b"data: {this is not json\n\n")
                continue
            await resp.write(b"data: " + orjson.dumps(ev) + b"\n\n")
            if self.mode == "cut":
                # die mid-stream: abort the connection once the first chunk is out
                await asyncio.sleep(0.1)
                assert request.transport is not None
                request.transport.close()
                return resp
        ev = {"id": "chatcmpl-double", "object": "chat.completion.chunk", "created": 1,
              "model": model, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        await resp.write(b"data: " + orjson.dumps(ev) + b"\n\n")
        opts = body.get("stream_options") or {}
        if opts.get("include_usage") and self.stream_usage:
            ev = {"id": "chatcmpl-double", "object": "chat.completion.chunk", "created": 1,
                  "model": model, "choices": [], "usage": {
                      "prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}}
            await resp.write(b"data: " + orjson.dumps(ev) + b"\n\n")
        if self.split_done:
            for piece in (b"data: [DO", b"NE]\n", b"\n"):
                await resp.write(piece)
                await asyncio.sleep(0.05)
        else:
            await resp.write(b"data: [DONE]\n\n")
        if self.after_done_s:
            await asyncio.sleep(self.after_done_s)
        await resp.write_eof()
        self.streams_finished += 1
        return resp

    async def _completions(self, request: web.Request) -> web.Response:
        body = await request.json()
        early = await self._gate(body)
        if early is not None:
            return early
        return web.json_response({
            "id": "cmpl-double", "object": "text_completion", "created": 1,
            "model": body.get("model"),
            "choices": [{"index": 0, "text": f" completion from {self.name}",
                         "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}})

    async def _embeddings(self, request: web.Request) -> web.Response:
        body = await request.json()
        early = await self._gate(body)
        if early is not None:
            return early
        inp = body.get("input")
        items = inp if isinstance(inp, list) else [inp]
        return web.json_response({
            "object": "list", "model": body.get("model"),
            "data": [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, float(i)]}
                     for i in range(len(items))],
            "usage": {"prompt_tokens": 2 * len(items), "total_tokens": 2 * len(items)}})


class ThreadedDouble:
    """An :class:`OpenAIUpstreamDouble` on its own event loop in a daemon thread, for
    synchronous callers; ``stop`` ends both."""

    def __init__(self, name: str, **kw: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.double = asyncio.run_coroutine_threadsafe(
            OpenAIUpstreamDouble(name, **kw).start(), self.loop).result(10)

    @property
    def base(self) -> str:
        return self.double.base

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.double.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
