"""A RouterBench-shaped (wide) table with a bad cell: the error named a row of the loader's
internal long table ('row 1464' of a 500-row file: the cell's position after the models were
stacked one under another), a row the user's file does not have. It now names the file's own
data row, its id and the column that holds the bad cell."""

from __future__ import annotations

from pathlib import Path

import pytest

from evals.datasets.routing import load_wide
from routers.base import RouterError


def _table(tmp_path: Path, cell_a: str = "0.1", cell_b: str = "0.02", score_b: str = "1"
           ) -> Path:
    p = tmp_path / "wide.csv"
    rows = [f'q{i},"question {i}",{i % 2},0.1,{(i + 1) % 2},0.01' for i in range(12)]
    # row 8 of the file's data (prompt q7): model b's cells are the ones under test
    rows[7] = f'q7,"question 7",1,{cell_a},{score_b},{cell_b}'
    p.write_text("sample_id,prompt,a,a|total_cost,b,b|total_cost\n" + "\n".join(rows) + "\n")
    return p


@pytest.mark.parametrize(("kw", "column"), [
    ({"cell_b": ""}, "b|total_cost"),
    ({"cell_b": "-1"}, "b|total_cost"),
    ({"cell_b": "cheap"}, "b|total_cost"),
    ({"score_b": "7"}, "'b'"),
    ({"score_b": "yes"}, "'b'"),
])
def test_a_bad_cell_names_the_files_row_and_column(tmp_path: Path, kw: dict[str, str],
                                                     column: str) -> None:
    with pytest.raises(RouterError) as e:
        load_wide(_table(tmp_path, **kw))
    msg = str(e.value)
    assert "row 8 " in msg and "'q7'" in msg and column in msg
    # the stacked frame's position of that cell (model b comes after a's 12 rows)
    assert "row 20" not in msg


def test_a_cost_without_a_score_is_a_model_not_evaluated(tmp_path: Path) -> None:
    # an empty score with an empty cost is a model not run on the prompt, not an error
    t = load_wide(_table(tmp_path, cell_b="", score_b=""))
    assert len(t) == 12 and t.models == ["a", "b"]
