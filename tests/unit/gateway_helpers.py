"""Helpers to build a gateway app in-process against upstream test doubles."""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiohttp import web

from expertgate.bench.upstream_double import OpenAIUpstreamDouble
from gateway.app import create_app
from gateway.config import Settings, parse_config
from gateway.dispatch import CircuitBreaker
from routers.embed import HashingEmbedder

ROUTES = [
    {"name": "code", "expert": "coder", "examples": [
        "write a python function", "fix this bug in my code", "refactor this class",
        "why does my program crash with a segmentation fault"]},
    {"name": "chat", "expert": "chatter", "examples": [
        "tell me a joke", "how are you today", "what is a good movie to watch",
        "let's talk about the weather"]},
]


def semantic_config_file(tmp_path: Path, policy: dict[str, Any] | None = None,
                         **top: Any) -> Path:
    """``tmp_path/gw.yaml``: the smallest config a CLI loads (the hashing embedder, one
    expert at an address nothing answers, one semantic policy ``auto``), with ``policy``'s
    keys added to the policy (a ``candidate``) and ``top``'s to the file (``api_keys``)."""
    import yaml

    p = tmp_path / "gw.yaml"
    p.write_text(yaml.safe_dump({
        "embedder": {"kind": "hashing"},
        "experts": [{"name": "coder", "api_base": "http://127.0.0.1:9/v1"}],
        "policies": [{"name": "auto", "routes": [
            {"name": "r", "expert": "coder", "examples": ["write python code"]}],
            **(policy or {})}],
        **top}))
    return p


def base_config(coder: str, chatter: str, **policy: Any) -> dict[str, Any]:
    # a copy: tests that edit their config (reload) must not change later tests' routes
    pol = {"name": "auto", "routes": copy.deepcopy(ROUTES), "params": {"threshold": 0.05},
           "fallback": ["chatter"]}
    pol.update(policy)
    return {
        "embedder": {"kind": "hashing", "micro_batch": False},
        "experts": [
            {"name": "coder", "api_base": coder, "model": "up-coder", "timeout_s": 2,
             "price": {"input_per_1m": 1.0, "output_per_1m": 2.0}},
            {"name": "chatter", "api_base": chatter, "timeout_s": 2},
        ],
        "policies": [pol],
    }


def coder_cfg(coder: str, chatter: str, **expert: Any) -> dict[str, Any]:
    """:func:`base_config` with ``expert`` set on its first expert (``coder``)."""
    cfg = base_config(coder, chatter)
    cfg["experts"][0].update(expert)
    return cfg


@contextlib.asynccontextmanager
async def gateway_client(cfg: dict[str, Any], tmp_path: Path, *, base_url: str = "http://gw",
                         raise_app_exceptions: bool = True, **settings: Any
                         ) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    s = Settings(**{"log_path": tmp_path / "log.jsonl", "ready_check_upstreams": False,
                    "gc_freeze": False, **settings})
    app = create_app(s, parse_config(cfg, "test.yaml"), embedder=HashingEmbedder())
    gw = app.gateway
    await gw.start()
    try:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
            yield client, gw
    finally:
        await gw.close()


def chat(model: str, text: str, **kw: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **kw}


def sse_data(text: str) -> list[Any]:
    """A stream's ``data:`` events, parsed, without the final ``[DONE]``."""
    return [orjson.loads(ln[6:]) for ln in text.split("\n")
            if ln.startswith("data: ") and ln != "data: [DONE]"]


def open_circuit(breaker: CircuitBreaker) -> None:
    """Open ``breaker``: as many consecutive failures as its threshold."""
    for _ in range(breaker.threshold):
        breaker.failure()


class AsgiRequest:
    """One POST through a raw ASGI app, no HTTP client between, so that a test plays the
    client's side: ``receive`` hands the body over once, then says the client disconnected
    when ``gone`` is set; a subclass's ``send`` gets the response's messages (and may
    raise, or block, as a server's writer to a lost client does)."""

    def __init__(self, app: Any, body: dict[str, Any], *,
                 path: str = "/v1/chat/completions") -> None:
        self.app = app
        self.path = path
        self.raw = orjson.dumps(body)
        self.read = False
        self.gone = asyncio.Event()
        self.status: int | None = None
        #: the response's body messages
        self.chunks: list[bytes] = []

    async def receive(self) -> dict[str, Any]:
        if not self.read:
            self.read = True
            return {"type": "http.request", "body": self.raw, "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, msg: dict[str, Any]) -> None:
        raise NotImplementedError

    async def run(self) -> None:
        scope = {"type": "http", "method": "POST", "path": self.path,
                 "headers": [(b"content-type", b"application/json")], "query_string": b"",
                 "root_path": "", "scheme": "http", "http_version": "1.1",
                 "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1)}
        await self.app(scope, self.receive, self.send)

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)


def knn_artifact(path: Path, models: list[str], scores: list[list[float]],
                 texts: tuple[str, str] = ("question one", "question two")) -> Path:
    """A one-neighbour router on the hashing embedder, fitted on two prompts (``scores``: per
    prompt, one per model; costs zero) and saved at ``path``: the smallest real artifact a
    CLI or a policy can load."""
    import numpy as np

    from routers.base import RoutingTable, make_router

    e = HashingEmbedder()
    S = np.asarray(scores, dtype=float)
    t = RoutingTable(["x", "y"], list(texts), list(models), S, np.zeros_like(S))
    return make_router("knn", k=1).fit(e.embed(list(texts)), t).save(
        path, embedder=e.name, embedder_spec={"kind": "hashing", "options": {}})


@dataclass
class RawDouble(OpenAIUpstreamDouble):
    """An upstream double that also keeps the bytes of every request, as sent."""

    bodies: list[bytes] = field(default_factory=list)

    def _app(self) -> web.Application:
        app = web.Application()
        for path, handler in (("/v1/chat/completions", self._chat),
                              ("/v1/completions", self._completions),
                              ("/v1/embeddings", self._embeddings)):
            app.router.add_post(path, self._keeping(handler))
        return app

    def _keeping(self, handler: Any) -> Any:
        async def keep(request: web.Request) -> web.StreamResponse:
            self.bodies.append(await request.read())
            return await handler(request)
        return keep


async def raw_doubles() -> AsyncIterator[tuple[RawDouble, RawDouble]]:
    """Two started :class:`RawDouble` upstreams (coder, chatter), stopped after (a fixture's
    body: ``yield from`` it in an async fixture)."""
    a = await RawDouble("coder-double").start()
    b = await RawDouble("chatter-double").start()
    try:
        yield a, b
    finally:
        await a.stop()
        await b.stop()
