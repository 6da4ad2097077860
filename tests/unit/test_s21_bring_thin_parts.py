"""Validation and test parts of a handful of prompts: ``eval routing --val 0.02 --test 0.02``
on a 60-prompt table selected a method on one validation prompt and reported figures of one
test prompt, with nothing said (the figures read as precisely as on thousands). It now says
how few prompts the parts hold before the embedding; a table of normal parts says nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from expertgate.cli import main


def _table(tmp_path: Path, n: int = 60) -> Path:
    p = tmp_path / "t.csv"
    p.write_text("prompt_id,prompt,model,score,cost\n" + "".join(
        f'p{i},"question {i} on topic {i % 4}",{m},{float((i * (j + 2)) % 3 != 0)},{c}\n'
        for i in range(n) for j, (m, c) in enumerate((("small", 0.1), ("mid", 0.3),
                                                       ("big", 1.0)))))
    return p


def _run(path: Path, *flags: str) -> int:
    return main(["eval", "routing", "--data", str(path), "--embedder", "hashing", "--seeds",
                 "2", "--routers", "knn", "--quiet", *flags])


def test_parts_of_a_few_prompts_are_said(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(_table(tmp_path), "--val", "0.02", "--test", "0.02") == 0
    err = capsys.readouterr().err
    assert "note: the validation part holds 1 prompt" in err
    assert "test part holds 1 prompt" in err


def test_parts_of_normal_size_say_nothing(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(_table(tmp_path)) == 0
    assert "part holds" not in capsys.readouterr().err
