"""The category column of a long routing table, as users' tables hold it: one prompt whose
rows name two categories (two sources concatenated) was read as its first row's category
without a word (a prompt id with two texts is an error; two categories now are too); numeric
categories beside an empty cell became '1.0' (pandas reads the column as floats) though the
table says '1' (prompt ids are already read as written); a prompt whose category is written on
one of its rows only got '(none)' or its category depending on the row order."""

from __future__ import annotations

from pathlib import Path

import pytest

from evals.datasets.routing import MISSING_CATEGORY, load_long
from routers.base import RouterError


def _csv(path: Path, cats: dict[tuple[int, str], str]) -> Path:
    lines = ["prompt_id,prompt,model,score,cost,category"]
    for i in range(6):
        for m in ("a", "b"):
            lines.append(f'{i},"question {i}",{m},{(i + (m == "b")) % 2},0.1,'
                         f'{cats.get((i, m), "maths" if i % 2 else "poems")}')
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_prompt_with_two_categories_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RouterError, match=r"prompt_id '3'.*more than one category"):
        load_long(_csv(tmp_path / "t.csv", {(3, "b"): "poems"}))


def test_numeric_categories_are_read_as_written(tmp_path: Path) -> None:
    cats = {(i, m): str(i % 3) for i in range(6) for m in ("a", "b")}
    cats[(5, "a")] = cats[(5, "b")] = ""
    t = load_long(_csv(tmp_path / "t.csv", cats))
    assert t.categories is not None
    assert t.categories == ["0", "1", "2", "0", "1", MISSING_CATEGORY]


def test_a_category_written_on_one_row_of_a_prompt_is_the_prompts(tmp_path: Path,
                                                                  capsys) -> None:
    t = load_long(_csv(tmp_path / "t.csv", {(0, "a"): "", (4, "b"): ""}))
    assert t.categories == ["poems", "maths", "poems", "maths", "poems", "maths"]
    assert "no category" not in capsys.readouterr().err
