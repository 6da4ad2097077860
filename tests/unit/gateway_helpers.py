"""Helpers to build a gateway app in-process against upstream test doubles."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from gateway.app import create_app
from gateway.config import Settings, parse_config
from routers.embed import HashingEmbedder

ROUTES = [
    {"name": "code", "expert": "coder", "examples": [
        "write a python function", "fix this bug in my code", "refactor this class",
        "why does my program crash with a segmentation fault"]},
    {"name": "chat", "expert": "chatter", "examples": [
        "tell me a joke", "how are you today", "what is a good movie to watch",
        "let's talk about the weather"]},
]


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
