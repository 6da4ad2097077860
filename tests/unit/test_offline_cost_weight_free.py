"""``train --param cost_weight=0.5`` on a table whose every cost is the same (routing logs of
experts without a price in the gateway config: cost_usd 0 everywhere) trained a router whose
cost knob trades nothing, and nothing said so: the router learned quality alone. train now
says it in one note (stderr) and still trains."""

from __future__ import annotations

import json
from pathlib import Path

from expertgate.cli import main


def _logs(tmp_path: Path, cost: float) -> Path:
    rows = [{"request_id": f"r{i}", "endpoint": "chat", "status": "ok", "policy": "auto",
             "text": f"question {i} about {'maths' if i % 2 else 'poems'}",
             "expert": "a" if i % 4 else "b", "feedback_score": float(i % 3 == 0),
             "cost_usd": cost if i % 4 else 2 * cost} for i in range(40)]
    p = tmp_path / "export.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def test_a_cost_weight_over_equal_costs_is_said(tmp_path: Path, capsys) -> None:
    rc = main(["train", "--router", "knn", "--data", str(_logs(tmp_path, 0.0)), "--format",
               "logs", "--embedder", "hashing", "--out", str(tmp_path / "a"), "--param",
               "cost_weight=0.5"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "cost_weight" in err and "every expert costs the same" in err


def test_no_note_when_costs_differ_or_no_cost_weight(tmp_path: Path, capsys) -> None:
    for cost, extra in ((0.001, ["--param", "cost_weight=0.5"]), (0.0, [])):
        out = tmp_path / f"a{cost}{len(extra)}"
        assert main(["train", "--router", "knn", "--data", str(_logs(tmp_path, cost)),
                     "--format", "logs", "--embedder", "hashing", "--out", str(out),
                     *extra]) == 0
        assert "every expert costs the same" not in capsys.readouterr().err
