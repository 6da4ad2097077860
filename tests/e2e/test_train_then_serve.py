"""Every router family trains with `expertgate train` and serves in the gateway from its artifact.

Uses the hashing embedder (a real, dependency-free embedder) so the whole loop runs in seconds;
the MiniLM path is covered by the integration tier and the evaluation suite.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from expertgate.bench.upstream_double import OpenAIUpstreamDouble
from expertgate.cli import main as cli
from routers.base import registered_names
from routers.embed import HashingEmbedder
from tests.unit.gateway_helpers import chat, gateway_client

TOPICS = {
    "math": ["solve the equation", "integral of x squared", "what is 17 times 23",
             "prove the theorem", "derivative of sine", "compute the determinant"],
    "law": ["is this contract valid", "tenant rights in my lease", "how to file a lawsuit",
            "what is a tort", "copyright of a photo", "sign a non disclosure agreement"],
    "chat": ["tell me a joke", "how are you today", "recommend a movie",
             "what should I cook tonight", "favourite colour", "plan my weekend"],
}
MODELS = {"cheap-llm": 0.1, "mid-llm": 0.4, "strong-llm": 1.0}
GOOD_AT = {"math": "strong-llm", "law": "mid-llm", "chat": "cheap-llm"}


def write_long_table(path: Path, models: dict[str, float] = MODELS) -> None:
    rng = np.random.default_rng(0)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["prompt_id", "prompt", "model", "score", "cost", "category"])
        i = 0
        for rep in range(4):
            for cat, prompts in TOPICS.items():
                for p in prompts:
                    text = f"{p} (case {rep})"
                    for m, cost in models.items():
                        good = GOOD_AT[cat] == m or (m == "strong-llm")
                        score = float(good) if rng.random() > 0.1 else float(not good)
                        w.writerow([f"q{i}", text, m, score, cost, cat])
                    i += 1


def write_guard_table(path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label", "split"])
        for rep in range(5):
            for cat, prompts in TOPICS.items():
                for j, p in enumerate(prompts):
                    split = "validation" if (rep + j) % 4 == 0 else "train"
                    w.writerow([f"{p} number {rep}", cat, split])
        for p in ("zebra migration patterns", "volcano eruption history"):
            w.writerow([p, "oos", "test"])


FAMILIES = [n for n in registered_names() if n != "semantic"]


@pytest.mark.parametrize("name", FAMILIES)
async def test_family_trains_from_cli_and_serves(name: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXPERTGATE_CACHE", str(tmp_path / "cache"))
    art = tmp_path / "artifact"
    args = ["train", "--router", name, "--out", str(art), "--embedder", "hashing",
            "--seed", "0"]
    experts = list(MODELS)
    if name == "guard":
        write_guard_table(tmp_path / "guard.csv")
        args += ["--data", str(tmp_path / "guard.csv"), "--format", "guard"]
        experts = list(TOPICS)
    else:
        write_long_table(tmp_path / "table.csv")
        args += ["--data", str(tmp_path / "table.csv")]
    if name == "lora":  # the table's models are adapters of one base model
        args += ["--param", "base_model=base-llm"]
        experts.append("base-llm")
    assert cli(args) == 0
    assert (art / "router.json").exists() and (art / "arrays.npz").exists()

    up = await OpenAIUpstreamDouble("double").start()
    try:
        cfg = {
            "embedder": {"kind": "hashing", "micro_batch": False},
            "experts": [{"name": e, "api_base": up.base} for e in experts],
            "policies": [{"name": "learned", "router": name, "artifact": str(art),
                          "on_reject": {"action": "refusal", "message": "no"}}],
        }
        async with gateway_client(cfg, tmp_path) as (c, gw):
            assert gw.embedder.name == HashingEmbedder().name
            r = await c.post("/v1/chat/completions",
                             json=chat("learned", "integral of x squared (case 9)"))
            assert r.status_code == 200, r.text
            assert r.headers["x-expertgate-policy"] == "learned"
            assert r.headers["x-expertgate-reason"]
            d = (await c.post("/v1/route", json={"model": "learned",
                                                 "text": "tell me a joke please"})).json()
            assert d["policy"] == "learned" and d["router"] in (name, "guard")
            assert all(t["expert"] in experts for t in d["targets"])
    finally:
        await up.stop()


def test_artifact_from_another_embedder_is_refused(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.config import ConfigError, parse_config
    from gateway.pipeline import build_policy_set

    monkeypatch.setenv("EXPERTGATE_CACHE", str(tmp_path / "cache"))
    write_long_table(tmp_path / "table.csv")
    art = tmp_path / "knn"
    assert cli(["train", "--router", "knn", "--data", str(tmp_path / "table.csv"),
                "--out", str(art), "--embedder", "hashing"]) == 0
    cfg = parse_config({"experts": [{"name": e, "api_base": "http://127.0.0.1:9/v1"}
                                    for e in MODELS],
                        "policies": [{"name": "p", "router": "knn", "artifact": str(art)}]})
    with pytest.raises(ConfigError, match="trained with embedder 'hashing-512'"):
        build_policy_set(cfg, HashingEmbedder(dim=256))
