"""The admin endpoints: every one needs an admin key (:func:`gateway.auth.require_admin`).

POST /admin/reload re-reads the config and swaps policies atomically (also on SIGHUP); with
several worker processes (``serve --workers N``) the one that got it checks and serves the
file, then has the supervisor replace every worker with one built from it;
GET /admin/state shows replicas (URLs without credentials), policy versions, the log and
canaries, as the answering process sees them (``process``: its pid, and whether it is one of
several workers, each with its own view).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request

from gateway.auth import require_admin
from gateway.config import ConfigError
from gateway.errors import GatewayError, InvalidRequest

log = logging.getLogger("expertgate.admin")

router = APIRouter(tags=["admin"], dependencies=[Depends(require_admin)])

#: a file a worker leaves in the metrics directory before it SIGHUPs the supervisor: this
#: reload is counted (by the worker), the supervisor's SIGHUP must not count it again
RELOAD_COUNTED_PREFIX = "reload-counted-"


@router.post("/admin/reload")
async def reload(request: Request) -> dict[str, Any]:
    gw = request.app.state.gw
    try:
        out: dict[str, Any] = await gw.reload()
    except ConfigError as e:
        raise InvalidRequest(f"reload failed, the running configuration is unchanged: {e}",
                             code="config_invalid") from None
    except GatewayError:
        raise
    except Exception as e:  # a failure no check foresaw: still an answer that says why
        log.error("reload of %s failed, keeping the running configuration", gw.settings.config,
                  exc_info=True)
        err = GatewayError(f"reload failed, the running configuration is unchanged: "
                           f"{gw.settings.config}: {type(e).__name__}: {e}",
                           code="reload_failed")
        raise err from None
    workers = gw.settings.workers
    if workers > 1 and os.environ.get("EXPERTGATE_SUPERVISOR_PID") == str(os.getppid()):
        # this worker checked the file (built and warmed its policies) and serves it; the
        # others are separate processes: the supervisor (uvicorn's, our parent) replaces
        # each worker by a new one built from the file, the new one in service before the
        # old one retires, on SIGHUP
        metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if metrics_dir:
            with contextlib.suppress(OSError):
                Path(metrics_dir, f"{RELOAD_COUNTED_PREFIX}{os.getpid()}-{time.time_ns()}"
                     ).touch()
        os.kill(os.getppid(), signal.SIGHUP)
        out["workers"] = {"count": workers, "reload": "this worker reloaded in place; the "
                          "supervisor is replacing every worker with one built from the "
                          "new configuration"}
    # the file it read (absolute): `expertgate policy promote --url` checks it is the one it
    # rewrote, not another copy
    cfg = gw.settings.config
    return {"object": "reload", "config": str(Path(cfg).resolve()) if cfg else None, **out}


@router.get("/admin/state")
async def state(request: Request) -> dict[str, Any]:
    gw = request.app.state.gw
    workers = gw.settings.workers
    # with several workers each keeps its own view, and any one of them answers
    return {"process": {"pid": os.getpid(), "workers": workers,
                        "scope": "this worker process" if workers > 1 else "the gateway"},
            "replicas": gw.dispatcher.replica_states(),
            "policies": {n: rt.version for n, rt in gw.policy_set.policies.items()},
            "log": {"pending": gw.routing_log.pending, "dropped": gw.routing_log.dropped,
                    "sink_ok": gw.routing_log.sink_ok},
            "canaries": {n: rt.candidate.state() for n, rt in gw.policy_set.policies.items()
                         if rt.candidate is not None}}
