"""A JSONL table with a line that is not JSON (the last one cut short by a copy or a disk
that filled, one edited by hand): 'cannot read: Unmatched ''"' when when decoding 'string'
at position 29926', a character offset into the file. It now names the line, and says how
many lines read before it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evals.datasets.routing import load_table
from routers.base import RouterError


def _lines(n: int = 20) -> list[str]:
    return [json.dumps({"prompt_id": f"p{i}", "prompt": f"question {i}", "model": m,
                        "score": 1.0, "cost": c, "request_id": f"r{i}{m}", "text":
                        f"question {i}", "expert": m, "feedback_score": 1.0})
            for i in range(n) for m, c in (("small", 0.1), ("big", 1.0))]


@pytest.mark.parametrize("fmt", ["long", "logs"])
def test_a_line_cut_short_is_named(tmp_path: Path, fmt: str) -> None:
    lines = _lines()
    p = tmp_path / "t.jsonl"
    p.write_text("\n".join(lines) + "\n" + lines[0][:25] + "\n")
    with pytest.raises(RouterError) as e:
        load_table(p, fmt)
    msg = str(e.value)
    assert "line 41 is not a JSON object" in msg and "position" not in msg


def test_a_broken_line_in_the_middle_is_named(tmp_path: Path) -> None:
    lines = _lines()
    lines[6] = lines[6][:-1]
    p = tmp_path / "t.jsonl"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(RouterError, match="line 7 is not a JSON object"):
        load_table(p, "long")


def test_blank_lines_are_no_rows(tmp_path: Path) -> None:
    p = tmp_path / "t.jsonl"
    p.write_text("\n".join(_lines()) + "\n\n\n")
    assert len(load_table(p, "long")) == 20
