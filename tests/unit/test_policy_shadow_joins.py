"""A shadow candidate's record names the request it shadows. It had no request_id, tenant
or text_hash: ``expertgate logs export`` could not join it with that request or its rating
(every shadow row had feedback_score null), and ``--tenant T`` dropped every shadow row."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import orjson

from gateway.logs import export_routing_log
from tests.unit.gateway_helpers import base_config, chat, gateway_client
from tests.unit.test_shadow_canary import _always_coder


async def test_a_shadow_record_joins_the_request_it_shadows_and_its_rating(
        ups, tmp_path: Path) -> None:
    cfg = base_config(ups[0].base, ups[1].base, candidate={
        "router": "knn", "artifact": str(_always_coder(tmp_path / "cand")), "mode": "shadow"})
    cfg["api_keys"] = [{"name": "team-a", "sha256": hashlib.sha256(b"ka").hexdigest()}]
    auth = {"authorization": "Bearer ka"}
    async with gateway_client(cfg, tmp_path, feedback_path=tmp_path / "fb.jsonl") as (c, gw):
        ids = []
        for text in ("tell me a joke", "how are you today"):
            r = await c.post("/v1/chat/completions", json=chat("auto", text), headers=auth)
            assert r.status_code == 200
            ids.append(r.headers["x-request-id"])
        await asyncio.gather(*gw.pipeline._shadow_tasks)
        r = await c.post("/v1/feedback", json={"request_id": ids[0], "score": 0.25},
                         headers=auth)
        assert r.status_code == 200
    recs = [orjson.loads(x) for x in (tmp_path / "log.jsonl").read_bytes().splitlines()]
    served = {r["request_id"]: r for r in recs if r["endpoint"] == "chat"}
    shadows = [r for r in recs if r["endpoint"] == "shadow"]
    assert sorted(r["request_id"] for r in shadows) == sorted(ids)  # one per request
    for s in shadows:
        assert s["tenant"] == "team-a"
        assert s["text_hash"] == served[s["request_id"]]["text_hash"]
    out = tmp_path / "export.jsonl"
    export_routing_log(out, log_path=tmp_path / "log.jsonl",
                       feedback_path=tmp_path / "fb.jsonl", tenant="team-a")
    rows = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    rated = {(r["endpoint"], r["request_id"]): r["feedback_score"] for r in rows}
    assert rated[("shadow", ids[0])] == rated[("chat", ids[0])] == 0.25
    assert rated[("shadow", ids[1])] is None and len(rows) == 4


def test_offpolicy_takes_a_shadowed_request_for_no_repeat(tmp_path: Path, capsys) -> None:
    from evals.offpolicy import load_logged

    base = {"tenant": "t", "policy": "auto", "text": "tell me a joke", "mode": "single",
            "targets": ["chatter", "coder"], "status": "ok", "feedback_score": 1.0,
            "propensity": 1.0, "action_probs": {"chatter": 1.0}}
    rows = []
    for i in range(4):
        rid = f"r{i}"
        rows.append({**base, "request_id": rid, "endpoint": "chat", "expert": "chatter"})
        rows.append({**base, "request_id": rid, "endpoint": "shadow", "expert": "coder",
                     "feedback_score": None})
    p = tmp_path / "export.jsonl"
    p.write_bytes(b"\n".join(orjson.dumps(r) for r in rows))
    import numpy as np

    data = load_logged(p, lambda t: np.zeros((len(t), 2)))
    assert len(data.actions) == 4
    assert "repeat the request id" not in capsys.readouterr().err
