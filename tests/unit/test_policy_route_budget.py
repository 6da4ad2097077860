"""A dry run is a request of the key's budget. ``POST /v1/route`` embeds the query on the
one embedding thread every tenant's decisions wait for, as a live request does, but no
``requests_per_minute`` bounded it: a key allowed 3 requests a minute made any number of
dry runs (and kept the embedder busy for every other tenant)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tests.unit.gateway_helpers import base_config, chat, gateway_client


async def test_dry_runs_count_against_the_keys_requests_per_minute(ups, tmp_path: Path
                                                                    ) -> None:
    cfg = base_config(ups[0].base, ups[1].base)
    cfg["api_keys"] = [{"name": "t", "sha256": hashlib.sha256(b"kt").hexdigest(),
                        "requests_per_minute": 3}]
    auth = {"authorization": "Bearer kt"}
    async with gateway_client(cfg, tmp_path) as (c, _):
        for i in range(3):
            r = await c.post("/v1/route", json=chat("auto", f"fix bug {i}"), headers=auth)
            assert r.status_code == 200
            assert r.headers["x-ratelimit-remaining-requests"] == str(2 - i)
        for path in ("/v1/route", "/v1/chat/completions"):
            r = await c.post(path, json=chat("auto", "fix this bug"), headers=auth)
            assert r.status_code == 429, path
            assert r.json()["error"]["code"] == "rate_limit_requests"
            assert int(r.headers["retry-after"]) >= 1
        # a rating is no request of the budget
        r = await c.post("/v1/feedback", json={"request_id": "x", "score": 1}, headers=auth)
        assert r.status_code == 404
