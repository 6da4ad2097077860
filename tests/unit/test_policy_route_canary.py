"""Beside a serving canary the dry run says what the canary would decide: a live request
takes that decision for the canary's share of the traffic (``x-expertgate-arm: canary``),
and ``POST /v1/route`` showed only the incumbent's, with no sign that another one existed."""

from __future__ import annotations

import collections
from pathlib import Path

from tests.unit.gateway_helpers import base_config, chat, gateway_client
from tests.unit.test_shadow_canary import _always_coder


async def test_the_dry_run_names_the_canarys_decision_and_share(ups, tmp_path: Path) -> None:
    cfg = base_config(ups[0].base, ups[1].base, candidate={
        "router": "knn", "artifact": str(_always_coder(tmp_path / "cand")), "mode": "canary",
        "share": 0.5, "auto_revert": {"min_samples": 10_000}})
    async with gateway_client(cfg, tmp_path) as (c, gw):
        body = chat("auto", "tell me a joke")
        dry = (await c.post("/v1/route", json=body)).json()
        assert dry["fallback_chain"][0] == "chatter"  # the incumbent's
        assert dry["canary"]["share"] == 0.5
        assert dry["canary"]["decision"]["targets"][0]["expert"] == "coder"
        assert dry["canary"]["decision"]["policy_version"] == \
            gw.policy_set.policies["auto"].candidate.runtime.version
        seen = collections.Counter()
        for _ in range(40):
            r = await c.post("/v1/chat/completions", json=body)
            seen[(r.headers["x-expertgate-arm"], r.headers["x-expertgate-expert"])] += 1
        assert set(seen) == {("incumbent", "chatter"), ("canary", "coder")}
        gw.policy_set.policies["auto"].candidate.monitor.reverted = "by hand"
        assert "canary" not in (await c.post("/v1/route", json=body)).json()


async def test_without_a_canary_the_dry_run_has_no_canary(ups, tmp_path: Path) -> None:
    async with gateway_client(base_config(ups[0].base, ups[1].base), tmp_path) as (c, _):
        assert "canary" not in (await c.post("/v1/route", json=chat("auto", "hi"))).json()
