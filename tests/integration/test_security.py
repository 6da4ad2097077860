"""Tenant isolation with a real redis-server (issue 20): two gateways on one Redis, keys stored
by `expertgate keys add`, request ids and feedback scoped to the tenant, the routing log
exported per tenant, and Redis keys that never fail right after a reload.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
from pathlib import Path

import orjson
import pandas as pd
import pytest
import yaml

from expertgate.cli import keys as keys_cli
from expertgate.cli import main as cli_main
from gateway.logs import FEEDBACK_STREAM, LOG_STREAM
from tests.integration.conftest import RedisServer
from tests.unit.gateway_helpers import base_config, chat, gateway_client

pytestmark = pytest.mark.integration

KEY_A, KEY_B, KEY_ADMIN = "sk-int-tenant-a", "sk-int-tenant-b", "sk-int-admin"


def _add(url: str, key: str, name: str, *, policies: str = "*", experts: str | None = None,
         admin: bool = False) -> None:
    ns = argparse.Namespace(key=key, generate=False, redis_url=url, name=name,
                            policies=policies, experts=experts, admin=admin,
                            requests_per_minute=None, tokens_per_minute=None)
    assert keys_cli.cmd_add(ns) == 0


def _auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def _config(ups) -> dict:  # type: ignore[no-untyped-def]
    cfg = copy.deepcopy(base_config(ups[0].base, ups[1].base))
    cfg["experts"].append({"name": "secret", "api_base": ups[0].base, "timeout_s": 2})
    cfg["require_auth"] = True
    return cfg


async def test_tenants_are_isolated_across_two_gateways_on_one_redis(
        redis_clean: RedisServer, ups, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = redis_clean.url
    _add(url, KEY_A, "team-a", policies="auto")
    _add(url, KEY_B, "team-b", policies="auto")
    _add(url, KEY_ADMIN, "ops", admin=True)
    assert "for admin ops" in capsys.readouterr().out
    cfg = _config(ups)
    async with gateway_client(cfg, tmp_path / "1", redis_url=url) as (c1, _), \
            gateway_client(cfg, tmp_path / "2", redis_url=url) as (c2, _):
        # the same client x-request-id from both tenants: two records, two gateway ids
        ra = await c1.post("/v1/chat/completions", json=chat("auto", "tell me a joke"),
                           headers={**_auth(KEY_A), "x-request-id": "shared-id"})
        rb = await c2.post("/v1/chat/completions", json=chat("auto", "tell me a joke"),
                           headers={**_auth(KEY_B), "x-request-id": "shared-id"})
        assert ra.status_code == rb.status_code == 200
        id_a, id_b = ra.headers["x-request-id"], rb.headers["x-request-id"]
        assert id_a != id_b and "shared-id" not in (id_a, id_b)
        assert ra.headers["x-client-request-id"] == "shared-id"
        # B cannot rate A's request, on either gateway; nor an id nobody issued
        for c in (c1, c2):
            fb = await c.post("/v1/feedback", json={"request_id": id_a, "score": 0.0},
                              headers=_auth(KEY_B))
            assert fb.status_code == 404
        fb = await c1.post("/v1/feedback", json={"request_id": "0" * 48, "score": 1.0},
                           headers=_auth(KEY_A))
        assert fb.status_code == 404
        # A rates its request on the other gateway: the secret is shared through Redis
        fb = await c2.post("/v1/feedback", json={"request_id": id_a, "score": 0.8},
                           headers=_auth(KEY_A))
        assert fb.status_code == 200 and fb.json()["stored"] is True
        # a `keys add --policies auto` key reaches the policy's experts, not the others
        r = await c1.post("/v1/chat/completions", json=chat("secret", "hi"),
                          headers=_auth(KEY_A))
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        r = await c1.post("/v1/chat/completions", json=chat("coder", "hi"),
                          headers=_auth(KEY_A))
        assert r.status_code == 200
        # the admin role, from a Redis-stored key
        assert (await c2.get("/admin/state", headers=_auth(KEY_A))).status_code == 403
        assert (await c2.get("/admin/state", headers=_auth(KEY_ADMIN))).status_code == 200
    r = redis_clean.client()
    try:
        recs = [orjson.loads(f[b"r"]) for _, f in r.xrange(LOG_STREAM)]
        fbs = [orjson.loads(f[b"r"]) for _, f in r.xrange(FEEDBACK_STREAM)]
    finally:
        r.close()
    assert [x["request_id"] for x in recs].count(id_a) == 1
    by_id = {x["request_id"]: x for x in recs}
    assert by_id[id_a]["tenant"] == "team-a" and by_id[id_b]["tenant"] == "team-b"
    assert by_id[id_a]["client_request_id"] == by_id[id_b]["client_request_id"] == "shared-id"
    assert [(x["request_id"], x["tenant"], x["score"]) for x in fbs] == [(id_a, "team-a", 0.8)]

    for tenant, mine, theirs in (("team-a", id_a, id_b), ("team-b", id_b, id_a)):
        out = tmp_path / f"{tenant}.parquet"
        assert cli_main(["logs", "export", "--redis-url", url, "--out", str(out),
                         "--tenant", tenant]) == 0
        df = pd.read_parquet(out)
        assert set(df["tenant"]) == {tenant}
        assert mine in set(df["request_id"]) and theirs not in set(df["request_id"])
    df = pd.read_parquet(tmp_path / "team-a.parquet").set_index("request_id")
    assert df.loc[id_a, "feedback_score"] == 0.8
    df = pd.read_parquet(tmp_path / "team-b.parquet").set_index("request_id")
    assert pd.isna(df.loc[id_b, "feedback_score"])


async def test_redis_keys_never_fail_right_after_a_reload(redis_clean: RedisServer, ups,
                                                          tmp_path: Path) -> None:
    """Issue 20.5: reload, then at once 100 requests with a Redis-stored key (69 got 401)."""
    url = redis_clean.url
    _add(url, KEY_A, "team-a", policies="auto")
    _add(url, KEY_ADMIN, "ops", admin=True)
    cfg = _config(ups)
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(cfg))
    a = _auth(KEY_A)
    statuses: list[int] = []
    async with gateway_client(cfg, tmp_path, redis_url=url, config=path) as (c, _):
        assert (await c.get("/v1/models", headers=a)).status_code == 200
        for _ in range(3):
            cfg["policies"][0]["cache_ttl_s"] = cfg["policies"][0].get("cache_ttl_s", 60) + 1
            path.write_text(yaml.safe_dump(cfg))
            # requests racing the reload, then a burst right after it
            reload = asyncio.create_task(c.post("/admin/reload", headers=_auth(KEY_ADMIN)))
            during = await asyncio.gather(*[c.get("/v1/models", headers=a)
                                            for _ in range(20)])
            assert (await reload).status_code == 200
            after = await asyncio.gather(
                *[c.get("/v1/models", headers=a) for _ in range(100)],
                *[c.post("/v1/route", json={"model": "auto", "text": "hi"}, headers=a)
                  for _ in range(10)],
                *[c.post("/v1/chat/completions", json=chat("auto", "tell me a joke"),
                         headers=a) for _ in range(10)])
            statuses += [x.status_code for x in (*during, *after)]
    assert len(statuses) == 3 * 140 and set(statuses) == {200}
