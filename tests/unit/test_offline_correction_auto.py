"""``train --correction auto`` on logs too small to hold some out: it said only 'error: too
few logged texts to hold some out for the choice', naming neither the counts nor a way on.
The message now says how many rated requests fell on each side, what it needs, and the
corrections that need no held-out logs."""

from __future__ import annotations

import json
from pathlib import Path

from expertgate.cli import main


def test_correction_auto_on_few_logs_says_what_it_needs(tmp_path: Path, capsys) -> None:
    probs = {"a": 0.7, "b": 0.3}
    rows = [{"request_id": f"r{i}", "endpoint": "chat", "status": "ok", "policy": "auto",
             "text": f"question {i} about {'maths' if i % 2 else 'poems'}",
             "expert": "a" if i % 4 else "b", "feedback_score": float(i % 3 == 0),
             "cost_usd": 0.001, "propensity": probs["a" if i % 4 else "b"],
             "action_probs": probs, "candidates": ["a", "b"]} for i in range(30)]
    logs = tmp_path / "export.jsonl"
    logs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rc = main(["train", "--router", "knn", "--data", str(logs), "--format", "logs",
               "--correction", "auto", "--embedder", "hashing", "--out", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert rc == 2, err
    line = next(ln for ln in err.splitlines() if ln.startswith("error:"))
    assert "of 30 rated requests" in line and "at least 20" in line
    assert "--correction dr" in line
