"""The note ``expertgate train`` prints when some decisions have no score says what is true of
the table, whatever its kind."""

from __future__ import annotations

from pathlib import Path


def test_a_table_with_gaps_is_not_called_one_score_per_prompt(tmp_path: Path, capsys) -> None:
    """synthetic:200x3 leaves a few (prompt, model) pairs unscored; the note said 'the table
    scores one expert per prompt (a routing log)' of a table that scores nearly all."""
    from expertgate.cli import main

    assert main(["train", "--router", "knn", "--data", "synthetic:200x3", "--embedder",
                 "hashing", "--out", str(tmp_path / "a"), "--cache-dir",
                 str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "decisions whose expert has a score" in out
    assert "scores one expert per prompt" not in out
    assert "does not score every expert on every prompt" in out
