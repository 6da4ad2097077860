"""An open dashboard (chromium through Playwright) while the gateway restarts: the page
asked for the decisions after the last sequence number it had seen, which the restarted
gateway (counting again from 1) answered with none, so the table froze until the new process
passed the old number. The page now sends the feed its number counts in, and a new feed's
decisions appear at the next poll, beside the earlier rows."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from expertgate.procs import free_port
from gateway.auth import hash_key
from tests.e2e.test_dashboard_browser import ARGS, CHROMIUM, served_gateway
from tests.unit.gateway_helpers import base_config, chat

ADMIN = "sk-dashboard-restart-admin-0c4d"


async def _ask(url: str, text: str) -> str:
    async with httpx.AsyncClient(base_url=url) as c:
        r = await c.post("/v1/chat/completions", json=chat("auto", text),
                         headers={"authorization": f"Bearer {ADMIN}"})
        assert r.status_code == 200, r.text
        return r.headers["x-request-id"]


async def test_the_open_dashboard_shows_decisions_after_a_restart(ups, tmp_path: Path) -> None:
    if not os.path.exists(CHROMIUM):
        msg = "Debian chromium is not installed (make setup installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    from playwright.async_api import async_playwright

    cfg = base_config(ups[0].base, ups[1].base)
    cfg["api_keys"] = [{"name": "ops", "sha256": hash_key(ADMIN), "admin": True}]
    port = free_port()
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = await browser.new_page()
            async with served_gateway(cfg, tmp_path / "a.jsonl", port) as url:
                # three decisions before the restart: the page's since reaches 3
                first = [await _ask(url, t) for t in
                         ("tell me a joke", "fix this bug in my code", "how are you today")]
                await page.goto(url + "/ui")
                await page.locator("#key-form").wait_for(state="visible", timeout=10_000)
                await page.fill("#key", ADMIN)
                await page.click("#key-form button")
                for rid in first:
                    await page.locator(f'#decisions tr[data-request-id="{rid}"]').wait_for(
                        timeout=15_000)
            # the same address, a new process: its first decision is number 1
            async with served_gateway(cfg, tmp_path / "b.jsonl", port) as url:
                after = await _ask(url, "tell me a joke")
                await page.locator(f'#decisions tr[data-request-id="{after}"]').wait_for(
                    timeout=15_000)
                # the earlier rows stay, once each
                for rid in first:
                    assert await page.locator(
                        f'#decisions tr[data-request-id="{rid}"]').count() == 1
        finally:
            await browser.close()
