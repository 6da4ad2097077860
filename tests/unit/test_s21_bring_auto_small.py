"""``train --router auto`` on a table too small to cross-validate: an 8-prompt table said
'auto needs at least 6 training prompts, got 5' after 'loaded 8 prompts', leaving the user
to work out that the split held three out. Like the families' own minimum (routers.train),
the count is now said to be the training part's, with the shares that hold out the rest and
what to do."""

from __future__ import annotations

from pathlib import Path

import pytest

from expertgate.cli import main


def _table(tmp_path: Path, n: int) -> Path:
    p = tmp_path / "t.csv"
    rows = [f'p{i},"question {i} on topic {i % 3}",{m},{float((i + j) % 2)},{c}'
            for i in range(n) for j, (m, c) in enumerate((("small", 0.001), ("big", 0.01)))]
    p.write_text("prompt_id,prompt,model,score,cost\n" + "\n".join(rows) + "\n")
    return p


def test_auto_on_too_few_training_prompts_names_the_split(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--router", "auto", "--data", str(_table(tmp_path, 8)),
                 "--embedder", "hashing", "--out", str(tmp_path / "art")]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "auto needs at least 6 training prompts" in line
    assert "5 of the table's 8 prompts" in line and "--val 0.1 and --test 0.2" in line
    assert "--val 0 --test 0" in line and "--router knn" in line
    assert not (tmp_path / "art").exists()


def test_a_table_below_the_minimum_is_told_to_add_prompts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--router", "auto", "--data", str(_table(tmp_path, 4)),
                 "--embedder", "hashing", "--out", str(tmp_path / "art"),
                 "--val", "0", "--test", "0"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "auto needs at least 6 training prompts" in line and "got 4" in line
    assert "--val 0 --test 0" not in line  # it already trains on them all


def test_auto_on_enough_prompts_with_every_one_in_train(tmp_path: Path) -> None:
    assert main(["train", "--router", "auto", "--data", str(_table(tmp_path, 8)),
                 "--embedder", "hashing", "--out", str(tmp_path / "art"),
                 "--val", "0", "--test", "0"]) == 0
