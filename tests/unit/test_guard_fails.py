"""A policy's guard or router raising while serving: never a 500. The guard degrades to its
text check (``x-expertgate-degraded: guard-failed``), the router to the policy's fallback
(``router-failed``); neither decision is cached."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson

from tests.unit.gateway_helpers import base_config, chat, gateway_client
from tests.unit.test_guarded_policy import _code_chat_guard


def _broken(*args: Any, **kw: Any) -> Any:
    raise RuntimeError("search bank session failed")


def _metric(text: str, line: str) -> float:
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith(line))


async def test_a_failing_guard_degrades_to_its_text_check(ups, tmp_path: Path) -> None:
    # guard.verdict raising made every request of the policy a 500 internal_error, with a
    # traceback in the server log
    cfg = base_config(ups[0].base, ups[1].base, guard={"artifact": str(_code_chat_guard(
        tmp_path))}, on_reject={"action": "error", "status": 403, "message": "Refused."})
    async with gateway_client(cfg, tmp_path) as (c, gw):
        gw.pipeline.policies.policies["auto"].guard.verdict = _broken
        for _ in range(2):  # the second is no cache hit: the degraded decision is not kept
            r = await c.post("/v1/chat/completions", json=chat("auto", "tell me a joke"))
            assert r.status_code == 200, r.text
            assert r.headers["x-expertgate-degraded"] == "guard-failed"
            assert r.headers["x-expertgate-cache"] == "miss"
        r = await c.post("/v1/chat/completions", json=chat("auto", "those people are vermin",
                                                           stream=True))
        assert r.status_code == 403 and r.json()["error"]["code"] == "request_rejected"
        assert r.headers["x-expertgate-degraded"] == "guard-failed"
        m = (await c.get("/metrics")).text
        assert _metric(m, 'expertgate_degraded_total{component="guard-failed"}') == 3
    recs = [orjson.loads(ln) for ln in (tmp_path / "log.jsonl").read_bytes().splitlines()]
    assert [(r["http_status"], r["guard"]["skipped"], r["degraded"]) for r in recs] == \
        [(200, True, ["guard-failed"])] * 2 + [(403, True, ["guard-failed"])]


async def test_a_failing_router_takes_the_fallback(ups, tmp_path: Path) -> None:
    cfg = base_config(ups[0].base, ups[1].base)
    async with gateway_client(cfg, tmp_path) as (c, gw):
        gw.pipeline.policies.policies["auto"].router.decide = _broken
        r = await c.post("/v1/chat/completions", json=chat("auto", "fix this bug in my code"))
        assert r.status_code == 200, r.text
        assert r.headers["x-expertgate-degraded"] == "router-failed"
        assert r.headers["x-expertgate-expert"] == "chatter"  # the policy's fallback
        assert "router failed (RuntimeError)" in r.headers["x-expertgate-reason"]
        assert np.isfinite(float(r.headers["x-expertgate-decision-ms"]))
