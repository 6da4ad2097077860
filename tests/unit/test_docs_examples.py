"""Every gateway config in examples/ is one a new user serves as the docs say: each passes
``expertgate serve --check`` (config, embedder, artifacts, one warm-up decision per policy).
learned-local.yaml needs the artifact its header trains: a small one, on the same two table
models and the same embedder, stands in for it at the path the file names."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """--check probes each expert's GET /models; vllm-lora.yaml names compose hosts, which
    a test must not look up. The probe's answer is information, never a problem."""
    import expertgate.cli.serve as serve

    def refuse(*a: Any, **k: Any) -> int:
        raise AssertionError("serve --check started the server")

    monkeypatch.setattr(serve, "unreachable_experts", lambda cfg, timeout_s=1.0: [])
    monkeypatch.setattr(serve, "_run", refuse)
    for var in ("EXPERTGATE_REDIS_URL", "EXPERTGATE_CONFIG", "EXPERTGATE_API_KEYS"):
        monkeypatch.delenv(var, raising=False)


def _check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from expertgate.cli import main

    rc = main(["serve", "--check", "--config", str(path)])
    said = capsys.readouterr()
    return rc, said.out + said.err


def test_the_examples_are_the_ones_the_docs_list() -> None:
    listed = (EXAMPLES / "README.md").read_text()
    files = sorted(p.name for p in EXAMPLES.glob("*.yaml"))
    assert files == ["demo-local.yaml", "learned-local.yaml", "vllm-lora.yaml"]
    assert all(f"`{name}`" in listed for name in files)


@pytest.mark.parametrize("name", ["demo-local.yaml", "vllm-lora.yaml"])
def test_an_example_config_passes_serve_check(name: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = _check(EXAMPLES / name, capsys)
    assert rc == 0, err
    assert "ok: the gateway would start" in err


def test_learned_local_passes_serve_check_with_the_artifact_its_header_trains(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from expertgate.cli import main

    models = ("gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1")
    rows = [{"prompt_id": f"p{i}", "prompt": f"{'solve for x' if i % 2 else 'hello'} {i}",
             "model": m, "score": float((i + j) % 2 == 0), "cost": 0.001 * (2 - j)}
            for i in range(24) for j, m in enumerate(models)]
    data = tmp_path / "table.csv"
    pd.DataFrame(rows).to_csv(data, index=False)
    (tmp_path / "examples").mkdir()
    config = tmp_path / "examples" / "learned-local.yaml"
    shutil.copy(EXAMPLES / "learned-local.yaml", config)
    assert main(["train", "--router", "knn", "--data", str(data), "--embedder", "distilled",
                 "--out", str(tmp_path / "artifacts" / "gsm8k-knn"),
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    capsys.readouterr()
    rc, err = _check(config, capsys)
    assert rc == 0, err
    assert "policy 'learned': built and decided the warm-up query" in err


def test_the_readmes_configuration_example_passes_serve_check(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Copied as shown, it was refused: its LoRA adapter's parent and its fallback named
    experts the example did not have."""
    readme = (EXAMPLES.parent / "README.md").read_text()
    block = readme.split("## Configuration", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    config = tmp_path / "gw.yaml"
    config.write_text(block)
    rc, said = _check(config, capsys)
    assert rc == 0, said
