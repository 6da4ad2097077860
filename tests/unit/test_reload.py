"""Reload swaps policies atomically; the policy version (and so the cache key) changes."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path

import yaml

from expertgate.bench.upstream_double import OpenAIUpstreamDouble
from tests.unit.gateway_helpers import base_config, chat, gateway_client


async def test_admin_reload_changes_routes_and_invalidates_cache(tmp_path: Path) -> None:
    a = await OpenAIUpstreamDouble("a").start()
    b = await OpenAIUpstreamDouble("b").start()
    try:
        cfg = copy.deepcopy(base_config(a.base, b.base))  # edited below: not the shared ROUTES
        path = tmp_path / "gw.yaml"
        path.write_text(yaml.safe_dump(cfg))
        async with gateway_client(cfg, tmp_path, config=path) as (c, gw):
            body = chat("auto", "tell me a joke")
            r1 = await c.post("/v1/chat/completions", json=body)
            assert r1.headers["x-expertgate-expert"] == "chatter"
            v1 = gw.policy_set.policies["auto"].version
            # send the chat route to the coder instead
            cfg["policies"][0]["routes"][1]["expert"] = "coder"
            path.write_text(yaml.safe_dump(cfg))
            slow = asyncio.create_task(c.post("/v1/chat/completions",
                                              json=chat("chatter", "in flight")))
            r = await c.post("/admin/reload")
            assert r.status_code == 200 and r.json()["changed"] == ["auto"]
            assert gw.policy_set.policies["auto"].version != v1
            assert (await slow).status_code == 200  # in-flight request unaffected
            r2 = await c.post("/v1/chat/completions", json=body)
            assert r2.headers["x-expertgate-cache"] == "miss"  # new version, new key
            assert r2.headers["x-expertgate-expert"] == "coder"
            # a broken file leaves the running configuration untouched
            path.write_text("experts: [\n")
            r = await c.post("/admin/reload")
            assert r.status_code == 400 and r.json()["error"]["code"] == "config_invalid"
            r3 = await c.post("/v1/chat/completions", json=body)
            assert r3.status_code == 200 and r3.headers["x-expertgate-cache"] == "hit"
            # so does a changed embedder: loaded once per process, it needs a restart
            cfg["embedder"] = {"kind": "static"}
            path.write_text(yaml.safe_dump(cfg))
            r = await c.post("/admin/reload")
            assert r.status_code == 400 and "restart the gateway" in r.json()["error"]["message"]
    finally:
        await a.stop()
        await b.stop()
