"""One typed routing-log record (routers.logrecord) for the gateway that writes it, the export
that joins feedback, and the loaders that read it back."""

from __future__ import annotations

from pathlib import Path

import orjson

from evals.datasets.routing import load_logs
from gateway.logs import export_logs
from routers.logrecord import JSON_FIELDS, REQUEST_FIELDS, TRAINING_COLUMNS, json_field
from tests.unit.gateway_helpers import base_config, chat, gateway_client


async def test_gateway_export_and_loader_share_one_record(ups, tmp_path: Path) -> None:
    cfg = base_config(ups[0].base, ups[1].base, log_prompts=True)
    async with gateway_client(cfg, tmp_path) as (c, _):
        ids = []
        for text in ("fix this bug in my code", "tell me a joke", "refactor this class"):
            r = await c.post("/v1/chat/completions", json=chat("auto", text))
            assert r.status_code == 200
            ids.append(r.headers["x-request-id"])
        explicit = await c.post("/v1/chat/completions", json=chat("chatter", "hello"))
        assert explicit.status_code == 200
        for rid, score in zip(ids, (1.0, 0.5, 0.0), strict=True):
            fb = await c.post("/v1/feedback", json={"request_id": rid, "score": score})
            assert fb.status_code == 200
    lines = (tmp_path / "log.jsonl").read_bytes().splitlines()
    recs = [orjson.loads(x) for x in lines]
    assert len(recs) == 4
    # every record the gateway writes has exactly the typed fields, in the typed order
    assert all(tuple(r) == REQUEST_FIELDS for r in recs)
    assert recs[0]["mode"] != "explicit" and recs[3]["mode"] == "explicit"
    out = tmp_path / "export.jsonl"
    assert export_logs(out, log_path=tmp_path / "log.jsonl",
                       feedback_path=tmp_path / "log.feedback.jsonl") == 4
    rows = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    assert set(TRAINING_COLUMNS) <= set(rows[0])
    assert {r["feedback_score"] for r in rows} == {1.0, 0.5, 0.0, None}
    for k in JSON_FIELDS:  # nested fields are JSON text in an export, read back as written
        assert json_field(rows[0][k]) == recs[0][k]
    table = load_logs(out)
    assert sorted(table.prompts) == ["fix this bug in my code", "refactor this class",
                                     "tell me a joke"]


def test_guard_verdict_dict_has_every_field() -> None:
    """GuardVerdict.to_dict is written by hand (it runs per routed request): it must keep
    every field of the dataclass, and non-finite scores become null."""
    from dataclasses import fields

    from routers.base import GuardVerdict

    d = GuardVerdict(label="x", ood_score=float("nan"), threshold=0.5).to_dict()
    assert list(d) == [f.name for f in fields(GuardVerdict)]
    assert d["ood_score"] is None and d["threshold"] == 0.5
