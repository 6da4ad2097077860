"""``expertgate train --router auto`` on a routing log: every prompt is scored for the one
expert that served it, so auto's cross-validation score (every model's outcome on each
held-out prompt) exists for no candidate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from routers.auto import fit_auto
from routers.base import RouterError, RoutingTable


def test_auto_on_a_table_of_one_score_per_prompt_says_why(tmp_path: Path, capsys) -> None:
    """It ended in 'expertgate train: error: StopIteration' (every candidate scored NaN)."""
    from expertgate.cli import main

    recs = []
    for i in range(60):
        code = i % 2 == 0
        expert = ("coder", "chatter")[(i // 2) % 2]
        recs.append({"request_id": f"r{i}", "endpoint": "chat", "status": "ok",
                     "policy": "auto", "text": f"{'fix this bug' if code else 'tell a joke'} {i}",
                     "expert": expert, "feedback_score": float(code == (expert == "coder")),
                     "cost_usd": 1e-5, "propensity": 1.0, "action_probs": {expert: 1.0}})
    logs = tmp_path / "export.jsonl"
    logs.write_text("".join(json.dumps(r) + "\n" for r in recs))
    rc = main(["train", "--router", "auto", "--data", str(logs), "--format", "logs",
               "--embedder", "hashing", "--out", str(tmp_path / "a"),
               "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert rc == 2 and "StopIteration" not in err
    assert "no candidate could be scored in cross-validation" in err
    assert "--correction dr" in err and not (tmp_path / "a").exists()


def test_fit_auto_raises_a_router_error_when_no_score_is_finite() -> None:
    rng = np.random.default_rng(0)
    n = 40
    S = np.full((n, 2), np.nan)
    S[np.arange(n), np.arange(n) % 2] = rng.random(n).round()
    t = RoutingTable([f"p{i}" for i in range(n)], [f"text {i}" for i in range(n)],
                     ["a", "b"], S, np.tile([1.0, 0.1], (n, 1)))
    with pytest.raises(RouterError, match="0 of 40 training prompts"):
        fit_auto(rng.normal(size=(n, 8)), t, seed=0, jobs=1)
