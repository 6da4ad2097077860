"""Start-up and reload warm every policy: the first request does not pay first-use costs
(lazy loads, the embedding thread's start, a router's first run), and the warm-up leaves
no trace in the decision cache, the routing log or the request metrics."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest
import yaml

from expertgate.bench.upstream_double import OpenAIUpstreamDouble
from gateway.app import create_app
from gateway.config import Settings, parse_config
from gateway.pipeline import WARM_TEXT
from routers.embed import HashingEmbedder
from routers.semantic import SemanticRouter
from tests.unit.gateway_helpers import base_config


class CountingEmbedder(HashingEmbedder):
    def __init__(self) -> None:
        super().__init__()
        self.texts: list[str] = []

    def embed(self, texts):  # type: ignore[no-untyped-def]
        self.texts += list(texts)
        return super().embed(texts)


async def _started(cfg: dict, tmp_path: Path, emb: HashingEmbedder, **settings):  # type: ignore[no-untyped-def]
    s = Settings(**{"log_path": tmp_path / "log.jsonl", "ready_check_upstreams": False,
                    "gc_freeze": False, **settings})
    app = create_app(s, parse_config(cfg, "test.yaml"), embedder=emb)
    await app.gateway.start()
    return app.gateway


async def test_start_and_reload_run_one_decision_per_policy_and_leave_no_trace(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    decided: list[str] = []
    real = SemanticRouter.decide

    def counting(self, X, texts):  # type: ignore[no-untyped-def]
        decided.extend(texts)
        return real(self, X, texts)

    monkeypatch.setattr(SemanticRouter, "decide", counting)
    a = await OpenAIUpstreamDouble("a").start()
    b = await OpenAIUpstreamDouble("b").start()
    emb = CountingEmbedder()
    cfg = copy.deepcopy(base_config(a.base, b.base))
    second = copy.deepcopy(cfg["policies"][0])
    second["name"] = "second"
    cfg["policies"].append(second)
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(cfg))
    gw = await _started(cfg, tmp_path, emb, config=path)
    try:
        assert gw.ready
        # the query embedded once through the request path, each policy decided it once
        assert emb.texts.count(WARM_TEXT) == 1
        assert decided == [WARM_TEXT, WARM_TEXT]
        # nothing cached, counted or logged
        assert len(gw.cache._d) == 0 and gw.cache.bytes == 0
        metrics = gw.metrics.render().decode()
        assert "expertgate_decision_cache_total{" not in metrics
        assert 'expertgate_stage_seconds_count{stage="embed"} 0.0' in metrics
        log = tmp_path / "log.jsonl"
        assert not log.exists() or WARM_TEXT not in log.read_text()
        # a reload warms the new policy set before it serves
        cfg["policies"][1]["name"] = "third"
        path.write_text(yaml.safe_dump(cfg))
        decided.clear()
        await gw.reload()
        assert decided == [WARM_TEXT, WARM_TEXT]
    finally:
        await gw.close()
        await a.stop()
        await b.stop()


async def test_a_policy_that_cannot_decide_is_refused_at_start_and_reload(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
        ) -> None:
    # every request of such a policy would answer 500 (and a canary's would never count)
    from gateway.config import ConfigError

    a = await OpenAIUpstreamDouble("a").start()
    b = await OpenAIUpstreamDouble("b").start()
    try:
        gw = await _started(base_config(a.base, b.base), tmp_path, HashingEmbedder())
        try:  # a reload to a config whose router fails keeps the running one
            old = gw.policy_set
            path = tmp_path / "gw.yaml"
            path.write_text(yaml.safe_dump(base_config(a.base, b.base,
                                                       params={"threshold": "abc"})))
            # a non-number threshold is refused when the policy is built (before warm-up)
            with pytest.raises(ConfigError, match="policy 'auto': params: semantic: threshold"):
                await gw.reload(path)
            assert gw.policy_set is old
        finally:
            await gw.close()

        def broken(self, X, texts):  # type: ignore[no-untyped-def]
            raise RuntimeError("router down")

        monkeypatch.setattr(SemanticRouter, "decide", broken)
        with pytest.raises(ConfigError, match=r"cannot start: .*\(RuntimeError: router down"):
            await _started(base_config(a.base, b.base), tmp_path, HashingEmbedder())
        # switched off: no warm-up decision at all
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="expertgate.pipeline"):
            gw = await _started(base_config(a.base, b.base), tmp_path, HashingEmbedder(),
                                warm_up=False)
        await gw.close()
        assert not any("warm-up" in r.getMessage() for r in caplog.records)
    finally:
        await a.stop()
        await b.stop()


def test_bench_startup_times_both_variants_each_in_a_fresh_process(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    cfg = base_config("http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1")
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "startup.json"
    argv = [sys.executable, "-m", "expertgate", "bench", "startup", "--config", str(path),
            "--rounds", "1", "--first", "2", "--steady", "3", "--json", str(out)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "| warm-up (default) |" in proc.stdout and "| no warm-up |" in proc.stdout
    res = json.loads(out.read_text())
    assert res["benchmark"] == "startup" and set(res["rounds"]) == {"warm", "cold"}
    for runs in res["rounds"].values():
        (run,) = runs
        assert len(run["first_ms"]) == 2 and run["start_s"] > 0
        assert run["first_decision_ms"] == run["first_ms"][0] > 0
    assert res["median"]["cold"]["steady_p50_ms"] > 0
    bad = subprocess.run([*argv[:5], "--config", str(tmp_path / "none.yaml")],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "no config file" in bad.stderr


async def test_a_hung_embedder_ends_the_warm_up_and_the_gateway_starts(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import asyncio

    a = await OpenAIUpstreamDouble("a").start()
    b = await OpenAIUpstreamDouble("b").start()
    try:
        gw = await _started(base_config(a.base, b.base), tmp_path, HashingEmbedder(),
                            warm_up=False)
        try:
            async def hung(text: str):  # type: ignore[no-untyped-def]
                await asyncio.sleep(60)

            gw.pipeline._embed_fn = hung
            with caplog.at_level(logging.WARNING, logger="expertgate.pipeline"):
                failed = await gw.pipeline.warm(timeout_s=0.05)
            assert failed == {}  # no verdict on the policies: the embedder failed
            assert any("warm-up: the embedder failed (TimeoutError" in r.getMessage()
                       for r in caplog.records)
        finally:
            await gw.close()
    finally:
        await a.stop()
        await b.stop()


def test_bench_startup_without_steady_decisions_writes_null_not_nan(tmp_path: Path) -> None:
    import json

    from evals.report import _startup_rows
    from expertgate.bench.startup import _median, run_variant

    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(base_config("http://127.0.0.1:9/v1",
                                               "http://127.0.0.1:9/v1")))
    run = run_variant(path, None, False, 1, 0)
    assert run["steady_p50_ms"] is None and len(run["first_ms"]) == 1

    def no_nan(c: str) -> float:
        raise AssertionError(f"{c} in the JSON")

    json.loads(json.dumps(run), parse_constant=no_nan)  # strict JSON: null, not NaN
    assert _median([None, 1.0]) is None and _median([1.0, 3.0, 2.0]) == 2.0
    res = {"config": str(path), "first": 1, "command": "expertgate bench startup",
           "median": {v: {"start_s": 0.5, "first_decision_ms": 2.0, "worst_of_first_ms": 2.0,
                          "steady_p50_ms": None} for v in ("warm", "cold")}}
    f = tmp_path / "s.json"
    f.write_text(json.dumps(res))
    rows = _startup_rows([str(f)]).splitlines()
    assert rows[2].endswith("| n/a |") and rows[3].endswith("| n/a |")
