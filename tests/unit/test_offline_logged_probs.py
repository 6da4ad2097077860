"""Logged action_probs that are no probability distribution (percentages from another tool,
NaN, a negative or a sum far from 1: logs edited or merged) are refused by the off-policy
reader with one line naming the column and the first such record. They were read as given:
probabilities in percent divided every importance weight by 100, and eval offpolicy printed
an IPS estimate a hundred times too small with exit 0."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evals.offpolicy import OffPolicyError, load_logged
from expertgate.cli import main
from routers.embed import HashingEmbedder
from tests.unit.gateway_helpers import knn_artifact


def _export(tmp_path: Path, probs: dict[str, float], propensity: float | None = None) -> Path:
    """40 rated requests over experts a and b, each logging ``probs`` (and ``propensity``,
    else the served expert's entry of ``probs``)."""
    rows = []
    for i in range(40):
        served = "a" if i % 4 else "b"
        rows.append({"request_id": f"r{i}", "endpoint": "chat", "status": "ok",
                     "policy": "auto", "text": f"question {i} about {'maths' if i % 2 else 'art'}",
                     "expert": served, "feedback_score": float(i % 3 == 0), "cost_usd": 0.001,
                     "propensity": probs.get(served) if propensity is None else propensity,
                     "action_probs": probs, "candidates": ["a", "b"]})
    p = tmp_path / "export.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


@pytest.mark.parametrize("probs", [{"a": 70.0, "b": 30.0}, {"a": 0.7, "b": float("nan")},
                                   {"a": 1.2, "b": -0.2}, {"a": 0.7, "b": 0.7}],
                         ids=["percent", "nan", "negative", "sum-1.4"])
def test_action_probs_that_are_no_distribution_are_refused(tmp_path: Path,
                                                           probs: dict[str, float]) -> None:
    with pytest.raises(OffPolicyError, match=r"action_probs .*request_id r0"):
        load_logged(_export(tmp_path, probs), HashingEmbedder().embed)


def test_a_propensity_above_one_without_action_probs_is_refused(tmp_path: Path) -> None:
    logs = _export(tmp_path, {}, propensity=80.0)
    with pytest.raises(OffPolicyError, match=r"propensity .*request_id r0"):
        load_logged(logs, HashingEmbedder().embed)


def test_logged_distributions_are_read(tmp_path: Path) -> None:
    data = load_logged(_export(tmp_path, {"a": 0.7, "b": 0.3}), HashingEmbedder().embed)
    assert data.experts == ["a", "b"]
    assert data.propensity.tolist() == pytest.approx([0.3 if i % 4 == 0 else 0.7
                                                      for i in range(40)])


def test_eval_offpolicy_on_percentages_exits_2(tmp_path: Path, capsys) -> None:
    cand = knn_artifact(tmp_path / "cand", ["a", "b"], [[1.0, 0.0], [0.0, 1.0]])
    rc = main(["eval", "offpolicy", "--logs", str(_export(tmp_path, {"a": 70.0, "b": 30.0})),
               "--router", str(cand), "--boot", "50", "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "action_probs" in err and "Traceback" not in err
