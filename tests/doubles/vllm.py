"""A test double of a vLLM OpenAI-compatible server with multi-LoRA (vLLM needs a GPU).

It follows vLLM's documented API, not its engine:

- ``GET /v1/models`` lists the base model (``root`` = the model path, ``parent`` null) and
  each LoRA adapter (``root`` = the adapter's path, ``parent`` = the base model's id).
- ``POST /v1/load_lora_adapter {"lora_name", "lora_path"}`` adds an adapter at run time
  (only with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``, ``allow_runtime_lora`` here; without
  it the endpoint does not exist, 404); loading a loaded name again is a 400.
- ``POST /v1/unload_lora_adapter {"lora_name"}`` removes it; an unknown name is a 404.
- ``POST /v1/chat/completions`` and ``/v1/completions`` with ``model`` = the base model or an
  adapter name; any other name is a 404 ``NotFoundError`` in vLLM's error shape.

- ``api_key`` (``vllm serve --api-key KEY``): every ``/v1`` request needs ``Authorization:
  Bearer KEY``, else 401 ``{"error": "Unauthorized"}``.

The "answer" says which model or adapter produced it, so tests can prove where a request
went; every request is recorded in ``received``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from expertgate.bench.upstream_double import LocalSite
from expertgate.procs import free_port

__all__ = ["VLLMDouble"]


def _error(message: str, type_: str, status: int) -> web.Response:
    # vLLM's ErrorResponse: {"object": "error", "message", "type", "param", "code"}
    return web.json_response({"object": "error", "message": message, "type": type_,
                              "param": None, "code": status}, status=status)


@dataclass
class VLLMDouble(LocalSite):
    """``vllm serve BASE --enable-lora --lora-modules name=path ...``, as seen over HTTP."""

    base_model: str = "meta-llama/Llama-3.1-8B-Instruct"
    lora_modules: dict[str, str] = field(default_factory=dict)
    allow_runtime_lora: bool = True
    max_model_len: int = 8192
    api_key: str | None = None
    port: int = field(default_factory=free_port)
    received: list[dict[str, Any]] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_get("/health", self._health)
        if self.allow_runtime_lora:
            app.router.add_post("/v1/load_lora_adapter", self._load)
            app.router.add_post("/v1/unload_lora_adapter", self._unload)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.api_key is not None and request.path.startswith("/v1") and \
                request.headers.get("authorization") != f"Bearer {self.api_key}":
            return web.json_response({"error": "Unauthorized"}, status=401)
        resp: web.StreamResponse = await handler(request)
        return resp

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _models(self, request: web.Request) -> web.Response:
        now = int(time.time())
        data = [{"id": self.base_model, "object": "model", "created": now, "owned_by": "vllm",
                 "root": self.base_model, "parent": None,
                 "max_model_len": self.max_model_len}]
        data += [{"id": name, "object": "model", "created": now, "owned_by": "vllm",
                  "root": path, "parent": self.base_model, "max_model_len": None}
                 for name, path in self.lora_modules.items()]
        return web.json_response({"object": "list", "data": data})

    async def _load(self, request: web.Request) -> web.Response:
        body = await request.json()
        name, path = body.get("lora_name"), body.get("lora_path")
        if not name or not path:
            return _error("Both 'lora_name' and 'lora_path' must be provided.",
                          "BadRequestError", 400)
        if name in self.lora_modules:
            return _error(f"The lora adapter '{name}' has already been loaded.",
                          "InvalidUserInput", 400)
        self.lora_modules[name] = path
        return web.Response(text=f"Success: LoRA adapter '{name}' added successfully.")

    async def _unload(self, request: web.Request) -> web.Response:
        body = await request.json()
        name = body.get("lora_name")
        if name not in self.lora_modules:
            return _error(f"The lora adapter '{name}' cannot be found.", "NotFoundError", 404)
        del self.lora_modules[name]
        return web.Response(text=f"Success: LoRA adapter '{name}' removed successfully.")

    def _check_model(self, body: dict[str, Any]) -> web.Response | None:
        self.received.append(body)
        model = body.get("model")
        if model != self.base_model and model not in self.lora_modules:
            return _error(f"The model `{model}` does not exist.", "NotFoundError", 404)
        return None

    def _answer(self, model: str) -> str:
        kind = "base model" if model == self.base_model else "adapter"
        return f"answer from {kind} {model}"

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        bad = self._check_model(body)
        if bad is not None:
            return bad
        model = str(body["model"])
        text = self._answer(model)
        if body.get("stream"):
            resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
            await resp.prepare(request)
            for i, w in enumerate(text.split(" ")):
                ev = {"id": "chatcmpl-vllm-double", "object": "chat.completion.chunk",
                      "created": 1, "model": model, "choices": [{
                          "index": 0, "delta": {"content": (" " if i else "") + w},
                          "finish_reason": None}]}
                await resp.write(b"data: " + orjson.dumps(ev) + b"\n\n")
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            return resp
        return web.json_response({
            "id": "chatcmpl-vllm-double", "object": "chat.completion", "created": 1,
            "model": model,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14}})

    async def _completions(self, request: web.Request) -> web.Response:
        body = await request.json()
        bad = self._check_model(body)
        if bad is not None:
            return bad
        model = str(body["model"])
        return web.json_response({
            "id": "cmpl-vllm-double", "object": "text_completion", "created": 1,
            "model": model,
            "choices": [{"index": 0, "text": " " + self._answer(model),
                         "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}})
