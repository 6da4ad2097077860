"""``train`` inputs that can never fit, refused before the prompts are embedded (minutes on
a large table with the minilm embedder), not after: ``--router auto --param k=3`` ('auto
takes no --param') and ``--router category`` (or ``semantic``) on a table without a category
column ('category router needs a 'category' column')."""

from __future__ import annotations

from pathlib import Path

import pytest

from expertgate.cli import main


def test_auto_with_a_param_is_refused_first(tmp_path: Path, no_embedding: None,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--router", "auto", "--param", "k=3", "--data",
                 str(tmp_path / "absent.csv"), "--embedder", "hashing", "--out",
                 str(tmp_path / "art")]) == 2
    err = capsys.readouterr().err
    assert "--router auto takes no --param" in err and err.count("\n") == 1


@pytest.mark.parametrize("family", ["category", "semantic"])
def test_a_category_family_on_a_table_without_categories(
        tmp_path: Path, small_long_table: Path, family: str, no_embedding: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--router", family, "--data", str(small_long_table),
                 "--embedder", "hashing", "--out", str(tmp_path / "art")]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"--router {family}" in line and "category column" in line
    assert not (tmp_path / "art").exists()
