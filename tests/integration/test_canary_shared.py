"""One canary test for the whole deployment: two gateways on one real redis-server add their
canary counts up, a revert decided by one (on feedback sent through either) stops the canary
on both, and Redis going away falls back to each process's own counts, said in the header,
/admin/state and /metrics (gateway/canary_sync.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from gateway.logs import LOG_STREAM
from tests.integration.conftest import RedisServer
from tests.unit.gateway_helpers import base_config, chat, gateway_client
from tests.unit.test_shadow_canary import _always_coder

pytestmark = pytest.mark.integration

SYNC_S = 0.1


def _config(coder: str, chatter: str, tmp_path: Path, min_samples: int) -> dict[str, Any]:
    art = _always_coder(tmp_path / "cand")
    return base_config(coder, chatter,
                       candidate={"router": "knn", "artifact": str(art), "mode": "canary",
                                  "share": 0.5, "auto_revert": {"min_samples": min_samples}})


def _two(cfg: dict[str, Any], tmp_path: Path, url: str, **settings: Any) -> Any:
    """Two gateways on one Redis, each with its own log directory (so nothing but Redis
    connects them)."""
    kw = {"redis_url": url, "canary_sync_s": SYNC_S, **settings}
    return (gateway_client(cfg, tmp_path / "a", **kw), gateway_client(cfg, tmp_path / "b", **kw))


async def _ask(c: httpx.AsyncClient) -> httpx.Response:
    r = await c.post("/v1/chat/completions", json=chat("auto", "tell me a joke"))
    assert r.status_code == 200, r.text
    return r


async def _exchange(*gws: Any) -> None:
    """One exchange each, then the first again (it reads what the others sent)."""
    for gw in (*gws, gws[0]):
        await gw._canary_exchange()


async def test_feedback_through_one_gateway_reverts_the_canary_on_both(
        redis_clean: RedisServer, ups, tmp_path: Path) -> None:
    cfg = _config(ups[0].base, ups[1].base, tmp_path, min_samples=10)
    a, b = _two(cfg, tmp_path, redis_clean.url)
    async with a as (c1, gw1), b as (c2, gw2):
        gw1.pipeline._rng.seed(2)
        gw2.pipeline._rng.seed(3)
        reverted = False
        for i in range(300):
            c = (c1, c2)[i % 2]  # served by both, rated through the first only
            r = await _ask(c)
            arm = r.headers.get("x-expertgate-arm")
            if arm is None:
                reverted = True
                break
            fb = await c1.post("/v1/feedback", json={"request_id": r.headers["x-request-id"],
                                                     "score": 0.0 if arm == "canary" else 1.0})
            assert fb.status_code == 200
            await asyncio.sleep(0.005)
        assert reverted
        # the other one honours it within a few exchanges, without a request of its own
        for _ in range(50):
            if all(not g.policy_set.policies["auto"].candidate.serving for g in (gw1, gw2)):
                break
            await asyncio.sleep(SYNC_S / 2)
        states = [(await c.get("/admin/state")).json()["canaries"]["auto"] for c in (c1, c2)]
        assert all(s["serving"] is False for s in states)
        for c in (c1, c2):
            for _ in range(5):
                assert "x-expertgate-arm" not in (await _ask(c)).headers
            metrics = (await c.get("/metrics")).text
            assert 'expertgate_canary_reverts_total{policy="auto",signal="feedback"} 1.0' in \
                metrics
            assert 'expertgate_canary_active{policy="auto"} 0.0' in metrics
            assert 'expertgate_canary_shared{policy="auto"} 1.0' in metrics
        # one verdict: the same reason and time everywhere, decided by one of them
        assert states[0]["reverted"] == states[1]["reverted"]
        assert states[0]["reverted_at"] == states[1]["reverted_at"]
        assert "counts of all processes" in states[0]["reverted"]
        assert sorted(s["revert_origin"] for s in states) == ["another process",
                                                               "this process"]
        # the decision read ratings of requests the first gateway never answered
        arms = states[0]["arms"]
        assert arms["canary"]["feedback_n"] + arms["incumbent"]["feedback_n"] > \
            sum(1 for k in gw1._arms)
    r = redis_clean.client()
    try:
        recs = [orjson.loads(f[b"r"]) for _, f in r.xrange(LOG_STREAM)]
    finally:
        r.close()
    events = [x for x in recs if x["endpoint"] == "canary"]
    assert len(events) == 1 and events[0]["status"] == "reverted"
    assert events[0]["reason"].startswith("feedback: ")


async def test_counts_from_both_gateways_add_up_and_a_rating_counts_once(
        redis_clean: RedisServer, ups, tmp_path: Path) -> None:
    cfg = _config(ups[0].base, ups[1].base, tmp_path, min_samples=10_000)
    a, b = _two(cfg, tmp_path, redis_clean.url, canary_sync_s=60)  # exchanges by hand
    async with a as (c1, gw1), b as (c2, gw2):
        ids: list[str] = []
        for c, n in ((c1, 12), (c2, 7)):
            for _ in range(n):
                ids.append((await _ask(c)).headers["x-request-id"])
        # rated through the other gateway (which never saw them), one of them twice
        # through both: a request counts once, with its latest rating
        for rid in ids[:12]:
            assert (await c2.post("/v1/feedback", json={"request_id": rid,
                                                        "score": 1.0})).status_code == 200
        for rid in ids[12:]:
            assert (await c1.post("/v1/feedback", json={"request_id": rid,
                                                        "score": 1.0})).status_code == 200
        await c1.post("/v1/feedback", json={"request_id": ids[0], "score": 0.0})
        await _exchange(gw1, gw2, gw1)  # the ratings find their requests once both sent
        await _exchange(gw2, gw1)
        snaps = [g.policy_set.policies["auto"].candidate.state() for g in (gw1, gw2)]
        for s in snaps:
            arms = s["arms"]
            assert s["counts"] == "shared"
            assert arms["incumbent"]["requests"] + arms["canary"]["requests"] == 19
            assert arms["incumbent"]["feedback_n"] + arms["canary"]["feedback_n"] == 19
            total = sum(arms[k]["feedback"] * arms[k]["feedback_n"] for k in arms
                        if arms[k]["feedback_n"])
            assert total == pytest.approx(18.0, abs=1e-3)
        # each process alone saw its own share only
        assert len(gw1._arms) == 12 and len(gw2._arms) == 7


async def test_redis_down_falls_back_to_local_counts_and_says_so(
        redis_clean: RedisServer, ups, tmp_path: Path) -> None:
    cfg = _config(ups[0].base, ups[1].base, tmp_path, min_samples=10_000)
    async with gateway_client(cfg, tmp_path, redis_url=redis_clean.url,
                              canary_sync_s=SYNC_S, redis_retry_s=0.1) as (c, gw):
        for _ in range(3):
            assert "x-expertgate-degraded" not in (await _ask(c)).headers
        await gw._canary_exchange()
        redis_clean.stop()  # our own instance only, by its PID
        await gw._canary_exchange()
        for _ in range(4):
            r = await _ask(c)
            assert "canary-local" in r.headers["x-expertgate-degraded"].split(",")
        state = (await c.get("/admin/state")).json()["canaries"]["auto"]
        assert state["counts"] == "local" and state["serving"] is True
        assert state["arms"]["incumbent"]["requests"] + state["arms"]["canary"]["requests"] == 7
        metrics = (await c.get("/metrics")).text
        assert 'expertgate_canary_shared{policy="auto"} 0.0' in metrics
        assert 'expertgate_degraded_total{component="canary-local"} 4.0' in metrics

        redis_clean.start()  # same port, empty
        for _ in range(50):
            await asyncio.sleep(SYNC_S)
            if gw.policy_set.policies["auto"].candidate.state()["counts"] == "shared":
                break
        r = await _ask(c)
        assert "x-expertgate-degraded" not in r.headers
        metrics = (await c.get("/metrics")).text
        assert 'expertgate_canary_shared{policy="auto"} 1.0' in metrics
        await gw._canary_exchange()
        state = gw.policy_set.policies["auto"].candidate.state()
        # the restarted Redis lost the first three: they were put back from what this
        # process last read; the four counted while it was away (and the one since) were
        # kept and sent (tests/integration/test_canary_redis_restart.py)
        assert state["arms"]["incumbent"]["requests"] + state["arms"]["canary"]["requests"] == 8


async def test_a_revert_while_redis_is_down_reaches_the_other_gateway_when_it_is_back(
        redis_clean: RedisServer, ups, tmp_path: Path) -> None:
    coder, chatter = ups
    coder.mode = "status"  # every canary request fails
    cfg = _config(coder.base, chatter.base, tmp_path, min_samples=10)
    cfg["policies"][0].update(fallback=[], max_attempts=1)
    a, b = _two(cfg, tmp_path, redis_clean.url, canary_sync_s=60, redis_retry_s=0.1)
    async with a as (c1, gw1), b as (c2, gw2):
        redis_clean.stop()
        await _exchange(gw1, gw2)
        gw1.pipeline._rng.seed(0)
        for _ in range(400):
            r = await c1.post("/v1/chat/completions", json=chat("auto", "tell me a joke"))
            if "x-expertgate-arm" not in r.headers:
                break
        cand1 = gw1.policy_set.policies["auto"].candidate
        assert not cand1.serving and "Redis unavailable" in cand1.state()["reverted"]
        assert gw2.policy_set.policies["auto"].candidate.serving  # it cannot know yet
        redis_clean.start()
        await _exchange(gw1, gw2)
        st2 = gw2.policy_set.policies["auto"].candidate.state()
        assert st2["serving"] is False and st2["revert_origin"] == "another process"
        assert st2["reverted"] == cand1.state()["reverted"]
        assert "x-expertgate-arm" not in (await c2.post(
            "/v1/chat/completions", json=chat("auto", "tell me a joke"))).headers
    # gateway a logged its revert when it decided it (Redis was away: said at once)
    r = redis_clean.client()
    try:
        recs = [orjson.loads(f[b"r"]) for _, f in r.xrange(LOG_STREAM)]
    finally:
        r.close()
    assert [x["status"] for x in recs if x["endpoint"] == "canary"] == ["reverted"]


async def test_a_reload_that_changes_the_canary_starts_fresh_shared_counts(
        redis_clean: RedisServer, ups, tmp_path: Path) -> None:
    cfg = _config(ups[0].base, ups[1].base, tmp_path, min_samples=10_000)
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(cfg))
    a, b = _two(cfg, tmp_path, redis_clean.url, canary_sync_s=60, config=path)
    async with a as (c1, gw1), b as (c2, gw2):
        for c in (c1, c2, c1):
            await _ask(c)
        await _exchange(gw1, gw2)

        def seen(gw: Any) -> int:
            arms = gw.policy_set.policies["auto"].candidate.state()["arms"]
            return int(arms["incumbent"]["requests"] + arms["canary"]["requests"])

        assert seen(gw1) == seen(gw2) == 3
        cfg["policies"][0]["log_prompts"] = True  # the policy changes, its canary does not
        path.write_text(yaml.safe_dump(cfg))
        for c in (c1, c2):
            assert (await c.post("/admin/reload")).status_code == 200
        await _exchange(gw1, gw2)
        assert seen(gw1) == seen(gw2) == 3
        cfg["policies"][0]["candidate"]["params"] = {"k": 3}  # another canary
        path.write_text(yaml.safe_dump(cfg))
        for c in (c1, c2):
            assert (await c.post("/admin/reload")).status_code == 200
        await _ask(c2)
        await _exchange(gw1, gw2)
        assert seen(gw1) == seen(gw2) == 1
