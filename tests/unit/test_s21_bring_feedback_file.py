"""The gateway's feedback file (ratings only: request_id, tenant, score, ts, comment) given
to ``--format logs``, the file a user finds beside the routing log and names since it holds
the ratings: 'log export lacks column(s): expert, feedback_score, text', nothing on where
those are. It now says it is the ratings alone and names the export command that joins them
with the routing log beside it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evals.datasets.routing import load_logs
from routers.base import RouterError


def test_the_feedback_file_is_named_with_the_export_command(tmp_path: Path) -> None:
    p = tmp_path / "routing-log.feedback.jsonl"
    p.write_text("".join(json.dumps({"request_id": f"r{i}", "tenant": "t", "score": 1.0,
                                     "ts": 1.0, "comment": None}) + "\n" for i in range(5)))
    with pytest.raises(RouterError) as e:
        load_logs(p)
    msg = str(e.value)
    assert "ratings alone" in msg
    assert f"expertgate logs export --log-path {tmp_path / 'routing-log.jsonl'}" in msg


def test_another_table_keeps_the_plain_message(tmp_path: Path) -> None:
    p = tmp_path / "t.jsonl"
    p.write_text(json.dumps({"request_id": "r1", "text": "hi"}) + "\n")
    with pytest.raises(RouterError, match=r"lacks column\(s\): expert, feedback_score$"):
        load_logs(p)
