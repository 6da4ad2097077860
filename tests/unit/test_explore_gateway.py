"""Exploration in the gateway: propensities in headers, the routing log and /metrics; never
to an expert outside the decision's candidates; deterministic policies log propensity 1."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from gateway.config import ConfigError, parse_config
from tests.unit.gateway_helpers import base_config, chat, gateway_client


def _with_spare(cfg: dict, spare: str) -> dict:
    # an expert the gateway knows but the policy's routes never name
    cfg["experts"].append({"name": "spare", "api_base": spare, "timeout_s": 2})
    return cfg


def _records(tmp_path: Path) -> list[dict]:
    return [orjson.loads(line) for line in (tmp_path / "log.jsonl").read_bytes().splitlines()]


async def test_exploration_logs_propensities_and_stays_in_the_candidate_set(
        ups, tmp_path: Path) -> None:
    coder, chatter = ups
    cfg = _with_spare(base_config(coder.base, chatter.base,
                                  explore={"rate": 0.5, "method": "epsilon"}), chatter.base)
    n = 40
    async with gateway_client(cfg, tmp_path) as (c, gw):
        gw.pipeline._rng.seed(3)
        seen = []
        for _ in range(n):
            r = await c.post("/v1/chat/completions", json=chat("auto", "fix this bug in my code"))
            assert r.status_code == 200
            p = float(r.headers["x-expertgate-propensity"])
            expert = r.headers["x-expertgate-expert"]
            explored = r.headers.get("x-expertgate-explored")
            # epsilon 0.5 over {coder, chatter}: the greedy coder 0.75, chatter 0.25
            assert (expert, p, explored) in {("coder", 0.75, None), ("chatter", 0.25, "coder")}
            seen.append(expert)
        assert 3 <= seen.count("chatter") <= 20
        metrics = (await c.get("/metrics")).text
        assert (f'expertgate_explored_total{{expert="chatter",policy="auto"}} '
                f'{float(seen.count("chatter"))}') in metrics
    recs = [r for r in _records(tmp_path) if r["policy"] == "auto"]
    assert len(recs) == n
    for rec in recs:
        assert rec["expert"] != "spare"
        assert set(rec["candidates"]) == {"coder", "chatter"}
        assert rec["action_probs"] == pytest.approx({"coder": 0.75, "chatter": 0.25})
        assert rec["propensity"] == pytest.approx(rec["action_probs"][rec["expert"]])
        assert rec["explored"] == (rec["expert"] != rec["greedy_expert"])
        assert rec["greedy_expert"] == "coder"
        assert rec["router_version"] == rec["policy_version"]


async def test_deterministic_policy_logs_propensity_one(ups, tmp_path: Path) -> None:
    async with gateway_client(base_config(ups[0].base, ups[1].base), tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json=chat("auto", "tell me a joke"))
        assert r.headers["x-expertgate-propensity"] == "1"
        assert "x-expertgate-explored" not in r.headers
        r = await c.post("/v1/chat/completions", json=chat("coder", "explicit expert"))
        assert "x-expertgate-propensity" not in r.headers
    recs = _records(tmp_path)
    routed = next(r for r in recs if r["policy"] == "auto")
    assert routed["propensity"] == 1.0 and routed["action_probs"] == {"chatter": 1.0}
    assert routed["explored"] is False
    explicit = next(r for r in recs if r["policy"] is None)
    assert explicit["propensity"] is None


def test_explore_config_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"explore\.rate"):
        parse_config(base_config("http://a", "http://b", explore={"rate": 1.0}))
    with pytest.raises(ConfigError, match=r"explore\.method"):
        parse_config(base_config("http://a", "http://b", explore={"rate": 0.1,
                                                                  "method": "greedy"}))


async def test_exported_exploration_logs_feed_offpolicy_evaluation(ups, tmp_path: Path) -> None:
    """Gateway with exploration -> feedback -> logs export (Parquet) -> load_logged: the
    off-policy data carry the gateway's propensities, one row per rated request."""
    from evals.offpolicy import load_logged
    from gateway.logs import export_logs

    coder, chatter = ups
    cfg = base_config(coder.base, chatter.base, log_prompts=True,
                      explore={"rate": 0.3, "method": "epsilon"})
    async with gateway_client(cfg, tmp_path) as (c, gw):
        gw.pipeline._rng.seed(1)
        for i in range(30):
            text = "fix this bug in my code" if i % 2 else "tell me a joke"
            r = await c.post("/v1/chat/completions", json=chat("auto", f"{text} {i}"))
            await c.post("/v1/feedback", json={"request_id": r.headers["x-request-id"],
                                               "score": 1.0 if i % 3 else 0.0})
        feedback_file = gw.settings.feedback_file
    out = tmp_path / "export.parquet"
    assert export_logs(out, log_path=tmp_path / "log.jsonl", feedback_path=feedback_file) == 30
    data = load_logged(out, lambda t: np.zeros((len(t), 2)))
    assert len(data) == 30 and sorted(data.experts) == ["chatter", "coder"]
    assert np.allclose(data.probs.sum(axis=1), 1.0)
    assert set(np.round(data.propensity, 6)) <= {0.85, 0.15}
    assert data.allowed.all()
