"""The record ``expertgate policy promote|revert`` leaves in Redis names the candidate the way
every gateway names it: the CLI computes the identity from the file
(:func:`gateway.canary_sync.candidate_identity`), the gateway from the loaded policy
(``gateway.pipeline._candidate``); the two must agree, or the record would end nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway.canary_sync import candidate_identity, candidate_key
from gateway.config import parse_config
from gateway.pipeline import build_policy_set
from routers.artifacts import artifact_version
from routers.embed import HashingEmbedder
from tests.unit.gateway_helpers import base_config
from tests.unit.test_shadow_canary import _always_coder


@pytest.mark.parametrize("candidate", [
    {"mode": "canary", "share": 0.3, "auto_revert": {"min_samples": 50, "margin": 0.1}},
    {"mode": "canary", "params": {"k": 2, "cost_weight": 0.5}},
    {"mode": "shadow"},
])
def test_the_cli_names_a_candidate_as_the_gateway_does(tmp_path: Path,
                                                       candidate: dict) -> None:
    art = _always_coder(tmp_path / "cand")
    cfg = parse_config(base_config("http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1",
                                   candidate={"router": "knn", "artifact": str(art),
                                              **candidate}))
    pset = build_policy_set(cfg, HashingEmbedder())
    cand = pset.policies["auto"].candidate
    assert cand is not None
    ident = candidate_identity(cfg.policies[0].candidate, artifact_version(art))
    assert ident == cand.identity
    if cand.monitor is not None:
        assert candidate_key("auto", ident) == cand.monitor.key


def test_revert_says_reverted_and_that_other_gateways_need_a_redis_url(
        tmp_path: Path, capsys, monkeypatch) -> None:
    from expertgate.cli import main

    monkeypatch.delenv("EXPERTGATE_REDIS_URL", raising=False)
    art = _always_coder(tmp_path / "cand")
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(base_config(
        "http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1",
        candidate={"router": "knn", "artifact": str(art), "mode": "canary"})))
    assert main(["policy", "revert", "auto", "--config", str(path)]) == 0
    out = capsys.readouterr()
    assert f"reverted the candidate of policy 'auto' in {path}" in out.out
    assert "revertd" not in out.out
    assert "other gateways learn of this only when reloaded" in out.err
    assert "candidate" not in yaml.safe_load(path.read_text())["policies"][0]
