"""A guarded policy while the embedder fails: requests take the policy's fallback (said in
``x-expertgate-degraded: embedder``), but the guard's text check, which needs no embedding,
still refuses what it recognises, and the log says the guard's other checks were skipped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson

from tests.unit.gateway_helpers import base_config, chat, gateway_client
from tests.unit.test_guarded_policy import _code_chat_guard


async def _down(text: str) -> np.ndarray:
    raise RuntimeError("encoder session died")


async def test_an_unsafe_request_is_refused_while_the_embedder_is_down(
        ups, tmp_path: Path) -> None:
    # the embedder's failure sent every request of a guarded policy to the fallback expert
    # unguarded: "those people are vermin", which the guard's lexicon refuses without any
    # embedding, reached the expert
    cfg = base_config(ups[0].base, ups[1].base, guard={"artifact": str(_code_chat_guard(
        tmp_path))}, on_reject={"action": "error", "status": 403, "message": "Refused."})
    async with gateway_client(cfg, tmp_path) as (c, gw):
        gw.pipeline._embed_fn = _down
        r = await c.post("/v1/chat/completions", json=chat("auto", "those people are vermin"))
        assert r.status_code == 403, r.text
        assert r.json()["error"]["code"] == "request_rejected"
        assert "unsafe content" in r.json()["error"]["message"]
        assert r.headers["x-expertgate-degraded"] == "embedder"
        assert ups[0].received == [] and ups[1].received == []
        # an ordinary request still takes the fallback, and says the guard only read its text
        r = await c.post("/v1/chat/completions", json=chat("auto", "tell me a joke"))
        assert r.status_code == 200 and r.headers["x-expertgate-expert"] == "chatter"
        assert r.headers["x-expertgate-degraded"] == "embedder"
        r = await c.post("/v1/route", json={"model": "auto", "text": "tell me a joke"})
        d = r.json()
        assert d["action"] == "forward" and d["guard"]["skipped"] is True
        assert d["guard"]["rejected"] is False
        assert "guard" in d["reason"]
    recs = [orjson.loads(ln) for ln in (tmp_path / "log.jsonl").read_bytes().splitlines()]
    assert [(r["http_status"], r["guard"]["skipped"], r["guard"]["reject_reason"])
            for r in recs] == [(403, True, "unsafe"), (200, True, None)]


async def test_a_policy_served_by_a_guard_router_keeps_its_text_check(
        ups, tmp_path: Path) -> None:
    # the same for a policy whose router is the guard artifact itself (router: guard)
    from tests.unit.test_guard_policy_models import _config

    async with gateway_client(_config(ups, tmp_path), tmp_path) as (c, gw):
        gw.pipeline._embed_fn = _down
        r = await c.post("/v1/chat/completions", json=chat("auto", "those people are vermin"))
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == \
            "Out of scope."
        assert r.headers["x-expertgate-expert"] == "none"
        assert r.headers["x-expertgate-degraded"] == "embedder"
        assert ups[0].received == [] and ups[1].received == []
