"""A wide (RouterBench-shaped) table whose models do not all have a cost column: a model is a
score column with a ``<model>|total_cost`` beside it, so a score column without one (the
cost forgotten for one model) was read as some other column and the model silently left
out ('loaded 60 prompts x 2 models' for a table of three, a router that can never choose it);
a cost column whose score column is missing (misspelt) likewise. A score column that holds a
model's answers beside it (``<model>|model_response``) and a cost column without its scores are
now an error naming the columns, before anything is embedded; any other column of numbers in
[0, 1] without a cost column (perhaps a model, perhaps another tool's difficulty or flag) is
named in a note on stderr and the table is read without it: a spare column must not stop a
table that is otherwise whole."""

from __future__ import annotations

from pathlib import Path

import pytest

from evals.datasets.routing import load_wide
from expertgate.cli import main
from routers.base import RouterError


def _write(tmp_path: Path, header: str, row: str) -> Path:
    p = tmp_path / "wide.csv"
    p.write_text(header + "\n" + "".join(row.format(i=i, a=i % 2, b=(i + 1) % 2) + "\n"
                                         for i in range(12)))
    return p


def test_a_model_with_answers_but_no_cost_column_is_named(tmp_path: Path) -> None:
    p = _write(tmp_path, "sample_id,prompt,eval_name,a,a|total_cost,mid,mid|model_response,"
               "b,b|total_cost", 'q{i},"question {i}",t,{a},0.1,0.5,"yes",{b},0.01')
    with pytest.raises(RouterError) as e:
        load_wide(p)
    msg = str(e.value)
    assert "'mid'" in msg and "'mid|total_cost'" in msg and "no cost column" in msg


def test_a_column_of_scores_without_costs_is_named_in_a_note_and_read_as_no_model(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = _write(tmp_path, "sample_id,prompt,eval_name,a,a|total_cost,mid,b,b|total_cost",
               'q{i},"question {i}",t,{a},0.1,0.5,{b},0.01')
    assert load_wide(p).models == ["a", "b"]
    err = capsys.readouterr().err
    assert "note:" in err and "'mid'" in err and "'mid|total_cost'" in err


def test_a_cost_column_without_its_score_column_is_named(tmp_path: Path) -> None:
    p = _write(tmp_path, "prompt,a,a|total_cost,b,b|total_cost,c|total_cost",
               '"question {i}",{a},0.1,{b},0.01,0.5')
    with pytest.raises(RouterError, match=r"cost column 'c\|total_cost' has no score column "
                                          r"'c'"):
        load_wide(p)


def test_other_columns_are_still_ignored(tmp_path: Path) -> None:
    # RouterBench's own extra columns, a free-text note and a count are no models
    p = _write(tmp_path, "Unnamed: 0,sample_id,prompt,eval_name,oracle_model_to_route_to,"
               "notes,tokens,a,a|model_response,a|total_cost,b,b|total_cost",
               '{a},q{i},"question {i}",t,a,"fine",{i}5,{a},"yes",0.1,{b},0.01')
    assert load_wide(p).models == ["a", "b"]


def test_the_command_ends_with_one_line_before_the_embedding(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from evals import routing_eval as RE

    def no_embedding(*a: object, **k: object) -> None:
        raise AssertionError("embedding started on a table with a model left out")

    monkeypatch.setattr(RE, "embed_table", no_embedding)
    p = _write(tmp_path, "prompt,a,a|total_cost,b,b|total_cost,mid|total_cost",
               '"question {i}",{a},0.1,{b},0.01,0.5')
    assert main(["eval", "routing", "--data", str(p), "--format", "wide", "--embedder",
                 "hashing", "--seeds", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "'mid|total_cost'" in err and err.count("\n") == 1 and "Traceback" not in err
