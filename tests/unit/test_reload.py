"""Reload swaps policies atomically; the policy version (and so the cache key) changes."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path

import orjson
import pytest
import yaml

from expertgate.bench.upstream_double import OpenAIUpstreamDouble
from gateway.app import create_app
from gateway.config import ConfigError, Settings, parse_config
from routers.embed import HashingEmbedder
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


async def test_reload_refuses_a_config_nobody_could_call(tmp_path: Path) -> None:
    """`expertgate serve` refuses require_auth with no keys (and no Redis) at start; a reload
    (POST /admin/reload, SIGHUP: both call Gateway.reload) refuses it too, keeps the running
    configuration, says why and counts the failure. An unset api_key_env is a warning at
    start and in the reload's answer."""
    a = await OpenAIUpstreamDouble("a").start()
    b = await OpenAIUpstreamDouble("b").start()
    try:
        cfg = copy.deepcopy(base_config(a.base, b.base))
        path = tmp_path / "gw.yaml"
        path.write_text(yaml.safe_dump(cfg))
        async with gateway_client(cfg, tmp_path, config=path) as (c, gw):
            body = chat("auto", "tell me a joke")
            assert (await c.post("/v1/chat/completions", json=body)).status_code == 200
            locked = {**cfg, "require_auth": True}
            path.write_text(yaml.safe_dump(locked))
            r = await c.post("/admin/reload")
            assert r.status_code == 400 and r.json()["error"]["code"] == "config_invalid"
            msg = r.json()["error"]["message"]
            assert "running configuration is unchanged" in msg
            assert "require_auth: true" in msg and "no api_keys" in msg
            with pytest.raises(ConfigError, match="require_auth"):  # the SIGHUP path
                await gw.reload()
            assert not gw.config.require_auth
            assert (await c.post("/v1/chat/completions", json=body)).status_code == 200
            metrics = (await c.get("/metrics")).text
            assert 'expertgate_config_reloads_total{result="failed"} 2.0' in metrics
            assert 'expertgate_config_reloads_total{result="ok"} 0.0' in metrics
            # an unset api_key_env: served, and named in the answer
            cfg["experts"][0]["api_key_env"] = "EXPERTGATE_TEST_UNSET_KEY_VAR"
            path.write_text(yaml.safe_dump(cfg))
            r = await c.post("/admin/reload")
            assert r.status_code == 200
            [warning] = r.json()["warnings"]
            assert "EXPERTGATE_TEST_UNSET_KEY_VAR is not set" in warning
            metrics = (await c.get("/metrics")).text
            assert 'expertgate_config_reloads_total{result="ok"} 1.0' in metrics
    finally:
        await a.stop()
        await b.stop()


async def test_a_worker_refuses_to_start_with_a_config_nobody_could_call(tmp_path: Path
                                                                         ) -> None:
    """serve --workers N: a SIGHUP to the supervisor starts new workers from the file, past
    serve's own check; a worker that refuses to start leaves the running ones serving."""
    cfg = {**base_config("http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1"),
           "require_auth": True}
    s = Settings(log_path=tmp_path / "log.jsonl", gc_freeze=False)
    app = create_app(s, parse_config(cfg, "test.yaml"), embedder=HashingEmbedder())
    with pytest.raises(ConfigError, match="require_auth"):
        await app.gateway.start()


async def test_a_request_planned_before_a_reload_that_renames_its_expert_is_served(
        tmp_path: Path) -> None:
    """A reload that lands while a request is being planned (its query embedding) swaps the
    policies and the upstream pool together; the request keeps the PolicySet it started with,
    so its decision names the old expert. It was dispatched through the new pool, which has
    no such expert: a 500 internal_error (KeyError) for a request that had every right to an
    answer. It now keeps the pool (and prices) of the configuration it was planned with."""
    a = await OpenAIUpstreamDouble("a").start()
    b = await OpenAIUpstreamDouble("b").start()
    try:
        cfg = copy.deepcopy(base_config(a.base, b.base))
        cfg["policies"][0]["cache_ttl_s"] = 0
        path = tmp_path / "gw.yaml"
        path.write_text(yaml.safe_dump(cfg))
        async with gateway_client(cfg, tmp_path, config=path) as (c, gw):
            entered, release = asyncio.Event(), asyncio.Event()
            embed = gw.pipeline._embed_fn

            async def held(text: str) -> object:
                if text == "fix this bug in my code":  # the request's, not the warm-up's
                    entered.set()
                    await release.wait()
                return await embed(text)

            gw.pipeline._embed_fn = held
            req = asyncio.create_task(c.post("/v1/chat/completions",
                                             json=chat("auto", "fix this bug in my code")))
            await entered.wait()
            # the coder expert is renamed (same server), and its route follows it
            new = copy.deepcopy(cfg)
            new["experts"][0]["name"] = "coder-v2"
            new["policies"][0]["routes"][0]["expert"] = "coder-v2"
            path.write_text(yaml.safe_dump(new))
            r = await c.post("/admin/reload")
            assert r.status_code == 200 and "coder" not in gw.dispatcher.pools
            release.set()
            r = await req
            assert r.status_code == 200, r.text
            assert r.headers["x-expertgate-expert"] == "coder"
            assert r.json()["choices"][0]["message"]["content"] == "answer from a (up-coder)"
            r = await c.post("/v1/chat/completions", json=chat("auto", "fix this bug in my code"))
            assert r.headers["x-expertgate-expert"] == "coder-v2"
        recs = [orjson.loads(ln) for ln in (tmp_path / "log.jsonl").read_text().splitlines()]
        assert recs[0]["expert"] == "coder" and recs[0]["http_status"] == 200
        assert recs[0]["cost_usd"] == pytest.approx((7 * 1.0 + 5 * 2.0) / 1e6)
    finally:
        await a.stop()
        await b.stop()
