"""Gateway replicas sharing a real redis-server: decision cache, routing-log stream, export,
and what happens when Redis goes away and comes back.

The upstreams here are the OpenAI-compatible test doubles (the model does not matter for
these behaviours); tests/integration/test_local_experts.py uses the real llama.cpp experts.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pandas as pd
import pytest

from expertgate.cli import main as cli_main
from gateway.logs import FEEDBACK_STREAM, LOG_STREAM
from tests.integration.conftest import RedisServer
from tests.unit.gateway_helpers import base_config, chat, gateway_client

pytestmark = pytest.mark.integration


async def test_two_gateway_replicas_share_decisions_log_and_feedback(
        redis_clean: RedisServer, ups, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = base_config(ups[0].base, ups[1].base)
    url = redis_clean.url
    async with gateway_client(cfg, tmp_path / "a", redis_url=url) as (c1, gw1), \
            gateway_client(cfg, tmp_path / "b", redis_url=url) as (c2, gw2):
        assert gw1 is not gw2 and gw1.cache.name == gw2.cache.name == "redis"
        r1 = await c1.post("/v1/chat/completions", json=chat("auto", "fix this bug in my code"))
        assert r1.status_code == 200
        assert r1.headers["x-expertgate-cache"] == "miss"
        # the second replica never saw this prompt: its decision comes from Redis
        r2 = await c2.post("/v1/chat/completions", json=chat("auto", "fix this bug in my code"))
        assert r2.status_code == 200
        assert r2.headers["x-expertgate-cache"] == "hit"
        assert r2.headers["x-expertgate-expert"] == r1.headers["x-expertgate-expert"] == "coder"
        assert "x-expertgate-degraded" not in r2.headers
        r3 = await c2.post("/v1/chat/completions", json=chat("auto", "tell me a joke"))
        assert r3.headers["x-expertgate-cache"] == "miss"
        fb = await c2.post("/v1/feedback", json={"request_id": r1.headers["x-request-id"],
                                                 "score": 0.75, "comment": "good fix"})
        assert fb.status_code == 200 and fb.json()["stored"] is True
    # closing both gateways flushed their logs into the one stream
    r = redis_clean.client()
    try:
        assert r.xlen(LOG_STREAM) == 3
        assert r.xlen(FEEDBACK_STREAM) == 1
        recs = [orjson.loads(f[b"r"]) for _, f in r.xrange(LOG_STREAM)]
    finally:
        r.close()
    assert sorted(x["cache"] for x in recs) == ["hit", "miss", "miss"]
    assert not (tmp_path / "a" / "log.jsonl").exists()  # Redis, not the JSONL fallback

    out = tmp_path / "export.parquet"
    rc = cli_main(["logs", "export", "--redis-url", url, "--out", str(out)])
    assert rc == 0
    assert "wrote 3 record(s)" in capsys.readouterr().out
    df = pd.read_parquet(out)
    assert len(df) == 3
    by_id = df.set_index("request_id")
    assert by_id.loc[r1.headers["x-request-id"], "feedback_score"] == 0.75
    assert by_id.loc[r1.headers["x-request-id"], "expert"] == "coder"
    assert by_id.loc[r3.headers["x-request-id"], "expert"] == "chatter"
    assert pd.isna(by_id.loc[r3.headers["x-request-id"], "feedback_score"])


async def test_redis_down_then_back_gateway_keeps_answering(redis_clean: RedisServer, ups,
                                                            tmp_path: Path) -> None:
    cfg = base_config(ups[0].base, ups[1].base)
    async with gateway_client(cfg, tmp_path, redis_url=redis_clean.url,
                              redis_retry_s=0.2) as (c, _gw):
        r = await c.post("/v1/chat/completions", json=chat("auto", "refactor this class"))
        assert r.status_code == 200 and r.headers["x-expertgate-cache"] == "miss"

        redis_clean.stop()  # our own instance only, by its PID
        assert not redis_clean.running
        for text in ("refactor this class", "tell me a joke"):
            r = await c.post("/v1/chat/completions", json=chat("auto", text))
            assert r.status_code == 200, r.text
            assert r.headers["x-expertgate-cache"] == "bypass"
            assert "cache" in r.headers["x-expertgate-degraded"].split(",")
            assert r.json()["choices"][0]["message"]["content"].startswith("answer from")
        health = await c.get("/readyz")
        assert "unavailable" in health.json()["checks"]["redis"]

        redis_clean.start()  # same port, empty: nothing restarted on the gateway side
        # the cache skips Redis for redis_retry_s after a failure, then tries again by
        # itself; bounded wait for that first successful round trip
        text = "why does my program crash with a segmentation fault"
        first = None
        for _ in range(50):
            first = await c.post("/v1/chat/completions", json=chat("auto", text))
            assert first.status_code == 200
            if first.headers["x-expertgate-cache"] != "bypass":
                break
            await asyncio.sleep(0.1)
        assert first is not None and first.headers["x-expertgate-cache"] == "miss"
        again = await c.post("/v1/chat/completions", json=chat("auto", text))
        assert again.headers["x-expertgate-cache"] == "hit"
        assert "x-expertgate-degraded" not in again.headers
    r = redis_clean.client()
    try:
        # the decision cached after the restart lives in the restarted server
        assert any(k.startswith(b"eg:dc:auto:") for k in r.scan_iter("eg:dc:*"))
    finally:
        r.close()


async def test_unusable_shared_entries_are_skipped_never_a_500(
        redis_clean: RedisServer, ups, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a decision-cache entry written by another version of the gateway (or damaged), and
    # a routing-log entry that is no record: decided afresh / skipped, and said
    cfg = base_config(ups[0].base, ups[1].base)
    url = redis_clean.url
    r = redis_clean.client()
    try:
        async with gateway_client(cfg, tmp_path, redis_url=url) as (c, _):
            first = await c.post("/v1/chat/completions",
                                 json=chat("auto", "fix this bug in my code"))
            assert first.headers["x-expertgate-cache"] == "miss"
            (key,) = [k for k in r.keys("*") if b":dc:" in k or k.startswith(b"eg:dc")]
            bad = [b"garbage", b'{"a": 1}', b"[]", orjson.dumps({**orjson.loads(r.get(key)),
                                                                 "expert": "nowhere",
                                                                 "targets": [{"expert":
                                                                              "nowhere",
                                                                              "score": 1}]})]
            for value in bad:
                r.set(key, value)
                got = await c.post("/v1/chat/completions",
                                   json=chat("auto", "fix this bug in my code"))
                assert got.status_code == 200 and got.headers["x-expertgate-expert"] == "coder"
                assert got.headers["x-expertgate-cache"] == "miss", value
            metrics = (await c.get("/metrics")).text
            assert 'expertgate_decision_cache_total{result="invalid"} 4.0' in metrics
        r.xadd(LOG_STREAM, {"r": b"notjson"})
        r.xadd(LOG_STREAM, {"r": b"[1, 2]"})
        r.xadd(LOG_STREAM, {"r": b'{"request_id": 5, "ts": "abc"}'})  # record-shaped, mistyped
    finally:
        r.close()
    out = tmp_path / "export.parquet"  # Parquet: one mistyped record failed the whole table
    assert cli_main(["logs", "export", "--redis-url", url, "--out", str(out)]) == 0
    assert "wrote 5 record(s)" in capsys.readouterr().out


async def test_replicas_agree_on_request_ids_again_after_redis_lost_its_data(
        redis_clean: RedisServer, ups, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.app import Gateway

    monkeypatch.setattr(Gateway, "reshare_s", 0.2)
    cfg = base_config(ups[0].base, ups[1].base)
    url = redis_clean.url

    async with gateway_client(cfg, tmp_path / "a", redis_url=url) as (ca, _):
        r = await ca.post("/v1/chat/completions", json=chat("auto", "fix this bug"))
        rid = r.headers["x-request-id"]
        redis_clean.client().flushall()  # Redis restarted without persistence
        await asyncio.sleep(1.0)  # A's next check puts the secret in use back
        async with gateway_client(cfg, tmp_path / "c", redis_url=url) as (cc, _):
            await asyncio.sleep(1.0)  # a new replica adopts it
            fb = await cc.post("/v1/feedback", json={"request_id": rid, "score": 1.0})
            assert fb.status_code == 200, fb.text
            r2 = await cc.post("/v1/chat/completions", json=chat("auto", "tell me a joke"))
            fb = await ca.post("/v1/feedback", json={"request_id": r2.headers["x-request-id"],
                                                     "score": 0.5})
            assert fb.status_code == 200, fb.text
