"""The decision cache is each tenant's own. It was shared by every API key: a tenant that
sent (or dry-ran) a guessed prompt saw ``x-expertgate-cache: hit`` (and a decision time of
microseconds) when another tenant had sent exactly that prompt within the cache's TTL."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tests.unit.gateway_helpers import base_config, chat, gateway_client


def _keyed(coder: str, chatter: str) -> dict:
    cfg = base_config(coder, chatter)
    cfg["api_keys"] = [{"name": name, "sha256": hashlib.sha256(name.encode()).hexdigest()}
                       for name in ("tenant-a", "tenant-b")]
    return cfg


def _as(name: str) -> dict[str, str]:
    return {"authorization": f"Bearer {name}"}


async def test_a_tenant_never_finds_another_tenants_decision_cached(ups, tmp_path: Path
                                                                    ) -> None:
    async with gateway_client(_keyed(ups[0].base, ups[1].base), tmp_path) as (c, _):
        body = chat("auto", "my secret merger plan: fix this bug in my code")
        r = await c.post("/v1/chat/completions", json=body, headers=_as("tenant-a"))
        assert r.status_code == 200 and r.headers["x-expertgate-cache"] == "miss"
        for path in ("/v1/route", "/v1/chat/completions"):
            r = await c.post(path, json=body, headers=_as("tenant-b"))
            assert r.status_code == 200
            assert r.headers["x-expertgate-cache"] == ("miss" if path == "/v1/route" else "hit")
        # each tenant's own decisions are cached for it, the same decision for both
        a = await c.post("/v1/route", json=body, headers=_as("tenant-a"))
        b = await c.post("/v1/route", json=body, headers=_as("tenant-b"))
        assert a.headers["x-expertgate-cache"] == b.headers["x-expertgate-cache"] == "hit"
        assert a.json()["fallback_chain"] == b.json()["fallback_chain"]
        assert a.headers["x-expertgate-expert"] == "coder"
