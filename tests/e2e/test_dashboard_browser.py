"""The dashboard in a real headless browser: Playwright driving Debian's chromium.

A real gateway (uvicorn on 127.0.0.1) in front of two OpenAI-compatible upstream doubles; a
routed request goes through it, then the page at /ui must show that decision with its
explanation, and the playground must explain a prompt through POST /v1/route.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from expertgate.procs import free_port
from gateway.app import create_app
from gateway.auth import hash_key
from gateway.config import Settings, parse_config
from routers.embed import HashingEmbedder
from tests.unit.gateway_helpers import base_config, chat

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ADMIN = "sk-dashboard-browser-admin-51d0"
XSS = 'fix my code <img src=x onerror="window.pwned=1"><script>window.pwned=2</script>'
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


@asynccontextmanager
async def served_gateway(cfg: dict[str, Any], log: Path, port: int) -> Any:
    """A gateway of ``cfg`` served by uvicorn on 127.0.0.1:``port`` (hashing embedder, the
    routing log at ``log``); yields its URL, stops it on the way out."""
    s = Settings(log_path=log, ready_check_upstreams=False, gc_freeze=False)
    app = create_app(s, parse_config(cfg, "test.yaml"), embedder=HashingEmbedder())
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on",
                                           log_level="warning"))
    serving = asyncio.create_task(server.serve())
    try:
        for _ in range(200):
            if server.started:
                break
            await asyncio.sleep(0.05)
        assert server.started
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await serving



async def test_dashboard_shows_a_decision_and_explains_a_prompt(ups, tmp_path: Path) -> None:
    if not os.path.exists(CHROMIUM):
        msg = "Debian chromium is not installed (make setup installs it)"
        if os.environ.get("CI") == "true":  # CI must run the browser test, never skip it
            pytest.fail(msg)
        pytest.skip(msg)
    from playwright.async_api import async_playwright

    cfg = base_config(ups[0].base, ups[1].base, log_prompts=True)
    cfg["api_keys"] = [{"name": "ops", "sha256": hash_key(ADMIN), "admin": True}]
    async with served_gateway(cfg, tmp_path / "log.jsonl", free_port()) as url:
        async with httpx.AsyncClient(base_url=url) as c:
            r = await c.post("/v1/chat/completions",
                             json=chat("auto", "fix this bug in my code please"),
                             headers={"authorization": f"Bearer {ADMIN}"})
            assert r.status_code == 200 and r.headers["x-expertgate-expert"] == "coder"
            rid = r.headers["x-request-id"]
            # a prompt that would run if the page ever wrote it as HTML
            r = await c.post("/v1/chat/completions", json=chat("auto", XSS),
                             headers={"authorization": f"Bearer {ADMIN}"})
            xss_rid = r.headers["x-request-id"]
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS,
                                               headless=True)
            try:
                page = await browser.new_page(viewport={"width": 1360, "height": 900})
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                # its Content-Security-Policy blocks nothing of its own (a violation is a
                # console message naming it), and no dialog ever opens
                page.on("console", lambda m: "Content Security Policy" in m.text
                        and errors.append(m.text))
                page.on("dialog", lambda d: errors.append(f"dialog: {d.message}"))
                await page.goto(url + "/ui")
                # keys are configured: the page asks for the admin key before it shows data
                await page.locator("#key-form").wait_for(state="visible", timeout=10_000)
                assert "admin API key" in await page.inner_text("#error")
                await page.fill("#key", ADMIN)
                await page.click("#key-form button")
                row = page.locator(f'#decisions tr[data-request-id="{rid}"]')
                await row.wait_for(timeout=15_000)
                assert await row.locator(".expert").inner_text() == "coder"
                assert "fix this bug in my code please" in await row.inner_text()
                assert "code" in await row.locator(".why").inner_text()  # the route's name
                xss_row = page.locator(f'#decisions tr[data-request-id="{xss_rid}"]')
                assert XSS in await xss_row.locator(".prompt").inner_text()  # shown as text
                assert await page.evaluate("window.pwned") is None
                assert await page.inner_text("#c-requests") == "2"
                assert "vs always coder" in await page.inner_text("#c-saved-sub")
                assert await page.inner_text("#c-saved") == "0.0%"  # coder was the choice
                share = page.locator('#experts tr[data-expert="coder"]')
                assert "100.0%" in await share.inner_text()

                await page.select_option("#pg-policy", "auto")
                await page.fill("#pg-text", "tell me a joke about cats")
                await page.click("#pg-explain")
                await page.locator("#pg-result").wait_for(state="visible", timeout=10_000)
                assert await page.inner_text("#pg-expert") == "chatter"
                assert "chat" in await page.inner_text("#pg-reason")
                assert "chatter" in await page.inner_text("#pg-targets")
                await page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
                shot = os.environ.get("EXPERTGATE_DASHBOARD_SCREENSHOT")
                if shot:  # a copy for a person to look at
                    shutil.copyfile(tmp_path / "dashboard.png", shot)
                assert errors == []
            finally:
                await browser.close()
        # the playground is a dry run: nothing reached an expert for it
        assert len(ups[1].received) == 0
