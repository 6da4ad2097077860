"""Train -> serve -> route -> answer, as a user does it: `expertgate train` writes the policy
snippet, the user maps the table's models to their own experts, `expertgate serve` (a real
process) routes with the artifact and an expert answers. The experts are OpenAI-compatible
upstream doubles that say who answered; one configured expert is unreachable on purpose, and
`serve` must name it at start-up."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
import yaml

from expertgate.bench.upstream_double import OpenAIUpstreamDouble
from expertgate.cli import main as cli
from expertgate.procs import GatewayServer, free_port
from tests.e2e.test_train_then_serve import write_long_table

MAP = {"strong-llm": "big-expert", "mid-llm": "small-expert", "cheap-llm": "small-expert"}


async def test_train_then_serve_with_mapped_models_routes_and_answers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("EXPERTGATE_CACHE", str(tmp_path / "cache"))
    write_long_table(tmp_path / "table.csv")
    art = tmp_path / "artifacts" / "knn"
    # a small price for cost: math needs the strong model, a joke does not
    assert cli(["train", "--router", "knn", "--data", str(tmp_path / "table.csv"),
                "--embedder", "hashing", "--out", str(art), "--param", "cost_weight=0.1"]) == 0
    printed = capsys.readouterr().out
    snippet = yaml.safe_load((art / "policy.yaml").read_text())
    assert "models:" in printed and snippet["policies"][0]["artifact"] == str(art.resolve())
    assert set(snippet["policies"][0]["models"]) == set(MAP)

    big = await OpenAIUpstreamDouble("big-double").start()
    small = await OpenAIUpstreamDouble("small-double").start()
    gw = None
    try:
        policy = snippet["policies"][0]
        policy.update(name="learned", models=MAP, fallback=["small-expert"])
        cfg = {"embedder": snippet["embedder"],
               "experts": [{"name": "big-expert", "api_base": big.base},
                           {"name": "small-expert", "api_base": small.base},
                           {"name": "ghost", "api_base": f"http://127.0.0.1:{free_port()}/v1"}],
               "policies": [policy]}
        (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        gw = GatewayServer(tmp_path / "gateway.yaml", log_path=tmp_path / "gateway.log")
        await asyncio.to_thread(gw.start)
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as c:
            for text, expect in (("solve the equation", "big-expert"),
                                 ("tell me a joke", "small-expert")):
                d = (await c.post("/v1/route", json={"model": "learned", "text": text})).json()
                assert d["targets"][0]["expert"] == expect, d
                assert d["reason"].endswith(f"is served by {expect}")
                assert {t["expert"] for t in d["targets"]} <= {"big-expert", "small-expert"}
                r = await c.post("/v1/chat/completions", json={
                    "model": "learned", "messages": [{"role": "user", "content": text}]})
                assert r.status_code == 200, r.text
                assert r.headers["x-expertgate-expert"] == expect
                double = "big-double" if expect == "big-expert" else "small-double"
                assert r.json()["choices"][0]["message"]["content"].startswith(
                    f"answer from {double}")
            models = (await c.get("/v1/models")).json()["data"]
            learned = next(m for m in models if m["id"] == "learned")
            assert set(learned["expertgate"]["experts"]) == {"big-expert", "small-expert"}
        log = gw.log_tail(20_000)
        assert "expert 'ghost' is not reachable" in log
        assert "'big-expert' is not reachable" not in log
        assert "'small-expert' is not reachable" not in log
    finally:
        if gw is not None:
            await asyncio.to_thread(gw.stop)
        await big.stop()
        await small.stop()


def test_unmapped_table_models_get_a_message_that_says_what_to_do(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch
                                                                  ) -> None:
    from gateway.config import ConfigError, parse_config
    from gateway.pipeline import build_policy_set
    from routers.embed import HashingEmbedder

    monkeypatch.setenv("EXPERTGATE_CACHE", str(tmp_path / "cache"))
    write_long_table(tmp_path / "table.csv")
    art = tmp_path / "knn"
    assert cli(["train", "--router", "knn", "--data", str(tmp_path / "table.csv"),
                "--embedder", "hashing", "--out", str(art)]) == 0
    experts = [{"name": "big-expert", "api_base": "http://127.0.0.1:9/v1"}]
    cfg = parse_config({"experts": experts, "policies": [
        {"name": "p", "router": "knn", "artifact": str(art)}]})
    with pytest.raises(ConfigError, match=r"map each to one of your experts.*models: \{"):
        build_policy_set(cfg, HashingEmbedder())
    cfg = parse_config({"experts": experts, "policies": [
        {"name": "p", "router": "knn", "artifact": str(art),
         "models": {"strong-llm": "big-expert", "gpt-5": "big-expert"}}]})
    with pytest.raises(ConfigError, match="models maps gpt-5, which the router does not know"):
        build_policy_set(cfg, HashingEmbedder())


async def test_example_learned_config_serves_a_routellm_artifact(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """examples/learned-local.yaml maps RouteLLM's two models onto the local experts: an
    artifact trained on a table with those model names loads and decides between them (the
    hashing embedder stands in for MiniLM to keep this quick)."""
    from evals.datasets.routing import ROUTELLM_STRONG, ROUTELLM_WEAK
    from gateway.cache import MemoryDecisionCache
    from gateway.config import parse_config
    from gateway.metrics import Metrics
    from gateway.pipeline import Pipeline, build_policy_set
    from routers.embed import HashingEmbedder

    monkeypatch.setenv("EXPERTGATE_CACHE", str(tmp_path / "cache"))
    write_long_table(tmp_path / "t.csv", {ROUTELLM_WEAK: 0.1, ROUTELLM_STRONG: 1.0})
    art = tmp_path / "gsm8k-knn"
    assert cli(["train", "--router", "knn", "--data", str(tmp_path / "t.csv"),
                "--embedder", "hashing", "--out", str(art)]) == 0
    root = Path(__file__).resolve().parents[2]
    data = yaml.safe_load((root / "examples" / "learned-local.yaml").read_text())
    assert data["policies"][0]["artifact"] == "../artifacts/gsm8k-knn"
    data["policies"][0]["artifact"] = str(art)
    data["embedder"] = {"kind": "hashing", "micro_batch": False}
    pset = build_policy_set(parse_config(data, "learned-local.yaml"), HashingEmbedder())
    rt = pset.policies["learned"]
    assert set(rt.router.experts_) == {ROUTELLM_STRONG, ROUTELLM_WEAK}  # the table's names
    pipe = Pipeline(pset, HashingEmbedder(), MemoryDecisionCache(), Metrics())
    d = await pipe.decide(rt, "solve the equation", [])
    pipe.close()
    assert {t.expert for t in d.targets} == {"smollm2", "gemma3"}  # the gateway's experts
