"""Shadow and canary candidates: a shadow decides and is logged but never served; a canary
serves its share and reverts itself under the sequential test; promote/revert rewrite the
configuration atomically and hot-reload."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import yaml

from gateway.canary import CanaryMonitor, mixture_radius
from routers.base import RoutingTable, make_router
from routers.embed import HashingEmbedder
from tests.unit.gateway_helpers import base_config, chat, gateway_client


def _always_coder(path: Path) -> Path:
    """A knn artifact for which the coder is best on every prompt."""
    e = HashingEmbedder()
    texts = ["tell me a joke", "fix this bug", "how are you", "refactor this", "weather"]
    S = np.array([[1.0, 0.0]] * len(texts))
    t = RoutingTable([f"p{i}" for i in range(len(texts))], texts, ["coder", "chatter"], S,
                     np.zeros_like(S))
    r = make_router("knn", k=3).fit(e.embed(texts), t)
    return r.save(path, embedder=e.name)


def _records(tmp_path: Path) -> list[dict]:
    return [orjson.loads(line) for line in (tmp_path / "log.jsonl").read_bytes().splitlines()]


async def test_shadow_decides_and_logs_but_never_serves(ups, tmp_path: Path) -> None:
    coder, chatter = ups
    art = _always_coder(tmp_path / "cand")
    cfg = base_config(coder.base, chatter.base,
                      candidate={"router": "knn", "artifact": str(art), "mode": "shadow"})
    async with gateway_client(cfg, tmp_path) as (c, gw):
        for _ in range(3):
            r = await c.post("/v1/chat/completions", json=chat("auto", "tell me a joke"))
            assert r.headers["x-expertgate-expert"] == "chatter"
            assert "x-expertgate-arm" not in r.headers
        await asyncio.gather(*gw.pipeline._shadow_tasks)
        metrics = (await c.get("/metrics")).text
        assert ('expertgate_shadow_decisions_total{agreement="disagree",policy="auto"} 3.0'
                in metrics)
    assert coder.received == []  # nothing served from the shadow's choice
    shadow = [r for r in _records(tmp_path) if r["endpoint"] == "shadow"]
    assert len(shadow) == 3
    assert all(r["expert"] == "coder" and r["served_expert"] == "chatter"
               and r["agrees"] is False for r in shadow)
    assert shadow[0]["router_version"] != gw.policy_set.policies["auto"].version


async def test_failing_shadow_decisions_are_counted_and_never_served(
        ups, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    coder, chatter = ups
    art = _always_coder(tmp_path / "cand")
    cfg = base_config(coder.base, chatter.base,
                      candidate={"router": "knn", "artifact": str(art), "mode": "shadow"})
    async with gateway_client(cfg, tmp_path) as (c, gw):
        cand = gw.policy_set.policies["auto"].candidate.runtime.router

        def broken(X, texts):  # type: ignore[no-untyped-def]
            raise RuntimeError("shadow down")

        monkeypatch.setattr(cand, "decide", broken)
        for _ in range(3):
            r = await c.post("/v1/chat/completions", json=chat("auto", "tell me a joke"))
            assert r.status_code == 200 and r.headers["x-expertgate-expert"] == "chatter"
        await asyncio.gather(*gw.pipeline._shadow_tasks)
        metrics = (await c.get("/metrics")).text
        assert 'expertgate_shadow_decisions_total{agreement="failed",policy="auto"} 3.0' in metrics


async def test_shadow_starts_only_after_the_response_is_recorded(ups, tmp_path: Path) -> None:
    # the shadow's decision must not take CPU from the request it shadows: it starts in the
    # record stage, after the answer was sent and its log record written
    coder, chatter = ups
    art = _always_coder(tmp_path / "cand")
    cfg = base_config(coder.base, chatter.base,
                      candidate={"router": "knn", "artifact": str(art), "mode": "shadow"})
    events: list[str] = []
    async with gateway_client(cfg, tmp_path) as (c, gw):
        assert gw.routing_log is not None
        log_record, shadow = gw.routing_log.record, gw.pipeline._shadow_batch

        def record(rec):  # type: ignore[no-untyped-def]
            events.append(f"log {rec['endpoint']}")
            return log_record(rec)

        async def shadow_first(items):  # type: ignore[no-untyped-def]
            events.append(f"shadow decides {len(items)}")
            await shadow(items)

        gw.routing_log.record = record  # type: ignore[method-assign]
        gw.pipeline._shadow_batch = shadow_first  # type: ignore[method-assign]
        for _ in range(2):
            r = await c.post("/v1/chat/completions", json=chat("auto", "tell me a joke"))
            assert r.status_code == 200
            await asyncio.gather(*gw.pipeline._shadow_tasks)
    assert events == ["log chat", "shadow decides 1", "log shadow"] * 2


async def test_concurrent_shadow_requests_are_decided_as_one_batch(ups, tmp_path: Path
                                                                    ) -> None:
    coder, chatter = ups
    art = _always_coder(tmp_path / "cand")
    cfg = base_config(coder.base, chatter.base,
                      candidate={"router": "knn", "artifact": str(art), "mode": "shadow"})
    sizes: list[int] = []
    async with gateway_client(cfg, tmp_path) as (c, gw):
        batch = gw.pipeline._shadow_batch

        async def count(items):  # type: ignore[no-untyped-def]
            sizes.append(len(items))
            await batch(items)

        gw.pipeline._shadow_batch = count  # type: ignore[method-assign]
        gw.pipeline.shadow_linger_s = 0.5
        prompts = [f"tell me joke number {i}" for i in range(8)]
        rs = await asyncio.gather(*(c.post("/v1/chat/completions", json=chat("auto", p))
                                    for p in prompts))
        assert all(r.status_code == 200 for r in rs)
        await asyncio.gather(*gw.pipeline._shadow_tasks)
    assert sizes == [8]
    shadow = [r for r in _records(tmp_path) if r["endpoint"] == "shadow"]
    assert len(shadow) == 8 and all(r["expert"] == "coder" for r in shadow)


def test_mixture_bound_is_anytime_valid_on_null_streams() -> None:
    # a fair coin's running mean leaves the bound in far fewer than alpha of the streams
    rng = np.random.default_rng(0)
    a, crossed = 0.05, 0
    for _ in range(200):
        x = rng.integers(0, 2, 2000)
        n = np.arange(1, 2001)
        dev = np.abs(np.cumsum(x) / n - 0.5)
        rad = np.array([mixture_radius(int(k), a) for k in n])
        crossed += bool((dev > rad).any())
    assert crossed / 200 <= a
    assert mixture_radius(0, a) == math.inf
    assert mixture_radius(1000, a) < mixture_radius(100, a)


def test_monitor_reverts_on_errors_not_on_equal_arms() -> None:
    m = CanaryMonitor(margin=0.05, alpha=0.05, min_samples=20)
    rng = np.random.default_rng(1)
    for _ in range(2000):  # equal 10 % error rates: never revert
        assert m.observe_request("incumbent", rng.uniform() < 0.1) is None
        assert m.observe_request("canary", rng.uniform() < 0.1) is None
    m = CanaryMonitor(margin=0.05, alpha=0.05, min_samples=20)
    got = None
    for _ in range(500):
        m.observe_request("incumbent", False)
        got = got or m.observe_request("canary", True)
    assert got == "error_rate" and "error rate 1.000" in (m.reverted or "")
    m = CanaryMonitor(margin=0.05, alpha=0.05, min_samples=20)
    got = None
    for _ in range(300):
        got = got or m.observe_feedback("incumbent", 0.9) or m.observe_feedback("canary", 0.2)
    assert got == "feedback" and m.arms["canary"].fb_n < 100


async def test_canary_reverts_itself_when_its_errors_exceed_the_incumbents(
        ups, tmp_path: Path) -> None:
    coder, chatter = ups
    coder.mode = "status"  # every request the canary sends to the coder fails
    art = _always_coder(tmp_path / "cand")
    cfg = base_config(coder.base, chatter.base, fallback=[], max_attempts=1,
                      candidate={"router": "knn", "artifact": str(art), "mode": "canary",
                                 "share": 0.5, "auto_revert": {"min_samples": 20,
                                                               "margin": 0.05}})
    async with gateway_client(cfg, tmp_path) as (c, gw):
        gw.pipeline._rng.seed(0)
        arms = []
        for _ in range(400):
            r = await c.post("/v1/chat/completions", json=chat("auto", "tell me a joke"))
            arm = r.headers.get("x-expertgate-arm")
            arms.append(arm)
            if arm == "canary":
                assert r.status_code == 502
            if arm is None:
                break
        assert arms[-1] is None and {"canary", "incumbent"} <= set(arms)
        for _ in range(5):  # after the revert everything goes to the incumbent
            r = await c.post("/v1/chat/completions", json=chat("auto", "tell me a joke"))
            assert r.status_code == 200 and "x-expertgate-arm" not in r.headers
        metrics = (await c.get("/metrics")).text
        assert 'expertgate_canary_reverts_total{policy="auto",signal="error_rate"} 1.0' in metrics
        assert 'expertgate_canary_active{policy="auto"} 0.0' in metrics
        state = (await c.get("/admin/state")).json()
        assert "error rate" in state["canaries"]["auto"]["reverted"]
        ui = (await c.get("/ui/api/summary")).json()  # the dashboard says so too
        assert ui["candidates"]["auto"]["serving"] is False
        assert "error rate" in ui["candidates"]["auto"]["reverted"]
        # a reload that leaves the candidate unchanged keeps it reverted
        path = tmp_path / "gw.yaml"
        path.write_text(yaml.safe_dump(cfg))
        gw.settings.config = path
        assert (await c.post("/admin/reload")).status_code == 200
        assert gw.policy_set.policies["auto"].candidate.serving is False
        # ... and so does one that edits the policy around it (its version changes)
        old_version = gw.policy_set.policies["auto"].version
        cfg["policies"][0]["log_prompts"] = not cfg["policies"][0].get("log_prompts", False)
        path.write_text(yaml.safe_dump(cfg))
        assert (await c.post("/admin/reload")).json()["changed"] == ["auto"]
        assert gw.policy_set.policies["auto"].version != old_version
        assert gw.policy_set.policies["auto"].candidate.serving is False
        # a changed candidate starts afresh
        cfg["policies"][0]["candidate"]["params"] = {"k": 3}
        path.write_text(yaml.safe_dump(cfg))
        assert (await c.post("/admin/reload")).status_code == 200
        assert gw.policy_set.policies["auto"].candidate.serving is True
    events = [r for r in _records(tmp_path) if r["endpoint"] == "canary"]
    assert len(events) == 1 and events[0]["status"] == "reverted"
    routed = [r for r in _records(tmp_path) if r["endpoint"] == "chat"]
    assert {r["arm"] for r in routed} == {"canary", "incumbent", None}


@pytest.mark.parametrize("action", ["promote", "revert"])
def test_policy_promote_and_revert_rewrite_the_config(tmp_path: Path, action: str) -> None:
    from expertgate.cli import main
    from gateway.config import load_config

    art = _always_coder(tmp_path / "cand")
    cfg = base_config("http://127.0.0.1:9", "http://127.0.0.1:9",
                      candidate={"router": "knn", "artifact": str(art), "mode": "canary",
                                 "share": 0.1})
    path = tmp_path / "gw.yaml"
    path.write_text("# made by hand\n#   for the canary\n" + yaml.safe_dump(cfg))
    path.chmod(0o644)
    assert main(["policy", action, "auto", "--config", str(path)]) == 0
    # the gateway (maybe another user) can still read it; its header comment is kept
    assert path.stat().st_mode & 0o777 == 0o644
    assert path.read_text().startswith("# made by hand\n#   for the canary\n")
    pol = load_config(path).policies[0]
    assert pol.candidate is None
    if action == "promote":
        assert pol.router == "knn" and pol.artifact == art and pol.routes == []
    else:
        assert pol.router == "semantic" and pol.artifact is None and pol.routes
    # nothing to promote any more: a clear error, the file untouched
    before = path.read_text()
    assert main(["policy", action, "auto", "--config", str(path)]) == 2
    assert path.read_text() == before


async def test_online_cluster_router_learns_from_feedback(ups, tmp_path: Path) -> None:
    coder, chatter = ups
    e = HashingEmbedder()
    texts = ["tell me a joke", "fix this bug", "how are you", "refactor this", "weather"]
    S = np.array([[1.0, 0.6]] * len(texts))
    t = RoutingTable([f"p{i}" for i in range(len(texts))], texts, ["coder", "chatter"], S,
                     np.zeros_like(S))
    art = make_router("cluster", n_clusters=1).fit(e.embed(texts), t).save(
        tmp_path / "cl", embedder=e.name)
    cfg = base_config(coder.base, chatter.base)
    pol = cfg["policies"][0]
    pol.pop("routes")
    pol.update(router="cluster", artifact=str(art), params={}, online=True)
    async with gateway_client(cfg, tmp_path) as (c, gw):
        served = []
        for _ in range(8):
            r = await c.post("/v1/chat/completions", json=chat("auto", "tell me a joke"))
            served.append(r.headers["x-expertgate-expert"])
            score = 0.0 if served[-1] == "coder" else 1.0  # users dislike the coder's answers
            fb = await c.post("/v1/feedback", json={"request_id": r.headers["x-request-id"],
                                                    "score": score})
            assert fb.status_code == 200
        # the coder's cluster mean falls with every 0 until the chatter's 0.6 is ahead, and
        # the decision cache never serves the decision from before an update
        assert served[0] == "coder" and served[-1] == "chatter"
        k = served.index("chatter")
        assert 3 <= k <= 6 and set(served[k:]) == {"chatter"}
        rt = gw.policy_set.policies["auto"]
        assert rt.updates == 8
        assert rt.router.reward_count_.sum() == len(texts) * 2 + 8
        metrics = (await c.get("/metrics")).text
        assert 'expertgate_online_updates_total{policy="auto"} 8.0' in metrics


def test_online_needs_a_router_that_learns_online(tmp_path: Path) -> None:
    from gateway.config import ConfigError, parse_config
    from gateway.pipeline import build_policy_set

    cfg = base_config("http://127.0.0.1:9", "http://127.0.0.1:9", online=True)
    with pytest.raises(ConfigError, match="learns online"):
        build_policy_set(parse_config(cfg), HashingEmbedder())


def _canary_config(coder: str, chatter: str, tmp_path: Path) -> dict[str, Any]:
    """The policy with an always-coder knn canary on half the traffic (reverting from ten
    samples per arm)."""
    art = _always_coder(tmp_path / "cand")
    return base_config(coder, chatter,
                       candidate={"router": "knn", "artifact": str(art), "mode": "canary",
                                  "share": 0.5, "auto_revert": {"min_samples": 10}})


async def test_canary_reverts_on_worse_feedback_through_the_api(ups, tmp_path: Path) -> None:
    coder, chatter = ups
    cfg = _canary_config(coder.base, chatter.base, tmp_path)
    async with gateway_client(cfg, tmp_path) as (c, gw):
        gw.pipeline._rng.seed(2)
        for _ in range(300):
            r = await c.post("/v1/chat/completions", json=chat("auto", "tell me a joke"))
            arm = r.headers.get("x-expertgate-arm")
            if arm is None:
                break
            # users rate the canary's answers (the coder's) 0, the incumbent's 1
            await c.post("/v1/feedback", json={"request_id": r.headers["x-request-id"],
                                               "score": 0.0 if arm == "canary" else 1.0})
        assert arm is None  # reverted
        metrics = (await c.get("/metrics")).text
        assert 'expertgate_canary_reverts_total{policy="auto",signal="feedback"} 1.0' in metrics
        snap = gw.policy_set.policies["auto"].candidate.state()
        assert snap["arms"]["canary"]["feedback"] == 0.0
        assert snap["arms"]["incumbent"]["feedback"] == 1.0
    # a new process (a restart, or the workers serve --workers N replaces on a reload) reads
    # the recorded revert: the same candidate does not serve again
    async with gateway_client(cfg, tmp_path) as (c, gw):
        cand = gw.policy_set.policies["auto"].candidate
        assert cand.serving is False and "recorded earlier" in cand.state()["reverted"]
        r = await c.post("/v1/chat/completions", json=chat("auto", "tell me a joke"))
        assert "x-expertgate-arm" not in r.headers
    cfg["policies"][0]["candidate"]["params"] = {"k": 3}  # another candidate: serves
    async with gateway_client(cfg, tmp_path) as (c, gw):
        assert gw.policy_set.policies["auto"].candidate.serving is True


async def test_a_request_rated_over_and_over_counts_once_for_the_canary(
        ups, tmp_path: Path) -> None:
    coder, chatter = ups
    cfg = _canary_config(coder.base, chatter.base, tmp_path)
    async with gateway_client(cfg, tmp_path) as (c, gw):
        gw.pipeline._rng.seed(2)
        ids: dict[str, str] = {}
        while len(ids) < 2:  # one request answered on each arm
            r = await c.post("/v1/chat/completions", json=chat("auto", "tell me a joke"))
            ids.setdefault(r.headers["x-expertgate-arm"], r.headers["x-request-id"])
        for i in range(120):  # one client rates its two requests again and again
            for arm, score in (("canary", 0.0), ("incumbent", 1.0)):
                r = await c.post("/v1/feedback", json={"request_id": ids[arm],
                                                       "score": score if i else 0.5})
                assert r.status_code == 200
        snap = gw.policy_set.policies["auto"].candidate.state()
        assert snap["reverted"] is None
        assert snap["arms"]["canary"]["feedback_n"] == 1  # the latest rating, once
        assert snap["arms"]["canary"]["feedback"] == 0.0
        assert snap["arms"]["incumbent"]["feedback_n"] == 1
        assert snap["arms"]["incumbent"]["feedback"] == 1.0
