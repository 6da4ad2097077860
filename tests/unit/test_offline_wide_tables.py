"""A wide (RouterBench-shaped) table with a model whose score column is empty on every row:
that model was dropped from the loaded table without a word ('loaded 30 prompts x 2 models'
for a table of three), so a user trained and served a router that could never choose it and
was not told. It is still left out (no score: nothing to learn), and stderr now names it."""

from __future__ import annotations

from pathlib import Path

from evals.datasets.routing import load_wide


def test_a_model_never_scored_is_named_when_left_out(tmp_path: Path, capsys) -> None:
    p = tmp_path / "wide.csv"
    p.write_text("prompt,a,a|total_cost,b,b|total_cost,c,c|total_cost\n" + "".join(
        f'"question {i}",{i % 2},0.1,{(i + 1) % 2},0.01,,0.5\n' for i in range(12)))
    t = load_wide(p)
    assert t.models == ["a", "b"]
    err = capsys.readouterr().err
    assert "'c'" in err and "no score on any prompt" in err


def test_a_fully_scored_table_says_nothing(tmp_path: Path, capsys) -> None:
    p = tmp_path / "wide.csv"
    p.write_text("prompt,a,a|total_cost,b,b|total_cost\n" + "".join(
        f'"question {i}",{i % 2},0.1,{(i + 1) % 2},0.01\n' for i in range(12)))
    assert load_wide(p).models == ["a", "b"]
    assert capsys.readouterr().err == ""
