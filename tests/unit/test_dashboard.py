"""The dashboard's data (/ui/api/summary): shares, cost saved, rejections, cache, degraded
paths, decision time; its auth (the admin API's) and its off switch. Upstream doubles."""

from __future__ import annotations

from pathlib import Path

from gateway.auth import hash_key
from tests.unit.gateway_helpers import base_config, chat, gateway_client

SECRET = "sk-dashboard-admin-3b9f"
TENANT = "sk-dashboard-tenant-77c1"


async def test_summary_counts_what_the_gateway_did(ups, tmp_path: Path) -> None:
    coder, chatter = ups
    cfg = base_config(coder.base, chatter.base, log_prompts=True)
    strict = {"name": "strict", "routes": cfg["policies"][0]["routes"],
              "params": {"threshold": 0.99},
              "on_reject": {"action": "refusal", "message": "no"}}
    cfg["policies"].append(strict)
    async with gateway_client(cfg, tmp_path) as (c, _):
        for text in ("tell me a joke", "tell me a joke", "fix this bug in my code"):
            assert (await c.post("/v1/chat/completions", json=chat("auto", text))
                    ).status_code == 200
        r = await c.post("/v1/chat/completions", json=chat("strict", "zebra migration"))
        assert r.status_code == 200 and r.headers["x-expertgate-expert"] == "none"
        await coder.stop()
        r = await c.post("/v1/chat/completions", json=chat("auto", "refactor this class"))
        assert "expert-fallback" in r.headers["x-expertgate-degraded"]

        s = (await c.get("/ui/api/summary")).json()
        assert s["requests"] == 5 and s["routed"] == 5 and s["errors"] == 0
        assert s["unserved"] == 1  # the refusal
        by = {e["name"]: e for e in s["experts"]}
        # chatter: 2 jokes + the fallback; coder: the bug fix (7 prompt + 5 completion tokens)
        assert by["chatter"]["requests"] == 3 and by["coder"]["requests"] == 1
        assert abs(by["coder"]["share"] - 0.2) < 1e-9
        assert abs(by["coder"]["cost_usd"] - (7 * 1.0 + 5 * 2.0) / 1e6) < 1e-12
        cost = s["cost"]
        assert cost["strongest_expert"] == "coder"  # the only priced expert
        # the four answered routed requests, each 7 + 5 tokens, all at coder's prices
        assert abs(cost["if_strongest_usd"] - 4 * 17 / 1e6) < 1e-12
        assert abs(cost["saved_usd"] - 3 * 17 / 1e6) < 1e-12
        assert s["cache"]["hit"] == 1 and s["cache"]["miss"] == 4
        assert s["rejections"] == {"ood": 1}
        assert s["degraded"] == {"expert-fallback": 1}
        assert s["decision_ms"]["n"] == 5 and s["decision_ms"]["p99"] >= s["decision_ms"]["p50"]
        # added latency: the four non-streamed answers (not the refusal, which called no one)
        assert s["added_ms"]["n"] == 4 and 0 <= s["added_ms"]["p50"] <= s["added_ms"]["p99"]
        newest = s["recent"][0]
        assert newest["text"] == "refactor this class" and newest["expert"] == "chatter"
        assert "expert-fallback" in newest["degraded"] and newest["reason"]
        later = (await c.get(f"/ui/api/summary?since={s['seq']}")).json()
        assert later["recent"] == []
        page = await c.get("/ui/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert (await c.get("/ui/static/app.js")).status_code == 200
        assert (await c.get("/ui/static/..%2Fdashboard.py")).status_code == 404


async def test_summary_needs_the_admin_credentials_and_can_be_turned_off(ups, tmp_path: Path
                                                                         ) -> None:
    cfg = base_config(ups[0].base, ups[1].base)
    cfg["api_keys"] = [{"name": "ops", "sha256": hash_key(SECRET), "admin": True},
                       {"name": "tenant", "sha256": hash_key(TENANT)}]
    async with gateway_client(cfg, tmp_path) as (c, _):
        r = await c.get("/ui/api/summary")
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        r = await c.get("/ui/api/summary", headers={"authorization": f"Bearer {TENANT}"})
        assert r.status_code == 403  # a tenant is no administrator
        r = await c.get("/ui/api/summary", headers={"authorization": f"Bearer {SECRET}"})
        assert r.status_code == 200 and r.json()["requests"] == 0
    async with gateway_client(cfg, tmp_path, ui=False) as (c, _):
        for path in ("/ui", "/ui/", "/ui/static/app.js", "/ui/api/summary"):
            r = await c.get(path, headers={"authorization": f"Bearer {SECRET}"})
            assert r.status_code == 404, path
