"""A canary tested by several processes: the monitor's arithmetic of shared totals plus its
own observations since, reverts shared among the workers of one machine without Redis
(the reverts file), and the start-up warning that their counts are per worker. The Redis
path runs against a real redis-server: tests/integration/test_canary_shared.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

from expertgate.cli.serve import per_process_canaries
from gateway.canary import CanaryMonitor, _Stats
from gateway.config import Settings, parse_config
from tests.unit.gateway_helpers import base_config, chat, gateway_client
from tests.unit.test_shadow_canary import _always_coder


def test_a_shared_monitor_tests_the_totals_plus_what_it_saw_since() -> None:
    m = CanaryMonitor(margin=0.05, alpha=0.05, min_samples=10, shared=True)
    for _ in range(3):
        m.observe_request("incumbent", False)
    m.observe_feedback("canary", 0.5)
    taken = m.take_pending()
    assert taken["incumbent"].n == 3 and taken["canary"].fb_n == 1
    m.observe_request("canary", True)  # while the exchange is on its way
    # the exchange failed: what it took waits for the next one
    m.restore_pending(taken)
    assert m.pending["incumbent"].n == 3 and m.pending["canary"].errors == 1
    taken = m.take_pending()
    m.observe_request("canary", False)
    # the totals of all processes (they include what was taken) plus the one since
    assert m.absorb({"incumbent": _Stats(40, 0), "canary": _Stats(30, 1, 1, 0.5)}) is None
    assert (m.arms["incumbent"].n, m.arms["canary"].n, m.arms["canary"].errors) == (40, 31, 1)
    assert m.counts == "shared"
    # another process's requests alone tip the test: this one reverts on reading them
    got = m.absorb({"incumbent": _Stats(400, 0), "canary": _Stats(400, 400)})
    assert got == "error_rate" and "counts of all processes" in (m.reverted or "")
    assert m.origin == "this process" and m.record is not None
    assert m.record["signal"] == "error_rate"
    # a verdict recorded elsewhere replaces this one, so every process says the same
    assert m.adopt({"signal": "feedback", "reason": "theirs", "ts": 1.0},
                   "another process") is False
    assert m.reverted == "theirs" and m.snapshot()["revert_origin"] == "another process"


def test_an_unshared_monitor_keeps_no_pending_counts() -> None:
    m = CanaryMonitor(min_samples=10)
    m.observe_request("canary", True)
    assert m.pending["canary"].n == 0 and m.arms["canary"].n == 1
    assert m.counts == "process" and m.snapshot()["counts"] == "process"


async def test_workers_without_redis_share_a_revert_through_the_reverts_file(
        ups, tmp_path: Path) -> None:
    coder, chatter = ups
    coder.mode = "status"  # every canary request fails
    art = _always_coder(tmp_path / "cand")
    cfg = base_config(coder.base, chatter.base, fallback=[], max_attempts=1,
                      candidate={"router": "knn", "artifact": str(art), "mode": "canary",
                                 "share": 0.5, "auto_revert": {"min_samples": 10}})
    kw = {"workers": 2, "canary_sync_s": 0.05}
    # two workers of one serve --workers 2: the same log directory
    async with gateway_client(cfg, tmp_path, **kw) as (c1, gw1), \
            gateway_client(cfg, tmp_path, **kw) as (c2, gw2):
        gw1.pipeline._rng.seed(0)
        for _ in range(400):
            r = await c1.post("/v1/chat/completions", json=chat("auto", "tell me a joke"))
            if "x-expertgate-arm" not in r.headers:
                break
        assert not gw1.policy_set.policies["auto"].candidate.serving
        for _ in range(100):
            if not gw2.policy_set.policies["auto"].candidate.serving:
                break
            await asyncio.sleep(0.02)
        state = (await c2.get("/admin/state")).json()["canaries"]["auto"]
        assert state["serving"] is False and state["revert_origin"] == "another process"
        assert state["counts"] == "process" and "error rate" in state["reverted"]
        r = await c2.post("/v1/chat/completions", json=chat("auto", "tell me a joke"))
        assert r.status_code == 200 and "x-expertgate-arm" not in r.headers
        metrics = (await c2.get("/metrics")).text
        assert 'expertgate_canary_reverts_total{policy="auto",signal="error_rate"} 1.0' in \
            metrics
        assert 'expertgate_canary_active{policy="auto"} 0.0' in metrics
        assert 'expertgate_canary_shared{policy="auto"} 0.0' in metrics


def test_serve_warns_that_canaries_are_per_worker_without_redis(tmp_path: Path) -> None:
    art = _always_coder(tmp_path / "cand")
    cfg = parse_config(base_config("http://127.0.0.1:9", "http://127.0.0.1:9", candidate={
        "router": "knn", "artifact": str(art), "mode": "canary", "share": 0.1}))
    (line,) = per_process_canaries(cfg, Settings(workers=4))
    assert "policy 'auto'" in line and "per worker process" in line and "--redis-url" in line
    assert per_process_canaries(cfg, Settings(workers=4, redis_url="redis://127.0.0.1")) == []
    assert per_process_canaries(cfg, Settings(workers=1)) == []


def test_no_warning_for_a_shadow(tmp_path: Path) -> None:
    art = _always_coder(tmp_path / "cand")
    cfg = parse_config(base_config("http://127.0.0.1:9", "http://127.0.0.1:9", candidate={
        "router": "knn", "artifact": str(art), "mode": "shadow"}))
    assert per_process_canaries(cfg, Settings(workers=4)) == []
