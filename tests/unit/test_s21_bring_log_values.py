"""A routing-log export edited or merged by another tool (``--format logs``): values the
loader misread without a word.

* ``cost_usd`` written as text (``"abc"``, ``"$0.01"``) was read as 0: a dear expert trained
  on as free, said nowhere;
* ``expert`` empty (``""``) became a model named '' that the router could choose, its
  left-out note reading ``:  (4)``;
* ``feedback_score`` written as words (``"true"``/``"false"``) was counted 'without
  feedback', with the advice to send ratings to POST /v1/feedback, though every record was
  rated; a score outside [0, 1] named no record.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from evals.datasets.routing import load_logs
from expertgate.cli import main
from routers.base import RouterError


def _logs(tmp_path: Path, edit: dict[int, dict[str, Any]] | None = None) -> Path:
    recs = [{"request_id": f"r{i}", "text": f"question {i} about topic {i % 3}",
             "expert": "ab"[i % 2], "feedback_score": float(i % 3 != 0),
             "cost_usd": 0.001 if i % 2 == 0 else 0.01, "status": "ok", "policy": "auto"}
            for i in range(40)]
    for i, changes in (edit or {}).items():
        recs[i].update(changes)
    p = tmp_path / "logs.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return p


def test_a_cost_written_as_text_is_named_not_read_as_free(tmp_path: Path) -> None:
    p = _logs(tmp_path, {3: {"cost_usd": "abc"}, 5: {"cost_usd": "$0.01"}})
    with pytest.raises(RouterError) as e:
        load_logs(p)
    msg = str(e.value)
    assert "cost_usd" in msg and "2 record(s)" in msg and "'abc'" in msg and "r3" in msg


def test_a_missing_cost_is_still_free(tmp_path: Path) -> None:
    t = load_logs(_logs(tmp_path, {3: {"cost_usd": None}}))
    assert t.costs[3, t.models.index("b")] == 0.0


def test_an_empty_expert_is_no_expert(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                      ) -> None:
    t = load_logs(_logs(tmp_path, {i: {"expert": ""} for i in range(4)}
                        | {5: {"expert": "  "}}))
    assert t.models == ["a", "b"] and len(t) == 35
    assert "5 rated failed request(s) that no expert served" in capsys.readouterr().err


def test_feedback_written_as_words_is_named(tmp_path: Path) -> None:
    p = _logs(tmp_path, {i: {"feedback_score": "true" if i % 2 else "false"}
                         for i in range(40)})
    with pytest.raises(RouterError) as e:
        load_logs(p)
    msg = str(e.value)
    assert "feedback_score" in msg and "40 record(s)" in msg and "'false'" in msg
    assert "POST /v1/feedback" not in msg


def test_feedback_outside_0_1_names_its_records(tmp_path: Path) -> None:
    with pytest.raises(RouterError, match=r"feedback_score must lie in \[0, 1\]; 1 record\(s\)"
                                          r" have 5.*r7"):
        load_logs(_logs(tmp_path, {7: {"feedback_score": 5}}))


def test_feedback_as_numbers_in_text_and_json_booleans_still_load(tmp_path: Path) -> None:
    t = load_logs(_logs(tmp_path, {0: {"feedback_score": "0.5"}, 1: {"feedback_score": True},
                                   2: {"feedback_score": ""}}))
    assert len(t) == 39  # the empty one is a record without feedback


def test_train_ends_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = _logs(tmp_path, {3: {"cost_usd": "abc"}})
    assert main(["train", "--router", "knn", "--data", str(p), "--format", "logs",
                 "--embedder", "hashing", "--out", str(tmp_path / "art")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "cost_usd" in err and "Traceback" not in err
    assert not (tmp_path / "art").exists()


def test_the_off_policy_loader_reads_the_same_values_the_same_way(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # `train --correction` and `eval offpolicy` read the export through evals.offpolicy:
    # ratings written as words were dropped as unrated there, and an empty expert became a
    # model named ''
    from evals.offpolicy import OffPolicyError, load_logged
    from routers.embed import HashingEmbedder

    p = _logs(tmp_path, {i: {"feedback_score": "true" if i % 2 else "false"}
                         for i in range(6)})
    with pytest.raises(OffPolicyError, match=r"feedback_score must be a number.*6 record"):
        load_logged(p, HashingEmbedder().embed)
    data = load_logged(_logs(tmp_path, {i: {"expert": ""} for i in range(4)}
                             | {5: {"expert": "  "}}), HashingEmbedder().embed)
    assert "" not in data.experts and "  " not in data.experts
    assert len(data.rewards) == 35
