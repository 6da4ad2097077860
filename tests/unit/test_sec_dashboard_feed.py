"""The dashboard after the gateway restarts (or with ``serve --workers N``, each worker
keeping its own feed): the page asks for the decisions after the sequence number it last
saw, which counted in another feed. It got none (a new process starts again at 1) until the
new feed passed the old number, so an operator's open dashboard went blank after a restart.
The summary names its feed; a ``since`` of another feed gets the latest decisions."""

from __future__ import annotations

from pathlib import Path

from tests.unit.gateway_helpers import base_config, chat, gateway_client


async def test_a_since_from_another_feed_gets_the_latest_decisions(ups, tmp_path: Path
                                                                  ) -> None:
    coder, chatter = ups
    cfg = base_config(coder.base, chatter.base)
    async with gateway_client(cfg, tmp_path) as (c, _):
        for text in ("tell me a joke", "fix this bug in my code", "how are you today"):
            assert (await c.post("/v1/chat/completions", json=chat("auto", text))
                    ).status_code == 200
        old = (await c.get("/ui/api/summary")).json()
        assert old["seq"] == 3 and len(old["recent"]) == 3
        # the same feed: since filters as before
        same = (await c.get("/ui/api/summary",
                            params={"since": old["seq"], "feed": old["feed"]})).json()
        assert same["feed"] == old["feed"] and same["recent"] == []
    # the gateway restarted: a new process, a new feed
    async with gateway_client(cfg, tmp_path / "restarted") as (c, _):
        r = await c.post("/v1/chat/completions", json=chat("auto", "tell me a joke"))
        assert r.status_code == 200
        new = (await c.get("/ui/api/summary",
                           params={"since": old["seq"], "feed": old["feed"]})).json()
        assert new["feed"] != old["feed"]
        assert [d["request_id"] for d in new["recent"]] == [r.headers["x-request-id"]]
        assert new["seq"] == 1


async def test_the_page_sends_the_feed_with_since() -> None:
    js = (Path(__file__).resolve().parents[2] / "gateway" / "static" / "dashboard" /
          "app.js").read_text()
    assert "&feed=${encodeURIComponent(feed)}" in js and "feed = s.feed" in js
