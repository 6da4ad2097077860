"""GET /healthz (alive), GET /readyz (Redis and upstreams), GET /metrics (Prometheus).

``/readyz`` reports each expert's readiness in ``checks.experts`` (``{name: {ready,
replicas_up, replicas}}``; a LoRA adapter is up on a replica of its parent whose model list
names it) and the names of those with no replica up in
``checks.experts_down``; its status is ``degraded`` (still 200) while an expert or Redis is
down. It answers 503 when no expert is up, or, with
``EXPERTGATE_READY_REQUIRE_ALL_EXPERTS=true``, when any one is down.

/healthz is always open; who sees /readyz's checks and who reads /metrics is set by
``readyz_auth`` and ``metrics_auth`` (gateway/config.py; /metrics is gated in gateway/app.py).

The checks (a Redis PING, a ``GET /models`` per replica) are kept for :data:`READY_TTL_S`,
and probes that arrive while they run wait for that one round, so however many load
balancers probe, Redis and each replica see at most one check per ``READY_TTL_S``. A change
shows within ``READY_TTL_S`` plus the checks' timeouts; the gateway's own state (starting,
draining) is read on every probe, so a draining gateway is not ready at once.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.cache import redis_error
from gateway.config import ExpertConfig
from gateway.errors import GatewayError
from gateway.upstream_http import HTTPClientError, UpstreamHTTP

router = APIRouter(tags=["ops"])

#: how long one round of /readyz checks answers probes
READY_TTL_S = 2.0
#: a Redis that does not answer PING within this is reported unavailable
REDIS_PING_TIMEOUT_S = 0.5


# HEAD as well as GET: load balancers and uptime checks probe with HEAD
@router.get("/healthz")
@router.head("/healthz", include_in_schema=False)
async def healthz(request: Request) -> dict[str, Any]:
    return {"status": "ok"}


async def _probe(http: UpstreamHTTP, base: str, headers: dict[str, str]
                 ) -> tuple[bool, frozenset[str] | None]:
    """Whether replica ``base`` answers ``GET /models``, and the model ids it lists (None
    when the list cannot be read: an error status, not the OpenAI shape)."""
    r = None
    try:
        async with asyncio.timeout(1.0):
            r = await http.request(b"GET", base, "/models", b"", headers, connect_timeout_s=1.0)
            raw = await r.read()
            return r.status < 500, _model_ids(raw) if r.status == 200 else None
    except (HTTPClientError, TimeoutError, ValueError):
        return False, None
    finally:
        if r is not None:
            r.release()


def _serves(expert: ExpertConfig, answers: bool, models: frozenset[str] | None) -> bool:
    """A replica that answers serves a base expert; an adapter, when the replica's model
    list names it or cannot be read."""
    if not answers:
        return False
    return expert.parent is None or models is None or expert.upstream_model in models


def _model_ids(raw: bytes) -> frozenset[str] | None:
    try:
        data = orjson.loads(raw).get("data")
        return frozenset(m["id"] for m in data if isinstance(m.get("id"), str))
    except (orjson.JSONDecodeError, AttributeError, TypeError, KeyError):
        return None


@router.get("/readyz")
@router.head("/readyz", include_in_schema=False)
async def readyz(request: Request) -> Response:
    gw = request.app.state.gw
    if not gw.ready or gw.draining:  # no I/O, never cached: a load balancer stops at once
        body = orjson.dumps({"status": "not ready", "checks": {"gateway": "down"}})
        return await _ready_response(gw, request, 503, body)
    cached = getattr(gw, "_ready_cache", None)
    if cached is not None and cached[0] > time.monotonic():
        return await _ready_response(gw, request, cached[1], cached[2])
    task = getattr(gw, "_ready_task", None)
    if task is None or task.done():
        task = gw._ready_task = asyncio.ensure_future(_checks(gw))
    # shared by the probes that wait for it: one that goes away does not cancel it
    status, body = await asyncio.shield(task)
    return await _ready_response(gw, request, status, body)


async def _checks(gw: Any) -> tuple[int, bytes]:
    """One round of checks; kept on the gateway for READY_TTL_S."""
    checks: dict[str, Any] = {"gateway": "ok"}
    ok = True
    redis_down = False
    if gw.redis is not None:
        try:
            await asyncio.wait_for(gw.redis.ping(), REDIS_PING_TIMEOUT_S)
            checks["redis"] = "ok"
        except Exception as e:  # any failure means "not available"; serving goes on without
            redis_down = True
            # its message tells a Redis briefly away from one that refuses the gateway (a
            # database index it lacks, a wrong password), which waiting will not heal
            checks["redis"] = (f"unavailable ({redis_error(e)}): serving without the "
                               "shared cache, limits and log")
    ups: dict[str, str] = {}
    experts: dict[str, dict[str, Any]] = {}
    if gw.settings.ready_check_upstreams and gw.dispatcher.http is not None:
        # base models first, then LoRA adapters (parent:), which share their parent's
        # replicas: each replica is asked once, with its base expert's credentials, and an
        # adapter is up on a replica that lists it (vLLM lists loaded adapters in /models)
        pools = sorted(((n, p) for n, p in gw.dispatcher.pools.items()
                        if p.expert.kind == "openai"),
                       key=lambda np: np[1].expert.parent is not None)
        headers: dict[str, dict[str, str]] = {}
        for _, p in pools:
            for r in p.replicas:
                headers.setdefault(r.base, p.expert.upstream_headers(r.base))
        bases = list(headers)
        found = dict(zip(bases, await asyncio.gather(
            *(_probe(gw.dispatcher.http, b, headers[b]) for b in bases)), strict=True))
        for n, p in pools:
            up = sum(_serves(p.expert, *found[r.base]) for r in p.replicas)
            ups[n] = f"{up}/{len(p.replicas)} replicas up"
            experts[n] = {"ready": up > 0, "replicas_up": up, "replicas": len(p.replicas)}
        down = sorted(n for n, e in experts.items() if not e["ready"])
        # by default the gateway is ready while any expert answers (policies fall back);
        # EXPERTGATE_READY_REQUIRE_ALL_EXPERTS=true makes one expert down mean not ready
        if pools and (len(down) == len(pools) or (down and gw.settings.ready_require_all_experts)):
            ok = False
        checks["experts_down"] = down
    checks["upstreams"] = ups
    checks["experts"] = experts
    status = 200 if ok else 503
    # 200 "degraded": serving, but some expert is down (its requests take a fallback) or
    # Redis is (every request is uncached, limited per process)
    word = (("degraded" if checks.get("experts_down") or redis_down else "ready") if ok
            else "not ready")
    body = orjson.dumps({"status": word, "checks": checks})
    gw._ready_cache = (time.monotonic() + READY_TTL_S, status, body)
    return status, body


async def _ready_response(gw: Any, request: Request, status: int, body: bytes) -> Response:
    """The checks (which name experts and Redis) only for callers ``readyz_auth`` admits;
    everyone else, probes included, gets the status code and ``{"status"}``."""
    try:
        detailed = await gw.auth.allowed(request.scope, gw.settings.readyz_auth)
    except GatewayError:
        detailed = False
    if not detailed:
        body = orjson.dumps({"status": orjson.loads(body)["status"]})
    return Response(body, status_code=status, media_type="application/json")


@router.get("/metrics")
@router.head("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    gw = request.app.state.gw
    if gw.routing_log is not None:
        gw.metrics.log_queue.set(gw.routing_log.pending)
    # the running configuration's replicas, as their breakers are now: 1 from the opening
    # until a probe closes it (half-open included), as gateway/dispatch.py sets it when a
    # call changes it
    gw.metrics.sync_circuits({(name, r.base): r.breaker.state != "closed"
                              for name, pool in gw.dispatcher.pools.items()
                              for r in pool.replicas})
    # the canary gauges of policies (and candidates) the running configuration still has
    policies = gw.policy_set.policies
    gw.metrics.keep_only(gw.metrics.canary_active, {(n,) for n in policies})
    gw.metrics.keep_only(gw.metrics.canary_shared, {
        (n,) for n, rt in policies.items()
        if rt.candidate is not None and rt.candidate.monitor is not None})
    return Response(gw.metrics.render(), media_type=CONTENT_TYPE_LATEST)
