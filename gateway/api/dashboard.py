"""GET /ui: the dashboard page (static files) and GET /ui/api/summary, its data.

The page is plain HTML + JS + CSS from ``gateway/static/dashboard`` (no build step). It holds
no data itself; everything it shows comes from ``/ui/api/summary`` (and the playground from
``POST /v1/route``); the summary needs an admin key, as ``/admin/*`` does
(:func:`gateway.auth.require_admin`: loopback only while no keys are configured).
``EXPERTGATE_UI=false`` turns all of it off (404).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, RedirectResponse, Response

from gateway.auth import require_admin
from gateway.errors import NotFound

router = APIRouter(tags=["dashboard"])

STATIC = Path(__file__).resolve().parent.parent / "static" / "dashboard"
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
#: the page's own files, fixed at import: nothing else under /ui is ever read from disk
_FILES = {p.name: p for p in STATIC.iterdir() if p.suffix in _TYPES} if STATIC.is_dir() else {}
#: the page runs only its own script and style and talks only to this gateway, so a prompt
#: or a reason that ever reached the page as HTML could still not run or load anything; no
#: other site may frame it (a framed dashboard could be clicked through by the framing page),
#: nor learn its address from a Referer; no file is read as another type than it is served
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self'; connect-src 'self'; form-action 'none'; "
                               "base-uri 'none'; frame-ancestors 'none'",
    "x-frame-options": "DENY", "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer"}


def _enabled(request: Request) -> Any:
    gw = request.app.state.gw
    if not gw.settings.ui:
        raise NotFound("the dashboard is turned off (EXPERTGATE_UI=false)")
    return gw


@router.get("/ui", include_in_schema=False)
async def page(request: Request) -> Response:
    _enabled(request)
    return RedirectResponse("/ui/", status_code=307, headers=SECURITY_HEADERS)


@router.get("/ui/", include_in_schema=False)
async def index(request: Request) -> Response:
    return await static(request, "index.html")


@router.get("/ui/static/{name}", include_in_schema=False)
async def static(request: Request, name: str) -> Response:
    _enabled(request)
    path = _FILES.get(name)
    if path is None:
        raise NotFound(f"no dashboard file {name!r}")
    return FileResponse(path, media_type=_TYPES[path.suffix],
                        headers={"cache-control": "no-cache", **SECURITY_HEADERS})


@router.get("/ui/api/summary", dependencies=[Depends(require_admin)])
async def summary(request: Request, response: Response, since: int = Query(0, ge=0),
                  limit: int = Query(50, ge=1, le=200),
                  feed: str | None = Query(None, max_length=64)) -> dict[str, Any]:
    """Recent decisions (after sequence ``since``) with their explanation, and totals since
    start-up: traffic share and cost per expert, cost saved against the strongest expert,
    rejections, decision-cache hit rate, degraded paths, decision time p50/p99, and each
    policy's shadow/canary candidate (serving, per-arm counts, automatic revert).
    ``feed`` names the feed ``since`` counts in (the summary's ``feed``): another one (the
    gateway restarted, another worker answered) gets the latest decisions, not none."""
    gw = _enabled(request)
    # prompts (with log_prompts) and tenants' names: never kept by a browser or a proxy
    response.headers.update({"cache-control": "no-store", **SECURITY_HEADERS})
    out: dict[str, Any] = gw.feed.summary(since, limit, feed)
    out["candidates"] = {n: rt.candidate.state() for n, rt in gw.policy_set.policies.items()
                         if rt.candidate is not None}
    return out
