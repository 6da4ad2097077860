"""The process helpers behind the demo and this tier (expertgate/procs.py): config copies
with substituted ports, clear errors instead of hangs, and a clean child environment."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from expertgate.procs import (
    GatewayServer,
    LlamaServer,
    LocalExpertError,
    local_config,
    model_path,
)
from gateway.config import load_config

pytestmark = pytest.mark.integration

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "examples" / "demo-local.yaml"


def test_local_config_points_experts_at_the_given_ports(tmp_path: Path) -> None:
    out = local_config(DEMO_CONFIG, tmp_path / "c.yaml", {"smollm2": 40001, "gemma3": 40002})
    cfg = load_config(out)
    assert cfg.expert("smollm2").bases == ["http://127.0.0.1:40001/v1"]  # type: ignore[union-attr]
    assert cfg.expert("gemma3").bases == ["http://127.0.0.1:40002/v1"]  # type: ignore[union-attr]
    # everything else is the original file's
    orig = load_config(DEMO_CONFIG)
    assert [p.model_dump() for p in cfg.policies] == [p.model_dump() for p in orig.policies]


def test_local_config_makes_artifact_paths_absolute_and_names_missing_experts(tmp_path: Path
                                                                             ) -> None:
    src = tmp_path / "src" / "g.yaml"
    src.parent.mkdir()
    src.write_text(yaml.safe_dump({
        "experts": [{"name": "a", "api_base": "http://127.0.0.1:1/v1"}],
        "policies": [{"name": "p", "router": "knn", "artifact": "art/knn",
                      "guard": {"artifact": "art/guard"}}]}))
    out = local_config(src, tmp_path / "out" / "g.yaml", {"a": 5})
    data = yaml.safe_load(out.read_text())
    assert data["experts"][0]["api_base"] == "http://127.0.0.1:5/v1"
    assert data["policies"][0]["artifact"] == str(src.parent.resolve() / "art/knn")
    assert data["policies"][0]["guard"]["artifact"] == str(src.parent.resolve() / "art/guard")
    with pytest.raises(LocalExpertError, match=r"no expert.*named b"):
        local_config(src, tmp_path / "x.yaml", {"a": 5, "b": 6})


def test_model_files_are_found_and_unknown_names_refused() -> None:
    assert model_path("smollm2").name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    g = model_path("gemma3")
    assert g.is_file() and g.stat().st_size > 200_000_000
    assert model_path("gemma3") == g  # assembled once, reused
    with pytest.raises(LocalExpertError, match="unknown local model"):
        model_path("llama-70b")


def test_missing_model_file_fails_before_spawning(tmp_path: Path) -> None:
    s = LlamaServer("x", tmp_path / "nope.gguf")
    with pytest.raises(LocalExpertError, match="does not exist"):
        s.start()
    assert s.proc is None


def test_gateway_that_cannot_start_reports_why_instead_of_hanging(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("experts: []\n")
    gw = GatewayServer(bad, log_path=tmp_path / "gw.log", start_timeout_s=60)
    with pytest.raises(LocalExpertError, match="at least one expert"):
        gw.start()
    assert not gw.running


def test_gateway_child_runs_only_what_it_was_given(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXPERTGATE_REDIS_URL", "redis://elsewhere:6379/0")
    monkeypatch.setenv("EXPERTGATE_CONFIG", "/somewhere/else.yaml")
    gw = GatewayServer(tmp_path / "c.yaml", routing_log=tmp_path / "log.jsonl")
    env = gw.child_env()
    assert "EXPERTGATE_REDIS_URL" not in env and "EXPERTGATE_CONFIG" not in env
    assert env["EXPERTGATE_LOG_PATH"] == str(tmp_path / "log.jsonl")
    assert "--redis-url" not in gw.command()
    # the given Redis URL reaches the child through its environment: a password in it must
    # not be on the command line every user of the machine reads (ps, /proc/PID/cmdline)
    url = "redis://:s3cret-pass@127.0.0.1:1/0"
    with_redis = GatewayServer(tmp_path / "c.yaml", redis_url=url)
    assert with_redis.child_env()["EXPERTGATE_REDIS_URL"] == url
    assert not any("s3cret" in part for part in with_redis.command())
