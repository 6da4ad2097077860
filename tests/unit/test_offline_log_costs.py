"""An exported routing log whose cost_usd is not a cost (infinite, negative: logs edited or
merged from another tool) is refused by every offline reader with one line naming the column,
as feedback_score outside [0, 1] is; it never reaches a reward model (an AssertionError with
exit 1) nor a router trained or judged on negative prices."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evals.datasets.routing import load_logs
from evals.offpolicy import OffPolicyError, load_logged
from expertgate.cli import main
from routers.base import RouterError
from routers.embed import HashingEmbedder
from tests.unit.gateway_helpers import knn_artifact


def _export(tmp_path: Path, bad: float) -> Path:
    """40 rated requests over experts a and b (explored), every third one's cost ``bad``."""
    probs = {"a": 0.7, "b": 0.3}
    rows = [{"request_id": str(i), "endpoint": "chat", "status": "ok", "policy": "auto",
             "text": f"question {i} about {'maths' if i % 2 else 'poems'}",
             "expert": "a" if i % 4 else "b", "feedback_score": float(i % 3 == 0),
             "cost_usd": bad if i % 3 == 0 else 0.001, "propensity": probs["a" if i % 4 else "b"],
             "action_probs": probs, "candidates": ["a", "b"]} for i in range(40)]
    p = tmp_path / "export.jsonl"
    # json.dumps writes Infinity, as pandas reads it back
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


@pytest.mark.parametrize("bad", [float("inf"), -0.01])
def test_the_loaders_refuse_a_cost_that_is_not_a_cost(tmp_path: Path, bad: float) -> None:
    logs = _export(tmp_path, bad)
    with pytest.raises(RouterError, match="cost_usd"):
        load_logs(logs)
    with pytest.raises(OffPolicyError, match="cost_usd"):
        load_logged(logs, HashingEmbedder().embed)


@pytest.mark.parametrize("bad", [float("inf"), -0.01])
@pytest.mark.parametrize("correction", ["none", "dr"])
def test_train_on_such_logs_exits_2_naming_the_column(tmp_path: Path, capsys, bad: float,
                                                      correction: str) -> None:
    rc = main(["train", "--router", "knn", "--data", str(_export(tmp_path, bad)),
               "--format", "logs", "--correction", correction, "--embedder", "hashing",
               "--out", str(tmp_path / "art")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "cost_usd" in err and "Traceback" not in err and "AssertionError" not in err
    assert not (tmp_path / "art").exists()


@pytest.mark.parametrize("bad", [float("inf"), -0.01])
def test_eval_offpolicy_on_such_logs_exits_2_naming_the_column(tmp_path: Path, capsys,
                                                               bad: float) -> None:
    cand = knn_artifact(tmp_path / "cand", ["a", "b"], [[1.0, 0.0], [0.0, 1.0]])
    rc = main(["eval", "offpolicy", "--logs", str(_export(tmp_path, bad)), "--router",
               str(cand), "--boot", "50", "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "cost_usd" in err and "AssertionError" not in err
