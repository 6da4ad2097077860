"""The benchmark's ``floor``: the least a Python pass-through can add.

Raw ASGI (no framework) on uvicorn with uvloop and httptools, one pooled
``aiohttp.ClientSession``, the upstream's bytes passed through untouched, the cyclic GC frozen
after start-up (its pauses otherwise dominate the p99 at concurrency 1). Whatever expertgate
adds beyond this is the cost of its own work: parsing, validation, routing, logging.

Run: ``python -m expertgate.bench.floor --port P --upstream http://127.0.0.1:U``.
"""

from __future__ import annotations

import argparse
import gc
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import aiohttp

__all__ = ["main", "make_app"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def make_app(upstream: str) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """An ASGI app forwarding every POST to ``upstream + path``."""
    upstream = upstream.rstrip("/")
    state: dict[str, aiohttp.ClientSession] = {}
    headers = {"content-type": "application/json"}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    state["s"] = aiohttp.ClientSession(
                        connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=300),
                        timeout=aiohttp.ClientTimeout(total=60))
                    gc.collect()
                    gc.freeze()
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await state["s"].close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        chunks = []
        more = True
        while more:
            msg = await receive()
            chunks.append(msg.get("body", b""))
            more = msg.get("more_body", False)
        body = b"".join(chunks)
        url = upstream + scope["path"]
        async with state["s"].post(url, data=body, headers=headers) as r:
            ctype = r.headers.get("content-type", "application/json").encode()
            if ctype.startswith(b"text/event-stream"):
                await send({"type": "http.response.start", "status": r.status,
                            "headers": [(b"content-type", ctype)]})
                async for chunk in r.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk,
                                "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            data = await r.read()
            await send({"type": "http.response.start", "status": r.status,
                        "headers": [(b"content-type", ctype),
                                    (b"content-length", str(len(data)).encode())]})
            await send({"type": "http.response.body", "body": data})

    return app


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:8000")
    a = p.parse_args(argv)
    import uvicorn

    uvicorn.run(make_app(a.upstream), host=a.host, port=a.port, loop="uvloop",
                http="httptools", access_log=False, log_level="warning", lifespan="on",
                backlog=4096)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
