"""Column names a spreadsheet user writes: ``Prompt, Model, Score`` was refused with 'lacks
column(s) model, prompt, score', columns the header visibly has in another case; a header
naming ``score`` twice (a column pasted twice, the second one the intended) was read with the
first and the second silently ignored (pandas renames it ``score.1``). The first now says
which of the table's columns differ only in case; the second is refused naming the column."""

from __future__ import annotations

from pathlib import Path

import pytest

from evals.datasets.routing import load_table
from routers.base import RouterError


def _write(tmp_path: Path, header: str, extra: str = "") -> Path:
    p = tmp_path / "t.csv"
    p.write_text(header + "\n" + "".join(
        f'p{i},"question {i}",{m},{float((i + j) % 2)},{c}{extra}\n'
        for i in range(12) for j, (m, c) in enumerate((("a", 0.1), ("b", 1.0)))))
    return p


def test_columns_in_another_case_are_named(tmp_path: Path) -> None:
    with pytest.raises(RouterError) as e:
        load_table(_write(tmp_path, "prompt_id,Prompt,Model,Score,cost"), "long")
    msg = str(e.value)
    assert "lacks column(s) model, prompt, score" in msg
    assert "'Model', 'Prompt', 'Score'" in msg and "lower case" in msg


def test_a_column_named_twice_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RouterError, match="'score' more than once"):
        load_table(_write(tmp_path, "prompt_id,prompt,model,score,cost,score", ",0.5"), "long")
