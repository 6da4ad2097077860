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


async def test_the_dashboard_runs_only_its_own_code_and_is_never_framed(ups, tmp_path: Path
                                                                        ) -> None:
    """The page had no Content-Security-Policy, no frame protection and no nosniff, and the
    summary (prompts with log_prompts, tenants' names) could be cached: any page could frame
    the dashboard and click it through, and one slip from textContent to innerHTML in
    app.js would have run a client's prompt as script. Every /ui answer now carries the
    policy; the summary is never stored; app.js never writes HTML, and the page holds no
    inline script, style or handler the policy would block."""
    import re

    from gateway.api.dashboard import STATIC

    cfg = base_config(ups[0].base, ups[1].base, log_prompts=True)
    cfg["api_keys"] = [{"name": "ops", "sha256": hash_key(SECRET), "admin": True}]
    async with gateway_client(cfg, tmp_path) as (c, _):
        for path in ("/ui", "/ui/", "/ui/static/app.js", "/ui/static/style.css",
                     "/ui/api/summary"):
            r = await c.get(path, headers={"authorization": f"Bearer {SECRET}"})
            assert r.status_code in (200, 307), path
            csp = {d.split()[0]: d.split()[1:] for d in
                   r.headers["content-security-policy"].split("; ")}
            assert csp["default-src"] == ["'none'"] and csp["script-src"] == ["'self'"], path
            assert csp["frame-ancestors"] == ["'none'"] and csp["connect-src"] == ["'self'"]
            assert r.headers["x-frame-options"] == "DENY", path
            assert r.headers["x-content-type-options"] == "nosniff", path
            assert r.headers["referrer-policy"] == "no-referrer", path
        assert r.headers["cache-control"] == "no-store"  # the summary
    js = (STATIC / "app.js").read_text()
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|"
                         r"new Function|setAttribute\(\s*[\"']on", js)
    html = (STATIC / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)|<style|\sstyle=|\son\w+=", html)
