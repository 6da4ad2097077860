"""The gateway config ``expertgate train`` prints points its first experts at the demo's
llama.cpp servers (127.0.0.1:8101/8102): it has to say their dialect, as
examples/demo-local.yaml does, or those servers answer a 500 to what they cannot read."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def test_the_printed_policy_gives_the_demos_llama_cpp_experts_their_dialect(
        tmp_path: Path, capsys: object) -> None:
    """The snippet named experts on 8101/8102 without ``dialect``: served as printed, a
    developer message or a content-part array got llama-cpp-python's 500. An expert on a
    port the demo does not use is a server the snippet does not know: no dialect."""
    from expertgate.cli import main
    from gateway.config import load_config

    models = ("strong-model", "org/weak-model", "third")
    rows = [{"prompt_id": f"p{i}", "prompt": f"{'solve' if i % 2 else 'hello'} {i}",
             "model": m, "score": float((i + j) % 3 == 0), "cost": 0.001 * (j + 1)}
            for i in range(30) for j, m in enumerate(models)]
    data = tmp_path / "t.csv"
    pd.DataFrame(rows).to_csv(data, index=False)
    out = tmp_path / "art"
    assert main(["train", "--router", "knn", "--data", str(data), "--embedder", "hashing",
                 "--out", str(out), "--cache-dir", str(tmp_path / "c")]) == 0
    cfg = load_config(out / "policy.yaml")
    by_base = {e.api_base: e for e in cfg.experts}
    assert by_base["http://127.0.0.1:8101/v1"].dialect == "llama-cpp-python"
    assert by_base["http://127.0.0.1:8102/v1"].dialect == "llama-cpp-python"
    assert by_base["http://127.0.0.1:8103/v1"].dialect == "openai"
    printed = capsys.readouterr().out  # type: ignore[attr-defined]
    assert "dialect: llama-cpp-python" in printed
    assert "llama.cpp" in (out / "policy.yaml").read_text().split("\nembedder:")[0]
