"""The gateway config ``expertgate train --router lora`` prints: the adapters are LoRA
adapters of the base model's expert, not servers of their own."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def test_lora_snippet_declares_the_adapters_on_their_base(tmp_path: Path) -> None:
    """It gave every adapter an api_base of its own (ports 8101, 8102) beside the base's
    (8103): pointed at one vLLM server, the adapters would not share its concurrency slots,
    and the file named three servers where there is one."""
    from expertgate.cli import main
    from gateway.config import load_config

    rows = [{"prompt_id": f"p{i}", "prompt": f"{'select rows' if i % 2 else 'hello'} {i}",
             "model": m, "score": float((i % 2) == (m == "sql-lora")), "cost": 0.001}
            for i in range(40) for m in ("sql-lora", "chat-lora")]
    data = tmp_path / "t.csv"
    pd.DataFrame(rows).to_csv(data, index=False)
    out = tmp_path / "art"
    assert main(["train", "--router", "lora", "--data", str(data), "--param",
                 "base_model=llama-3b", "--embedder", "hashing", "--out", str(out),
                 "--cache-dir", str(tmp_path / "c")]) == 0
    text = (out / "policy.yaml").read_text()
    assert "LoRA" in text.split("\nembedder:")[0]
    cfg = load_config(out / "policy.yaml")
    experts = {e.name: e for e in cfg.experts}
    assert experts["llama-3b"].api_base and experts["llama-3b"].parent is None
    for a in ("sql-lora", "chat-lora"):
        assert experts[a].parent == "llama-3b" and experts[a].api_base is None
        assert experts[a].model == a
    assert set(cfg.policies[0].models) == {"sql-lora", "chat-lora", "llama-3b"}
