"""One body limit and one body timeout for every endpoint, applied before any parsing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.app import create_app
from gateway.config import Settings, parse_config
from routers.embed import HashingEmbedder
from tests.unit.gateway_helpers import base_config, gateway_client


@contextlib.asynccontextmanager
async def raw_app(cfg: dict[str, Any], tmp_path: Path, **settings: Any) -> AsyncIterator[Any]:
    """The started raw ASGI app, for clients no HTTP library will imitate."""
    s = Settings(log_path=tmp_path / "log.jsonl", ready_check_upstreams=False,
                 gc_freeze=False, **settings)
    app = create_app(s, parse_config(cfg, "test.yaml"), embedder=HashingEmbedder())
    await app.gateway.start()
    try:
        yield app
    finally:
        await app.gateway.close()


def _is_error(body: bytes, code: str | None = None) -> dict[str, Any]:
    obj = orjson.loads(body)
    assert set(obj) == {"error"} and set(obj["error"]) == {"message", "type", "param", "code"}
    if code is not None:
        assert obj["error"]["code"] == code
    return obj["error"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("path", ["/v1/route", "/v1/feedback", "/admin/reload",
                                  "/v1/chat/completions", "/v1/embeddings"])
async def test_every_endpoint_refuses_a_body_over_the_limit_before_reading_it(
        ups, tmp_path: Path, path: str) -> None:
    async with gateway_client(base_config(ups[0].base, ups[1].base), tmp_path,
                              max_body_bytes=4096) as (c, _):
        big = orjson.dumps({"model": "auto", "text": "x" * 10_000})
        r = await c.post(path, content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413
        _is_error(r.content, "request_too_large")
        # chunked, no content-length: counted while reading, stopped at the limit
        sent = []

        async def chunks() -> Any:
            for _ in range(100):
                sent.append(1)
                yield b"x" * 1024

        r = await c.post(path, content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413 and len(sent) < 100


@pytest.mark.parametrize("path", ["/v1/route", "/v1/feedback", "/v1/chat/completions"])
async def test_a_bad_content_length_is_an_openai_shaped_400(ups, tmp_path: Path, path: str
                                                            ) -> None:
    async with raw_app(base_config(ups[0].base, ups[1].base), tmp_path) as app:
        status, body = await _call(app, path, [(b"content-length", b"abc"),
                                               (b"content-type", b"application/json")],
                                   [b"{}"])
        assert status == 400
        assert "content-length" in _is_error(body)["message"]


@pytest.mark.parametrize("path", ["/v1/route", "/v1/chat/completions", "/v1/completions"])
async def test_a_compressed_body_is_a_415_that_says_so(ups, tmp_path: Path, path: str) -> None:
    import gzip

    body = gzip.compress(orjson.dumps({"model": "auto", "text": "hello", "messages": [
        {"role": "user", "content": "hello"}]}))
    async with gateway_client(base_config(ups[0].base, ups[1].base), tmp_path) as (c, _):
        r = await c.post(path, content=body, headers={"content-type": "application/json",
                                                      "content-encoding": "gzip"})
        assert r.status_code == 415
        assert "content-encoding 'gzip'" in _is_error(r.content,
                                                      "unsupported_content_encoding")["message"]
        # identity is no encoding at all
        r = await c.post("/v1/route", json={"model": "auto", "text": "hello"},
                         headers={"content-encoding": "identity"})
        assert r.status_code == 200
    assert not ups[0].received and not ups[1].received  # nothing forwarded


async def test_a_lone_surrogate_is_a_400_on_route_as_on_chat(ups, tmp_path: Path) -> None:
    raw = b'{"model": "auto", "text": "fix this bug \\ud800 in my code"}'
    async with gateway_client(base_config(ups[0].base, ups[1].base), tmp_path) as (c, _):
        r = await c.post("/v1/route", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400 and "surrogate" in _is_error(r.content)["message"]
        r = await c.post("/v1/chat/completions", content=raw.replace(
            b'"text": ', b'"messages": [{"role": "user", "content": ') + b"]}",
            headers={"content-type": "application/json"})
        assert r.status_code == 400


@pytest.mark.parametrize("path", ["/v1/route", "/v1/chat/completions"])
async def test_a_body_that_never_arrives_gets_408_in_bounded_time(ups, tmp_path: Path,
                                                                  path: str) -> None:
    async with raw_app(base_config(ups[0].base, ups[1].base), tmp_path,
                       body_timeout_s=0.3) as app:
        t0 = asyncio.get_running_loop().time()
        status, body = await _call(app, path, [(b"content-type", b"application/json")],
                                   [b'{"model": "auto",'], hang=True)
        assert status == 408
        _is_error(body, "request_timeout")
        assert asyncio.get_running_loop().time() - t0 < 3.0


async def test_shutdown_answers_bodies_still_being_read_with_503_at_once(ups, tmp_path: Path
                                                                         ) -> None:
    async with raw_app(base_config(ups[0].base, ups[1].base), tmp_path,
                       body_timeout_s=60) as app:
        task = asyncio.ensure_future(_call(app, "/v1/chat/completions",
                                           [(b"content-type", b"application/json")],
                                           [b'{"model": "auto",'], hang=True))
        await asyncio.sleep(0.2)
        app.gateway.begin_drain()
        status, body = await asyncio.wait_for(task, 2.0)
        assert status == 503
        _is_error(body, "shutting_down")


async def _call(app: Any, path: str, headers: list[tuple[bytes, bytes]], parts: list[bytes],
                hang: bool = False) -> tuple[int, bytes]:
    """Drive the raw ASGI app with a client that sends ``parts`` (then nothing if ``hang``)."""
    todo = list(parts)
    out: dict[str, Any] = {"body": b""}

    async def receive() -> dict[str, Any]:
        if todo:
            return {"type": "http.request", "body": todo.pop(0), "more_body": hang}
        if hang:
            await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(msg: dict[str, Any]) -> None:
        if msg["type"] == "http.response.start":
            out["status"] = msg["status"]
        else:
            out["body"] += msg.get("body", b"")

    scope = {"type": "http", "method": "POST", "path": path, "headers": headers,
             "query_string": b"", "root_path": "", "scheme": "http", "http_version": "1.1",
             "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1)}
    await app(scope, receive, send)
    return out["status"], out["body"]

