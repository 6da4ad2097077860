"""POST /admin/reload: re-read the config and swap policies atomically (also on SIGHUP)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from gateway.config import ConfigError
from gateway.errors import InvalidRequest

router = APIRouter(tags=["admin"])


@router.post("/admin/reload")
async def reload(request: Request) -> dict[str, Any]:
    gw = request.app.state.gw
    gw.auth.check(request.scope.get("headers", ()), None)
    try:
        out: dict[str, Any] = await gw.reload()
    except ConfigError as e:
        raise InvalidRequest(f"reload failed, the running configuration is unchanged: {e}",
                             code="config_invalid") from None
    return {"object": "reload", **out}


@router.get("/admin/state")
async def state(request: Request) -> dict[str, Any]:
    gw = request.app.state.gw
    gw.auth.check(request.scope.get("headers", ()), None)
    return {"replicas": gw.dispatcher.replica_states(),
            "policies": {n: rt.version for n, rt in gw.policy_set.policies.items()},
            "log": {"pending": gw.routing_log.pending, "dropped": gw.routing_log.dropped,
                    "sink_ok": gw.routing_log.sink_ok}}
