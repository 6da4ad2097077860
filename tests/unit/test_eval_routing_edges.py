"""``expertgate eval routing`` on tables too small to evaluate: the message says what is
wrong with this table, not what is wrong with another."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import pytest

from evals import routing_eval as RE


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    RE.cli_register(parser)
    args = parser.parse_args(argv)
    return int(args.func(args))


@pytest.mark.parametrize("n", [1, 3])
def test_a_complete_table_of_too_few_prompts_asks_for_prompts(tmp_path: Path, capsys,
                                                              n: int) -> None:
    """A one-prompt table scored by both models said 'only 1 of 1 prompts have a score from
    every model' and advised filling missing pairs or dropping sparse models: none was
    missing."""
    rows = [{"prompt_id": f"p{i}", "prompt": f"prompt {i} ünïcödé", "model": m,
             "score": 1.0 if m == "big" else 0.0, "cost": c}
            for i in range(n) for m, c in (("big", 1.0), ("small", 0.1))]
    data = tmp_path / "t.csv"
    pd.DataFrame(rows).to_csv(data, index=False)
    assert _run(["--data", str(data), "--embedder", "hashing", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"the table has {n} prompt(s), every one scored by every model" in err
    assert "add prompts" in err and "missing" not in err


def test_a_routing_log_points_at_off_policy_evaluation(tmp_path: Path, capsys) -> None:
    """A log export (one served expert scored per prompt) got 'only 0 of 40 prompts have a
    score from every model ... fill the missing (prompt, model) pairs or drop the sparse
    models': advice no log can follow."""
    import json

    recs = [{"request_id": f"r{i}", "endpoint": "chat", "status": "ok", "text": f"prompt {i}",
             "expert": ("big", "small")[i % 2], "feedback_score": float(i % 3 == 0),
             "cost_usd": 1e-5} for i in range(40)]
    logs = tmp_path / "export.jsonl"
    logs.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert _run(["--data", str(logs), "--format", "logs", "--embedder", "hashing",
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "scored for one model only" in err and "expertgate eval offpolicy" in err


@pytest.mark.parametrize(("params", "message"), [
    ('{"knn": {"zzz": 3}}', "--params knn: no parameter 'zzz' (its parameters: "),
    ('{"knn": {"k": 0}}', "--params knn: knn: k must be an integer >= 1"),
])
def test_a_bad_router_parameter_is_refused_before_embedding(tmp_path: Path, capsys,
                                                            monkeypatch, params: str,
                                                            message: str) -> None:
    """An unknown or out-of-range parameter ran the whole evaluation (embedding, every
    baseline), printed the table, then 'knn was not evaluated' and exit 1, with a result JSON
    of no router written."""
    def boom(*a: object, **k: object) -> None:
        raise AssertionError("embedding started with a bad --params")

    monkeypatch.setattr(RE, "embed_table", boom)
    rows = [{"prompt_id": f"p{i}", "prompt": f"prompt {i}", "model": m,
             "score": float((i + j) % 2), "cost": c}
            for i in range(30) for j, (m, c) in enumerate((("big", 1.0), ("small", 0.1)))]
    data = tmp_path / "t.csv"
    pd.DataFrame(rows).to_csv(data, index=False)
    out = tmp_path / "r.json"
    assert _run(["--data", str(data), "--routers", "knn", "--params", params, "--embedder",
                 "hashing", "--quiet", "--json", str(out)]) == 2
    assert message in capsys.readouterr().err and not out.exists()
