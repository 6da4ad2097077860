"""The routing log of a guarded policy carries the guard's verdict for accepted queries too,
so that its scores can be read from the log (a threshold check, an FRR estimate)."""

from __future__ import annotations

from pathlib import Path

import orjson

from routers.artifacts import load_router
from tests.unit.gateway_helpers import base_config, chat, gateway_client
from tests.unit.test_guarded_policy import _code_chat_guard


async def test_an_accepted_query_logs_the_guards_verdict(ups, tmp_path: Path) -> None:
    # a semantic-routes policy with a guard logged the semantic router's own verdict for
    # every accepted query (its 1 - similarity against 1 - the route threshold): the
    # guard's score and threshold were in the log only for the queries it rejected
    art = _code_chat_guard(tmp_path)
    guard = load_router(art)
    cfg = base_config(ups[0].base, ups[1].base, guard={"artifact": str(art)})
    async with gateway_client(cfg, tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json=chat("auto", "refactor this class"))
        assert r.status_code == 200 and r.headers["x-expertgate-expert"] == "coder"
        d = (await c.post("/v1/route", json={"model": "auto",
                                             "text": "refactor this class"})).json()
        assert d["guard"]["threshold"] == round(guard.threshold_, 6)
    rec = orjson.loads((tmp_path / "log.jsonl").read_bytes().splitlines()[0])
    assert rec["guard"]["threshold"] == round(guard.threshold_, 6)
    assert rec["guard"]["label"] == "code" and rec["guard"]["rejected"] is False
    assert rec["guard"]["unsafe_score"] is not None  # the guard's unsafe layer ran
