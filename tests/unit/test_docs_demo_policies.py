"""``expertgate demo --config examples/learned-local.yaml`` (the README's step 4 file, the
same two experts behind a learned router) started both experts and the gateway, then sent
every prompt to policies ``auto`` and ``guarded``, which that file does not have: seven 404s.
The demo's prompts go to the config's own policies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from expertgate.cli.demo import DEMO_PROMPTS, demo_prompts
from expertgate.procs import LocalExpertError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_the_demo_config_keeps_every_prompts_policy() -> None:
    names, prompts = demo_prompts(EXAMPLES / "demo-local.yaml")
    assert names == ["auto", "guarded"]
    assert prompts == DEMO_PROMPTS


def test_a_config_without_the_demos_policies_gets_every_prompt_on_its_own() -> None:
    names, prompts = demo_prompts(EXAMPLES / "learned-local.yaml")
    assert names == ["learned"]
    assert {p.policy for p in prompts} == {"learned"}
    assert [p.text for p in prompts] == [p.text for p in DEMO_PROMPTS]
    assert [p.note for p in prompts] == [p.note for p in DEMO_PROMPTS]  # the repeat stays


def test_only_the_missing_policy_moves(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text((EXAMPLES / "demo-local.yaml").read_text().replace("name: guarded",
                                                                      "name: writing"))
    names, prompts = demo_prompts(cfg)
    assert names == ["auto", "writing"]
    assert [p.policy for p in prompts] == ["auto"] * 7


def test_a_config_without_policies_is_refused_before_anything_starts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from expertgate.cli import main

    def refuse(*a: Any, **k: Any) -> None:
        raise AssertionError("a child process was started")

    monkeypatch.setattr("subprocess.Popen", refuse)
    cfg = tmp_path / "gw.yaml"
    cfg.write_text("experts: [{name: smollm2, api_base: 'http://127.0.0.1:1/v1'}, "
                   "{name: gemma3, api_base: 'http://127.0.0.1:2/v1'}]\n")
    assert main(["demo", "--config", str(cfg), "--work-dir", str(tmp_path / "w")]) == 1
    assert "no policies" in capsys.readouterr().err
    with pytest.raises(LocalExpertError):
        demo_prompts(cfg)
