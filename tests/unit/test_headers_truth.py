"""Every response carries the headers README promises, and /metrics counts every degraded one.

Against the OpenAI-compatible upstream doubles (tests/doubles), in-process.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from tests.unit.gateway_helpers import base_config, chat, gateway_client

PROMISED = ("x-request-id", "x-expertgate-policy", "x-expertgate-expert", "x-expertgate-cache",
            "x-expertgate-decision-ms", "x-expertgate-reason")


def _promised(r: httpx.Response) -> dict[str, str]:
    missing = [h for h in PROMISED if h not in r.headers]
    assert not missing, f"{r.request.url.path} {r.status_code} lacks {missing}"
    float(r.headers["x-expertgate-decision-ms"])
    return {h: r.headers[h] for h in PROMISED}


def _degraded(metrics: str, component: str) -> float:
    m = re.search(r'^expertgate_degraded_total\{component="' + re.escape(component) +
                  r'"\} (\S+)$', metrics, re.M)
    return float(m.group(1)) if m else 0.0


async def test_pass_through_and_errors_carry_every_header(ups, tmp_path: Path) -> None:
    async with gateway_client(base_config(ups[0].base, ups[1].base), tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json=chat("chatter", "hello"))
        h = _promised(r)
        assert r.status_code == 200
        assert h["x-expertgate-policy"] == "none" and h["x-expertgate-expert"] == "chatter"
        assert h["x-expertgate-cache"] == "none"
        assert float(h["x-expertgate-decision-ms"]) == 0.0
        assert h["x-expertgate-reason"] == "explicit expert (no routing)"

        r = await c.post("/v1/chat/completions", content=b"{not json",
                         headers={"content-type": "application/json"})
        assert r.status_code == 400
        h = _promised(r)
        assert h["x-expertgate-expert"] == "none" and h["x-expertgate-reason"] != "none"

        r = await c.post("/v1/chat/completions", json=chat("gpt-4o", "hi"))
        assert r.status_code == 404
        h = _promised(r)
        assert "gpt-4o" in h["x-expertgate-reason"]

        r = await c.post("/v1/chat/completions", json=chat("auto", "fix this bug in my code"),
                         headers={"x-request-id": "client-corr-1"})
        h = _promised(r)
        assert h["x-expertgate-policy"] == "auto" and h["x-expertgate-expert"] == "coder"
        assert r.headers["x-request-id"]


async def test_route_dry_run_carries_request_id_and_decision_headers(ups, tmp_path: Path
                                                                      ) -> None:
    async with gateway_client(base_config(ups[0].base, ups[1].base), tmp_path) as (c, _):
        r = await c.post("/v1/route", json={"model": "auto", "text": "fix this bug in my code"})
        assert r.status_code == 200
        h = _promised(r)
        body = r.json()
        assert h["x-expertgate-policy"] == "auto"
        assert h["x-expertgate-expert"] == body["targets"][0]["expert"] == "coder"
        assert h["x-expertgate-cache"] == "miss"
        r2 = await c.post("/v1/route", json={"model": "auto", "text": "fix this bug in my code"})
        assert _promised(r2)["x-expertgate-cache"] == "hit"
        assert r2.headers["x-request-id"] != r.headers["x-request-id"]
        for bad, status in (({"model": "nope", "text": "x"}, 404),
                            ({"model": "auto"}, 400), ({"model": "auto", "text": 5}, 400)):
            r = await c.post("/v1/route", json=bad)
            assert r.status_code == status, r.text
            assert _promised(r)["x-expertgate-expert"] == "none"
        assert "x-request-id" in (await c.get("/v1/models")).headers
        assert "x-request-id" in (await c.get("/nowhere")).headers
    assert ups[0].received == [] and ups[1].received == []


async def test_every_degraded_response_is_counted(ups, tmp_path: Path) -> None:
    coder, chatter = ups
    coder.mode = "status"
    async with gateway_client(base_config(coder.base, chatter.base), tmp_path) as (c, _):
        n_fallback = 0
        for text in ("fix this bug in my code", "refactor this class",
                     "write a python function"):
            r = await c.post("/v1/chat/completions", json=chat("auto", text))
            assert r.status_code == 200
            assert "expert-fallback" in r.headers["x-expertgate-degraded"]
            n_fallback += 1
        chatter.mode = "status"
        r = await c.post("/v1/chat/completions", json=chat("auto", "why does my program crash"))
        assert r.status_code == 502
        h = _promised(r)
        assert h["x-expertgate-expert"] == "none"
        assert "expert-fallback" in r.headers["x-expertgate-degraded"]
        assert "every expert failed" in h["x-expertgate-reason"]
        m = (await c.get("/metrics")).text
        assert _degraded(m, "expert-fallback") == n_fallback + 1


async def test_readyz_reports_each_expert_and_the_operator_chooses(ups, tmp_path: Path
                                                                   ) -> None:
    coder, chatter = ups
    await coder.stop()
    cfg = base_config(coder.base, chatter.base)
    async with gateway_client(cfg, tmp_path, ready_check_upstreams=True) as (c, _):
        r = await c.get("/readyz")
        body = r.json()
        assert r.status_code == 200 and body["status"] == "degraded"
        assert body["checks"]["experts"]["coder"] == {"ready": False, "replicas_up": 0,
                                                      "replicas": 1}
        assert body["checks"]["experts"]["chatter"]["ready"] is True
        assert body["checks"]["experts_down"] == ["coder"]
    async with gateway_client(cfg, tmp_path, ready_check_upstreams=True,
                              ready_require_all_experts=True) as (c, _):
        r = await c.get("/readyz")
        assert r.status_code == 503 and r.json()["checks"]["experts_down"] == ["coder"]


async def test_limits_and_cache_without_their_redis_are_degraded_and_counted(
        ups, tmp_path: Path) -> None:
    from expertgate.procs import free_port
    from gateway.auth import hash_key

    cfg = base_config(ups[0].base, ups[1].base)
    cfg["api_keys"] = [{"name": "t", "sha256": hash_key("sk-t-1"), "requests_per_minute": 100,
                        "admin": True}]
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens: Redis is down
    async with gateway_client(cfg, tmp_path, redis_url=dead) as (c, _):
        r = await c.post("/v1/chat/completions", json=chat("auto", "tell me a joke"),
                         headers={"authorization": "Bearer sk-t-1"})
        assert r.status_code == 200
        assert set(r.headers["x-expertgate-degraded"].split(",")) >= {"ratelimit-local",
                                                                      "cache"}
        assert r.headers["x-expertgate-ratelimit"] == "local"
        m = (await c.get("/metrics", headers={"authorization": "Bearer sk-t-1"})).text
        assert _degraded(m, "ratelimit-local") == 1 and _degraded(m, "cache") == 1


async def test_ids_without_a_log_record_come_from_the_request_paths_function(
        ups, tmp_path: Path) -> None:
    """The FastAPI part's ids and the dry run's are made by one function
    (``RequestIds.request_id``): the same form, and they verify for no tenant, so feedback
    cannot name them; a logged request's id verifies for its tenant."""
    async with gateway_client(base_config(ups[0].base, ups[1].base), tmp_path) as (c, gw):
        unlogged = [(await c.get("/v1/models")).headers["x-request-id"],
                    (await c.get("/nowhere")).headers["x-request-id"],
                    (await c.post("/v1/route", json={"model": "auto", "text": "hi"})
                     ).headers["x-request-id"]]
        for rid in unlogged:
            assert re.fullmatch(r"[0-9a-f]{32}", rid), rid
            assert not gw.request_ids.owned(rid, "anonymous")
        assert len(set(unlogged)) == 3
        logged = (await c.post("/v1/chat/completions", json=chat("coder", "hi"))
                  ).headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{48}", logged)
        assert gw.request_ids.owned(logged, "anonymous")
        fb = await c.post("/v1/feedback", json={"request_id": unlogged[0], "score": 1.0})
        assert fb.status_code == 404
