"""A guard table (``embedder finetune --data``, ``train --format guard``, ``eval guard
--data``) whose rows are not objects (a JSON array of numbers, a JSONL line holding a number)
ended in 'TypeError: 'int' object is not iterable' (exit 1, the crash path), and a .json file
that is not JSON said only 'Expecting value: line 1 column 1', naming no file. Both are now
one line naming the file and the row."""

from __future__ import annotations

from pathlib import Path

import pytest

from evals.datasets.guard import GuardDataError, load_guard_data
from expertgate.cli import main


@pytest.mark.parametrize("name,content,says", [
    ("t.json", "[1, 2]", "row 1 is not an object"),
    ("t.jsonl", '{"text": "hi", "label": "a"}\n5\n', "row 2 is not an object"),
    ("t.json", "not json", "not JSON"),
])
def test_rows_that_are_not_objects_are_named(tmp_path: Path, name: str, content: str,
                                             says: str) -> None:
    p = tmp_path / name
    p.write_text(content)
    with pytest.raises(GuardDataError) as e:
        load_guard_data(p)
    assert str(p) in str(e.value) and says in str(e.value)


def test_finetune_on_such_a_table_exits_2(tmp_path: Path, capsys) -> None:
    p = tmp_path / "t.json"
    p.write_text("[1, 2]")
    rc = main(["embedder", "finetune", "--data", str(p), "--out", str(tmp_path / "ft")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "not an object" in err
