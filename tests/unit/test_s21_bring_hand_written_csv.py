"""A routing table typed by hand or exported by a spreadsheet, read as a long CSV.

* ``prompt_id, prompt, model, score, cost`` (a space after each comma) was refused with
  'lacks column(s) model, prompt, score', columns the user can see in the header; and its
  quoted prompts (``p1, "Hello, world", big, 1, 0.1``) would have kept their quotes.
* A model name with a stray trailing space on some rows (``big `` beside ``big``) became a
  model of its own: 'only 0 of 60 prompts have a score from every model'.
* A long table given ``--format wide`` was told its 'score' and 'cost' columns were models
  without cost columns; it is now told it looks like a long table.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from evals.datasets.routing import load_table
from routers.base import RouterError


def _rows(n: int = 12) -> list[tuple[str, str, str, float, float]]:
    return [(f"p{i}", f"Hello, question {i}", m, float((i + j) % 2), c)
            for i in range(n) for j, (m, c) in enumerate((("small", 0.1), ("big", 1.0)))]


def test_spaces_after_the_commas_are_read(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    p.write_text("prompt_id, prompt, model, score, cost\n" + "".join(
        f'{i}, "{t}", {m}, {s}, {c}\n' for i, t, m, s, c in _rows()))
    t = load_table(p, "long")
    assert t.models == ["big", "small"] and t.prompts[0] == "Hello, question 0"
    assert t.prompt_ids[0] == "p0" and t.costs[0, 0] == 1.0


def test_a_trailing_space_in_a_model_name_is_the_same_model(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    p.write_text("prompt_id,prompt,model,score,cost\n" + "".join(
        f'{i},"{t}",{m + (" " if k < 6 else "")},{s},{c}\n'
        for k, (i, t, m, s, c) in enumerate(_rows())))
    t = load_table(p, "long")
    assert t.models == ["big", "small"] and bool((t.scores == t.scores).all())


def test_a_long_table_read_as_wide_is_told_so(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    p.write_text("prompt_id,prompt,model,score,cost\n" + "".join(
        f'{i},"{t}",{m},{s},{c}\n' for i, t, m, s, c in _rows()))
    with pytest.raises(RouterError, match=r"looks like a long table.*--format long"):
        load_table(p, "wide")
