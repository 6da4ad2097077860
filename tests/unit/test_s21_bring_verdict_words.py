"""Scores written as verdict words (``TRUE``/``FALSE`` from a spreadsheet, ``correct``): the
error named the rows ('missing or non-numeric score in rows 1 (... score='true')') but not
what to write instead. It now says to write 1 for a right answer and 0 for a wrong one, in
long and wide tables; other bad scores keep their message."""

from __future__ import annotations

from pathlib import Path

import pytest

from evals.datasets.routing import load_table
from routers.base import RouterError


@pytest.mark.parametrize("word", ["TRUE", "false", "correct", "yes"])
def test_a_verdict_word_gets_the_fix(tmp_path: Path, word: str) -> None:
    p = tmp_path / "t.csv"
    p.write_text("prompt_id,prompt,model,score,cost\n" + "".join(
        f'p{i},"question {i}",{m},{word if i == 3 else 1},{c}\n'
        for i in range(12) for m, c in (("a", 0.1), ("b", 1.0))))
    with pytest.raises(RouterError, match="write 1 for a right answer and 0 for a wrong one"):
        load_table(p, "long")
    w = tmp_path / "w.csv"
    w.write_text("prompt,a,a|total_cost,b,b|total_cost\n" + "".join(
        f'"question {i}",{word if i == 3 else 1},0.1,0,1.0\n' for i in range(12)))
    with pytest.raises(RouterError, match="write 1 for a right answer and 0 for a wrong one"):
        load_table(w, "wide")


def test_another_bad_score_keeps_its_message(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    p.write_text("prompt_id,prompt,model,score,cost\n" + "".join(
        f'p{i},"question {i}",{m},{"half" if i == 3 else 1},{c}\n'
        for i in range(12) for m, c in (("a", 0.1), ("b", 1.0))))
    with pytest.raises(RouterError) as e:
        load_table(p, "long")
    assert "right answer" not in str(e.value) and "'half'" in str(e.value)
