"""Every served request of a policy with a shadow candidate gets its shadow record. Two were
lost: the requests still queued when the gateway closed (a deploy, or every worker that
``serve --workers N`` replaces after a reload: 59 shadow records for 60 requests), and a
request queued while a batch was being decided, left in the queue until some later request
came (never, for the last one)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson

from tests.unit.gateway_helpers import base_config, chat, gateway_client
from tests.unit.test_shadow_canary import _always_coder


def _cfg(ups, tmp_path: Path) -> dict:  # type: ignore[no-untyped-def]
    return base_config(ups[0].base, ups[1].base, candidate={
        "router": "knn", "artifact": str(_always_coder(tmp_path / "cand")), "mode": "shadow"})


def _shadows(tmp_path: Path) -> list[dict]:
    return [r for r in (orjson.loads(x) for x in (tmp_path / "log.jsonl").read_bytes()
                        .splitlines()) if r["endpoint"] == "shadow"]


async def test_a_gateway_that_closes_logs_the_shadow_decisions_still_queued(
        ups, tmp_path: Path) -> None:
    async with gateway_client(_cfg(ups, tmp_path), tmp_path) as (c, gw):
        gw.pipeline.shadow_linger_s = 0.3  # still lingering when the gateway closes
        ids = []
        for text in ("tell me a joke", "how are you today"):
            r = await c.post("/v1/chat/completions", json=chat("auto", text))
            assert r.status_code == 200
            ids.append(r.headers["x-request-id"])
    assert sorted(s["request_id"] for s in _shadows(tmp_path)) == sorted(ids)


async def test_a_request_queued_while_a_batch_is_decided_is_decided_next(
        ups, tmp_path: Path) -> None:
    async with gateway_client(_cfg(ups, tmp_path), tmp_path) as (c, gw):
        p = gw.pipeline
        p.shadow_linger_s = 0.0
        deciding, release = asyncio.Event(), asyncio.Event()
        batch = p._shadow_batch

        async def held(items):  # type: ignore[no-untyped-def]
            deciding.set()
            await release.wait()
            await batch(items)

        p._shadow_batch = held  # type: ignore[method-assign]
        r = await c.post("/v1/chat/completions", json=chat("auto", "tell me a joke"))
        await deciding.wait()
        r2 = await c.post("/v1/chat/completions", json=chat("auto", "how are you today"))
        assert r.status_code == r2.status_code == 200
        release.set()
        while p._shadow_tasks:
            await asyncio.gather(*p._shadow_tasks)
        assert p._shadow_queue == []  # nothing left for a later request to start
        assert gw.metrics.shadow.labels("auto", "disagree")._value.get() == 2
    got = [s["request_id"] for s in _shadows(tmp_path)]
    assert sorted(got) == sorted([r.headers["x-request-id"], r2.headers["x-request-id"]])
