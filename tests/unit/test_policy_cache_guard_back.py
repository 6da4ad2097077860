"""A decision whose two-stage guard ran without its back stage (``guard-back``: the front's
verdict only, for a query the front was unsure of) is not cached. It was: the same query
again got the front-only decision from the cache for the policy's TTL (an hour), with
``cache: hit`` and no degraded header, even after the back encoder had recovered."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from routers.guard_cascade import BACK_FAILED, GuardCascade, save_cascade
from tests.unit.gateway_helpers import base_config, chat, gateway_client
from tests.unit.test_guard_cascade import (  # noqa: F401
    BACK,
    FRONT,
    QUERIES,
    _FailingBackEmbedderDouble,
    cascade,
)


async def test_a_front_only_verdict_is_never_served_from_the_cache(
        ups, cascade: GuardCascade, tmp_path: Path) -> None:  # noqa: F811
    pytest.importorskip("skops")
    import routers.guard_cascade as gc

    X = FRONT.embed(QUERIES)
    _, esc = cascade.cascade_verdict(X, QUERIES, lambda t, idx: BACK.embed([t[i] for i in idx]))
    q = QUERIES[int(np.flatnonzero(esc)[0])]  # one the front escalates
    art = save_cascade(cascade, tmp_path / "cascade", front_embedder=FRONT.name)
    real_load = gc.load_cascade

    def load_broken(path, back_embedder=None, manifest=None):  # type: ignore[no-untyped-def]
        return real_load(path, back_embedder=_FailingBackEmbedderDouble(dim=256),
                         manifest=manifest)

    cfg = base_config(ups[0].base, ups[1].base, guard={"artifact": str(art)},
                      on_reject={"action": "fallback", "expert": "chatter"})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gc, "load_cascade", load_broken)
        async with gateway_client(cfg, tmp_path) as (c, _):
            for path in ("/v1/chat/completions", "/v1/route", "/v1/chat/completions"):
                r = await c.post(path, json=chat("auto", q))
                assert r.status_code == 200, r.text
                assert r.headers["x-expertgate-guard-stage"] == BACK_FAILED, path
                assert "guard-back" in r.headers["x-expertgate-degraded"].split(","), path
                assert r.headers["x-expertgate-cache"] == "miss", path
