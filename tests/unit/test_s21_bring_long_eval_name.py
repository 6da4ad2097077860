"""A long table that keeps RouterBench's ``eval_name`` (a RouterBench table melted to one row
per prompt and model): the column was ignored, and eval routing then said the category
family was left out because 'the table has no category column (eval_name or category)',
naming the very column the table has. In a long table, as in a wide one, ``eval_name`` is
the category when there is no ``category`` column."""

from __future__ import annotations

from pathlib import Path

from evals.datasets.routing import load_table


def _write(tmp_path: Path, header: str) -> Path:
    p = tmp_path / "t.csv"
    p.write_text(header + "\n" + "".join(
        f'p{i},"question {i}",{m},{float((i + j) % 2)},{c},{"mmlu" if i % 2 else "gsm8k"},x\n'
        for i in range(12) for j, (m, c) in enumerate((("small", 0.1), ("big", 1.0)))))
    return p


def test_eval_name_is_the_category(tmp_path: Path) -> None:
    t = load_table(_write(tmp_path, "prompt_id,prompt,model,score,cost,eval_name,other"),
                   "long")
    assert t.categories is not None and t.categories[:2] == ["gsm8k", "mmlu"]


def test_a_category_column_wins(tmp_path: Path) -> None:
    t = load_table(_write(tmp_path, "prompt_id,prompt,model,score,cost,eval_name,category"),
                   "long")
    assert t.categories is not None and set(t.categories) == {"x"}
