"""A decision the gateway had to make without the query's content (the embedder knew none
of its tokens: ``embedding-empty``) is never served from the decision cache as if it were a
real one. The first request said ``x-expertgate-degraded: embedding-empty``; the same
query again got the same priors-only decision from the cache, ``cache: hit`` and no
degraded header, log entry or metric: a silent degradation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from routers.embed import HashingEmbedder
from tests.unit.gateway_helpers import base_config, chat, gateway_client

UNREADABLE = "ผมอยากทราบวิธีการ"


async def test_a_decision_made_without_the_text_is_degraded_every_time(
        ups, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = HashingEmbedder.embed

    def embed(self: HashingEmbedder, texts: list[str]) -> np.ndarray:
        X = real(self, texts)
        X[[i for i, t in enumerate(texts) if "ผม" in t]] = 0.0
        return X

    monkeypatch.setattr(HashingEmbedder, "embed", embed)
    cfg = base_config(ups[0].base, ups[1].base,
                      on_reject={"action": "fallback", "expert": "chatter"})
    async with gateway_client(cfg, tmp_path) as (c, _):
        for path in ("/v1/chat/completions", "/v1/route", "/v1/chat/completions"):
            r = await c.post(path, json=chat("auto", UNREADABLE))
            assert r.status_code == 200
            assert "embedding-empty" in r.headers["x-expertgate-degraded"], path
            assert r.headers["x-expertgate-cache"] == "miss"
        metrics = (await c.get("/metrics")).text
        assert 'expertgate_degraded_total{component="embedding-empty"} 3.0' in metrics
    recs = [orjson.loads(x) for x in (tmp_path / "log.jsonl").read_bytes().splitlines()]
    assert [("embedding-empty" in (r["degraded"] or [])) for r in recs] == [True, True]
